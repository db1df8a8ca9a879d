"""When test jobs ran, read back from the database, and how many ran at once.

Kinds of `tests.feature_kinds` log RUN_STARTED as their first step and RUN_ENDED as their
last. Each log event is stamped with the database's clock, so the windows of jobs run by
different server processes share one clock. A window lies inside the job's real run, so two
windows that overlap prove that the two jobs really ran at the same time.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.feature_kinds import RUN_ENDED, RUN_STARTED

SAMPLE_INTERVAL_SECONDS = 0.02

WINDOWS_SQL = """
SELECT j.id, j.kind, j.queue, j.args, j.concurrency_key,
    started.created_at AS started_at, ended.created_at AS ended_at,
    (SELECT r.data->>'owner' FROM odin.job_events AS r
     WHERE r.job_id = j.id AND r.type = 'running' ORDER BY r.seq DESC LIMIT 1) AS owner
FROM odin.jobs AS j
JOIN odin.job_events AS started
    ON started.job_id = j.id AND started.type = 'log' AND started.data->>'message' = %(started)s
JOIN odin.job_events AS ended
    ON ended.job_id = j.id AND ended.type = 'log' AND ended.data->>'message' = %(ended)s
ORDER BY started.created_at, j.id
"""

RUNNING_SQL = """
SELECT coalesce(concurrency_key, '') AS key, queue, count(*) AS running
FROM odin.jobs WHERE state = 'running' GROUP BY 1, 2
"""


@dataclass(frozen=True)
class RunWindow:
    """The stretch of time in which one job ran, between its two run markers."""

    job_id: int
    kind: str
    queue: str
    args: dict[str, Any]
    concurrency_key: str | None
    owner: str
    started_at: datetime
    ended_at: datetime


def run_windows(database_url: str) -> list[RunWindow]:
    """Return the windows of every job that logged both run markers, by start time."""
    with psycopg.connect(database_url, row_factory=dict_row) as connection:
        rows = connection.execute(
            WINDOWS_SQL, {"started": RUN_STARTED, "ended": RUN_ENDED}
        ).fetchall()
    return [
        RunWindow(
            job_id=row["id"],
            kind=row["kind"],
            queue=row["queue"],
            args=row["args"],
            concurrency_key=row["concurrency_key"],
            owner=row["owner"] or "",
            started_at=row["started_at"],
            ended_at=row["ended_at"],
        )
        for row in rows
    ]


def max_overlap(windows: Iterable[RunWindow]) -> int:
    """Return the largest number of windows that were open at the same instant.

    A window that ends at the very instant another starts does not overlap it.
    """
    # At equal times, -1 sorts before +1, so an end is counted before a start.
    edges = sorted(
        [(window.started_at, 1) for window in windows]
        + [(window.ended_at, -1) for window in windows]
    )
    open_now = highest = 0
    for _, step in edges:
        open_now += step
        highest = max(highest, open_now)
    return highest


def max_overlap_by(windows: Iterable[RunWindow], attribute: str) -> dict[Any, int]:
    """Return `max_overlap` of the windows grouped by one of their attributes."""
    groups: dict[Any, list[RunWindow]] = defaultdict(list)
    for window in windows:
        groups[getattr(window, attribute)].append(window)
    return {value: max_overlap(group) for value, group in groups.items()}


@dataclass
class RunningSamples:
    """The maximum number of jobs seen running at once, by concurrency key and by queue."""

    by_key: Counter[str]
    by_queue: Counter[str]
    samples: int = 0


@contextmanager
def sample_running(database_url: str) -> Iterator[RunningSamples]:
    """Count the running jobs in odin.jobs every SAMPLE_INTERVAL_SECONDS in a thread.

    The counts read what the database enforces, independently of the run markers. The
    thread stops when the block exits.
    """
    found = RunningSamples(Counter(), Counter())
    stop = threading.Event()

    def sample() -> None:
        with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as connection:
            while not stop.is_set():
                per_queue: Counter[str] = Counter()
                for row in connection.execute(RUNNING_SQL).fetchall():
                    if row["key"]:
                        found.by_key[row["key"]] = max(found.by_key[row["key"]], row["running"])
                    per_queue[row["queue"]] += row["running"]
                for queue, running in per_queue.items():
                    found.by_queue[queue] = max(found.by_queue[queue], running)
                found.samples += 1
                stop.wait(SAMPLE_INTERVAL_SECONDS)

    thread = threading.Thread(target=sample, name="running-sampler", daemon=True)
    thread.start()
    try:
        yield found
    finally:
        stop.set()
        thread.join(timeout=5)
