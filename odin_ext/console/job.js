// The live job page: state, progress bar, messages and outcome of one job, following its
// event stream.
//
// Every event carries its sequence number within the job, and the page shows each number
// once: events at or below the last one shown are dropped. A reload starts from a fresh
// page and replays the stream from the start. When the connection drops, EventSource
// reconnects by itself and sends Last-Event-ID. When it gives up (after an HTTP error
// such as a proxy's 502), the page opens a new stream with ?last_event_id=. Either way no
// line is repeated or missing.

import { ApiError, eventsPath, poll, request } from "./api.js";
import {
  CANCELLABLE_STATES, FINAL_STATES, RETRYABLE_STATES,
  clampFraction, fill, formatDateTime, formatJson, formatPercent, formatTime, h, message,
} from "./dom.js";

// EventSource hands a named event only to a listener of that name, so the page listens to
// every type the server writes.
// NOTE: an event of a type missing here is skipped silently; add new server types here.
const EVENT_TYPES = [
  "scheduled", "queued", "running", "progress", "log", "retry_scheduled", "rescued",
  "interrupted", "completed", "failed", "cancelled",
];
// The job's state after each event type that changes it.
const STATE_AFTER_EVENT = {
  scheduled: "scheduled",
  queued: "queued",
  running: "running",
  retry_scheduled: "scheduled",
  rescued: "queued",
  interrupted: "queued",
  completed: "completed",
  failed: "failed",
  cancelled: "cancelled",
};
const RECONNECT_MIN_MS = 1000;
const RECONNECT_MAX_MS = 15000;
const LOAD_RETRY_MS = 2000;
const FACTS_RELOAD_DELAY_MS = 300;
const NEW_EVENTS_CHECK_MS = 5000;
// Distance in pixels from the bottom within which the event list keeps scrolling along.
const STICKY_SCROLL_PX = 40;

