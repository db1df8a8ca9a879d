"""``Leader``: one replica at a time runs the maintenance duties.

Every replica tries to take the session advisory lock ``(WORKER_LOCK_CLASS, 0)`` on a
connection of its own, every ``leader_interval_seconds``. The one that holds it is the
leader until its session ends (process death, lost connection, database restart); then
another replica takes over at its next try. The leader runs:

- the rescuer: the running jobs of a worker whose liveness lock has been free for
  ``rescue_grace_seconds`` go back to the queue, or fail when their attempts are used up.
  A database restart frees every lock at once, so nothing is rescued until the database
  has been up for ``TAKEOVER_GRACE_SECONDS``: workers get that long to reconnect and take
  their own lock again. A leader elected because the previous one died rescues at once;
- the timeout backstop: attempts running ``timeout_grace_seconds`` past their timeout end
  even when their worker is alive but stuck (a blocked event loop, a sync job that ignores
  its timeout);
- the periodic scheduler: each cron tick of a kind's ``Periodic`` schedules is enqueued
  once, in the same transaction that records the tick as done;
- the pruner: finished jobs, with their events, after the retention of their final state.

In poll-only mode there is no election: every replica runs the duties, which are safe to run
concurrently.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from datetime import UTC, datetime

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import PoolTimeout

from odin_ext.kinds import Kind, Periodic, Registry
from odin_ext.queries import QUERIES
from odin_ext.settings import Settings
from odin_ext.store import WORKER_LOCK_CLASS, JobStore, Liveness
from odin_ext.submissions import build_job

logger = logging.getLogger(__name__)

PRUNE_INTERVAL_SECONDS = 60.0
PRUNE_BATCH = 1000
WORKER_RECORD_RETENTION_SECONDS = 24 * 3600.0
IDEMPOTENCY_KEY_RETENTION_SECONDS = 24 * 3600.0
# Nothing is rescued until the database has been up this long; see ``_take_office``.
TAKEOVER_GRACE_SECONDS = 3.0
# A tick noticed later than this counts as missed (for schedules without catch-up).
MISSED_TICK_SECONDS = 60.0


def schedule_name(item: Kind, schedule: Periodic) -> str:
    """Return the stable name under which a schedule's last tick is recorded."""
    if schedule.name:
        return schedule.name
    # The args are part of the name, so two schedules of a kind on one cron stay apart.
    args = json.dumps(schedule.args, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(args.encode()).hexdigest()[:12]
    return f"{item.name}@{schedule.cron}@{schedule.timezone}@{digest}"


class Leader:
    """Competes for leadership and runs the leader's duties while it has the lock."""

    def __init__(
        self, settings: Settings, conninfo: str, store: JobStore, owner: str, registry: Registry
    ) -> None:
        self.settings = settings
        self._schedules = [
            (item, schedule) for item in registry for schedule in item.options.periodic
        ]
        self._conninfo = conninfo
        self._store = store
        self._owner = owner
        self._liveness = Liveness(settings.poll_only, settings.heartbeat_timeout_seconds)
        self.is_leader = False
        self.rescued_count = 0
        # Owner -> monotonic time it was first seen without its liveness lock.
        self._suspects: dict[str, float] = {}
        self._next_prune = 0.0
        self._rescue_from = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="odin-leader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.is_leader = False

    async def _run(self) -> None:
        if self.settings.poll_only:
            await self._serve_without_lock()
            return
        while True:
            try:
                await self._compete()
            except (psycopg.OperationalError, OSError) as exc:
                self._step_down(repr(exc))
                await asyncio.sleep(self.settings.leader_interval_seconds)

    async def _compete(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=5
        ) as conn:
            cursor = conn.cursor(row_factory=dict_row)
            while True:
                if not self.is_leader:
                    await cursor.execute(
                        QUERIES["leader_try_lock"], {"lock_class": WORKER_LOCK_CLASS}
                    )
                    row = await cursor.fetchone()
                    if row and row["locked"]:
                        self._take_office(database_uptime_seconds=row["uptime_seconds"])
                else:
                    # Proves the session (and so the lock) is still there.
                    await cursor.execute("SELECT 1")
                if self.is_leader:
                    await self._run_duties()
                await asyncio.sleep(self.settings.leader_interval_seconds)

    async def _serve_without_lock(self) -> None:
        # Session advisory locks cannot be trusted behind a transaction pooler, so in
        # poll-only mode every replica runs the duties. Each duty is a conditional UPDATE
        # or DELETE that skips rows another replica already changed, so running it twice
        # at once does no harm.
        self._take_office(database_uptime_seconds=None)
        while True:
            await self._run_duties()
            await asyncio.sleep(self.settings.leader_interval_seconds)

    def _take_office(self, database_uptime_seconds: float | None) -> None:
        self.is_leader = True
        self._suspects.clear()
        # A database restart frees every lock, dead or alive, so the absence of a lock is
        # trusted only once the database has been up for the takeover grace.
        wait = TAKEOVER_GRACE_SECONDS
        if database_uptime_seconds is not None:
            wait = max(0.0, TAKEOVER_GRACE_SECONDS - database_uptime_seconds)
        self._rescue_from = time.monotonic() + wait
        logger.info("leader elected", extra={"event": "leader_elected", "owner": self._owner})

    def _step_down(self, reason: str) -> None:
        if self.is_leader:
            logger.warning(
                "leadership lost", extra={"event": "leader_lost", "error": reason}
            )
        self.is_leader = False

    async def _run_duties(self) -> None:
        try:
            await self._rescue_dead_owners()
            await self._end_overdue_attempts()
            await self._enqueue_periodic()
            await self._maybe_prune()
        except (psycopg.Error, PoolTimeout) as exc:
            logger.warning("leader duty failed", extra={"event": "leader_duty_failed",
                                                        "error": repr(exc)})

    async def _rescue_dead_owners(self) -> None:
        now = time.monotonic()
        suspects = await self._store.unresponsive_owners(self._liveness)
        for owner in list(self._suspects):
            if owner not in suspects:
                del self._suspects[owner]
        for owner in suspects:
            self._suspects.setdefault(owner, now)
        if now < self._rescue_from:
            return
        due = [o for o, since in self._suspects.items()
               if now - since >= self.settings.rescue_grace_seconds]
        if not due:
            return
        rescued = await self._store.rescue(due, self._liveness)
        for owner in due:
            self._suspects.pop(owner, None)
        self.rescued_count += len(rescued)
        for row in rescued:
            logger.warning(
                "job rescued from a dead worker",
                extra={"event": "job_rescued", "job_id": row["id"], "state": row["state"],
                       "owner": row["owner"],
                       "attempt_seconds": round(float(row["attempt_seconds"] or 0), 3)},
            )

    async def _end_overdue_attempts(self) -> None:
        ended = await self._store.rescue_overdue(self.settings.timeout_grace_seconds)
        for row in ended:
            logger.warning(
                "attempt ended past its timeout",
                extra={"event": "job_timeout_rescued", "job_id": row["id"], "state": row["state"]},
            )

    async def _enqueue_periodic(self) -> None:
        now = datetime.now(UTC)
        for item, schedule in self._schedules:
            name = schedule_name(item, schedule)
            tick = schedule.latest_tick(now)
            last = await self._store.periodic_last_tick(name, tick)
            if tick <= last:
                continue
            if not schedule.catch_up and (now - tick).total_seconds() > MISSED_TICK_SECONDS:
                await self._store.skip_periodic(name, tick)
                logger.info("missed periodic tick skipped",
                            extra={"event": "periodic_skipped", "schedule": name,
                                   "tick": tick.isoformat()})
                continue
            new_job = build_job(
                item, schedule.args,
                default_max_attempts=self.settings.default_max_attempts,
                max_args_bytes=self.settings.max_args_bytes,
                now=now,
            )
            job = await self._store.enqueue_periodic(name, tick, new_job)
            if job is not None:
                logger.info("periodic job enqueued",
                            extra={"event": "periodic_enqueued", "schedule": name,
                                   "tick": tick.isoformat(), "job_id": job.id})

    async def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_INTERVAL_SECONDS
        retention = {
            "completed": self.settings.retention_completed_seconds,
            "failed": self.settings.retention_failed_seconds,
            "cancelled": self.settings.retention_cancelled_seconds,
        }
        total = 0
        while (pruned := await self._store.prune(retention, PRUNE_BATCH)) > 0:
            total += pruned
            if pruned < PRUNE_BATCH:
                break
        await self._store.prune_workers(WORKER_RECORD_RETENTION_SECONDS)
        await self._store.prune_idempotency_keys(IDEMPOTENCY_KEY_RETENTION_SECONDS)
        if total:
            logger.info("finished jobs pruned", extra={"event": "jobs_pruned", "count": total})
