"""What a running job sees of Odin: its identity and a way to report progress and log lines.

Both reports become events of the job, written only while this attempt still owns the job.
When it does not (the job was rescued, cancelled or timed out), the report raises
``AttemptLost`` so the job stops; nothing it writes after that reaches the job.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout

from odin_ext.errors import AttemptLost

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 4000

# Writes one event of the attempt; returns its sequence number, or None when the attempt
# is no longer owned.
EventWriter = Callable[[str, dict[str, Any]], Awaitable[int | None]]


@dataclass(frozen=True)
class JobInfo:
    """Identity of the attempt being run."""

    job_id: int
    kind: str
    queue: str
    attempt: int
    max_attempts: int


class JobContext:
    """Passed to an async job function that declares a parameter of this type."""

    def __init__(self, info: JobInfo, write_event: EventWriter) -> None:
        self.info = info
        self._write_event = write_event

    @property
    def job_id(self) -> int:
        return self.info.job_id

    @property
    def attempt(self) -> int:
        return self.info.attempt

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress as a fraction between 0 and 1, with an optional message.

        Raises ``ValueError`` for a fraction outside [0, 1] and ``AttemptLost`` when this
        attempt no longer owns the job.
        """
        if not isinstance(fraction, (int, float)) or not math.isfinite(fraction):
            raise ValueError(f"progress fraction must be a finite number, got {fraction!r}")
        if not 0 <= fraction <= 1:
            raise ValueError(f"progress fraction must be between 0 and 1, got {fraction}")
        data: dict[str, Any] = {"fraction": float(fraction)}
        if message is not None:
            data["message"] = _clean(message)
        await self._write("progress", data)

    async def log(self, message: str, level: str = "info") -> None:
        """Add a log line to the job's event stream (``level``: debug, info, warning, error)."""
        if level not in {"debug", "info", "warning", "error"}:
            raise ValueError(f"log level must be debug, info, warning or error, got {level!r}")
        await self._write("log", {"level": level, "message": _clean(message)})

    async def _write(self, event_type: str, data: dict[str, Any]) -> None:
        try:
            seq = await self._write_event(event_type, data)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            # The database stayed unreachable through the store's retries. A report is not
            # worth failing the job for: it is dropped (no sequence number was taken, so the
            # stream shows no gap), and the job's outcome is written once the database is back.
            logger.warning(
                "job report dropped: database unavailable",
                extra={"event": "job_report_dropped", "job_id": self.info.job_id,
                       "attempt": self.info.attempt, "type": event_type, "error": repr(exc)},
            )
            return
        if seq is None:
            raise AttemptLost(self.info.job_id, self.info.attempt)


class SyncJobContext:
    """Passed to a sync job function, which runs in a worker thread; its calls block."""

    def __init__(self, context: JobContext, loop: asyncio.AbstractEventLoop) -> None:
        self._context = context
        self._loop = loop

    @property
    def info(self) -> JobInfo:
        return self._context.info

    @property
    def job_id(self) -> int:
        return self._context.job_id

    @property
    def attempt(self) -> int:
        return self._context.attempt

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress; see ``JobContext.progress``. Blocks until the event is written."""
        self._run(self._context.progress(fraction, message))

    def log(self, message: str, level: str = "info") -> None:
        """Add a log line; see ``JobContext.log``. Blocks until the event is written."""
        self._run(self._context.log(message, level))

    def _run(self, coroutine: Awaitable[None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()  # type: ignore[arg-type]


def _clean(message: str) -> str:
    # PostgreSQL text cannot hold NUL characters; a job's message must not fail its attempt.
    text = str(message).replace("\x00", "\ufffd")
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"
