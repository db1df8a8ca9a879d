"""PgQueuer and Procrastinate, driven through their documented APIs for ``bench.compare``.

Each library gets the work Odin gets in the comparison: no-op jobs inserted in bulk, a
worker that drains them, and enqueueing one job per call and 1,000 per call.

- PgQueuer (``pip install pgqueuer``): ``Queries.install`` creates its tables,
  ``Queries.enqueue`` inserts (a list inserts in one statement), and a ``QueueManager`` on
  those ``Queries``, with an ``entrypoint``, runs them with ``run(batch_size=..., mode=drain)``, which returns once
  the queue is empty. It uses asyncpg, its documented driver.
- Procrastinate (``pip install procrastinate``): ``App`` with a ``PsycopgConnector``,
  ``schema_manager.apply_schema_async`` creates its tables, ``Task.defer_async`` and
  ``Task.batch_defer_async`` insert, and ``run_worker_async(concurrency=..., wait=False)``
  returns once no job is left.

A drain is timed from each library's own record of job status changes, like Odin's: from
the first claim to the last success in ``pgqueuer_log`` (statuses ``picked`` and
``successful``) or ``procrastinate_events`` (types ``started`` and ``succeeded``).

Workers run as separate processes, so that two PgQueuer workers really use two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg

from odin_ext.embedded import make_death_signal_preexec

BULK_CHUNK = 1000
WORKER_STOP_SECONDS = 10.0

PGQUEUER_DRAIN_SQL = (
    "SELECT count(*) FILTER (WHERE status = 'successful'),"
    " extract(epoch FROM max(created) FILTER (WHERE status = 'successful')"
    " - min(created) FILTER (WHERE status = 'picked'))"
    " FROM pgqueuer_log"
)
PROCRASTINATE_DRAIN_SQL = (
    "SELECT count(*) FILTER (WHERE type = 'succeeded'),"
    " extract(epoch FROM max(at) FILTER (WHERE type = 'succeeded')"
    " - min(at) FILTER (WHERE type = 'started'))"
    " FROM procrastinate_events"
)


# PgQueuer -----------------------------------------------------------------------------------


async def pgqueuer_install(url: str) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    connection = await asyncpg.connect(url)
    try:
        await Queries(AsyncpgDriver(connection)).install()
    finally:
        await connection.close()


PGQUEUER_TABLES = "pgqueuer, pgqueuer_log, pgqueuer_statistics"


async def pgqueuer_insert(url: str, count: int) -> None:
    """Insert ``count`` no-op jobs with one ``Queries.enqueue`` call (one statement)."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    connection = await asyncpg.connect(url)
    try:
        await Queries(AsyncpgDriver(connection)).enqueue(
            ["noop"] * count, [None] * count, [0] * count
        )
    finally:
        await connection.close()


async def pgqueuer_worker(url: str, batch_size: int) -> None:
    """Run one PgQueuer worker until the queue is empty."""
    import asyncpg
    from pgqueuer import Job, Queries, QueueManager
    from pgqueuer.types import QueueExecutionMode

    connection = await asyncpg.connect(url)
    manager = QueueManager(Queries.from_asyncpg_connection(connection))

    @manager.entrypoint("noop")
    async def noop(job: Job) -> None:
        return None

    await manager.run(batch_size=batch_size, mode=QueueExecutionMode.drain)


async def pgqueuer_enqueuer(
    url: str, per_call: int
) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[object]]]:
    """Return a function that enqueues ``per_call`` no-op jobs, and one that closes it."""
    import asyncpg
    from pgqueuer import Queries

    connection = await asyncpg.connect(url)
    queries = Queries.from_asyncpg_connection(connection)
    if per_call == 1:
        return (lambda: queries.enqueue("noop", None)), connection.close
    names, payloads, priorities = ["noop"] * per_call, [None] * per_call, [0] * per_call
    return (lambda: queries.enqueue(names, payloads, priorities)), connection.close


# Procrastinate ------------------------------------------------------------------------------


