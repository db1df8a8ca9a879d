"""``JobStore``: every read and write of jobs and events, one method per named query.

psycopg errors are retried here when they are transient (see ``odin_ext.db``) and leave this
module otherwise unchanged. Methods that write take lists so that callers can batch: one
statement and one commit carry any number of jobs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from odin_ext.db import retry_transient
from odin_ext.jobs import Event, Job, JobState
from odin_ext.queries import QUERIES


# First key of the advisory locks Odin takes (the bytes spell "odin"); the second key is a
# worker id for liveness locks, and 0 for the leader lock.
WORKER_LOCK_CLASS = 0x6F64696E
DUPLICATE_RETRIES = 3

T = TypeVar("T")


def _prepare(query: str) -> bool | None:
    # A prepared statement soon runs a generic plan, which guesses 10 rows for unnest() of an
    # array parameter. For a batch of hundreds that guess picks a nested loop over the wrong
    # side and made a 500-job completion take 400 ms instead of 20 ms. Batch queries are
    # therefore planned each time, with the real array lengths; the rest use psycopg's
    # default (prepared after a few runs).
    return False if "unnest(" in QUERIES[query] else None

# First key of the transaction locks that serialise claims of one concurrency key ("odik").
CONCURRENCY_LOCK_CLASS = 0x6F64696B


@dataclass(frozen=True)
class Liveness:
    """The test for dead workers: a free advisory lock, or a stale heartbeat (poll-only)."""

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
    unique_key: str | None = None
    unique_states: tuple[JobState, ...] | None = None
    concurrency_key: str | None = None
    concurrency_limit: int | None = None


@dataclass(frozen=True)
class Enqueued:
    """A submitted job, and how: created by this submission, or found as a duplicate.

    ``replayed`` is true when an earlier request with the same idempotency key created it.
    """

    job: Job
    created: bool
    replayed: bool = False


class DuplicateRejected(Exception):
    """A unique job's duplicate was submitted with ``on_conflict="reject"``."""

    def __init__(self, holder: Job) -> None:
        super().__init__(f"job {holder.id} holds the unique key")
        self.holder = holder


class IdempotencyKeyReused(Exception):
    """An idempotency key came back with a different request than the one that claimed it."""


