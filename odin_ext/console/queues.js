// The queue overview: job counts by state for each queue, and the completed and failed
// jobs per minute over the last 15 minutes, refreshed every two seconds (GET /v1/stats).

import { poll, request } from "./api.js";
import { STATES, fill, formatTime, h, message } from "./dom.js";
import { routeHash } from "./route.js";

const REFRESH_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const CHART = { width: 720, height: 200, top: 12, right: 8, bottom: 26, left: 36 };

export function mount(container) {
  const updated = h("span", { class: "updated" });
  const problem = h("div", { "aria-live": "polite" });
  const counts = h("div", { id: "queue-counts" });
  const throughput = h("div", { id: "queue-throughput" });
  document.title = "Queues · Odin";
  fill(container,
    h("div", { class: "page-header" }, h("h1", {}, "Queues"), updated),
    problem,
    h("section", { class: "panel" }, h("h2", {}, "Jobs by state"), counts),
    h("section", { class: "panel" }, h("h2", {}, "Throughput, last 15 minutes"), throughput));

  async function refresh() {
    const stats = await request("v1/stats");
    fill(problem);
    fill(counts, countsTable(stats.queues));
    fill(throughput, throughputChart(stats.throughput));
    updated.textContent = `Updated ${formatTime(new Date().toISOString())}`;
  }

  return poll(refresh, REFRESH_MS, (error) => {
    // A missing API key is explained by the key form at the top of the page.
    fill(problem, error.status === 401 ? null : message("error", `Could not load queue statistics: ${error.message}`));
  });
}

function countsTable(queues) {
  if (queues.length === 0) {
    return message("empty", "No jobs yet. Queues appear here once they have jobs.");
  }
  const totals = Object.fromEntries(STATES.map((state) => [state, 0]));
  const rows = queues.map((queue) => {
    for (const state of STATES) {
      totals[state] += queue.counts[state] || 0;
    }
    return h("tr", { "data-queue": queue.queue },
      h("th", { scope: "row" }, h("a", { href: routeHash(["jobs"], { queue: queue.queue }) }, queue.queue)),
      STATES.map((state) => countCell(queue.counts[state] || 0, { queue: queue.queue, state })));
  });
  const totalRow = queues.length > 1
    ? h("tr", { class: "total" }, h("th", { scope: "row" }, "All queues"),
      STATES.map((state) => countCell(totals[state], { state })))
    : null;
  return h("table", { class: "table counts-table" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Queue"),
      STATES.map((state) => h("th", { scope: "col", class: "number" }, h("span", { class: `badge state-${state}` }, state))))),
    h("tbody", {}, rows, totalRow));
}

function countCell(count, filters) {
  const text = count.toLocaleString();
  return h("td", { class: "number" }, count > 0 ? h("a", { href: routeHash(["jobs"], filters) }, text) : text);
}

/** Draws stacked bars of completed and failed jobs per minute as an SVG chart. */
function throughputChart(minutes) {
  const completed = minutes.reduce((sum, minute) => sum + minute.completed, 0);
  const failed = minutes.reduce((sum, minute) => sum + minute.failed, 0);
  const peak = Math.max(1, ...minutes.map((minute) => minute.completed + minute.failed));
  const plotWidth = CHART.width - CHART.left - CHART.right;
  const plotHeight = CHART.height - CHART.top - CHART.bottom;
  const slot = plotWidth / Math.max(1, minutes.length);
  const barWidth = Math.max(2, slot * 0.7);
  const y = (value) => CHART.top + plotHeight - (value / peak) * plotHeight;

  const chart = svg("svg", { viewBox: `0 0 ${CHART.width} ${CHART.height}`, class: "chart", role: "img",
    "aria-label": `${completed} jobs completed and ${failed} failed in the last ${minutes.length} minutes` });
  chart.append(
    svg("line", { x1: CHART.left, x2: CHART.width - CHART.right, y1: y(0), y2: y(0), class: "axis" }),
    svgText(CHART.left - 6, y(peak) + 4, String(peak), "end"),
    svgText(CHART.left - 6, y(0) + 4, "0", "end"));
  minutes.forEach((minute, index) => {
    const x = CHART.left + index * slot + (slot - barWidth) / 2;
    const label = `${formatMinute(minute.minute)}: ${minute.completed} completed, ${minute.failed} failed`;
    const group = svg("g", { "data-minute": minute.minute });
    group.append(svg("title", {}, label));
    group.append(svg("rect", { x, width: barWidth, y: y(minute.completed), height: y(0) - y(minute.completed), class: "bar-completed" }));
    group.append(svg("rect", { x, width: barWidth, y: y(minute.completed + minute.failed), height: y(0) - y(minute.failed), class: "bar-failed" }));
    if (index % 5 === 0 || index === minutes.length - 1) {
      group.append(svgText(x + barWidth / 2, CHART.height - 8, index === minutes.length - 1 ? "now" : formatMinute(minute.minute), "middle"));
    }
    chart.append(group);
  });

  return h("div", { class: "throughput" },
    h("p", { class: "legend" },
      h("span", { class: "swatch swatch-completed" }), ` ${completed.toLocaleString()} completed `,
      h("span", { class: "swatch swatch-failed" }), ` ${failed.toLocaleString()} failed`,
      h("span", { class: "subtle" }, " · the last bar is the current minute, still counting")),
    chart);
}

function formatMinute(iso) {
  return new Date(iso).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", hour12: false });
}

function svg(tag, attributes, text) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) {
    element.setAttribute(name, String(value));
  }
  if (text !== undefined) {
    element.textContent = text;
  }
  return element;
}

function svgText(x, y, text, anchor) {
  return svg("text", { x, y, "text-anchor": anchor, class: "chart-label" }, text);
}
