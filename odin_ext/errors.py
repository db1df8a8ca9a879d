"""Odin's exceptions, in three families.

- Client errors (``ClientError``) become HTTP 4xx responses in the API, each with its status.
- Outcomes a job function raises to steer its own job (``RetryLater``, ``CancelJob``).
- Infrastructure errors (``StoreUnavailable``) for database trouble that outlasted its retries.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Root of every exception Odin raises on purpose."""


class ClientError(ServiceError):
    """A request that Odin rejects; ``status`` is the HTTP status, ``errors`` per-field details."""

    status = 400
    title = "Bad request"

    def __init__(
        self, detail: str, *, errors: list[dict[str, Any]] | None = None, **extensions: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        # Extra members of the problem document, for example the job's current state.
        self.extensions = extensions


class InvalidRequest(ClientError):
    status = 400
    title = "Invalid request"


class ValidationFailed(ClientError):
    status = 422
    title = "Validation failed"


class UnknownKind(ClientError):
    status = 422
    title = "Unknown job kind"


class JobNotFound(ClientError):
    status = 404
    title = "Job not found"


class InvalidJobState(ClientError):
    status = 409
    title = "Invalid job state"


class PayloadTooLarge(ClientError):
    status = 413
    title = "Payload too large"


class UnsupportedMediaType(ClientError):
    status = 415
    title = "Unsupported media type"


class RetryLater(ServiceError):
    """Raised by a job to end this attempt and run again after ``delay_seconds``.

    The retry still counts as an attempt; once ``max_attempts`` is used up the job fails.
    """

    def __init__(self, delay_seconds: float = 0.0, reason: str = "retry requested") -> None:
        super().__init__(reason)
        delay = float(delay_seconds)
        # NaN and negative delays mean "at once"; the worker caps very long ones.
        self.delay_seconds = delay if delay > 0 else 0.0
        self.reason = reason


class CancelJob(ServiceError):
    """Raised by a job to end as failed at once, without using its remaining attempts."""

    def __init__(self, reason: str = "job gave up") -> None:
        super().__init__(reason)
        self.reason = reason


class AttemptLost(ServiceError):
    """The worker no longer owns the attempt it is running (rescued, cancelled or timed out).

    Raised inside the job when it reports progress; the worker stops the job and writes nothing.
    """

    def __init__(self, job_id: int, attempt: int) -> None:
        super().__init__(f"job {job_id} attempt {attempt} is no longer owned by this worker")
        self.job_id = job_id
        self.attempt = attempt


class StoreUnavailable(ServiceError):
    """The database could not be reached, after bounded retries."""