def procrastinate_app(url: str, pool_size: int) -> Any:
    import procrastinate

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=url, min_size=1, max_size=pool_size
        )
    )

    @app.task(name="noop")
    async def noop() -> None:
        return None

    return app


async def procrastinate_install(url: str) -> None:
    app = procrastinate_app(url, 2)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


PROCRASTINATE_TABLES = "procrastinate_jobs, procrastinate_events, procrastinate_periodic_defers"


async def procrastinate_insert(url: str, count: int) -> None:
    """Insert ``count`` no-op jobs with ``batch_defer_async``, 1,000 per call."""
    app = procrastinate_app(url, 2)
    async with app.open_async():
        task = app.tasks["noop"]
        for start in range(0, count, BULK_CHUNK):
            await task.batch_defer_async(*([{}] * min(BULK_CHUNK, count - start)))


async def procrastinate_worker(url: str, concurrency: int) -> None:
    """Run one Procrastinate worker until no job is left."""
    # One connection per concurrent job, plus the listener's and the worker's own.
    app = procrastinate_app(url, concurrency + 4)
    async with app.open_async():
        await app.run_worker_async(
            concurrency=concurrency, wait=False, install_signal_handlers=False
        )


async def procrastinate_enqueuer(
    url: str, per_call: int
) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[object]]]:
    """Return a function that enqueues ``per_call`` no-op jobs, and one that closes it."""
    app = procrastinate_app(url, 1)
    await app.open_async()
    task = app.tasks["noop"]
    if per_call == 1:
        return task.defer_async, app.close_async
    arguments = [{}] * per_call
    return (lambda: task.batch_defer_async(*arguments)), app.close_async


# Worker processes ---------------------------------------------------------------------------


def start_workers(command: list[str], count: int, log_path: Path) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` worker processes, each running ``main(command)`` of this module."""
    # Imported rather than run as __main__: Procrastinate warns about an App defined in the
    # main module, because workers could not import its tasks by name.
    launcher = "import sys; from bench.alternatives import main; sys.exit(main(sys.argv[1:]))"
    processes = []
    with log_path.open("ab") as log:
        for _ in range(count):
            processes.append(subprocess.Popen(
                [sys.executable, "-c", launcher, *command],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=make_death_signal_preexec(signal.SIGTERM),
            ))
    return processes


async def wait_for_workers(processes: list[subprocess.Popen[bytes]], timeout_seconds: float) -> float:
    """Wait until every worker exits; return the wall seconds. Stop them all on timeout."""
    started = time.monotonic()
    try:
        while any(process.poll() is None for process in processes):
            if time.monotonic() - started > timeout_seconds:
                raise TimeoutError(f"workers still running after {timeout_seconds:.0f} s")
            await asyncio.sleep(0.1)
    finally:
        stop_workers(processes)
    failed = [process.returncode for process in processes if process.returncode not in (0, None)]
    if failed:
        raise RuntimeError(f"worker processes exited with codes {failed}")
    return time.monotonic() - started


def stop_workers(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each worker still running, by PID, and SIGKILL it if it does not exit."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(WORKER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def drain_figures(url: str, query: str) -> tuple[int, float]:
    """Return the jobs completed and the first-claim-to-last-success seconds."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(query)
        row = await cursor.fetchone()
    if row is None or row[1] is None:
        return 0, 0.0
    return int(row[0]), float(row[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.alternatives")
    commands = parser.add_subparsers(dest="command", required=True)
    pgqueuer = commands.add_parser("pgqueuer-worker", help="drain PgQueuer's queue")
    pgqueuer.add_argument("--url", required=True)
    pgqueuer.add_argument("--batch-size", type=int, required=True)
    procrastinate = commands.add_parser("procrastinate-worker", help="drain Procrastinate's queue")
    procrastinate.add_argument("--url", required=True)
    procrastinate.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "pgqueuer-worker":
        asyncio.run(pgqueuer_worker(args.url, args.batch_size))
    else:
        asyncio.run(procrastinate_worker(args.url, args.concurrency))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
