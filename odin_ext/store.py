"""``JobStore``: every read and write of jobs and events, one method per named query.

psycopg errors are retried here when they are transient (see ``odin_ext.db``) and leave this
module otherwise unchanged. Methods that write take lists so that callers can batch: one
statement and one commit carry any number of jobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from odin_ext.db import retry_transient
from odin_ext.jobs import Event, Job, JobState
from odin_ext.queries import QUERIES


# First key of the advisory locks Odin takes (the bytes spell "odin"); the second key is a
# worker id for liveness locks, and 0 for the leader lock.
WORKER_LOCK_CLASS = 0x6F64696E


@dataclass(frozen=True)
class Liveness:
    """How dead workers are told apart: lost advisory locks, or stale heartbeats (poll-only)."""

    poll_only: bool = False
    heartbeat_timeout_seconds: float = 30.0

    def params(self) -> dict[str, Any]:
        return {"poll_only": self.poll_only,
                "heartbeat_timeout_seconds": self.heartbeat_timeout_seconds,
                "lock_class": WORKER_LOCK_CLASS}


@dataclass(frozen=True)
class NewJob:
    """A validated submission, ready to insert."""

    kind: str
    queue: str
    args: dict[str, Any]
    priority: int
    max_attempts: int
    timeout_seconds: float | None
    scheduled_at: datetime | None


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended: the job's next state and the event that records it."""

    job_id: int
    attempt: int
    state: JobState
    event_type: str
    event_data: dict[str, Any]
    result: Any = None
    error: dict[str, Any] | None = None
    scheduled_at: datetime | None = None


