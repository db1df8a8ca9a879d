"""``Listener``: this process's one LISTEN connection, which also carries its liveness lock.

Channels: ``odin_events`` carries ``job_id:seq`` pairs written by the event trigger,
``odin_jobs`` the name of a queue with new due jobs, ``odin_cancel`` the id of a job
cancelled while running, and ``odin_schedule`` (no payload) that a job was scheduled. Notifications sent while the connection is down are lost for good,
so after every (re)connect the listener calls ``on_connected`` and its users catch up from
the tables.

The same session holds the advisory lock ``(WORKER_LOCK_CLASS, worker id)`` for as long as it
lives: the leader treats a worker whose lock is free as dead and rescues its jobs. ``locked``
is set only while the lock is held, and the worker pool claims jobs only then. If a stale
session of this very process still holds the lock after a network failure, it is terminated
so the lock can be taken again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg
from psycopg.rows import dict_row

from odin_ext.queries import QUERIES
from odin_ext.store import WORKER_LOCK_CLASS

logger = logging.getLogger(__name__)

EVENTS_CHANNEL = "odin_events"
JOBS_CHANNEL = "odin_jobs"
CANCEL_CHANNEL = "odin_cancel"
SCHEDULE_CHANNEL = "odin_schedule"

# Capped well below the leader's takeover grace, so that after a database restart every
# worker holds its lock again before a new leader may rescue anything.
RECONNECT_DELAYS_SECONDS = (0.05, 0.1, 0.2, 0.3, 0.5)
CONNECT_TIMEOUT_SECONDS = 5


class LockUnavailable(psycopg.OperationalError):
    """The liveness lock is held by another session; treated like a lost connection."""


class Listener:
    """Keeps a LISTEN connection (and the liveness lock) open, reconnecting when it drops."""

    def __init__(
        self,
        conninfo: str,
        *,
        worker_id: int,
        on_events: Callable[[str], None],
        on_jobs: Callable[[str], None],
        on_cancel: Callable[[int], None],
        on_schedule: Callable[[], None],
        on_connected: Callable[[], None],
        locked: asyncio.Event,
    ) -> None:
        self._conninfo = conninfo
        self._worker_id = worker_id
        self._on_events = on_events
        self._on_jobs = on_jobs
        self._on_cancel = on_cancel
        self._on_schedule = on_schedule
        self._on_connected = on_connected
        self._task: asyncio.Task[None] | None = None
        # Set only while this session holds the liveness lock.
        self.locked = locked

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="odin-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.locked.clear()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._listen()
            except (psycopg.OperationalError, OSError) as exc:
                self.locked.clear()
                delay = RECONNECT_DELAYS_SECONDS[min(failures, len(RECONNECT_DELAYS_SECONDS) - 1)]
                failures += 1
                # The first failure and every 20th after it: an outage must not flood the log.
                level = logging.WARNING if failures % 20 == 1 else logging.DEBUG
                logger.log(
                    level,
                    "listener connection lost, reconnecting",
                    extra={"event": "listener_disconnected", "error": repr(exc),
                           "failures": failures, "sleep_seconds": delay},
                )
                await asyncio.sleep(delay)
            else:
                failures = 0

    async def _listen(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
        ) as conn:
            await self._take_lock(conn)
            for channel in (EVENTS_CHANNEL, JOBS_CHANNEL, CANCEL_CHANNEL, SCHEDULE_CHANNEL):
                await conn.execute(f"LISTEN {channel}")
            self.locked.set()
            logger.info(
                "listener connected",
                extra={"event": "listener_connected", "worker_id": self._worker_id},
            )
            # From here on nothing is missed; whatever happened before is read from tables.
            self._on_connected()
            async for notify in conn.notifies():
                self._dispatch(notify.channel, notify.payload)
        raise psycopg.OperationalError("listener connection closed")

    async def _take_lock(self, conn: psycopg.AsyncConnection) -> None:
        cursor = conn.cursor(row_factory=dict_row)
        params = {"lock_class": WORKER_LOCK_CLASS, "worker_id": self._worker_id}
        for _ in range(2):
            await cursor.execute(QUERIES["worker_lock"], params)
            row = await cursor.fetchone()
            if row and row["locked"]:
                return
            await cursor.execute(QUERIES["worker_lock_reclaim"], params)
            logger.warning(
                "liveness lock held by a stale session, terminated it",
                extra={"event": "liveness_lock_reclaimed", "worker_id": self._worker_id},
            )
            await asyncio.sleep(0.05)
        raise LockUnavailable(f"liveness lock of worker {self._worker_id} is held elsewhere")

    def _dispatch(self, channel: str, payload: str) -> None:
        if channel == EVENTS_CHANNEL:
            self._on_events(payload)
        elif channel == JOBS_CHANNEL:
            self._on_jobs(payload)
        elif channel == CANCEL_CHANNEL and payload.isdigit():
            self._on_cancel(int(payload))
        elif channel == SCHEDULE_CHANNEL:
            self._on_schedule()
