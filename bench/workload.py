"""Workloads shared by the scripts: enqueue loops, no-op backlogs and timing their drain.

A drain is timed from the database, the same way for every system compared: from the first
claim to the last completion that the system itself recorded (for Odin, the first
``running`` and the last ``completed`` event). Event times are ``now()`` of the writing
transaction, so the figure leaves out process start-up and the wait for the last commit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row

from psycopg_pool import AsyncConnectionPool

from bench.postgres import ODIN_TABLES, settle_tables, truncate_tables
from bench.replica import OdinReplica, Replicas
from bench.report import Report
from odin_ext.db import create_pool
from odin_ext.enqueue import enqueue
from odin_ext.kinds import Registry
from odin_ext.queries import QUERIES
from odin_ext.settings import load_settings
from odin_ext.store import JobStore, NewJob, enqueue_params
from odin_ext.submissions import build_job

POLL_SECONDS = 0.25
PROGRESS_SECONDS = 2.0


async def measure_enqueue_rate(
    callers: list[Callable[[], Awaitable[object]]],
    jobs_per_call: int,
    *,
    seconds: float,
    max_jobs: int,
) -> float:
    """Call every caller in a loop of its own for ``seconds``; return jobs enqueued per second.

    Each caller enqueues ``jobs_per_call`` jobs per call and owns its connection, so the
    callers run side by side. The loops also stop once ``max_jobs`` jobs were enqueued.
    """
    enqueued = 0
    started = time.monotonic()
    deadline = started + seconds

    async def loop(call: Callable[[], Awaitable[object]]) -> None:
        nonlocal enqueued
        while time.monotonic() < deadline and enqueued < max_jobs:
            await call()
            enqueued += jobs_per_call

    await asyncio.gather(*(loop(call) for call in callers))
    return enqueued / (time.monotonic() - started)


def noop_jobs(count: int, *, queue: str | None = None) -> list[NewJob]:
    """Return ``count`` validated submissions of the built-in ``noop`` kind."""
    noop = Registry.from_modules([]).get("noop")
    job = build_job(noop, {}, default_max_attempts=3, max_args_bytes=262_144, queue=queue)
    return [job] * count


async def insert_noop_jobs(url: str, count: int) -> None:
    """Insert ``count`` queued no-op jobs, with their ``queued`` events, in one statement."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(QUERIES["job_enqueue"], enqueue_params(noop_jobs(count)))


