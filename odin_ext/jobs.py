"""The job and event records, their states, and their JSON form in the API."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    """A job's state; mirrors the ``odin.job_state`` enum in PostgreSQL."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})

# Event types that end a job's stream: each is written by the transition into a final state.
FINAL_EVENT_TYPES = frozenset(state.value for state in FINAL_STATES)


@dataclass(frozen=True)
class Job:
    """A row of ``odin.jobs``."""

    id: int
    kind: str
    queue: str
    args: dict[str, Any]
    state: JobState
    priority: int
    attempt: int
    max_attempts: int
    timeout_seconds: float | None
    owner: str | None
    result: Any
    errors: list[dict[str, Any]]
    progress: dict[str, Any] | None
    last_event_seq: int
    created_at: datetime
    scheduled_at: datetime
    attempted_at: datetime | None
    finalized_at: datetime | None
    unique_key: str | None = None
    concurrency_key: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        return cls(
            id=row["id"],
            kind=row["kind"],
            queue=row["queue"],
            args=row["args"],
            state=JobState(row["state"]),
            priority=row["priority"],
            attempt=row["attempt"],
            max_attempts=row["max_attempts"],
            timeout_seconds=row["timeout_seconds"],
            owner=row["owner"],
            result=row["result"],
            errors=row["errors"],
            progress=row["progress"],
            last_event_seq=row["last_event_seq"],
            created_at=row["created_at"],
            scheduled_at=row["scheduled_at"],
            attempted_at=row["attempted_at"],
            finalized_at=row["finalized_at"],
            unique_key=row.get("unique_key"),
            concurrency_key=row.get("concurrency_key"),
        )

    def to_json(self) -> dict[str, Any]:
        """Return the job as the API shows it (timestamps in ISO 8601 with offset)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "queue": self.queue,
            "args": self.args,
            "state": self.state.value,
            "priority": self.priority,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "timeout_seconds": self.timeout_seconds,
            "result": self.result,
            "error": self.errors[-1]["error"] if self.errors else None,
            "errors": self.errors,
            "progress": self.progress,
            "last_event_id": self.last_event_seq,
            "created_at": _iso(self.created_at),
            "scheduled_at": _iso(self.scheduled_at),
            "attempted_at": _iso(self.attempted_at),
            "finalized_at": _iso(self.finalized_at),
            "unique_key": self.unique_key,
            "concurrency_key": self.concurrency_key,
        }


@dataclass(frozen=True)
class Event:
    """A row of ``odin.job_events``; ``seq`` is the SSE event id."""

    job_id: int
    seq: int
    type: str
    data: dict[str, Any]
    created_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Event:
        return cls(row["job_id"], row["seq"], row["type"], row["data"], row["created_at"])

    @property
    def is_final(self) -> bool:
        return self.type in FINAL_EVENT_TYPES

    @functools.cached_property
    def sse_frame(self) -> bytes:
        """The event framed for SSE: its sequence number as ``id``, its type as ``event``."""
        data = json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False)
        return f"id: {self.seq}\nevent: {self.type}\ndata: {data}\n\n".encode()

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "seq": self.seq,
            "type": self.type,
            "data": self.data,
            "at": _iso(self.created_at),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
