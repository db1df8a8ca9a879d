"""Access control of HTTP requests: API keys and scopes, stream tokens, roles, CORS, stream limits.

``install_auth`` registers hooks on the app. Before each request, in order:

1. A CORS preflight (``OPTIONS`` with ``Origin``) from an allowed origin gets a 204 response.
2. A process with ``serve_api`` false (workers only) answers 404 to everything except
   ``/healthz``, ``/readyz`` and ``/metrics``.
3. The route's scope is looked up (see ``required_scope``). Routes without a scope pass.
4. With API keys configured, the request must carry ``Authorization: Bearer <key>`` for a
   key with that scope (401 when the key is missing or unknown, 403 when its scopes do not
   include the route's). An event stream may instead carry the ``token`` query parameter of
   its ``events_url`` (see ``odin_ext.tokens``), checked once, when the stream opens.
5. An event stream takes a slot: at most ``max_streams`` open streams per process and
   ``max_streams_per_key`` per API key; beyond them the answer is 429 with ``Retry-After``.

Scopes by route; ``admin`` includes every other scope:

- none: ``/healthz``, ``/readyz``, ``OPTIONS``, and ``GET`` routes outside ``/v1`` (the
  console's files);
- ``submit``: ``POST /v1/jobs`` and ``POST /v1/jobs/bulk``;
- ``cancel``: ``POST /v1/jobs/{id}/cancel`` and ``POST /v1/jobs/{id}/retry``;
- ``read``: every other ``GET`` under ``/v1`` (jobs, events, kinds, queues, stats), and
  ``/metrics`` unless ``metrics_public`` is set;
- ``admin``: every other route, such as queue pause and resume.

With no API keys configured every request passes; settings allow that only on a loopback
address unless ``allow_unauthenticated`` is set. Keys are stored as SHA-256 hashes: a
presented key is hashed and compared with every configured hash in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections import Counter
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from quart import Quart, Response, g, request
from quart.wrappers.response import ResponseBody

from odin_ext.api import problem
from odin_ext.errors import ClientError
from odin_ext.metrics import count_rejection
from odin_ext.settings import Scope, Settings, is_loopback
from odin_ext.tokens import (
    EXTENSION as TOKENS_EXTENSION,
)
from odin_ext.tokens import (
    KEY_NAME_ATTRIBUTE,
    InvalidStreamToken,
    StreamTokenForOtherJob,
    StreamTokens,
)

logger = logging.getLogger(__name__)

EXTENSION = "odin_auth"
STREAM_ENDPOINT = "odin_api.stream_events"
METRICS_ENDPOINT = "odin_metrics.serve_metrics"
# Endpoints a workers-only process (serve_api false) still serves.
WORKER_ENDPOINTS = frozenset({"odin_api.healthz", "odin_api.readyz", METRICS_ENDPOINT})
PUBLIC_ENDPOINTS = frozenset({"odin_api.healthz", "odin_api.readyz"})
# Scopes of the routes that the method-based default would get wrong.
ENDPOINT_SCOPES = {
    "odin_api.submit_job": Scope.SUBMIT,
    "odin_api.submit_jobs": Scope.SUBMIT,
    "odin_api.cancel_job": Scope.CANCEL,
    "odin_api.retry_job": Scope.CANCEL,
}
READ_METHODS = frozenset({"GET", "HEAD"})

# Streams end when their job ends, so a slot usually frees within seconds to minutes.
STREAM_RETRY_AFTER_SECONDS = 5
# A rejection of one reason is logged at most once per interval, with the count of repeats.
REJECTION_LOG_INTERVAL_SECONDS = 10.0
CORS_ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID"
CORS_EXPOSED_HEADERS = "Location, Retry-After, Idempotent-Replayed, WWW-Authenticate"
CORS_MAX_AGE_SECONDS = 600

# Attribute of ``quart.g`` with the stream slot of the current request, until its response
# takes it over.
_SLOT_ATTRIBUTE = "odin_stream_slot"


class Unauthorized(ClientError):
    """A request without a valid API key (or stream token) for a route that needs one."""

    status = 401
    title = "Unauthorized"


class Forbidden(ClientError):
    """A valid API key whose scopes do not include the route's."""

    status = 403
    title = "Forbidden"


class TooManyStreams(ClientError):
    """An event stream over the per-process or per-key limit."""

    status = 429
    title = "Too many requests"


