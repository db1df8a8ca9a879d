"""Container health check: exit 0 when ``GET /healthz`` returns 200, else 1.

Reads the address the way Odin does: ODIN_PORT, else PORT, else 8000, on ODIN_HOST, with a
wildcard host (0.0.0.0, ::) checked through loopback. Uses only the standard library, so it
costs one short Python start per check and needs no curl in the image.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_SECONDS = 2.0
WILDCARD_TO_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}


def health_url() -> str:
    host = os.environ.get("ODIN_HOST", "127.0.0.1")
    host = WILDCARD_TO_LOOPBACK.get(host, host).strip("[]")
    port = os.environ.get("ODIN_PORT") or os.environ.get("PORT") or "8000"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def main() -> int:
    url = health_url()
    # No proxy: a proxy from the environment must never carry the check of a local port.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_SECONDS) as answer:
            status = answer.status
    except (urllib.error.URLError, OSError) as exc:
        print(f"odin health check: GET {url} failed: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"odin health check: GET {url} returned {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
