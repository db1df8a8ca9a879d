"""``Listener``: this process's one LISTEN connection, shared by the event broker and workers.

Channels: ``odin_events`` carries ``job_id:seq`` pairs written by the event trigger, and
``odin_jobs`` carries the name of a queue that has new due jobs. Notifications sent while the
connection is down are lost for good, so after every (re)connect the listener calls
``on_connected``, and its users catch up from the tables.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg

logger = logging.getLogger(__name__)

EVENTS_CHANNEL = "odin_events"
JOBS_CHANNEL = "odin_jobs"

RECONNECT_DELAYS_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


class Listener:
    """Keeps a LISTEN connection open, reconnecting with backoff when it drops."""

    def __init__(
        self,
        conninfo: str,
        *,
        on_events: Callable[[str], None],
        on_jobs: Callable[[str], None],
        on_connected: Callable[[], None],
    ) -> None:
        self._conninfo = conninfo
        self._on_events = on_events
        self._on_jobs = on_jobs
        self._on_connected = on_connected
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="odin-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._listen()
            except (psycopg.OperationalError, OSError) as exc:
                self.connected.clear()
                delay = RECONNECT_DELAYS_SECONDS[min(failures, len(RECONNECT_DELAYS_SECONDS) - 1)]
                failures = failures + 1
                logger.warning(
                    "listener connection lost, reconnecting",
                    extra={"event": "listener_disconnected", "error": repr(exc),
                           "sleep_seconds": delay},
                )
                await asyncio.sleep(delay)
            else:
                failures = 0

    async def _listen(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True
        ) as conn:
            await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
            await conn.execute(f"LISTEN {JOBS_CHANNEL}")
            self.connected.set()
            logger.info("listener connected", extra={"event": "listener_connected"})
            # Only now can nothing be missed: whatever happened before is read from tables.
            self._on_connected()
            async for notify in conn.notifies():
                if notify.channel == EVENTS_CHANNEL:
                    self._on_events(notify.payload)
                elif notify.channel == JOBS_CHANNEL:
                    self._on_jobs(notify.payload)