@dataclass(frozen=True)
class Drain:
    """Figures of one drain: jobs completed and the interval the database recorded."""

    completed: int
    first_claim_to_last_completion_seconds: float
    wall_seconds: float

    @property
    def jobs_per_second(self) -> float:
        return self.completed / max(self.first_claim_to_last_completion_seconds, 1e-6)

    def as_dict(self) -> dict[str, float]:
        return {
            "completed": self.completed,
            "db_seconds": round(self.first_claim_to_last_completion_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "jobs_per_second": round(self.jobs_per_second, 1),
        }


async def wait_until_drained(
    url: str, total: int, report: Report, *, timeout_seconds: float, label: str
) -> Drain:
    """Wait until ``total`` jobs are completed or ``timeout_seconds`` pass; time the drain.

    Raises ``TimeoutError`` when the jobs are not all completed in time.
    """
    started = time.monotonic()
    last_progress = started
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            cursor = await conn.execute(
                "SELECT count(*) FROM odin.jobs WHERE state = 'completed'"
            )
            row = await cursor.fetchone()
            done = int(row[0]) if row else 0
            now = time.monotonic()
            if done >= total:
                break
            if now - started > timeout_seconds:
                raise TimeoutError(
                    f"{label}: only {done} of {total} jobs completed after {timeout_seconds:.0f} s"
                )
            if now - last_progress >= PROGRESS_SECONDS:
                report.progress(f"{label}: {done:,}/{total:,} completed")
                last_progress = now
            await asyncio.sleep(POLL_SECONDS)
        wall = time.monotonic() - started
        seconds = await odin_drain_seconds(conn)
    return Drain(done, seconds, wall)


async def odin_drain_seconds(conn: psycopg.AsyncConnection) -> float:
    """Return the seconds from the first ``running`` event to the last ``completed`` one."""
    cursor = await conn.execute(
        "SELECT extract(epoch FROM"
        " max(created_at) FILTER (WHERE type = 'completed')"
        " - min(created_at) FILTER (WHERE type = 'running'))"
        " FROM odin.job_events"
    )
    row = await cursor.fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0


async def database_counters(url: str) -> dict[str, int]:
    """Return the commit counter of the database, to count commits over a run."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True, row_factory=dict_row) as conn:
        cursor = await conn.execute(
            "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated"
            " FROM pg_stat_database WHERE datname = current_database()"
        )
        row = await cursor.fetchone()
    return {key: int(value) for key, value in (row or {}).items()}


class OdinEnqueuers:
    """Callers that enqueue no-op jobs from Python, each on a connection of its own.

    One job per call uses ``odin_ext.enqueue.enqueue`` on an autocommit psycopg connection,
    as application code that enqueues outside a transaction does. Many jobs per call use
    ``JobStore.enqueue``, which inserts them with one statement. Close with ``close()``.
    """

    def __init__(self, url: str, jobs_per_call: int, count: int) -> None:
        self.url = url
        self.jobs_per_call = jobs_per_call
        self.count = count
        self._connections: list[psycopg.AsyncConnection] = []
        self._pools: list[AsyncConnectionPool] = []

    async def open(self) -> list[Callable[[], Awaitable[object]]]:
        if self.jobs_per_call == 1:
            return [await self._single_caller() for _ in range(self.count)]
        return [await self._bulk_caller() for _ in range(self.count)]

    async def _single_caller(self) -> Callable[[], Awaitable[object]]:
        noop = Registry.from_modules([]).get("noop")
        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        self._connections.append(conn)
        return lambda: enqueue(conn, noop, {})

    async def _bulk_caller(self) -> Callable[[], Awaitable[object]]:
        settings = load_settings(database_url=self.url, pool_min_size=1, pool_max_size=1)
        pool = create_pool(settings, self.url)
        await pool.open(wait=True)
        self._pools.append(pool)
        store = JobStore(pool)
        jobs = noop_jobs(self.jobs_per_call)
        return lambda: store.enqueue(jobs)

    async def close(self) -> None:
        for conn in self._connections:
            await conn.close()
        for pool in self._pools:
            await pool.close()


async def set_queue_paused(url: str, queue: str, paused: bool) -> None:
    """Pause or resume ``queue`` with Odin's own query; resuming wakes every replica."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(QUERIES["queue_pause" if paused else "queue_resume"], {"queue": queue})


async def drain_backlog(
    url: str,
    jobs: int,
    replicas: list[OdinReplica],
    report: Report,
    *,
    timeout_seconds: float,
    label: str,
    during: Callable[[list[OdinReplica]], Awaitable[object]] | None = None,
) -> dict[str, float]:
    """Insert ``jobs`` no-op jobs, let ``replicas`` drain them, and return the figures.

    The queue stays paused until every replica is ready, so all of them start together and
    no start-up time is counted. ``during``, when given, runs beside the drain (a profiler,
    for example). Commits per job come from ``pg_stat_database`` once the replicas stopped,
    and include their start-up and shutdown queries, a few dozen commits in all.
    """
    truncate_tables(url, ODIN_TABLES)
    await set_queue_paused(url, "default", True)
    await insert_noop_jobs(url, jobs)
    settle_tables(url, ODIN_TABLES)
    before = await database_counters(url)
    with Replicas(replicas):
        await set_queue_paused(url, "default", False)
        waiting = wait_until_drained(url, jobs, report, timeout_seconds=timeout_seconds, label=label)
        if during is None:
            drain = await waiting
        else:
            drain, _ = await asyncio.gather(waiting, during(replicas))
    after = await database_counters(url)
    figures = drain.as_dict()
    figures["commits_per_job"] = round((after["xact_commit"] - before["xact_commit"]) / jobs, 3)
    return figures