@dataclass(frozen=True)
class ApiKey:
    """A configured key: its name (safe to log), the SHA-256 of the key, and its scopes."""

    name: str
    digest: bytes
    scopes: frozenset[Scope]

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes


def hash_key(key: str) -> str:
    """Return the hex SHA-256 of ``key``, as ``ODIN_API_KEYS`` stores it."""
    return hashlib.sha256(key.encode()).hexdigest()


def load_api_keys(settings: Settings) -> list[ApiKey]:
    """Return the keys of ``api_keys`` and ``dev_api_keys`` (named dev-1, dev-2, ...)."""
    keys = [
        ApiKey(item.name, bytes.fromhex(item.sha256), frozenset(item.scopes))
        for item in settings.api_keys
    ]
    for number, secret in enumerate(settings.dev_api_keys, start=1):
        digest = hashlib.sha256(secret.get_secret_value().encode()).digest()
        keys.append(ApiKey(f"dev-{number}", digest, frozenset(Scope)))
    return keys


def required_scope(
    endpoint: str | None, method: str, path: str, metrics_public: bool
) -> Scope | None:
    """Return the scope a request needs, or None when it needs no key."""
    if method == "OPTIONS" or endpoint in PUBLIC_ENDPOINTS:
        return None
    if endpoint == METRICS_ENDPOINT:
        return None if metrics_public else Scope.READ
    if endpoint in ENDPOINT_SCOPES:
        return ENDPOINT_SCOPES[endpoint]
    if path == "/v1" or path.startswith("/v1/"):
        return Scope.READ if method in READ_METHODS else Scope.ADMIN
    return None if method in READ_METHODS else Scope.ADMIN


class StreamSlots:
    """Counts the open event streams of this process, in all and per API key.

    Only the event loop thread touches the counts.
    """

    def __init__(self, max_streams: int, max_streams_per_key: int) -> None:
        self.max_streams = max_streams
        self.max_streams_per_key = max_streams_per_key
        self.open_count = 0
        self._per_key: Counter[str] = Counter()

    def reserve(self, key_name: str | None) -> StreamSlot:
        """Take a slot for ``key_name`` (None without keys); raise ``TooManyStreams`` when full."""
        if self.open_count >= self.max_streams:
            raise TooManyStreams(
                f"this server has {self.open_count} event streams open, its limit "
                f"(ODIN_MAX_STREAMS); retry later or on another replica",
                reason="stream_limit",
            )
        if key_name is not None and self._per_key[key_name] >= self.max_streams_per_key:
            raise TooManyStreams(
                f"API key {key_name!r} has {self._per_key[key_name]} event streams open on "
                f"this server, its limit (ODIN_MAX_STREAMS_PER_KEY); close one or retry later",
                reason="stream_key_limit",
            )
        self.open_count += 1
        if key_name is not None:
            self._per_key[key_name] += 1
        return StreamSlot(self, key_name)

    def _release(self, key_name: str | None) -> None:
        self.open_count -= 1
        if key_name is not None:
            self._per_key[key_name] -= 1
            if self._per_key[key_name] <= 0:
                del self._per_key[key_name]


class StreamSlot:
    """One reserved stream; ``release`` is idempotent."""

    def __init__(self, slots: StreamSlots, key_name: str | None) -> None:
        self._slots: StreamSlots | None = slots
        self._key_name = key_name

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots._release(self._key_name)

    # Last resort for a response that was dropped before its body was opened (the client
    # left in between): no code path holds the slot any more, so garbage collection frees it.
    __del__ = release


class _SlotReleasingBody(ResponseBody):
    """Wraps a streaming body so that its stream slot is released when sending ends."""

    def __init__(self, body: ResponseBody, slot: StreamSlot) -> None:
        self._body = body
        self._slot = slot

    async def __aenter__(self) -> Any:
        return await self._body.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            # Quart annotates these without None, but passes None after a clean exit.
            await self._body.__aexit__(exc_type, exc_value, tb)  # type: ignore[arg-type]
        finally:
            self._slot.release()


