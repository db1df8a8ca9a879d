// Requests to Odin's HTTP API. Paths are relative ("v1/jobs"), so the console works under
// any URL prefix and with its requests spread over several replicas.

/** A failed request. `status` is 0 when no response came; `errors` lists invalid fields. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
    this.errors = Array.isArray(problem.errors) ? problem.errors : [];
  }
}

const reachabilityListeners = new Set();
const authListeners = new Set();
// The key lives in sessionStorage: it stays across reloads and is gone with the tab.
const API_KEY_STORAGE = "odin.apiKey";

/** Returns the API key that this tab sends, or null when it sends none. */
export function apiKey() {
  return sessionStorage.getItem(API_KEY_STORAGE);
}

/** Stores the API key that requests send from now on; null removes it. */
export function setApiKey(key) {
  if (key) {
    sessionStorage.setItem(API_KEY_STORAGE, key);
  } else {
    sessionStorage.removeItem(API_KEY_STORAGE);
  }
}

/** Calls `listener(detail)` whenever Odin rejects a request for lack of a valid API key. */
export function onAuthRequired(listener) {
  authListeners.add(listener);
}

/**
 * Calls `listener(problem)` after each request: problem is null when Odin responded, and a
 * sentence when it was unreachable or its database was unavailable.
 */
export function onReachability(listener) {
  reachabilityListeners.add(listener);
}

function reportReachability(problem) {
  for (const listener of reachabilityListeners) {
    listener(problem);
  }
}

/** Sends a request and returns the parsed JSON response; throws ApiError unless it is 2xx. */
export async function request(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
  }
  const key = apiKey();
  if (key) {
    headers.Authorization = `Bearer ${key}`;
  }

  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch {
    reportReachability("Cannot reach Odin. Retrying…");
    throw new ApiError(0, { detail: "Odin cannot be reached" });
  }

  const document = parseJson(await response.text());
  const problem = document !== null && typeof document === "object" ? document : {};
  if (response.status === 503) {
    reportReachability(`Odin is unavailable: ${problem.detail || "try again later"}. Retrying…`);
  } else {
    reportReachability(null);
  }
  if (response.status === 401) {
    for (const listener of authListeners) {
      listener(problem.detail || "Odin requires an API key.");
    }
  }
  if (!response.ok) {
    throw new ApiError(response.status, problem);
  }
  return document;
}

/**
 * Returns the relative URL of a job's event stream after `lastSeq`. EventSource cannot send
 * an Authorization header, so the URL carries the stream token of the job's `events_url`
 * when the server issued one. Tokens expire; take them from a recent job document.
 */
export function eventsPath(job, lastSeq) {
  const query = new URLSearchParams();
  const token = new URL(job.events_url, location.href).searchParams.get("token");
  if (token) {
    query.set("token", token);
  }
  if (lastSeq > 0) {
    query.set("last_event_id", String(lastSeq));
  }
  const search = query.toString();
  return `v1/jobs/${job.id}/events${search ? `?${search}` : ""}`;
}

function parseJson(text) {
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

/**
 * Runs `task` now and again `intervalMs` after each run ends, so runs never overlap.
 * Runs are skipped while the page is hidden and resume when it shows. Returns a function
 * that stops the polling. A failed run is reported to `onError` and polling goes on.
 */
export function poll(task, intervalMs, onError = () => {}) {
  let stopped = false;
  let timer = null;

  async function tick() {
    timer = null;
    if (stopped || document.hidden) {
      return;
    }
    try {
      await task();
    } catch (error) {
      onError(error);
    }
    if (!stopped) {
      timer = setTimeout(tick, intervalMs);
    }
  }

  function onVisibilityChange() {
    if (!document.hidden && timer === null) {
      tick();
    }
  }

  document.addEventListener("visibilitychange", onVisibilityChange);
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
    document.removeEventListener("visibilitychange", onVisibilityChange);
  };
}