export function mount(container, jobId) {
  let mounted = true;
  let job = null;
  let lastSeq = 0;
  let source = null;
  let reconnectTimer = null;
  let reconnectDelayMs = RECONNECT_MIN_MS;
  let loadTimer = null;
  let factsTimer = null;
  let stopWatching = () => {};

  const stateBadge = h("span", { id: "job-state", class: "badge" });
  const progress = h("progress", { id: "job-progress", max: "1", value: "0" });
  const percent = h("span", { id: "job-percent", class: "percent" }, "0%");
  const progressMessage = h("p", { id: "job-progress-message", class: "progress-message" });
  const actions = h("div", { class: "actions" });
  const actionMessage = h("div", { "aria-live": "polite" });
  const outcome = h("div", { id: "job-outcome", class: "outcome", hidden: true });
  const facts = h("dl", { class: "facts" });
  const streamStatus = h("span", { id: "stream-status", class: "stream-status" });
  const events = h("ol", { id: "job-events", class: "events", "aria-live": "polite" });

  document.title = `Job ${jobId} · Odin`;
  fill(container, message("empty", `Loading job ${jobId}…`));
  load();

  async function load() {
    try {
      job = await request(`v1/jobs/${jobId}`);
    } catch (error) {
      if (!mounted) {
        return;
      }
      if (error instanceof ApiError && error.status === 404) {
        fill(container, h("h1", {}, `Job ${jobId}`),
          message("error", `Job ${jobId} does not exist. `, h("a", { href: "#/jobs" }, "Back to the job list.")));
        return;
      }
      fill(container, h("h1", {}, `Job ${jobId}`),
        message("error", `Could not load job ${jobId}: ${error.message}. Retrying…`));
      loadTimer = setTimeout(load, LOAD_RETRY_MS);
      return;
    }
    if (!mounted) {
      return;
    }
    renderPage();
    openStream();
  }

  function renderPage() {
    fill(container,
      h("div", { class: "page-header" },
        h("h1", {}, `Job ${job.id} `, h("span", { class: "subtle" }, job.kind)), stateBadge),
      h("div", { class: "job-grid" },
        h("section", { class: "panel", "aria-label": "Progress" },
          h("div", { class: "progress-row" }, progress, percent),
          progressMessage, outcome, actions, actionMessage),
        h("section", { class: "panel", "aria-label": "Details" }, facts)),
      h("section", { class: "panel" },
        h("div", { class: "panel-header" }, h("h2", {}, "Events"), streamStatus),
        events));
    renderJob();
  }

  /** Shows the fields of the job document; the stream's events fill in the rest. */
  function renderJob() {
    showState(job.state);
    renderFacts();
    if (FINAL_STATES.has(job.state)) {
      showOutcome(job.state, job.result, job.error);
    } else {
      outcome.hidden = true;
    }
  }

  function renderFacts() {
    fill(facts,
      fact("Kind", job.kind),
      fact("Queue", h("a", { href: `#/jobs?queue=${encodeURIComponent(job.queue)}` }, job.queue)),
      fact("Attempt", `${job.attempt} of ${job.max_attempts}`),
      fact("Priority", String(job.priority)),
      fact("Created", formatDateTime(job.created_at)),
      fact("Started", formatDateTime(job.attempted_at) || "not yet"),
      fact("Finished", formatDateTime(job.finalized_at) || "not yet"),
      fact("Args", h("pre", { class: "json" }, formatJson(job.args))));
  }

  function showState(state) {
    stateBadge.className = `badge state-${state}`;
    stateBadge.textContent = state;
    document.title = `Job ${jobId} · ${state} · Odin`;
    renderActions(state);
  }

  function renderActions(state) {
    const buttons = [];
    if (CANCELLABLE_STATES.has(state)) {
      buttons.push(h("button", { type: "button", class: "button danger", id: "job-cancel",
        onclick: (event) => act(event.currentTarget, "cancel") }, "Cancel job"));
    }
    if (RETRYABLE_STATES.has(state)) {
      buttons.push(h("button", { type: "button", class: "button", id: "job-retry",
        onclick: (event) => act(event.currentTarget, "retry") }, "Retry job"));
    }
    fill(actions, buttons);
  }

  async function act(button, action) {
    button.disabled = true;
    fill(actionMessage);
    try {
      job = await request(`v1/jobs/${jobId}/${action}`, { method: "POST" });
    } catch (error) {
      button.disabled = false;
      fill(actionMessage, message("error", `Could not ${action} the job: ${error.message}`));
      return;
    }
    if (!mounted) {
      return;
    }
    renderJob();
    // A retried job writes new events after its final one; follow them.
    if (source === null && job.last_event_id > lastSeq) {
      openStream();
    }
  }

  function openStream() {
    stopWatching();
    closeStream();
    const eventSource = new EventSource(eventsPath(job, lastSeq));
    source = eventSource;
    setStreamStatus("connecting", "Connecting…");
    eventSource.addEventListener("open", () => {
      reconnectDelayMs = RECONNECT_MIN_MS;
      setStreamStatus("live", "Live");
    });
    eventSource.addEventListener("error", () => {
      if (source !== eventSource) {
        return; // an error of a stream this page has closed already
      }
      if (eventSource.readyState === EventSource.CLOSED) {
        // The browser gave up, for example after a 502 from a proxy or a 503.
        scheduleReconnect();
      } else {
        // The browser reconnects by itself and sends Last-Event-ID.
        setStreamStatus("reconnecting", "Reconnecting…");
      }
    });
    for (const type of EVENT_TYPES) {
      eventSource.addEventListener(type, onEvent);
    }
  }

  function closeStream() {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    if (source !== null) {
      source.close();
      source = null;
    }
  }

  function scheduleReconnect() {
    closeStream();
    setStreamStatus("reconnecting", `Reconnecting in ${Math.round(reconnectDelayMs / 1000)} s…`);
    reconnectTimer = setTimeout(reopenStream, reconnectDelayMs);
    reconnectDelayMs = Math.min(reconnectDelayMs * 2, RECONNECT_MAX_MS);
  }

  async function reopenStream() {
    // A fresh job document carries a fresh stream token; the one in use may have expired.
    try {
      job = await request(`v1/jobs/${jobId}`);
    } catch {
      // Try with the token at hand; if the stream fails too, the next attempt follows.
    }
    if (mounted && source === null) {
      openStream();
    }
  }

  function setStreamStatus(status, text) {
    streamStatus.dataset.status = status;
    streamStatus.textContent = text;
  }

  function onEvent(messageEvent) {
    const event = JSON.parse(messageEvent.data);
    if (event.seq <= lastSeq) {
      return;
    }
    lastSeq = event.seq;
    showEvent(event);
    if (FINAL_STATES.has(event.type)) {
      // The server ends the stream after a final event; reconnecting would only wait.
      closeStream();
      setStreamStatus("ended", "Ended");
      watchForNewEvents();
    }
  }

  function showEvent(event) {
    appendEventLine(event);
    const data = event.data || {};
    const state = STATE_AFTER_EVENT[event.type];
    if (state !== undefined) {
      showState(state);
      if (!FINAL_STATES.has(state)) {
        scheduleFactsReload();
      }
    }
    switch (event.type) {
      case "running":
        setProgress(0, "");
        break;
      case "progress":
        setProgress(data.fraction, data.message || "");
        break;
      case "completed":
        setProgress(1, progressMessage.textContent);
        showOutcome("completed", data.result, null);
        break;
      case "failed":
        showOutcome("failed", null, data.error);
        break;
      case "cancelled":
        showOutcome("cancelled", null, data.reason);
        break;
      case "queued":
        outcome.hidden = true;
        break;
    }
  }

  function setProgress(fraction, text) {
    const value = clampFraction(fraction);
    progress.value = value;
    percent.textContent = formatPercent(value);
    progressMessage.textContent = text;
  }

  function showOutcome(state, result, error) {
    outcome.hidden = false;
    outcome.dataset.state = state;
    if (state === "completed") {
      fill(outcome, h("h2", {}, "Result"), h("pre", { id: "job-result", class: "json" }, formatJson(result)));
    } else if (state === "failed") {
      fill(outcome, h("h2", {}, "Error"), h("pre", { id: "job-error", class: "error-text" }, error || "unknown error"));
    } else {
      fill(outcome, h("h2", {}, "Cancelled"), h("p", { id: "job-error" }, error || "The job was cancelled."));
    }
  }

  function appendEventLine(event) {
    const atBottom = events.scrollHeight - events.scrollTop - events.clientHeight < STICKY_SCROLL_PX;
    const level = event.type === "log" ? event.data.level || "info" : null;
    events.append(h("li", { class: `event event-${event.type}`, "data-seq": event.seq, "data-level": level },
      h("span", { class: "seq" }, String(event.seq)),
      h("time", { datetime: event.at }, formatTime(event.at)),
      h("span", { class: "event-type" }, event.type),
      h("span", { class: "event-text" }, describeEvent(event))));
    if (atBottom) {
      events.scrollTop = events.scrollHeight;
    }
  }

  // Attempt and start time change with the state; one reload covers a burst of events,
  // such as the replay after a page reload.
  function scheduleFactsReload() {
    clearTimeout(factsTimer);
    factsTimer = setTimeout(async () => {
      try {
        const latest = await request(`v1/jobs/${jobId}`);
        if (mounted && !FINAL_STATES.has(latest.state)) {
          job = latest;
          renderFacts();
        }
      } catch {
        // The facts stay as they were; the next state change tries again.
      }
    }, FACTS_RELOAD_DELAY_MS);
  }

  // The stream is closed after a final event. This check renders the final job once and
  // then looks for events written after a retry from elsewhere (another console, the CLI).
  function watchForNewEvents() {
    stopWatching();
    let rendered = false;
    stopWatching = poll(async () => {
      const latest = await request(`v1/jobs/${jobId}`);
      if (!mounted || source !== null) {
        return;
      }
      job = latest;
      if (!rendered || job.last_event_id > lastSeq) {
        renderJob();
        rendered = true;
      }
      if (job.last_event_id > lastSeq) {
        openStream();
      }
    }, NEW_EVENTS_CHECK_MS);
  }

  return () => {
    mounted = false;
    clearTimeout(loadTimer);
    clearTimeout(factsTimer);
    stopWatching();
    closeStream();
  };
}

function fact(name, value) {
  return [h("dt", {}, name), h("dd", {}, value)];
}

/** Returns the one-line text of an event in the event list. */
function describeEvent(event) {
  const data = event.data || {};
  switch (event.type) {
    case "queued":
      return data.reason ? `in queue ${data.queue} (${data.reason})` : `in queue ${data.queue}`;
    case "scheduled":
      return `runs at ${formatDateTime(data.scheduled_at)}`;
    case "running":
      return `attempt ${data.attempt}`;
    case "progress":
      return `${formatPercent(data.fraction)} ${data.message || ""}`.trim();
    case "log":
      return `[${data.level || "info"}] ${data.message || ""}`;
    case "retry_scheduled":
      return `attempt ${data.attempt} failed: ${data.error}; next attempt at ${formatDateTime(data.scheduled_at)}`;
    case "completed":
      return `result ${JSON.stringify(data.result)}`;
    case "failed":
    case "rescued":
    case "interrupted":
      return data.error || data.reason || JSON.stringify(data);
    case "cancelled":
      return data.reason || "";
    default:
      return JSON.stringify(data);
  }
}
