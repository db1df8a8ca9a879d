"""The web console: static HTML, CSS and JavaScript from ``odin_ext/console/``, served at ``/``.

The page talks to the API with relative URLs only, so it works behind any prefix and with
its requests and event streams spread over several replicas. Responses carry a
Content-Security-Policy that allows scripts, styles and connections to this origin only;
the console loads nothing from elsewhere and works offline.
"""

from __future__ import annotations

from pathlib import Path

from quart import Blueprint, Response, send_from_directory

CONSOLE_DIR = Path(__file__).resolve().parent / "console"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

console = Blueprint("odin_console", __name__)


@console.get("/")
async def index() -> Response:
    return await _static_file("index.html")


@console.get("/console/<path:file_name>")
async def asset(file_name: str) -> Response:
    # send_from_directory rejects paths that leave the folder with 404.
    return await _static_file(file_name)


async def _static_file(file_name: str) -> Response:
    response = await send_from_directory(CONSOLE_DIR, file_name)
    # Revalidate on every load, so a new version of Odin never runs with an old script.
    response.headers["Cache-Control"] = "no-cache"
    response.headers.update(SECURITY_HEADERS)
    return response
