"""The ``odin`` command line.

- ``odin serve`` runs the API, the event streams and the workers in one process.
- ``odin migrate`` applies pending database migrations and exits.
- ``odin submit KIND --args JSON [--wait]`` submits a job to a running Odin and, with
  ``--wait``, follows it until it ends.
- ``odin jobs`` lists jobs, filtered by ``--state``, ``--kind`` and ``--queue``.
- ``odin watch ID`` follows a job's events until it ends.
- ``odin cancel ID`` and ``odin retry ID`` cancel a job or run a finished one again.

The client commands talk to Odin at ``--url`` (default: ``ODIN_URL`` or
http://127.0.0.1:8000) through ``odin_ext.client``, with the API key of ``--api-key`` or
``ODIN_API_KEY`` when the server requires one. With ``--json`` they print JSON: the job,
the page of jobs, or one event per line for ``watch``. Otherwise a followed job shows a
progress bar and live messages when stdout is a terminal, and one line per event when not.

Exit statuses: 0 success, 1 the job failed, 2 bad usage or settings, or Odin rejected the
request (invalid arguments, unknown job, a job in the wrong state), 3 the job was cancelled,
4 Odin could not be reached or returned a server error, 5 ``--timeout`` passed before
the job ended, 130 interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

from quart import Quart

from odin_ext.client import Client, Event, OdinError, WaitTimeout
from odin_ext.jobs import JobState
from odin_ext.logs import configure_logging
from odin_ext.settings import Settings, SettingsError, load_settings

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_JOB_CANCELLED = 3
EXIT_UNREACHABLE = 4
EXIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130

DEFAULT_URL = "http://127.0.0.1:8000"
LIST_LIMIT_DEFAULT = 20

# Exit status of a job that ended in each final state.
OUTCOME_EXIT_STATUS = {
    JobState.COMPLETED.value: EXIT_OK,
    JobState.FAILED.value: EXIT_JOB_FAILED,
    JobState.CANCELLED.value: EXIT_JOB_CANCELLED,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="odin", description="Odin, a PostgreSQL job service.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP API, event streams and workers")
    serve.add_argument("--host", help="address to bind (default: ODIN_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: ODIN_PORT or 8000)")

    commands.add_parser("migrate", help="apply pending database migrations and exit")

    client_options = argparse.ArgumentParser(add_help=False)
    client_options.add_argument(
        "--url",
        default=os.environ.get("ODIN_URL", DEFAULT_URL),
        help=f"Odin's base URL (default: ODIN_URL or {DEFAULT_URL})",
    )
    client_options.add_argument(
        "--api-key",
        default=os.environ.get("ODIN_API_KEY"),
        help="API key for a server that requires one (default: ODIN_API_KEY; prefer the "
        "variable, which keeps the key out of the process list)",
    )
    client_options.add_argument("--json", action="store_true", help="print JSON")

    submit = commands.add_parser(
        "submit", parents=[client_options], help="submit a job to a running Odin"
    )
    submit.add_argument("kind", help="job kind, for example countdown")
    submit.add_argument("--args", default="{}", help="job arguments as a JSON object")
    submit.add_argument("--queue", help="queue (default: the kind's queue)")
    submit.add_argument("--priority", type=int, help="priority from -100 to 100; higher runs first")
    submit.add_argument("--delay", type=float, help="seconds to wait before the job may run")
    submit.add_argument("--max-attempts", type=int, help="attempts before the job fails")
    submit.add_argument("--wait", action="store_true", help="follow the job until it ends")
    _add_timeout(submit)

    jobs = commands.add_parser("jobs", parents=[client_options], help="list jobs, newest first")
    jobs.add_argument(
        "--state", choices=[state.value for state in JobState], help="only jobs in this state"
    )
    jobs.add_argument("--kind", help="only jobs of this kind")
    jobs.add_argument("--queue", help="only jobs in this queue")
    jobs.add_argument(
        "--limit",
        type=int,
        default=LIST_LIMIT_DEFAULT,
        help=f"maximum number of jobs to list, 1 to 500 (default: {LIST_LIMIT_DEFAULT})",
    )
    jobs.add_argument("--cursor", help="list the page after this cursor, printed under a full page")

    watch = commands.add_parser(
        "watch", parents=[client_options], help="follow a job's events until it ends"
    )
    watch.add_argument("job_id", type=int, metavar="ID", help="job id")
    watch.add_argument(
        "--after",
        type=int,
        default=0,
        help="start after this event id (default: 0, from the start)",
    )
    _add_timeout(watch)

    cancel = commands.add_parser("cancel", parents=[client_options], help="cancel a job")
    cancel.add_argument("job_id", type=int, metavar="ID", help="job id")

    retry = commands.add_parser(
        "retry", parents=[client_options], help="queue a failed or cancelled job again"
    )
    retry.add_argument("job_id", type=int, metavar="ID", help="job id")
    return parser


def _add_timeout(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="stop following after this many seconds, with exit status 5 (default: no limit)",
    )


def run(argv: list[str] | None, create_app: Callable[[Settings], Quart]) -> int:
    args = build_parser().parse_args(argv)
    if args.command in CLIENT_COMMANDS:
        return _run_client_command(args)
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


# Server commands --------------------------------------------------------------------------


def _serve(settings: Settings, create_app: Callable[[Settings], Quart]) -> int:
    from odin_ext.server import serve

    problem = _port_problem(settings)
    if problem is not None:
        print(f"odin: {problem}", file=sys.stderr)
        return EXIT_USAGE
    app = create_app(settings)
    try:
        asyncio.run(serve(app, settings))
    except Exception as exc:
        cause = _embedded_failure(exc)
        if cause is None:
            raise
        print(f"odin: cannot start the embedded database: {cause}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return EXIT_OK


def _port_problem(settings: Settings) -> str | None:
    """Return why the HTTP port cannot be bound, checked before any worker starts."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((settings.host.strip("[]"), settings.port))
        except OSError as exc:
            return (
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}; "
                "stop the other server or choose another port with ODIN_PORT"
            )
    return None


