"""Errors of Odin's Python clients (``odin_ext.client``), which re-exports them.

``OdinError`` is the root: a request failed. ``OdinUnavailable`` means no response came at all,
and ``WaitTimeout`` that a wait for a job ran out of time.
"""

from __future__ import annotations

from typing import Any

import httpx

from odin_ext.jobs import Event


class OdinError(Exception):
    """A request to Odin failed.

    ``status`` is the HTTP status of the response, or None when no response came. ``detail`` is
    the problem document's sentence, ``errors`` its list of ``{"field", "message"}`` for
    invalid fields, and ``problem`` the whole document (empty when the body was not one).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        detail: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        problem: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail or message
        self.errors = errors or []
        self.problem = problem or {}


class OdinUnavailable(OdinError):
    """Odin could not be reached, or a lost event stream could not be reopened in time."""


class WaitTimeout(OdinError, TimeoutError):
    """A wait ran out of time before the job reached a final state.

    ``last_event`` is the job's latest event that the wait received, None if it received none.
    """

    def __init__(self, job_id: int, waited_seconds: float, last_event: Event | None) -> None:
        seen = (
            f"its last event was {last_event.seq} ({last_event.type})"
            if last_event is not None
            else "no event arrived"
        )
        super().__init__(f"job {job_id} did not finish within {waited_seconds:g} s; {seen}")
        self.job_id = job_id
        self.waited_seconds = waited_seconds
        self.last_event = last_event


def error_from_response(method: str, path: str, response: httpx.Response) -> OdinError:
    """Build the error for a failed response from its problem document, if it has one.

    The body must have been read already (``read`` or ``aread`` on a streamed response).
    """
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {}

    status = response.status_code
    detail = problem.get("detail") or response.reason_phrase or "no detail given"
    errors = [item for item in problem.get("errors", []) if isinstance(item, dict)]
    message = f"{method} {path} returned {status}: {detail}"
    if errors:
        fields = "; ".join(f"{item.get('field')}: {item.get('message')}" for item in errors)
        message = f"{message} ({fields})"
    return OdinError(message, status=status, detail=str(detail), errors=errors, problem=problem)
