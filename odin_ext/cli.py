"""The ``odin`` command line.

- ``odin serve`` runs the API, the event streams and the workers in one process.
- ``odin migrate`` applies pending database migrations and exits.
- ``odin submit KIND --args JSON [--wait]`` submits a job to a running Odin and, with
  ``--wait``, prints its events live; the exit status follows the job's outcome.

Exit statuses: 0 success, 1 the job failed, 2 bad usage or settings, 3 the job was
cancelled, 4 Odin could not be reached or answered with an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
from httpx_sse import connect_sse
from quart import Quart

from odin_ext.logs import configure_logging
from odin_ext.settings import Settings, SettingsError, load_settings

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_JOB_CANCELLED = 3
EXIT_UNREACHABLE = 4

DEFAULT_URL = "http://127.0.0.1:8000"
STREAM_RECONNECTS = 20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="odin", description="Odin, a PostgreSQL job service.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP API, event streams and workers")
    serve.add_argument("--host", help="address to bind (default: ODIN_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: ODIN_PORT or 8000)")

    commands.add_parser("migrate", help="apply pending database migrations and exit")

    submit = commands.add_parser("submit", help="submit a job to a running Odin")
    submit.add_argument("kind", help="job kind, for example countdown")
    submit.add_argument("--args", default="{}", help="job arguments as a JSON object")
    submit.add_argument("--queue", help="queue (default: the kind's queue)")
    submit.add_argument("--priority", type=int, help="priority from -100 to 100; higher runs first")
    submit.add_argument("--delay", type=float, help="seconds to wait before the job may run")
    submit.add_argument("--max-attempts", type=int, help="attempts before the job fails")
    submit.add_argument("--wait", action="store_true", help="print the job's events until it ends")
    submit.add_argument(
        "--url",
        default=os.environ.get("ODIN_URL", DEFAULT_URL),
        help=f"Odin's base URL (default: ODIN_URL or {DEFAULT_URL})",
    )
    return parser


def run(argv: list[str] | None, create_app: Callable[[Settings], Quart]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "submit":
        return _submit(args)
    try:
        overrides = {k: v for k in ("host", "port") if (v := getattr(args, k, None)) is not None}
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(f"odin: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level)
    if args.command == "migrate":
        return _migrate(settings)
    return _serve(settings, create_app)


def _serve(settings: Settings, create_app: Callable[[Settings], Quart]) -> int:
    from odin_ext.server import serve

    app = create_app(settings)
    asyncio.run(serve(app, settings))
    return EXIT_OK


def _migrate(settings: Settings) -> int:
    from odin_ext.migrations import migrate
    from odin_ext.runtime import start_embedded

    embedded = None
    conninfo = settings.database_url
    if not conninfo:
        embedded = start_embedded(settings.embedded_data_dir)
        conninfo = embedded.url
    try:
        applied = asyncio.run(migrate(conninfo))
    finally:
        if embedded is not None:
            embedded.stop()
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return EXIT_OK


def _submit(args: argparse.Namespace) -> int:
    try:
        job_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        print(f"odin: --args is not valid JSON: {exc}", file=sys.stderr)
        return EXIT_USAGE
    body: dict[str, Any] = {"kind": args.kind, "args": job_args}
    optional = {"queue": args.queue, "priority": args.priority, "delay_seconds": args.delay,
                "max_attempts": args.max_attempts}
    body.update({k: v for k, v in optional.items() if v is not None})
    base = args.url.rstrip("/")
    try:
        with httpx.Client(timeout=30) as client:
            answer = client.post(f"{base}/v1/jobs", json=body)
            if answer.status_code != 202:
                print(f"odin: submission rejected: {_problem_text(answer)}", file=sys.stderr)
                return EXIT_USAGE if 400 <= answer.status_code < 500 else EXIT_UNREACHABLE
            job = answer.json()
            print(f"job {job['id']} {job['state']}: {job['url']}", flush=True)
            if not args.wait:
                return EXIT_OK
            return _follow(client, job)
    except httpx.HTTPError as exc:
        print(f"odin: cannot reach {base}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE


def _follow(client: httpx.Client, job: dict[str, Any]) -> int:
    """Print the job's events until its final one, resuming after dropped connections."""
    last_id = ""
    for _ in range(STREAM_RECONNECTS):
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with connect_sse(
                client, "GET", job["events_url"], headers=headers, timeout=httpx.Timeout(30, read=None)
            ) as source:
                for sse in source.iter_sse():
                    if not sse.event or sse.event == "message" and not sse.data:
                        continue  # keep-alive
                    last_id = sse.id or last_id
                    event = json.loads(sse.data)
                    print(_event_line(event), flush=True)
                    if sse.event in {"completed", "failed", "cancelled"}:
                        return {"completed": EXIT_OK, "failed": EXIT_JOB_FAILED}.get(
                            sse.event, EXIT_JOB_CANCELLED
                        )
        except httpx.HTTPError as exc:
            print(f"odin: stream interrupted ({exc}), reconnecting", file=sys.stderr)
        time.sleep(1)
    print("odin: gave up following the job's events", file=sys.stderr)
    return EXIT_UNREACHABLE


def _event_line(event: dict[str, Any]) -> str:
    data = event.get("data", {})
    kind = event["type"]
    if kind == "progress":
        text = f"{data.get('fraction', 0) * 100:5.1f}% {data.get('message', '')}".rstrip()
    elif kind == "log":
        text = f"[{data.get('level', 'info')}] {data.get('message', '')}"
    elif kind == "completed":
        text = f"result: {json.dumps(data.get('result'))}"
    elif kind in {"failed", "retry_scheduled"}:
        text = f"error: {data.get('error')}"
    else:
        text = json.dumps(data) if data else ""
    return f"{event['seq']:>4} {kind:<15} {text}".rstrip()


def _problem_text(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return f"HTTP {answer.status_code}"
    detail = body.get("detail", f"HTTP {answer.status_code}")
    errors = "; ".join(f"{e['field']}: {e['message']}" for e in body.get("errors", []))
    return f"{detail} ({errors})" if errors else detail
