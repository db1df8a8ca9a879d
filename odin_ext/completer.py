"""``Completer``: writes the outcomes of finished attempts in batches.

Outcomes that arrive while a write is under way are written together by the next one, so a
busy worker pool commits many jobs per transaction and an idle one writes each outcome at once.
Every write is fenced (see ``JobStore.record_outcomes``): an attempt that lost its job changes
nothing, and the completer logs it.

The events written are handed to ``on_events`` as soon as they are committed, so streams on
this process get them without waiting for the notification and a read of the log.

An outcome is never dropped while the process lives: after a failed write the batch is kept
and tried again with backoff. ``stop`` waits for pending writes up to its timeout; outcomes
still unwritten then are lost with the process and their jobs are left running, to be
recovered like the jobs of any process that died.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import psycopg

from odin_ext.jobs import Event, JobState
from odin_ext.store import JobStore, Outcome

logger = logging.getLogger(__name__)

RETRY_DELAYS_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


class Completer:
    """Batches outcome writes of one owner."""

    def __init__(
        self,
        store: JobStore,
        owner: str,
        on_recorded: Callable[[Outcome, bool], None] | None = None,
        on_events: Callable[[Sequence[Event]], None] | None = None,
    ) -> None:
        self._store = store
        self._owner = owner
        self._on_recorded = on_recorded
        self._on_events = on_events
        self._pending: list[Outcome] = []
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="odin-completer")

    def submit(self, outcome: Outcome) -> None:
        """Queue ``outcome`` for the next batch; returns at once."""
        self._pending.append(outcome)
        self._idle.clear()
        self._arrived.set()

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    async def flush(self, timeout_seconds: float) -> bool:
        """Wait until every submitted outcome is written; return False on timeout."""
        try:
            async with asyncio.timeout(timeout_seconds):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False

    async def stop(self, timeout_seconds: float) -> None:
        """Write what is pending (up to ``timeout_seconds``), then stop the writer task."""
        flushed = await self.flush(timeout_seconds)
        if not flushed:
            logger.error(
                "outcomes not written before shutdown",
                extra={"event": "completer_unflushed", "count": len(self._pending)},
            )
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            batch, self._pending = self._pending, []
            if not batch:
                self._idle.set()
                continue
            try:
                await self._write(batch)
                failures = 0
            except (psycopg.OperationalError, OSError) as exc:
                # Database unreachable after the store's own retries: keep the batch.
                self._pending = batch + self._pending
                delay = RETRY_DELAYS_SECONDS[min(failures, len(RETRY_DELAYS_SECONDS) - 1)]
                failures += 1
                logger.warning(
                    "writing outcomes failed, will try again",
                    extra={"event": "completer_retry", "count": len(batch),
                           "error": repr(exc), "sleep_seconds": delay},
                )
                await asyncio.sleep(delay)
                self._arrived.set()
                continue
            if not self._pending:
                self._idle.set()

    async def _write(self, batch: list[Outcome]) -> None:
        try:
            events = await self._store.record_outcomes(self._owner, batch)
        except psycopg.DataError:
            # One bad value fails the whole statement: write the outcomes one by one so the
            # others still land, and fail the job whose outcome cannot be stored.
            events = []
            for outcome in batch:
                events += await self._write_alone(outcome)
        if events and self._on_events is not None:
            self._on_events(events)
        applied = {event.job_id for event in events}
        for outcome in batch:
            self._report(outcome, outcome.job_id in applied)

    async def _write_alone(self, outcome: Outcome) -> list[Event]:
        try:
            return await self._store.record_outcomes(self._owner, [outcome])
        except psycopg.DataError as exc:
            message = f"outcome could not be stored: {exc}"
            failed = Outcome(
                job_id=outcome.job_id,
                attempt=outcome.attempt,
                state=JobState.FAILED,
                event_type="failed",
                event_data={"attempt": outcome.attempt, "error": message},
                error={"attempt": outcome.attempt, "error": message},
            )
            return await self._store.record_outcomes(self._owner, [failed])

    def _report(self, outcome: Outcome, applied: bool) -> None:
        if self._on_recorded is not None:
            self._on_recorded(outcome, applied)