@dataclass(frozen=True)
class Outcome:
    """The end of one attempt: the job's next state and the event that records it."""

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
            async with self._connection() as conn:
                cursor = await conn.execute(QUERIES[query], params, prepare=_prepare(query))
                return await cursor.fetchall() if cursor.description else []

        return await retry_transient(run)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """Lend a pooled connection; after a lost connection, drop every broken idle one.

        Connections are not checked when lent (see ``create_pool``), so after a database
        restart or terminated sessions the pool may hold many dead ones; without the check
        each retry would draw the next dead connection.
        """
        try:
            async with self.pool.connection() as conn:
                yield conn
        except psycopg.OperationalError:
            await self.pool.check()
            raise

    async def ping(self) -> list[dict[str, Any]]:
        """Return the applied migration versions, retrying over stale connections."""
        return await self._fetch_all("migrations_applied", {})

    async def enqueue(self, new_jobs: Sequence[NewJob]) -> list[Enqueued]:
        """Insert jobs and their first events; return them in input order.

        A job with a unique key already held by another job is not inserted: its entry is
        that other job, with ``created`` False.
        """
        if not new_jobs:
            return []
        if len(new_jobs) == 1:
            return [await self._enqueue_one(new_jobs[0])]

        async def run() -> list[Enqueued]:
            # One transaction, so that a retry after DuplicateHolderGone inserts nothing twice.
            async with self._connection() as conn, conn.transaction():
                return await enqueue_on(conn, new_jobs)

        return await _retry_duplicates(run)

    async def _enqueue_one(self, new_job: NewJob) -> Enqueued:
        # A single statement needs no transaction block: when the duplicate's holder must be
        # read again, the insert either created the job or changed nothing.
        async def run() -> Enqueued:
            async with self._connection() as conn:
                [entry] = await enqueue_on(conn, [new_job])
                return entry

        return await _retry_duplicates(run)

    async def enqueue_idempotent(
        self, new_job: NewJob, key: str, request_hash: str, *, reject_duplicate: bool = False
    ) -> Enqueued:
        """Insert a job unless ``key`` was used before; then return the job it created.

        Raises ``IdempotencyKeyReused`` when the key was used with a different request, and
        ``DuplicateRejected`` (leaving the key unused) when ``reject_duplicate`` is set and
        the job is a duplicate of a unique job.
        """

        async def run() -> Enqueued:
            async with self._connection() as conn, conn.transaction():
                cursor = await conn.execute(
                    QUERIES["idempotency_claim"], {"key": key, "request_hash": request_hash}
                )
                if await cursor.fetchone() is not None:
                    [entry] = await enqueue_on(conn, [new_job])
                    if reject_duplicate and not entry.created:
                        raise DuplicateRejected(entry.job)  # rolls the key claim back
                    await conn.execute(
                        QUERIES["idempotency_bind"], {"key": key, "job_id": entry.job.id}
                    )
                    return entry
                cursor = await conn.execute(QUERIES["idempotency_get"], {"key": key})
                first = await cursor.fetchone()
            if first is None or first["request_hash"] != request_hash:
                raise IdempotencyKeyReused(key)
            job = await self.get(first["job_id"]) if first["job_id"] is not None else None
            if job is None:
                raise IdempotencyKeyReused(key)
            return Enqueued(job, created=False, replayed=True)

        return await retry_transient(run)

    async def fetch(self, owner: str, rooms: dict[str, int], limit: int) -> list[Job]:
        """Claim queued jobs for ``owner``: up to ``rooms[queue]`` per queue, ``limit`` in all."""
        rows = await self._fetch_all(
            "job_fetch",
            {"owner": owner, "queues": list(rooms), "rooms": list(rooms.values()),
             "limit": limit},
        )
        return [Job.from_row(row) for row in rows]

    async def fetch_limited(self, owner: str, queues: Sequence[str], limit: int) -> list[Job]:
        """Claim jobs under concurrency limits, never more running per key than its limit."""

        async def run() -> list[Job]:
            async with self._connection() as conn, conn.transaction():
                cursor = await conn.execute(
                    QUERIES["job_lock_limited_keys"],
                    {"queues": list(queues), "lock_class": CONCURRENCY_LOCK_CLASS},
                )
                keys = [row["concurrency_key"] for row in await cursor.fetchall()]
                if not keys:
                    return []
                # A new statement takes a new snapshot, which includes every claim committed
                # by the previous owner of these keys' locks.
                cursor = await conn.execute(
                    QUERIES["job_fetch_limited"],
                    {"keys": keys, "queues": list(queues), "owner": owner, "limit": limit},
                    prepare=False,
                )
                return [Job.from_row(row) for row in await cursor.fetchall()]

        return await retry_transient(run)

    async def set_queue_paused(self, queue: str, paused: bool) -> dict[str, Any]:
        rows = await self._fetch_all("queue_pause" if paused else "queue_resume", {"queue": queue})
        return rows[0]

    async def list_queues(self) -> list[dict[str, Any]]:
        return await self._fetch_all("queue_list", {})

    async def enqueue_periodic(self, schedule: str, tick: datetime, new_job: NewJob) -> Job | None:
        """Enqueue the job of ``schedule``'s ``tick`` unless that tick was enqueued already."""

        async def run() -> Job | None:
            async with self._connection() as conn, conn.transaction():
                cursor = await conn.execute(
                    QUERIES["periodic_advance"], {"schedule": schedule, "tick": tick}
                )
                if await cursor.fetchone() is None:
                    return None
                [entry] = await enqueue_on(conn, [new_job])
                return entry.job

        return await retry_transient(run)

    async def periodic_last_tick(self, schedule: str, first_tick: datetime) -> datetime:
        """Return the schedule's last tick, recording ``first_tick`` for a new schedule."""
        await self._fetch_all("periodic_init", {"schedule": schedule, "tick": first_tick})
        rows = await self._fetch_all("periodic_last_tick", {"schedule": schedule})
        return rows[0]["last_tick"]  # type: ignore[no-any-return]

    async def skip_periodic(self, schedule: str, tick: datetime) -> None:
        """Move ``schedule`` to ``tick`` without enqueueing (a missed tick not caught up)."""
        await self._fetch_all("periodic_advance", {"schedule": schedule, "tick": tick})

    async def prune_idempotency_keys(self, older_than_seconds: float) -> None:
        await self._fetch_all("idempotency_prune", {"older_than_seconds": older_than_seconds})

    async def promote_scheduled(self, limit: int) -> int:
        """Queue up to ``limit`` scheduled jobs that are due; return how many."""
        rows = await self._fetch_all("job_promote_scheduled", {"limit": limit})
        return int(rows[0]["promoted"]) if rows else 0

    async def next_scheduled_at(self) -> datetime | None:
        rows = await self._fetch_all("job_next_scheduled_at", {})
        return rows[0]["next_at"] if rows else None

    async def record_outcomes(self, owner: str, outcomes: Sequence[Outcome]) -> list[Event]:
        """End attempts of ``owner``; return the events written, one per applied outcome.

        An outcome whose attempt is no longer running under ``owner`` changes nothing and
        has no event in the result.
        """
        if not outcomes:
            return []
        # Batches of different owners touch disjoint rows, so they cannot deadlock each other.
        # Sorting by id keeps a stable order against single-row writers (cancel, progress).
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
        return [Event.from_row(row) for row in rows]

    async def append_event(
        self, job_id: int, attempt: int, owner: str, event_type: str, data: dict[str, Any]
    ) -> int | None:
        """Write an event of a running attempt; return its sequence number.

        Returns None when ``owner`` no longer owns that attempt.
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


async def enqueue_on(conn: Any, new_jobs: Sequence[NewJob]) -> list[Enqueued]:
    """Insert jobs on ``conn``, inside its current transaction if it has one.

    Used by the store and by ``odin_ext.enqueue`` for enqueueing inside a caller's own
    transaction. Duplicates of unique jobs come back as the job holding the key.
    """
    if len(new_jobs) == 1:
        # The single-job form has scalar parameters, so psycopg prepares it once it is
        # frequent on this connection.
        cursor = await conn.execute(QUERIES["job_enqueue_one"], enqueue_one_params(new_jobs[0]))
    else:
        cursor = await conn.execute(QUERIES["job_enqueue"], enqueue_params(new_jobs), prepare=False)
    inserted = [Job.from_row(row) for row in await cursor.fetchall()]
    return await _match_inserted(conn, new_jobs, inserted)


def enqueue_one_params(new_job: NewJob) -> dict[str, Any]:
    """Build the parameters of the ``job_enqueue_one`` query."""
    return {name: values[0] for name, values in enqueue_params([new_job]).items()}


def enqueue_params(new_jobs: Sequence[NewJob]) -> dict[str, Any]:
    """Build the parallel arrays of the ``job_enqueue`` query."""
    return {
        "kind": [j.kind for j in new_jobs],
        "queue": [j.queue for j in new_jobs],
        "args": [Jsonb(j.args) for j in new_jobs],
        "priority": [j.priority for j in new_jobs],
        "max_attempts": [j.max_attempts for j in new_jobs],
        "timeout_seconds": [j.timeout_seconds for j in new_jobs],
        "scheduled_at": [j.scheduled_at for j in new_jobs],
        "unique_key": [j.unique_key for j in new_jobs],
        "unique_states": [
            None if j.unique_states is None
            else "{" + ",".join(state.value for state in j.unique_states) + "}"
            for j in new_jobs
        ],
        "concurrency_key": [j.concurrency_key for j in new_jobs],
        "concurrency_limit": [j.concurrency_limit for j in new_jobs],
    }


async def _match_inserted(
    conn: Any, new_jobs: Sequence[NewJob], inserted: list[Job]
) -> list[Enqueued]:
    # Rows come back in id order, which is input order; jobs without a unique key were all
    # inserted, so they pair up in order, and jobs with one pair up by key.
    plain = iter(job for job in inserted if job.unique_key is None)
    by_key = {job.unique_key: job for job in inserted if job.unique_key is not None}
    claimed: set[str] = set()
    entries: list[Enqueued | None] = []
    missing: list[str] = []
    for new_job in new_jobs:
        key = new_job.unique_key
        if key is None:
            entries.append(Enqueued(next(plain), created=True))
        elif key in by_key and key not in claimed:
            claimed.add(key)
            entries.append(Enqueued(by_key[key], created=True))
        else:
            entries.append(None)
            missing.append(key)
    if missing:
        cursor = await conn.execute(QUERIES["job_find_unique"], {"unique_keys": missing})
        holders = {row["unique_key"]: Job.from_row(row) for row in await cursor.fetchall()}
        holders.update(by_key)
        for index, new_job in enumerate(new_jobs):
            if entries[index] is None:
                holder = holders.get(new_job.unique_key)
                if holder is None:
                    # The holder left its unique states in between; the caller may retry.
                    raise DuplicateHolderGone(new_job.unique_key or "")
                entries[index] = Enqueued(holder, created=False)
    return [entry for entry in entries if entry is not None]


async def _retry_duplicates(run: Callable[[], Awaitable[T]]) -> T:
    """Run ``run`` through ``retry_transient``, again when a duplicate's holder was gone."""
    for _ in range(DUPLICATE_RETRIES):
        try:
            return await retry_transient(run)
        except DuplicateHolderGone:
            continue
    return await retry_transient(run)


class DuplicateHolderGone(Exception):
    """A unique job's key holder changed state before it could be read; try again."""