class _RejectionLog:
    """Logs rejected requests, at most once per reason and interval, with the repeats counted."""

    def __init__(self) -> None:
        self._last_logged: dict[str, float] = {}
        self._repeats: Counter[str] = Counter()

    def record(self, reason: str, status: int, key_name: str | None) -> None:
        count_rejection(reason)
        now = time.monotonic()
        if now - self._last_logged.get(reason, float("-inf")) < REJECTION_LOG_INTERVAL_SECONDS:
            self._repeats[reason] += 1
            return
        self._last_logged[reason] = now
        repeats = self._repeats.pop(reason, 0)
        job_id = (request.view_args or {}).get("job_id")
        logger.info(
            "request rejected",
            extra={
                "event": "request_rejected",
                "reason": reason,
                "status": status,
                "method": request.method,
                "path": request.path,
                "job_id": job_id,
                "key": key_name,
                "client": request.remote_addr,
                "repeats_since_last_logged": repeats,
            },
        )


class AccessPolicy:
    """Decides, per request, whether it may proceed; built once by ``install_auth``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = load_api_keys(settings)
        self.key_names = frozenset(key.name for key in self.keys)
        self.tokens = StreamTokens.from_settings(settings) if self.keys else None
        self.slots = StreamSlots(settings.max_streams, settings.max_streams_per_key)
        self.cors_origins = frozenset(settings.cors_allowed_origins)
        self._rejections = _RejectionLog()

    async def before_request(self) -> Response | None:
        """Return a response for a preflight or a rejected request, or None to let it through."""
        if self._is_preflight():
            return self._preflight_answer()
        try:
            self._check_role()
            key_name = self._authorize()
            if request.endpoint == STREAM_ENDPOINT:
                setattr(g, _SLOT_ATTRIBUTE, self.slots.reserve(key_name))
        except ClientError as exc:
            return self._reject(exc)
        return None

    async def after_request(self, response: Response) -> Response:
        """Hand the stream slot to the streaming body, add CORS headers, and close the
        connection after an error response to a request with a body."""
        slot: StreamSlot | None = g.pop(_SLOT_ATTRIBUTE, None)
        if slot is not None:
            if response.status_code == 200 and response.mimetype == "text/event-stream":
                response.response = _SlotReleasingBody(response.response, slot)
            else:
                slot.release()
        response.headers.update(self._cors_headers())
        if response.status_code >= 400 and _has_body(request.headers):
            # A rejected request may not have been read to its end (too large, or rejected
            # before reading), and then Hypercorn drops the connection after the response.
            # Saying so lets the client open a new one instead of failing on the next request.
            response.headers["Connection"] = "close"
        return response

    async def teardown_request(self, exc: BaseException | None) -> None:
        """Release a slot that no response took over, after an error no handler caught."""
        slot: StreamSlot | None = g.pop(_SLOT_ATTRIBUTE, None)
        if slot is not None:
            slot.release()

    def _check_role(self) -> None:
        if self.settings.serve_api or request.endpoint in WORKER_ENDPOINTS:
            return
        raise _NotServed(
            f"this process runs workers only (ODIN_SERVE_API=false) and serves /healthz, "
            f"/readyz and /metrics; send {request.method} {request.path} to an API replica",
            reason="api_not_served",
        )

    def _authorize(self) -> str | None:
        """Return the name of the request's API key, or None when no key is needed."""
        if not self.keys:
            return None
        scope = required_scope(
            request.endpoint, request.method, request.path, self.settings.metrics_public
        )
        if scope is None:
            return None
        if request.endpoint == STREAM_ENDPOINT and "token" in request.args:
            return self._authorize_token(request.args["token"])

        key = self._authenticate()
        setattr(g, KEY_NAME_ATTRIBUTE, key.name)
        if not key.allows(scope):
            granted = ", ".join(sorted(key.scopes))
            raise Forbidden(
                f"API key {key.name!r} has scopes {granted}, but {request.method} "
                f"{request.path} needs {scope.value}",
                reason="insufficient_scope",
                required_scope=scope.value,
            )
        return key.name

    def _authenticate(self) -> ApiKey:
        header = request.headers.get("Authorization")
        if header is None:
            raise Unauthorized(
                "this route needs an API key: send Authorization: Bearer <key>",
                reason="missing_key",
            )
        scheme, _, credentials = header.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials:
            raise Unauthorized(
                "the Authorization header must be Bearer <key>", reason="invalid_key"
            )
        key = self._match(credentials)
        if key is None:
            raise Unauthorized("the API key is not valid", reason="invalid_key")
        return key

    def _match(self, presented: str) -> ApiKey | None:
        # Every configured hash is compared, match or not, so the time taken does not tell
        # which key (if any) matched.
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found

    def _authorize_token(self, token: str) -> str:
        assert self.tokens is not None  # API keys are configured, so tokens exist
        job_id = int((request.view_args or {})["job_id"])
        grant = self.tokens.verify(token, job_id)
        if grant.key_name not in self.key_names:
            raise Unauthorized(
                f"the stream token was issued to API key {grant.key_name!r}, which is no "
                "longer configured",
                reason="invalid_token",
            )
        setattr(g, KEY_NAME_ATTRIBUTE, grant.key_name)
        return grant.key_name

    def _reject(self, exc: ClientError) -> Response:
        reason = str(exc.extensions.pop("reason", None) or _REASONS.get(type(exc), "rejected"))
        self._rejections.record(reason, exc.status, g.get(KEY_NAME_ATTRIBUTE))
        answer = problem(exc.status, exc.title, exc.detail, exc.errors, **exc.extensions)
        if exc.status == 401:
            challenge = 'Bearer realm="odin"'
            if reason in {"invalid_key", "invalid_token"}:
                challenge += ', error="invalid_token"'
            answer.headers["WWW-Authenticate"] = challenge
        elif reason == "insufficient_scope":
            answer.headers["WWW-Authenticate"] = (
                f'Bearer realm="odin", error="insufficient_scope", '
                f'scope="{exc.extensions["required_scope"]}"'
            )
        elif exc.status == 429:
            answer.headers["Retry-After"] = str(STREAM_RETRY_AFTER_SECONDS)
        return answer

    # CORS ---------------------------------------------------------------------------------

    def _allowed_origin(self) -> str | None:
        origin = request.headers.get("Origin")
        if origin is None or not self.cors_origins:
            return None
        if "*" in self.cors_origins:
            return "*"
        return origin if origin in self.cors_origins else None

    def _cors_headers(self) -> dict[str, str]:
        origin = self._allowed_origin()
        if origin is None:
            return {}
        headers = {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": CORS_EXPOSED_HEADERS,
        }
        if origin != "*":
            headers["Vary"] = "Origin"
        return headers

    def _is_preflight(self) -> bool:
        return (
            request.method == "OPTIONS"
            and "Access-Control-Request-Method" in request.headers
            and self._allowed_origin() is not None
        )

    def _preflight_answer(self) -> Response:
        # after_request adds Access-Control-Allow-Origin, as to every response.
        answer = Response("", status=204)
        answer.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        answer.headers["Access-Control-Allow-Headers"] = CORS_ALLOWED_HEADERS
        answer.headers["Access-Control-Max-Age"] = str(CORS_MAX_AGE_SECONDS)
        return answer


