"""The HTTP API under ``/v1``, the health endpoints, and the one place errors become responses.

Handlers are thin: parse and validate the request, call the store or the broker, serialise.
Every error response is an RFC 9457 problem document (``application/problem+json``) with a
``detail`` sentence and, for invalid fields, an ``errors`` list of ``{"field", "message"}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout
from pydantic import ValidationError
from quart import Blueprint, Quart, Response, current_app, request
from werkzeug.exceptions import HTTPException

from odin_ext.errors import (
    ClientError,
    InvalidJobState,
    InvalidRequest,
    JobNotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from odin_ext.jobs import Job, JobState
from odin_ext.kinds import describe_validation
from odin_ext.payloads import UnstorableValue, check_storable
from odin_ext.runtime import Runtime
from odin_ext.store import DuplicateRejected, Enqueued, IdempotencyKeyReused, NewJob
from odin_ext.submissions import SubmitRequest, build_from_request
from odin_ext.streams import encode_comment, encode_event, encode_retry, follow
from odin_ext.tokens import events_url

logger = logging.getLogger(__name__)

QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

api = Blueprint("odin_api", __name__)

MAX_JOB_ID = 2**63 - 1
MAX_EVENT_ID = 2**31 - 1
LIST_LIMIT_DEFAULT = 50
LIST_LIMIT_MAX = 500
RECONNECT_HINT_MS = 1000


def runtime() -> Runtime:
    return current_app.extensions["odin"]  # type: ignore[no-any-return]


# Jobs -------------------------------------------------------------------------------------


@api.post("/v1/jobs")
async def submit_job() -> tuple[dict[str, Any], int, dict[str, str]]:
    body = await _json_body()
    submission = _parse(SubmitRequest, body)
    kind = runtime().registry.get(submission.kind)
    new_job = _new_job(submission)
    key = request.headers.get("Idempotency-Key")
    reject = kind.options.unique is not None and kind.options.unique.on_conflict == "reject"
    try:
        if key is not None:
            entry = await _enqueue_idempotent(new_job, key, body, reject)
        else:
            [entry] = await runtime().store.enqueue([new_job])
            if reject and not entry.created:
                raise DuplicateRejected(entry.job)
    except DuplicateRejected as exc:
        holder = exc.holder
        raise InvalidJobState(
            f"a job of kind {kind.name!r} with the same unique key exists: job {holder.id}, "
            f"{holder.state.value}",
            state=holder.state.value, job_id=holder.id,
        ) from None
    job = entry.job
    if entry.created:
        _log_enqueued(job)
    answer = _job_answer(job)
    answer["created"] = entry.created
    # 202 for a new job and for a replay of the request that created it. 200 for a
    # duplicate of a unique job, which is returned in its current state.
    status = 202 if entry.created or entry.replayed else 200
    headers = {"Location": answer["url"]}
    if entry.replayed:
        headers["Idempotent-Replayed"] = "true"
    return answer, status, headers


@api.post("/v1/jobs/bulk")
async def submit_jobs() -> tuple[dict[str, Any], int]:
    body = await _json_body()
    if request.headers.get("Idempotency-Key") is not None:
        raise InvalidRequest(
            "Idempotency-Key is not supported on bulk submissions; give the kinds unique "
            "keys, or submit jobs one by one with the header"
        )
    if not isinstance(body, dict) or set(body) != {"jobs"} or not isinstance(body["jobs"], list):
        raise InvalidRequest('request body must be an object {"jobs": [...]} and nothing else')
    items = body["jobs"]
    limit = runtime().settings.max_bulk_jobs
    if not items:
        raise InvalidRequest("jobs must hold at least one job")
    if len(items) > limit:
        raise PayloadTooLarge(
            f"{len(items)} jobs in one request, over the limit of {limit} (ODIN_MAX_BULK_JOBS)"
        )
    new_jobs, errors = [], []
    for index, item in enumerate(items):
        try:
            new_jobs.append(_new_job(_parse(SubmitRequest, item, what=f"jobs[{index}]")))
        except ClientError as exc:
            found = exc.errors or [{"field": "", "message": exc.detail}]
            errors.extend({"index": index, **error} for error in found)
    if errors:
        raise ValidationFailed(
            f"{len({e['index'] for e in errors})} of {len(items)} jobs are invalid; none was stored",
            errors=errors,
        )
    entries = await runtime().store.enqueue(new_jobs)
    logger.info(
        "jobs enqueued",
        extra={"event": "jobs_enqueued", "count": sum(e.created for e in entries)},
    )
    answers = []
    for entry in entries:
        answer = _job_answer(entry.job)
        answer["created"] = entry.created
        answers.append(answer)
    return {"jobs": answers}, 202


async def _enqueue_idempotent(new_job: NewJob, key: str, body: Any, reject: bool) -> Enqueued:
    if not 1 <= len(key) <= 255 or not key.isprintable() or not key.isascii():
        raise InvalidRequest("Idempotency-Key must be 1 to 255 printable ASCII characters")
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    request_hash = hashlib.sha256(canonical.encode()).hexdigest()
    try:
        return await runtime().store.enqueue_idempotent(
            new_job, key, request_hash, reject_duplicate=reject
        )
    except IdempotencyKeyReused:
        raise ValidationFailed(
            f"Idempotency-Key {key!r} was already used with a different request; "
            "use a new key for a new request"
        ) from None


def _log_enqueued(job: Job) -> None:
    # DEBUG, not INFO: at thousands of submissions a second, one line each costs more CPU than
    # the submission itself; /metrics counts jobs by state.
    if not logger.isEnabledFor(logging.DEBUG):
        return
    logger.debug(
        "job enqueued",
        extra={"event": "job_enqueued", "job_id": job.id, "kind": job.kind, "queue": job.queue,
               "state": job.state.value},
    )


@api.get("/v1/jobs/<int:job_id>")
async def get_job(job_id: int) -> dict[str, Any]:
    return _job_answer(await _load_job(job_id))


@api.get("/v1/jobs")
async def list_jobs() -> dict[str, Any]:
    state = _query_enum("state", JobState)
    kind = _query_text("kind")
    queue = _query_text("queue")
    limit = _query_int("limit", LIST_LIMIT_DEFAULT, 1, LIST_LIMIT_MAX)
    before_id = _query_int("cursor", None, 1, MAX_JOB_ID)
    jobs = await runtime().store.list(
        state=state, kind=kind, queue=queue, before_id=before_id, limit=limit + 1
    )
    has_more = len(jobs) > limit
    jobs = jobs[:limit]
    return {
        "jobs": [_job_answer(job) for job in jobs],
        "next_cursor": str(jobs[-1].id) if has_more else None,
    }


@api.post("/v1/jobs/<int:job_id>/cancel")
async def cancel_job(job_id: int) -> dict[str, Any]:
    await _load_job(job_id)
    store = runtime().store
    cancelled = await store.cancel(job_id, "cancel requested")
    job = await _load_job(job_id)
    if not cancelled:
        raise InvalidJobState(
            f"job {job_id} is already {job.state.value}; only scheduled, queued or running "
            "jobs can be cancelled",
            state=job.state.value,
        )
    logger.info("job cancelled", extra={"event": "job_cancelled", "job_id": job_id})
    return _job_answer(job)


@api.post("/v1/jobs/<int:job_id>/retry")
async def retry_job(job_id: int) -> dict[str, Any]:
    await _load_job(job_id)
    store = runtime().store
    try:
        retried = await store.retry(job_id)
    except psycopg.errors.UniqueViolation:
        raise InvalidJobState(
            f"job {job_id} cannot be retried: another job with the same unique key is active"
        ) from None
    job = await _load_job(job_id)
    if not retried:
        raise InvalidJobState(
            f"job {job_id} is {job.state.value}; only failed or cancelled jobs can be retried",
            state=job.state.value,
        )
    logger.info("job retry requested", extra={"event": "job_retry_requested", "job_id": job_id})
    return _job_answer(job)


@api.get("/v1/jobs/<int:job_id>/events")
async def stream_events(job_id: int) -> Response:
    after = _last_event_id()
    job = await _load_job(job_id)
    rt = runtime()
    if job.state.is_final and after >= job.last_event_seq:
        # Nothing will ever follow; 204 also stops an EventSource from reconnecting.
        return Response("", status=204)


    async def body() -> Any:
        yield encode_retry(RECONNECT_HINT_MS)
        async for event in follow(
            rt.store, rt.broker, job_id, after,
            keepalive_seconds=rt.settings.keepalive_seconds,
        ):
            yield encode_comment("keep-alive") if event is None else encode_event(event)
        if rt.stopping.is_set():
            # Clients reconnect (to another replica) with Last-Event-ID and lose nothing.
            yield encode_comment("server shutting down, reconnect")

    response = Response(
        body(),
        status=200,
        content_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    response.timeout = None  # an event stream may stay open as long as its job runs
    return response


# Queues -----------------------------------------------------------------------------------


@api.get("/v1/queues")
async def list_queues() -> dict[str, Any]:
    rows = await runtime().store.list_queues()
    return {"queues": [{"name": r["name"], "paused": r["paused"], "counts": r["counts"]}
                       for r in rows]}


@api.post("/v1/queues/<queue>/pause")
async def pause_queue(queue: str) -> dict[str, Any]:
    return await _set_paused(queue, True)


@api.post("/v1/queues/<queue>/resume")
async def resume_queue(queue: str) -> dict[str, Any]:
    return await _set_paused(queue, False)


async def _set_paused(queue: str, paused: bool) -> dict[str, Any]:
    if not QUEUE_NAME.match(queue):
        raise InvalidRequest(f"queue name {queue[:80]!r} is invalid: use 1 to 128 of A-Z a-z 0-9 _ . : -")
    row = await runtime().store.set_queue_paused(queue, paused)
    logger.info(
        "queue paused" if paused else "queue resumed",
        extra={"event": "queue_paused" if paused else "queue_resumed", "queue": queue},
    )
    return {"name": row["name"], "paused": row["paused"]}


# Kinds and health -------------------------------------------------------------------------


@api.get("/v1/kinds")
async def list_kinds() -> dict[str, Any]:
    return {"kinds": [item.schema() for item in runtime().registry]}


@api.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@api.get("/readyz")
async def readyz() -> tuple[dict[str, Any], int]:
    problem = await runtime().readiness_problem()
    if problem is not None:
        return {"status": "unavailable", "detail": problem}, 503
    return {"status": "ready"}, 200


# Request parsing --------------------------------------------------------------------------


async def _json_body() -> Any:
    content_type = request.mimetype
    if content_type != "application/json":
        raise UnsupportedMediaType(
            f"expected Content-Type application/json, got {content_type or 'none'}"
        )
    raw = await request.get_data(as_text=False)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except _NonStandardNumber as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply to be read") from None
    except ValueError as exc:
        # For example an integer of more than 4300 digits (Python's conversion limit).
        raise InvalidRequest(f"request body contains a value that cannot be parsed: {exc}") from None


class _NonStandardNumber(ValueError):
    pass


def _reject_constant(name: str) -> None:
    raise _NonStandardNumber(f"{name} is not a JSON number")


def _parse(model: type[SubmitRequest], body: Any, what: str = "request body") -> SubmitRequest:
    if not isinstance(body, dict):
        raise InvalidRequest(f"{what} must be a JSON object, got {_json_type(body)}")
    try:
        check_storable(body, "$")
    except UnstorableValue as exc:
        raise ValidationFailed(
            f"request contains a value that cannot be stored: {exc}",
            errors=[{"field": exc.path.removeprefix("$."), "message": exc.problem}],
        ) from None
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ValidationFailed(
            "request body does not match the job submission format",
            errors=describe_validation(exc, ""),
        ) from None


def _new_job(submission: SubmitRequest) -> NewJob:
    rt = runtime()
    return build_from_request(
        rt.registry.get(submission.kind),
        submission,
        default_max_attempts=rt.settings.default_max_attempts,
        max_args_bytes=rt.settings.max_args_bytes,
    )


async def _load_job(job_id: int) -> Job:
    if not 1 <= job_id <= MAX_JOB_ID:
        raise JobNotFound(f"job {job_id} not found")
    job = await runtime().store.get(job_id)
    if job is None:
        raise JobNotFound(f"job {job_id} not found")
    return job


def _last_event_id() -> int:
    header = request.headers.get("Last-Event-ID")
    value = header if header is not None else request.args.get("last_event_id")
    if value is None or value == "":
        return 0
    if not value.isascii() or not value.isdigit() or int(value) > MAX_EVENT_ID:
        source = "Last-Event-ID header" if header is not None else "last_event_id parameter"
        raise InvalidRequest(
            f"{source} must be an event id from 0 to {MAX_EVENT_ID}, got {value[:40]!r}"
        )
    return int(value)


def _query_text(name: str) -> str | None:
    value = request.args.get(name)
    if value is None or value == "":
        return None
    if "\x00" in value:
        raise InvalidRequest(f"query parameter {name} contains a NUL character")
    if len(value) > 200:
        raise InvalidRequest(f"query parameter {name} is longer than 200 characters")
    return value


def _query_int(name: str, default: int | None, low: int, high: int) -> int | None:
    value = request.args.get(name)
    if value is None or value == "":
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise InvalidRequest(
            f"query parameter {name} must be an integer from {low} to {high}, got {value[:40]!r}"
        )
    return int(value)


def _query_enum(name: str, enum: type[JobState]) -> JobState | None:
    value = _query_text(name)
    if value is None:
        return None
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise InvalidRequest(
            f"query parameter {name} must be one of {allowed}, got {value[:40]!r}"
        ) from None


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


# Answers ----------------------------------------------------------------------------------


def _base_url() -> str:
    public = runtime().settings.public_url
    return public.rstrip("/") if public else request.host_url.rstrip("/")


def _job_answer(job: Job) -> dict[str, Any]:
    base = _base_url()
    answer = job.to_json()
    answer["url"] = f"{base}/v1/jobs/{job.id}"
    answer["events_url"] = events_url(base, job.id)
    return answer


def problem(
    status: int,
    title: str,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    **extensions: Any,
) -> Response:
    """Build an RFC 9457 problem response; ``extensions`` become extra members."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status,
                            "detail": detail}
    if errors:
        body["errors"] = errors
    body.update(extensions)
    return Response(json.dumps(body), status=status, content_type="application/problem+json")


