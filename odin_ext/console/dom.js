// Building DOM nodes and formatting values. Text always goes in through textContent, so
// job data can never inject markup.

/**
 * Creates an element. Attributes named on* become event listeners, true and false toggle
 * boolean attributes, null and undefined are skipped. Children are nodes or text.
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) {
      continue;
    }
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  element.append(...children.flat().filter((child) => child !== null && child !== undefined));
  return element;
}

/** Replaces the children of `element`. */
export function fill(element, ...children) {
  element.replaceChildren(...children.flat().filter((child) => child !== null && child !== undefined));
}

export const STATES = ["scheduled", "queued", "running", "completed", "failed", "cancelled"];
export const FINAL_STATES = new Set(["completed", "failed", "cancelled"]);
export const CANCELLABLE_STATES = new Set(["scheduled", "queued", "running"]);
export const RETRYABLE_STATES = new Set(["failed", "cancelled"]);

export function stateBadge(state, attributes = {}) {
  return h("span", { ...attributes, class: `badge state-${state}` }, state);
}

/** Formats an ISO 8601 timestamp as local date and time, to the second. */
export function formatDateTime(iso) {
  if (!iso) {
    return "";
  }
  const date = new Date(iso);
  return `${date.toLocaleDateString(undefined, { month: "short", day: "numeric" })} ${formatTime(iso)}`;
}

/** Formats an ISO 8601 timestamp as local time of day, to the second. */
export function formatTime(iso) {
  return new Date(iso).toLocaleTimeString(undefined, { hour12: false });
}

export function formatJson(value) {
  return JSON.stringify(value, null, 2);
}

export function formatPercent(fraction) {
  return `${Math.round(clampFraction(fraction) * 100)}%`;
}

export function clampFraction(value) {
  return typeof value === "number" && Number.isFinite(value) ? Math.min(1, Math.max(0, value)) : 0;
}

/** Creates a short message block; `kind` is "error", "notice" or "empty". */
export function message(kind, ...children) {
  return h("p", { class: `message message-${kind}`, role: kind === "error" ? "alert" : null }, ...children);
}
