// The console's address scheme: views live in the URL fragment, so every view has a link
// that survives a reload, and the server serves one page for all of them.

/** Splits a fragment such as "#/jobs/42?x=1" into path segments and query parameters. */
export function parseRoute(hash) {
  const [path, query = ""] = hash.replace(/^#\/?/, "").split("?", 2);
  return {
    segments: path.split("/").filter(Boolean).map(decodeURIComponent),
    params: new URLSearchParams(query),
  };
}

/** Builds a fragment from path segments and the non-empty query parameters. */
export function routeHash(segments, params = {}) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") {
      query.set(name, value);
    }
  }
  const path = segments.map(encodeURIComponent).join("/");
  const search = query.toString();
  return `#/${path}${search ? `?${search}` : ""}`;
}

/** Changes the fragment without adding a history entry or remounting the view. */
export function replaceRoute(hash) {
  history.replaceState(null, "", hash);
}