def _embedded_failure(exc: BaseException) -> BaseException | None:
    # Hypercorn wraps start-up errors; the embedded server's own message is the useful one.
    from odin_ext.embedded import EmbeddedPostgresError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, EmbeddedPostgresError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


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


# Client commands --------------------------------------------------------------------------


def _run_client_command(args: argparse.Namespace) -> int:
    """Run a client command; turn its errors into a message on stderr and an exit status."""
    output = sys.stdout
    try:
        with Client(args.url, api_key=args.api_key) as client:
            return CLIENT_COMMANDS[args.command](client, args, output)
    except _UsageError as exc:
        print(f"odin: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        # Arguments that the client rejects before sending, such as a job id below 1.
        print(f"odin: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OdinError as exc:
        print(f"odin: {exc}", file=sys.stderr)
        return _error_exit_status(exc)
    except KeyboardInterrupt:
        print("odin: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


class _UsageError(Exception):
    """A command-line argument that is invalid before anything is sent."""


def _error_exit_status(error: OdinError) -> int:
    if isinstance(error, WaitTimeout):
        return EXIT_TIMEOUT
    if error.status is not None and 400 <= error.status < 500:
        return EXIT_USAGE
    return EXIT_UNREACHABLE


def _submit(client: Client, args: argparse.Namespace, output: TextIO) -> int:
    try:
        job_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise _UsageError(f"--args is not valid JSON: {exc}") from None
    if not isinstance(job_args, dict):
        raise _UsageError(f"--args must be a JSON object, got {args.args[:40]!r}")

    job = client.submit(
        args.kind,
        job_args,
        queue=args.queue,
        priority=args.priority,
        delay_seconds=args.delay,
        max_attempts=args.max_attempts,
    )
    if args.json and args.wait:
        job = client.wait(job["id"], args.timeout)
        _print_json(job, output)
        return OUTCOME_EXIT_STATUS[job["state"]]
    if args.json:
        _print_json(job, output)
        return EXIT_OK

    print(f"job {job['id']} {job['state']}: {job['url']}", file=output, flush=True)
    if not args.wait:
        return EXIT_OK
    return _follow(client, job["id"], 0, args.timeout, _display_for(output))


def _watch(client: Client, args: argparse.Namespace, output: TextIO) -> int:
    display: _Display = _JsonLines(output) if args.json else _display_for(output)
    return _follow(client, args.job_id, args.after, args.timeout, display)


def _jobs(client: Client, args: argparse.Namespace, output: TextIO) -> int:
    page = client.list(
        state=args.state, kind=args.kind, queue=args.queue, limit=args.limit, cursor=args.cursor
    )
    if args.json:
        _print_json({"jobs": page.jobs, "next_cursor": page.next_cursor}, output)
        return EXIT_OK

    if not page.jobs:
        print("no jobs match", file=output)
        return EXIT_OK
    _print_table(page.jobs, output)
    if page.next_cursor is not None:
        print(f"more jobs: add --cursor {page.next_cursor}", file=sys.stderr)
    return EXIT_OK


def _cancel(client: Client, args: argparse.Namespace, output: TextIO) -> int:
    return _print_job_change(client.cancel(args.job_id), args.json, output)


def _retry(client: Client, args: argparse.Namespace, output: TextIO) -> int:
    return _print_job_change(client.retry(args.job_id), args.json, output)


CLIENT_COMMANDS: dict[str, Callable[[Client, argparse.Namespace, TextIO], int]] = {
    "submit": _submit,
    "jobs": _jobs,
    "watch": _watch,
    "cancel": _cancel,
    "retry": _retry,
}


def _follow(
    client: Client, job_id: int, after: int, timeout_seconds: float | None, display: _Display
) -> int:
    """Show the job's events until it ends; return the exit status of its outcome.

    A stream ends at the job's next final event. When the job was retried after that event,
    its later events come from another stream.
    """
    started_at = time.monotonic()
    try:
        while True:
            final = _show_stream(
                client, job_id, after, _remaining(timeout_seconds, started_at), display
            )
            if client.get(job_id)["last_event_id"] <= final.seq:
                return OUTCOME_EXIT_STATUS[final.type]
            after = final.seq
    except WaitTimeout as exc:
        # Report the whole wait, not the part left for the last stream.
        raise WaitTimeout(job_id, timeout_seconds or 0.0, exc.last_event) from None
    finally:
        display.close()


def _show_stream(
    client: Client, job_id: int, after: int, timeout_seconds: float | None, display: _Display
) -> Event:
    """Show the events after ``after`` up to the next final one, and return that one."""
    for event in client.events(job_id, after, timeout_seconds=timeout_seconds):
        display.show(event)
        if event.is_final:
            return event
    # client.events ends only after a final event; every other ending raises.
    raise OdinError(f"the event stream of job {job_id} ended before the job did")


def _remaining(timeout_seconds: float | None, started_at: float) -> float | None:
    if timeout_seconds is None:
        return None
    return max(0.0, timeout_seconds - (time.monotonic() - started_at))


def _print_job_change(job: dict[str, Any], as_json: bool, output: TextIO) -> int:
    if as_json:
        _print_json(job, output)
    else:
        print(f"job {job['id']} {job['state']}", file=output)
    return EXIT_OK


def _print_json(document: Any, output: TextIO) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False), file=output, flush=True)


def _print_table(jobs: list[dict[str, Any]], output: TextIO) -> None:
    header = ("ID", "STATE", "KIND", "QUEUE", "ATTEMPT", "PROGRESS", "CREATED")
    rows = [header] + [
        (
            str(job["id"]),
            job["state"],
            job["kind"],
            job["queue"],
            f"{job['attempt']}/{job['max_attempts']}",
            _percent(job["progress"]),
            _local_time(job["created_at"]),
        )
        for job in jobs
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=output
        )


def _percent(progress: dict[str, Any] | None) -> str:
    if not progress or progress.get("fraction") is None:
        return ""
    return f"{progress['fraction'] * 100:.0f}%"


def _local_time(iso_time: str) -> str:
    return datetime.fromisoformat(iso_time).astimezone().strftime("%Y-%m-%d %H:%M:%S")


# Displays of a followed job ---------------------------------------------------------------


class _Display:
    """Shows the events of a followed job."""

    def show(self, event: Event) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finish the output, also when following stopped with an error."""


class _EventLines(_Display):
    """One plain line per event, for pipes, files and logs."""

    def __init__(self, output: TextIO) -> None:
        self._output = output

    def show(self, event: Event) -> None:
        print(_event_line(event), file=self._output, flush=True)


class _JsonLines(_Display):
    """One JSON object per event and line (``--json``)."""

    def __init__(self, output: TextIO) -> None:
        self._output = output

    def show(self, event: Event) -> None:
        line = json.dumps(event.to_json(), separators=(",", ":"), ensure_ascii=False)
        print(line, file=self._output, flush=True)


class _ProgressBar(_Display):
    """A progress bar on the terminal's last line, with the other events printed above it."""

    def __init__(self, output: TextIO) -> None:
        self._output = output
        self._fraction = 0.0
        self._message = ""
        self._state = "waiting"
        self._drawn = False
        unicode = (getattr(output, "encoding", None) or "").lower().replace("-", "") == "utf8"
        self._marks = ("█", "░") if unicode else ("#", "-")

    def show(self, event: Event) -> None:
        self._clear()
        if event.type == "progress":
            self._fraction = _clamp(event.data.get("fraction"), self._fraction)
            self._message = str(event.data.get("message") or "")
        else:
            self._show_line(event)
        if not event.is_final:
            self._draw()
        self._output.flush()

    def _show_line(self, event: Event) -> None:
        if event.type != "log":
            self._state = event.type
        if event.type == "completed":
            self._fraction = 1.0
        if event.is_final:
            # The bar stays on screen in its final form, above the outcome.
            self._draw()
            self._output.write("\n")
            self._drawn = False
        print(_event_line(event, with_seq=False), file=self._output)

    def close(self) -> None:
        self._clear()
        self._output.flush()

    def _draw(self) -> None:
        columns = shutil.get_terminal_size().columns
        width = max(10, min(40, columns // 3))
        filled = round(self._fraction * width)
        bar = self._marks[0] * filled + self._marks[1] * (width - filled)
        line = f"{bar} {self._fraction * 100:3.0f}%  {self._state}  {self._message}"
        self._output.write(line[: columns - 1])
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self._output.write("\r\x1b[K")
            self._drawn = False


def _display_for(output: TextIO) -> _Display:
    is_terminal = output.isatty() and os.environ.get("TERM") != "dumb"
    return _ProgressBar(output) if is_terminal else _EventLines(output)


def _clamp(value: Any, fallback: float) -> float:
    if not isinstance(value, int | float):
        return fallback
    return min(1.0, max(0.0, float(value)))


def _event_line(event: Event, *, with_seq: bool = True) -> str:
    data = event.data
    match event.type:
        case "progress":
            text = f"{_clamp(data.get('fraction'), 0.0) * 100:5.1f}% {data.get('message') or ''}"
        case "log":
            text = f"[{data.get('level', 'info')}] {data.get('message', '')}"
        case "completed":
            text = f"result: {json.dumps(data.get('result'), ensure_ascii=False)}"
        case "failed" | "retry_scheduled":
            text = f"error: {data.get('error')}"
        case "running":
            text = f"attempt {data.get('attempt')} by {data.get('owner')}"
        case _:
            text = json.dumps(data, ensure_ascii=False) if data else ""
    prefix = f"{event.seq:>4} " if with_seq else ""
    return f"{prefix}{event.type:<15} {text}".rstrip()
