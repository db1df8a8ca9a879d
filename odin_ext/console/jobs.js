// The job list: newest first, filtered by state, kind and queue, refreshed every two
// seconds, with cancel and retry buttons on each row.

import { poll, request } from "./api.js";
import {
  CANCELLABLE_STATES, RETRYABLE_STATES, STATES,
  fill, formatDateTime, formatPercent, formatTime, h, message, stateBadge,
} from "./dom.js";
import { replaceRoute, routeHash } from "./route.js";

const REFRESH_MS = 2000;
const PAGE_SIZE = 50;
const NOTICE_MS = 6000;

export function mount(container, params) {
  const filters = {
    state: params.get("state") || "",
    kind: params.get("kind") || "",
    queue: params.get("queue") || "",
  };
  let cursor = params.get("cursor") || "";
  // The newest refresh wins: responses to older ones that arrive late are dropped.
  let generation = 0;
  let mounted = true;
  // Rows by job id with the data they show, so a refresh replaces only changed rows and
  // never a button under the pointer.
  const rows = new Map();

  const stateSelect = filterSelect("state", "All states", STATES, filters.state);
  const kindSelect = filterSelect("kind", "All kinds", [], filters.kind);
  const queueSelect = filterSelect("queue", "All queues", [], filters.queue);
  const updated = h("span", { class: "updated", "aria-live": "off" });
  const notices = h("div", { class: "notices", "aria-live": "polite" });
  // One slot for the latest failed refresh, so a server that stays down shows one message.
  const loadProblem = h("div", { "aria-live": "polite" });
  const tbody = h("tbody");
  const table = h("table", { class: "table jobs-table", id: "jobs-table" },
    h("thead", {}, h("tr", {},
      ["ID", "Kind", "Queue", "State", "Attempt", "Progress", "Created", "Finished", "Actions"]
        .map((title) => h("th", { scope: "col" }, title)))),
    tbody);
  const empty = h("div", { class: "empty-state" });
  const pager = h("div", { class: "pager" });

  fill(container,
    h("div", { class: "page-header" }, h("h1", {}, "Jobs"), updated),
    h("form", { class: "filters", role: "search", onsubmit: (event) => event.preventDefault() },
      label("State", stateSelect), label("Kind", kindSelect), label("Queue", queueSelect)),
    loadProblem, notices, table, empty, pager);
  document.title = "Jobs · Odin";

  for (const select of [stateSelect, kindSelect, queueSelect]) {
    select.addEventListener("change", () => {
      filters[select.name] = select.value;
      cursor = "";
      refreshNow();
    });
  }
  loadFilterChoices(kindSelect, queueSelect);

  async function refresh() {
    if (!mounted) {
      return;
    }
    const current = ++generation;
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    for (const [name, value] of Object.entries({ ...filters, cursor })) {
      if (value) {
        query.set(name, value);
      }
    }
    const page = await request(`v1/jobs?${query}`);
    if (current !== generation) {
      return;
    }
    fill(loadProblem);
    renderRows(page.jobs);
    renderEmptyState(page.jobs.length === 0);
    renderPager(page.next_cursor);
    updated.textContent = `Updated ${formatTime(new Date().toISOString())}`;
  }

  function refreshNow() {
    replaceRoute(routeHash(["jobs"], { ...filters, cursor }));
    refresh().catch(showLoadProblem);
  }

  function renderRows(jobs) {
    const listedIds = new Set(jobs.map((job) => job.id));
    for (const [id, entry] of rows) {
      if (!listedIds.has(id)) {
        entry.row.remove();
        rows.delete(id);
      }
    }
    jobs.forEach((job, index) => {
      const signature = JSON.stringify([job.state, job.attempt, job.progress, job.finalized_at]);
      let entry = rows.get(job.id);
      if (entry === undefined || entry.signature !== signature) {
        const row = jobRow(job);
        entry?.row.replaceWith(row);
        entry = { row, signature };
        rows.set(job.id, entry);
      }
      if (tbody.children[index] !== entry.row) {
        tbody.insertBefore(entry.row, tbody.children[index] || null);
      }
    });
    table.hidden = jobs.length === 0;
  }

  function jobRow(job) {
    return h("tr", { "data-job-id": job.id, "data-state": job.state },
      h("td", { class: "number" }, h("a", { href: `#/jobs/${job.id}` }, String(job.id))),
      h("td", {}, job.kind),
      h("td", {}, job.queue),
      h("td", {}, stateBadge(job.state)),
      h("td", { class: "number" }, `${job.attempt}/${job.max_attempts}`),
      h("td", {}, progressCell(job.progress)),
      h("td", {}, formatDateTime(job.created_at)),
      h("td", {}, formatDateTime(job.finalized_at)),
      h("td", { class: "row-actions" }, actionButtons(job)));
  }

  function actionButtons(job) {
    const buttons = [];
    if (CANCELLABLE_STATES.has(job.state)) {
      buttons.push(h("button", { type: "button", class: "button small danger", "data-action": "cancel",
        onclick: (event) => act(event.currentTarget, job.id, "cancel") }, "Cancel"));
    }
    if (RETRYABLE_STATES.has(job.state)) {
      buttons.push(h("button", { type: "button", class: "button small", "data-action": "retry",
        onclick: (event) => act(event.currentTarget, job.id, "retry") }, "Retry"));
    }
    return buttons;
  }

  async function act(button, jobId, action) {
    button.disabled = true;
    try {
      const job = await request(`v1/jobs/${jobId}/${action}`, { method: "POST" });
      showNotice("notice", `Job ${job.id} is ${job.state}.`);
    } catch (error) {
      showNotice("error", `Could not ${action} job ${jobId}: ${error.message}`);
      button.disabled = false;
    }
    refreshNow();
  }

  function renderEmptyState(isEmpty) {
    const filtered = Object.values(filters).some(Boolean) || cursor;
    if (!isEmpty) {
      fill(empty);
    } else if (filtered) {
      fill(empty, message("empty", "No jobs match these filters."));
    } else {
      fill(empty,
        h("h2", {}, "No jobs yet"),
        h("p", {}, "Submit a job and it shows up here, live. The built-in countdown kind is a good first try: it reports progress and log lines as it runs."),
        h("a", { class: "button primary", href: "#/submit/countdown" }, "Submit a countdown job"));
    }
  }

  function renderPager(nextCursor) {
    const buttons = [];
    if (cursor) {
      buttons.push(h("button", { type: "button", class: "button",
        onclick: () => { cursor = ""; refreshNow(); } }, "Newest jobs"));
    }
    if (nextCursor) {
      buttons.push(h("button", { type: "button", class: "button",
        onclick: () => { cursor = nextCursor; refreshNow(); } }, "Older jobs"));
    }
    fill(pager, buttons);
  }

  function showNotice(kind, text) {
    const note = message(kind, text);
    notices.append(note);
    setTimeout(() => note.remove(), NOTICE_MS);
  }

  function showLoadProblem(error) {
    // A missing API key is explained by the key form at the top of the page.
    fill(loadProblem, error.status === 401 ? null : message("error", `Could not load jobs: ${error.message}`));
  }

  const stopPolling = poll(refresh, REFRESH_MS, showLoadProblem);
  return () => {
    mounted = false;
    generation += 1;
    stopPolling();
  };
}