def register_error_handlers(app: Quart) -> None:
    """Turn every error into a problem response, and log unexpected ones once, here."""

    @app.errorhandler(ClientError)
    async def _client_error(exc: ClientError) -> Response:
        return problem(exc.status, exc.title, exc.detail, exc.errors, **exc.extensions)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            limit = runtime().settings.max_body_bytes
            error = PayloadTooLarge(f"request body is larger than {limit} bytes (ODIN_MAX_BODY_BYTES)")
            return problem(error.status, error.title, error.detail)
        detail = exc.description or exc.name
        if status == 404:
            detail = f"no route for {request.method} {request.path}"
        elif status == 405:
            detail = f"method {request.method} is not allowed on {request.path}"
        return problem(status, exc.name, detail)

    @app.errorhandler(psycopg.OperationalError)
    @app.errorhandler(PoolTimeout)
    async def _database_unavailable(exc: Exception) -> Response:
        logger.warning(
            "request failed: database unavailable",
            extra={"event": "request_db_unavailable", "path": request.path, "error": repr(exc),
                   "job_id": (request.view_args or {}).get("job_id")},
        )
        answer = problem(503, "Service unavailable", "the database is unavailable, try again")
        answer.headers["Retry-After"] = "1"
        return answer

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        logger.error(
            "request failed",
            exc_info=exc,
            extra={"event": "request_failed", "path": request.path, "error": repr(exc),
                   "job_id": (request.view_args or {}).get("job_id")},
        )
        return problem(500, "Internal error", "the server failed to handle this request")
