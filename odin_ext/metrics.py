"""Prometheus metrics, served at ``GET /metrics`` in the Prometheus text format.

Two sources feed a scrape:

- Values read when the scrape arrives. The ``metrics_jobs`` and ``metrics_queues`` queries
  give active jobs by queue and state, due jobs, the age of the oldest due job per queue, and
  paused queues. The runtime gives this process's stream subscribers, database pool use,
  leadership, rescues and running jobs.
- Values observed as things happen in this process: attempt durations, start delays and
  rejected requests. Like every ``prometheus_client`` metric they are process-wide, so two
  apps in one process share them. Each replica reports its own; sum them in Prometheus.

A scrape that cannot reach the database within ``DATABASE_TIMEOUT_SECONDS`` still answers,
with ``odin_metrics_database_up 0`` and without the job gauges.

Limitations:
- Finished jobs are not counted at scrape time, because counting them would read every job
  kept for retention. Count outcomes with ``odin_job_attempt_duration_seconds_count``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg.rows import dict_row
from psycopg_pool import PoolTimeout
from quart import Blueprint, Response, current_app

from odin_ext.jobs import Job
from odin_ext.queries import QUERIES

if TYPE_CHECKING:
    from odin_ext.runtime import Runtime

logger = logging.getLogger(__name__)

DATABASE_TIMEOUT_SECONDS = 2.0

metrics = Blueprint("odin_metrics", __name__)

ATTEMPT_DURATION = Histogram(
    "odin_job_attempt_duration_seconds",
    "Duration of job attempts run by this process, by kind and outcome (completed, failed, "
    "retry_scheduled, interrupted, lost).",
    ["kind", "outcome"],
    buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
    registry=None,
)
START_DELAY = Histogram(
    "odin_job_start_delay_seconds",
    "Time from when a job became due (submitted, or scheduled to run) to the start of its "
    "attempt in this process, by kind and queue.",
    ["kind", "queue"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
    registry=None,
)
REJECTIONS = Counter(
    "odin_http_rejections",
    "Requests rejected by authentication, authorization or a limit, by reason.",
    ["reason"],
    registry=None,
)
_PROCESS_COLLECTORS: list[Collector] = [
    ProcessCollector(registry=None),
    PlatformCollector(registry=None),
]


def observe_attempt(duration_seconds: float, kind: str, outcome: str) -> None:
    """Record one finished attempt; ``outcome`` is the event type it ended with, or ``lost``."""
    ATTEMPT_DURATION.labels(kind=kind, outcome=outcome).observe(max(0.0, duration_seconds))


def observe_job_started(job: Job) -> None:
    """Record how long a just-claimed job waited between becoming due and its attempt start."""
    if job.attempted_at is None:
        return
    delay = (job.attempted_at - job.scheduled_at).total_seconds()
    START_DELAY.labels(kind=job.kind, queue=job.queue).observe(max(0.0, delay))


def count_rejection(reason: str) -> None:
    """Count one rejected request, for example ``invalid_key`` or ``stream_limit``."""
    REJECTIONS.labels(reason=reason).inc()


@metrics.get("/metrics")
async def serve_metrics() -> Response:
    runtime: Runtime = current_app.extensions["odin"]
    snapshot = await read_job_snapshot(runtime)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ScrapeCollector(runtime, snapshot))
    return Response(generate_latest(registry), status=200, content_type=CONTENT_TYPE_LATEST)


@dataclass
class QueueSnapshot:
    """Values that one scrape read about one queue."""

    jobs_by_state: dict[str, int] = field(default_factory=dict)
    due_jobs: int = 0
    oldest_due_seconds: float = 0.0
    paused: bool = False


@dataclass
class JobSnapshot:
    """Values that one scrape read from the database; ``database_up`` False means none."""

    database_up: bool
    queues: dict[str, QueueSnapshot] = field(default_factory=dict)


async def read_job_snapshot(runtime: Runtime) -> JobSnapshot:
    """Read active job counts and paused queues; give up after ``DATABASE_TIMEOUT_SECONDS``.

    Queues this process works on are always present, so their gauges read 0 rather than
    disappear when they are empty.
    """
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT_SECONDS):
            async with (
                runtime.store.pool.connection() as conn,
                conn.cursor(row_factory=dict_row) as cursor,
            ):
                await cursor.execute(QUERIES["metrics_jobs"])
                job_rows = await cursor.fetchall()
                await cursor.execute(QUERIES["metrics_queues"])
                queue_rows = await cursor.fetchall()
    except (psycopg.Error, PoolTimeout, TimeoutError, OSError) as exc:
        logger.warning(
            "metrics could not read the database",
            extra={"event": "metrics_database_failed", "error": repr(exc)},
        )
        return JobSnapshot(database_up=False)

    snapshot = JobSnapshot(database_up=True)
    queues = snapshot.queues
    for name in runtime.settings.queues:
        queues[name] = QueueSnapshot()
    for row in job_rows:
        queue = queues.setdefault(row["queue"], QueueSnapshot())
        queue.jobs_by_state[row["state"]] = row["jobs"]
        queue.due_jobs += row["due_jobs"]
        if row["oldest_due_seconds"] is not None:
            queue.oldest_due_seconds = max(queue.oldest_due_seconds, row["oldest_due_seconds"])
    for row in queue_rows:
        queues.setdefault(row["name"], QueueSnapshot()).paused = row["paused"]
    return snapshot


class _ScrapeCollector(Collector):
    """One scrape's metrics: the snapshot, the runtime's live values and the observations."""

    def __init__(self, runtime: Runtime, snapshot: JobSnapshot) -> None:
        self._runtime = runtime
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from _job_families(self._snapshot)
        yield from _process_families(self._runtime)
        for observed in (ATTEMPT_DURATION, START_DELAY, REJECTIONS, *_PROCESS_COLLECTORS):
            yield from observed.collect()


def _job_families(snapshot: JobSnapshot) -> Iterable[Metric]:
    up = GaugeMetricFamily(
        "odin_metrics_database_up",
        "1 when this scrape read job counts from the database, 0 when it could not.",
    )
    up.add_metric([], 1 if snapshot.database_up else 0)
    yield up
    if not snapshot.database_up:
        return

    jobs = GaugeMetricFamily(
        "odin_jobs",
        "Jobs in an active state (scheduled, queued, running), by queue and state.",
        labels=["queue", "state"],
    )
    due = GaugeMetricFamily(
        "odin_queue_due_jobs",
        "Jobs due to run and not yet claimed: queued, or scheduled for a time that has passed.",
        labels=["queue"],
    )
    oldest = GaugeMetricFamily(
        "odin_queue_oldest_due_job_age_seconds",
        "How long the oldest unclaimed due job of the queue has been due; 0 when none is.",
        labels=["queue"],
    )
    paused = GaugeMetricFamily(
        "odin_queue_paused", "1 when the queue is paused for every replica.", labels=["queue"]
    )
    for name, queue in sorted(snapshot.queues.items()):
        for state in ("scheduled", "queued", "running"):
            jobs.add_metric([name, state], queue.jobs_by_state.get(state, 0))
        due.add_metric([name], queue.due_jobs)
        oldest.add_metric([name], queue.oldest_due_seconds)
        paused.add_metric([name], 1 if queue.paused else 0)
    yield from (jobs, due, oldest, paused)


def _process_families(runtime: Runtime) -> Iterable[Metric]:
    settings = runtime.settings
    info = GaugeMetricFamily(
        "odin_process_info",
        "Always 1; the labels identify this process (its owner identity, as in its logs) "
        "and its roles.",
        labels=["owner", "serve_api", "run_workers"],
    )
    info.add_metric(
        [runtime.owner, str(settings.serve_api).lower(), str(settings.run_workers).lower()], 1
    )
    yield info

    leader = runtime.leader
    is_leader = GaugeMetricFamily(
        "odin_leader", "1 while this process is the leader that runs rescues, cron and pruning."
    )
    is_leader.add_metric([], 1 if leader is not None and leader.is_leader else 0)
    yield is_leader
    rescued = CounterMetricFamily(
        "odin_rescued_jobs", "Jobs of dead workers that this process rescued as leader."
    )
    rescued.add_metric([], leader.rescued_count if leader is not None else 0)
    yield rescued

    if runtime.broker is not None:
        subscribers = GaugeMetricFamily(
            "odin_stream_subscribers", "Event streams following a job on this process."
        )
        subscribers.add_metric([], runtime.broker.subscriber_count)
        yield subscribers

    if runtime.workers is not None:
        running = GaugeMetricFamily("odin_worker_running_jobs", "Jobs running in this process.")
        running.add_metric([], runtime.workers.running_count)
        yield running
        slots = GaugeMetricFamily(
            "odin_worker_concurrency",
            "Most jobs this process runs at once (ODIN_WORKER_CONCURRENCY).",
        )
        slots.add_metric([], settings.worker_concurrency)
        yield slots

    if runtime.pool is not None:
        yield from _pool_families(runtime.pool.get_stats())


def _pool_families(stats: dict[str, Any]) -> Iterable[Metric]:
    size = stats.get("pool_size", 0)
    available = stats.get("pool_available", 0)
    connections = GaugeMetricFamily(
        "odin_db_pool_connections",
        "Connections of this process's database pool, by state (in_use or idle); the "
        "listener and leader connections are not included.",
        labels=["state"],
    )
    connections.add_metric(["in_use"], max(0, size - available))
    connections.add_metric(["idle"], available)
    yield connections

    gauges = {
        "odin_db_pool_max_connections": (
            "pool_max",
            "Most connections the pool opens (ODIN_POOL_MAX_SIZE).",
        ),
        "odin_db_pool_requests_waiting": (
            "requests_waiting",
            "Requests waiting for a free connection.",
        ),
    }
    for name, (key, description) in gauges.items():
        gauge = GaugeMetricFamily(name, description)
        gauge.add_metric([], stats.get(key, 0))
        yield gauge

    counters = {
        "odin_db_pool_requests": ("requests_num", "Connections handed out by the pool."),
        "odin_db_pool_requests_queued": (
            "requests_queued",
            "Requests that had to wait for a connection.",
        ),
        "odin_db_pool_requests_errors": (
            "requests_errors",
            "Requests that got no connection (timeout or error).",
        ),
        "odin_db_pool_connections_lost": (
            "connections_lost",
            "Connections found broken and discarded.",
        ),
    }
    for name, (key, description) in counters.items():
        counter = CounterMetricFamily(name, description)
        counter.add_metric([], stats.get(key, 0))
        yield counter