function progressCell(progress) {
  if (!progress || typeof progress.fraction !== "number") {
    return null;
  }
  return h("span", { class: "progress-cell", title: progress.message || "" },
    h("progress", { max: "1", value: String(progress.fraction) }),
    h("span", { class: "percent" }, formatPercent(progress.fraction)));
}

function filterSelect(name, allLabel, values, selected) {
  const select = h("select", { name, id: `filter-${name}` }, h("option", { value: "" }, allLabel));
  setChoices(select, values, selected);
  return select;
}

/** Sets the options after the "All" option, keeping the selected value even if unknown. */
function setChoices(select, values, selected = select.value) {
  const choices = [...new Set([...values, selected].filter(Boolean))].sort();
  fill(select, select.options[0], choices.map((value) => h("option", { value }, value)));
  select.value = selected;
}

function label(text, control) {
  return h("label", { class: "field inline" }, h("span", { class: "label" }, text), control);
}

async function loadFilterChoices(kindSelect, queueSelect) {
  try {
    const [kinds, stats] = await Promise.all([request("v1/kinds"), request("v1/stats")]);
    setChoices(kindSelect, kinds.kinds.map((kind) => kind.name));
    setChoices(queueSelect, [...new Set([
      ...kinds.kinds.map((kind) => kind.queue),
      ...stats.queues.map((queue) => queue.queue),
    ])]);
  } catch {
    // The filters still work with the values in the address; the list shows the error.
  }
}