class JobStore:
    """Reads and writes ``odin.jobs`` and ``odin.job_events`` through a connection pool."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def _fetch_all(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        async def run() -> list[dict[str, Any]]:
            async with self.pool.connection() as conn:
                cursor = await conn.execute(QUERIES[query], params)
                return await cursor.fetchall() if cursor.description else []

        return await retry_transient(run)

    async def enqueue(self, new_jobs: Sequence[NewJob]) -> list[Job]:
        """Insert jobs and their first events in one statement; return them in input order."""
        if not new_jobs:
            return []
        rows = await self._fetch_all(
            "job_enqueue",
            {
                "kind": [j.kind for j in new_jobs],
                "queue": [j.queue for j in new_jobs],
                "args": [Jsonb(j.args) for j in new_jobs],
                "priority": [j.priority for j in new_jobs],
                "max_attempts": [j.max_attempts for j in new_jobs],
                "timeout_seconds": [j.timeout_seconds for j in new_jobs],
                "scheduled_at": [j.scheduled_at for j in new_jobs],
            },
        )
        return [Job.from_row(row) for row in rows]

    async def fetch(self, owner: str, queues: Sequence[str], limit: int) -> list[Job]:
        """Claim up to ``limit`` queued jobs for ``owner`` and mark them running."""
        rows = await self._fetch_all(
            "job_fetch", {"owner": owner, "queues": list(queues), "limit": limit}
        )
        return [Job.from_row(row) for row in rows]

    async def promote_scheduled(self, limit: int) -> int:
        """Queue up to ``limit`` scheduled jobs that are due; return how many."""
        rows = await self._fetch_all("job_promote_scheduled", {"limit": limit})
        return int(rows[0]["promoted"]) if rows else 0

    async def next_scheduled_at(self) -> datetime | None:
        rows = await self._fetch_all("job_next_scheduled_at", {})
        return rows[0]["next_at"] if rows else None

    async def record_outcomes(self, owner: str, outcomes: Sequence[Outcome]) -> set[int]:
        """End attempts of ``owner``; return the ids of the jobs whose write applied.

        An outcome whose attempt is no longer running under ``owner`` changes nothing.
        """
        if not outcomes:
            return set()
        # Lock rows in id order so that concurrent batches cannot deadlock each other.
        ordered = sorted(outcomes, key=lambda o: o.job_id)
        rows = await self._fetch_all(
            "job_record_outcomes",
            {
                "owner": owner,
                "id": [o.job_id for o in ordered],
                "attempt": [o.attempt for o in ordered],
                "state": [o.state.value for o in ordered],
                "result": [None if o.result is None else Jsonb(o.result) for o in ordered],
                "error": [None if o.error is None else Jsonb(o.error) for o in ordered],
                "scheduled_at": [o.scheduled_at for o in ordered],
                "event_type": [o.event_type for o in ordered],
                "event_data": [Jsonb(o.event_data) for o in ordered],
            },
        )
        return {row["id"] for row in rows}

    async def append_event(
        self, job_id: int, attempt: int, owner: str, event_type: str, data: dict[str, Any]
    ) -> int | None:
        """Write an event of a running attempt; return its sequence number.

        Returns None when ``owner`` no longer holds that attempt.
        """
        rows = await self._fetch_all(
            "job_append_event",
            {"id": job_id, "attempt": attempt, "owner": owner, "type": event_type,
             "data": Jsonb(data)},
        )
        return rows[0]["seq"] if rows else None

    async def cancel(self, job_id: int, reason: str) -> bool:
        """Cancel the job unless it already reached a final state; return whether it did."""
        rows = await self._fetch_all("job_cancel", {"id": job_id, "reason": reason})
        return bool(rows)

    async def retry(self, job_id: int) -> bool:
        """Queue a failed or cancelled job again; return False when it is in another state."""
        rows = await self._fetch_all("job_retry", {"id": job_id})
        return bool(rows)

    async def register_worker(self, owner: str) -> int:
        """Record a worker process; return its id (the second key of its liveness lock)."""
        rows = await self._fetch_all("worker_register", {"owner": owner})
        return int(rows[0]["id"])

    async def owned_job_ids(self, owner: str) -> set[int]:
        rows = await self._fetch_all("worker_owned_jobs", {"owner": owner})
        return {row["id"] for row in rows}

    async def heartbeat(self, owner: str) -> None:
        await self._fetch_all("worker_heartbeat", {"owner": owner})

    async def unresponsive_owners(self, liveness: Liveness) -> set[str]:
        """Return the owners of running jobs that look dead right now."""
        rows = await self._fetch_all("workers_unresponsive", liveness.params())
        return {row["owner"] for row in rows}

    async def rescue(self, owners: Sequence[str], liveness: Liveness) -> list[dict[str, Any]]:
        """Rescue the running jobs of those ``owners`` that are still dead; return them."""
        if not owners:
            return []
        return await self._fetch_all("job_rescue", {"owners": list(owners), **liveness.params()})

    async def rescue_overdue(self, grace_seconds: float) -> list[dict[str, Any]]:
        """End attempts running ``grace_seconds`` past their timeout; return the jobs."""
        return await self._fetch_all("job_rescue_overdue", {"grace_seconds": grace_seconds})

    async def prune(self, retention_seconds: dict[str, float], limit: int) -> int:
        """Delete up to ``limit`` finished jobs past their state's retention; return how many."""
        rows = await self._fetch_all(
            "job_prune",
            {"completed_seconds": retention_seconds["completed"],
             "failed_seconds": retention_seconds["failed"],
             "cancelled_seconds": retention_seconds["cancelled"],
             "limit": limit},
        )
        return int(rows[0]["pruned"]) if rows else 0

    async def prune_workers(self, older_than_seconds: float) -> None:
        await self._fetch_all(
            "workers_prune",
            {"older_than_seconds": older_than_seconds, "lock_class": WORKER_LOCK_CLASS},
        )

    async def get(self, job_id: int) -> Job | None:
        rows = await self._fetch_all("job_get", {"id": job_id})
        return Job.from_row(rows[0]) if rows else None

    async def list(
        self,
        *,
        state: JobState | None = None,
        kind: str | None = None,
        queue: str | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[Job]:
        """Return jobs newest first, filtered when a filter is given, older than ``before_id``."""
        rows = await self._fetch_all(
            "job_list",
            {"state": state.value if state else None, "kind": kind, "queue": queue,
             "before_id": before_id, "limit": limit},
        )
        return [Job.from_row(row) for row in rows]

    async def events_after(self, job_id: int, after: int, limit: int = 1000) -> list[Event]:
        """Return up to ``limit`` events of one job with a sequence number above ``after``."""
        rows = await self._fetch_all(
            "events_after", {"job_id": job_id, "after": after, "limit": limit}
        )
        return [Event.from_row(row) for row in rows]

    async def events_after_many(self, after_by_job: dict[int, int]) -> list[Event]:
        """Return the events of several jobs, each after its own sequence number."""
        if not after_by_job:
            return []
        rows = await self._fetch_all(
            "events_after_many",
            {"job_id": list(after_by_job), "after": list(after_by_job.values())},
        )
        return [Event.from_row(row) for row in rows]
