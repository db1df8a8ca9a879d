"""Turning a submission into a job to insert: validation, defaults, uniqueness and limits.

Shared by the HTTP API (single and bulk), the leader's periodic schedules and transactional
enqueue from Python code, so a job is built the same way whichever door it comes through.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from odin_ext.errors import ValidationFailed
from odin_ext.jobs import JobState
from odin_ext.kinds import Kind
from odin_ext.payloads import UnstorableValue, check_storable, json_size
from odin_ext.settings import QueueName
from odin_ext.store import NewJob

MAX_DELAY_SECONDS = 10 * 365 * 24 * 3600


class SubmitRequest(BaseModel):
    """One job submission: the body of ``POST /v1/jobs``, or one item of a bulk request."""

    model_config = ConfigDict(extra="forbid")

    kind: Annotated[str, Field(min_length=1, max_length=200)]
    args: dict[str, Any] = Field(default_factory=dict)
    queue: QueueName | None = None
    priority: Annotated[int, Field(ge=-100, le=100)] = 0
    max_attempts: Annotated[int, Field(ge=1, le=1000)] | None = None
    timeout_seconds: Annotated[float, Field(gt=0, le=7 * 24 * 3600)] | None = None
    delay_seconds: Annotated[float, Field(ge=0, le=MAX_DELAY_SECONDS)] | None = None
    run_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _one_start_time(self) -> SubmitRequest:
        if self.delay_seconds is not None and self.run_at is not None:
            raise ValueError("give either delay_seconds or run_at, not both")
        return self


def build_job(
    kind: Kind,
    args: Any,
    *,
    default_max_attempts: int,
    max_args_bytes: int,
    queue: str | None = None,
    priority: int = 0,
    max_attempts: int | None = None,
    timeout_seconds: float | None = None,
    delay_seconds: float | None = None,
    run_at: datetime | None = None,
    now: datetime | None = None,
) -> NewJob:
    """Validate ``args`` against ``kind`` and return the job to insert.

    Raises ``ValidationFailed`` for invalid, unstorable or oversized arguments and for a
    run time without a time zone.
    """
    try:
        check_storable(args, "args")
    except UnstorableValue as exc:
        raise ValidationFailed(
            f"args hold a value that cannot be stored: {exc}",
            errors=[{"field": exc.path, "message": exc.problem}],
        ) from None
    checked = kind.validate_args(args)
    size = json_size(checked)
    if size > max_args_bytes:
        raise ValidationFailed(
            f"args are {size} bytes of JSON, over the limit of {max_args_bytes} "
            "(ODIN_MAX_ARGS_BYTES)",
            errors=[{"field": "args", "message": f"{size} bytes, limit {max_args_bytes}"}],
        )
    now = now or datetime.now(UTC)
    scheduled_at = None
    if run_at is not None:
        if run_at.tzinfo is None:
            raise ValidationFailed(
                "run_at has no time zone",
                errors=[{"field": "run_at", "message": "give a time zone, for example +00:00"}],
            )
        try:
            scheduled_at = run_at.astimezone(UTC)
        except OverflowError:
            raise ValidationFailed(
                "run_at is outside the supported range of dates",
                errors=[{"field": "run_at", "message": "give a date between years 1 and 9999 in UTC"}],
            ) from None
    elif delay_seconds:
        scheduled_at = now + timedelta(seconds=delay_seconds)
    unique = kind.options.unique
    return NewJob(
        kind=kind.name,
        queue=queue or kind.options.queue,
        args=checked,
        priority=priority,
        max_attempts=max_attempts or kind.options.max_attempts or default_max_attempts,
        timeout_seconds=timeout_seconds or kind.options.timeout_seconds,
        scheduled_at=scheduled_at,
        unique_key=kind.unique_key(checked, now),
        unique_states=tuple(JobState(s) for s in unique.states) if unique else None,
        concurrency_key=kind.concurrency_key(checked),
        concurrency_limit=kind.options.concurrency_limit,
    )


def build_from_request(
    kind: Kind, request: SubmitRequest, *, default_max_attempts: int, max_args_bytes: int
) -> NewJob:
    """Return the job that a validated ``SubmitRequest`` describes."""
    return build_job(
        kind,
        request.args,
        default_max_attempts=default_max_attempts,
        max_args_bytes=max_args_bytes,
        queue=request.queue,
        priority=request.priority,
        max_attempts=request.max_attempts,
        timeout_seconds=request.timeout_seconds,
        delay_seconds=request.delay_seconds,
        run_at=request.run_at,
    )
