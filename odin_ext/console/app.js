// The console's entry point: a router over the URL fragment, so every view has a link
// that survives a reload.
//
//   #/jobs?state=&kind=&queue=&cursor=   job list         (jobs.js)
//   #/jobs/42                            live job page    (job.js)
//   #/submit/countdown                   submission form  (submit.js)
//   #/queues                             queue overview   (queues.js)

import { apiKey, onAuthRequired, onReachability, setApiKey } from "./api.js";
import { h, fill, message } from "./dom.js";
import { parseRoute, replaceRoute } from "./route.js";
import * as jobList from "./jobs.js";
import * as jobPage from "./job.js";
import * as queueOverview from "./queues.js";
import * as submitForm from "./submit.js";

const view = document.getElementById("view");
let unmountView = () => {};

function resolve({ segments, params }) {
  const [section, id, ...rest] = segments;
  if (rest.length > 0) {
    return null;
  }
  switch (section) {
    case undefined:
    case "jobs":
      if (id === undefined) {
        return { section: "jobs", mount: (container) => jobList.mount(container, params) };
      }
      if (/^[1-9][0-9]{0,18}$/.test(id)) {
        return { section: "jobs", mount: (container) => jobPage.mount(container, Number(id)) };
      }
      return null;
    case "submit":
      return { section: "submit", mount: (container) => submitForm.mount(container, id) };
    case "queues":
      return id === undefined ? { section: "queues", mount: queueOverview.mount } : null;
    default:
      return null;
  }
}

function render() {
  unmountView();
  const route = resolve(parseRoute(location.hash));
  for (const link of document.querySelectorAll("[data-section]")) {
    link.toggleAttribute("aria-current", route !== null && link.dataset.section === route.section);
  }
  const container = h("div", { class: "page" });
  fill(view, container);
  if (route === null) {
    document.title = "Not found · Odin";
    fill(container, h("h1", {}, "Page not found"),
      message("empty", "No console page has this address. ", h("a", { href: "#/jobs" }, "Go to the job list.")));
    unmountView = () => {};
    return;
  }
  unmountView = route.mount(container) || (() => {});
}

function showReachability(problem) {
  const banner = document.getElementById("reachability");
  banner.hidden = problem === null;
  banner.textContent = problem || "";
}

const keyForm = document.getElementById("api-key-form");
const keyInput = document.getElementById("api-key-input");
const forgetKey = document.getElementById("forget-key");

function askForApiKey(detail) {
  if (keyForm.hidden) {
    keyForm.hidden = false;
    keyInput.focus();
  }
  document.getElementById("api-key-problem").textContent =
    apiKey() ? `The stored key was rejected: ${detail}` : detail;
}

keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey(keyInput.value.trim() || null);
  keyInput.value = "";
  keyForm.hidden = true;
  forgetKey.hidden = apiKey() === null;
  render();
});

forgetKey.addEventListener("click", () => {
  setApiKey(null);
  forgetKey.hidden = true;
  render();
});

forgetKey.hidden = apiKey() === null;
onAuthRequired(askForApiKey);
onReachability(showReachability);
window.addEventListener("hashchange", render);
if (!location.hash || location.hash === "#" || location.hash === "#/") {
  replaceRoute("#/jobs");
}
render();