class _NotServed(ClientError):
    status = 404
    title = "Not found"


_REASONS: dict[type[ClientError], str] = {
    InvalidStreamToken: "invalid_token",
    StreamTokenForOtherJob: "other_job_token",
}


def _has_body(headers: Any) -> bool:
    length = headers.get("Content-Length")
    return (length is not None and length != "0") or "Transfer-Encoding" in headers


def install_auth(app: Quart, settings: Settings) -> AccessPolicy:
    """Register the access hooks on ``app`` and log how requests are authenticated."""
    policy = AccessPolicy(settings)
    app.extensions[EXTENSION] = policy
    if policy.tokens is not None:
        app.extensions[TOKENS_EXTENSION] = policy.tokens
    app.before_request(policy.before_request)
    app.after_request(policy.after_request)
    app.teardown_request(policy.teardown_request)
    _log_policy(policy)
    return policy


def _log_policy(policy: AccessPolicy) -> None:
    settings = policy.settings
    if not policy.keys:
        exposure = (
            "only this machine can connect"
            if is_loopback(settings.host)
            else "anyone who reaches this port can submit, read and cancel jobs "
            "(ODIN_ALLOW_UNAUTHENTICATED=true)"
        )
        logger.warning(
            f"no API keys configured, every request is allowed: {exposure}",
            extra={"event": "auth_disabled", "host": settings.host},
        )
        return
    if settings.dev_api_keys:
        logger.warning(
            "plain-text development API keys are in use; configure hashed keys in "
            "ODIN_API_KEYS for production",
            extra={"event": "dev_api_keys_in_use", "count": len(settings.dev_api_keys)},
        )
    assert policy.tokens is not None
    logger.info(
        "API keys required",
        extra={
            "event": "auth_enabled",
            "keys": sorted(policy.key_names),
            "stream_signing_key_ids": policy.tokens.key_ids,
            "cors_allowed_origins": settings.cors_allowed_origins,
        },
    )
