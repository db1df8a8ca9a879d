"""Signed stream tokens: short-lived grants to open one job's event stream without headers.

A browser's ``EventSource`` cannot send an ``Authorization`` header, so when API keys are
configured the ``events_url`` of every job in a response carries a ``token`` query parameter:
``v1.<key id>.<payload>.<signature>``. The payload is base64url JSON with the job id, the
expiry (Unix seconds) and the name of the API key that the token was issued to; the
signature is HMAC-SHA256 over everything before it, so neither the job, the expiry nor the
key name can be changed. The key id names the signing secret, derived from the secret
itself, so operators configure secrets only.

Rotation: ``stream_signing_keys`` is a list; the first secret signs, all of them verify. Put
a new secret first, and drop the old one once ``stream_token_ttl_seconds`` has passed. A
token is checked only when a stream opens, so streams already open never end because of a
rotation.

Limitations:
- Expiry uses each replica's wall clock; replicas whose clocks differ by seconds accept or
  reject a token a few seconds early or late.
- A token is a bearer credential for one job's events until it expires: anyone who copies
  the URL (from a proxy log or a browser history) can read that job's events until then.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from quart import current_app, g

from odin_ext.errors import ClientError
from odin_ext.settings import Settings

logger = logging.getLogger(__name__)

TOKEN_VERSION = "v1"
# Key of the ``StreamTokens`` in ``app.extensions``; absent when no API keys are configured.
EXTENSION = "odin_stream_tokens"
# Attribute of ``quart.g`` where authentication leaves the name of the request's API key.
KEY_NAME_ATTRIBUTE = "odin_key_name"


class InvalidStreamToken(ClientError):
    """A stream token that is malformed, altered, signed with an unknown key or expired."""

    status = 401
    title = "Unauthorized"


class StreamTokenForOtherJob(ClientError):
    """A valid stream token presented for another job's stream."""

    status = 403
    title = "Forbidden"


@dataclass(frozen=True)
class StreamGrant:
    """Permission from a verified token: open ``job_id``'s stream on behalf of ``key_name``."""

    job_id: int
    key_name: str
    expires_at: int


@dataclass(frozen=True)
class _SigningKey:
    key_id: str
    secret: bytes


class StreamTokens:
    """Issues and verifies stream tokens with a list of secrets: the first signs, all verify."""

    def __init__(
        self,
        signing_secrets: Sequence[bytes],
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not signing_secrets:
            raise ValueError("StreamTokens needs at least one secret")
        self._keys = [_SigningKey(_key_id(secret), secret) for secret in signing_secrets]
        self._by_id = {key.key_id: key for key in reversed(self._keys)}
        self._ttl_seconds = ttl_seconds
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamTokens:
        """Build from ``stream_signing_keys``, or from a random secret when none is configured."""
        configured = [key.get_secret_value().encode() for key in settings.stream_signing_keys]
        if not configured:
            logger.warning(
                "no stream signing keys configured, using a random key: event stream URLs "
                "work only on the replica that issued them; set ODIN_STREAM_SIGNING_KEYS to "
                "the same list on every replica",
                extra={"event": "stream_signing_key_random"},
            )
            configured = [secrets.token_bytes(32)]
        return cls(configured, settings.stream_token_ttl_seconds)

    @property
    def key_ids(self) -> list[str]:
        """Ids of the secrets, signing secret first; safe to log."""
        return [key.key_id for key in self._keys]

    def issue(self, job_id: int, key_name: str) -> str:
        """Return a token for ``job_id``'s stream, valid for ``ttl_seconds`` from now."""
        signing_key = self._keys[0]
        expires_at = int(self._clock() + self._ttl_seconds)
        payload = {"job": job_id, "exp": expires_at, "key": key_name}
        encoded = _b64encode(json.dumps(payload, separators=(",", ":")).encode())
        signed_part = f"{TOKEN_VERSION}.{signing_key.key_id}.{encoded}"
        return f"{signed_part}.{_b64encode(_sign(signing_key.secret, signed_part))}"

    def verify(self, token: str, job_id: int) -> StreamGrant:
        """Return the grant of ``token`` for ``job_id``'s stream.

        Raises ``InvalidStreamToken`` (401) for a malformed, altered, unknown-key or expired
        token, and ``StreamTokenForOtherJob`` (403) for a valid token of another job.
        """
        version, key_id, encoded, signature = _split(token)
        if version != TOKEN_VERSION:
            raise InvalidStreamToken(f"stream token version {version[:8]!r} is not supported")
        signing_key = self._by_id.get(key_id)
        if signing_key is None:
            raise InvalidStreamToken(
                f"stream token was signed with key {key_id[:16]!r}, which this server does not "
                "have; every replica needs the same ODIN_STREAM_SIGNING_KEYS"
            )
        expected = _sign(signing_key.secret, f"{version}.{key_id}.{encoded}")
        if not hmac.compare_digest(expected, _b64decode(signature)):
            raise InvalidStreamToken("stream token signature is invalid")

        grant = _parse_payload(encoded)
        if grant.expires_at <= self._clock():
            expired = datetime.fromtimestamp(grant.expires_at, UTC).isoformat()
            raise InvalidStreamToken(
                f"stream token expired at {expired}; get a fresh events_url from "
                f"GET /v1/jobs/{job_id}"
            )
        if grant.job_id != job_id:
            raise StreamTokenForOtherJob(
                f"stream token is for job {grant.job_id}, not job {job_id}"
            )
        return grant


def events_url(base_url: str, job_id: int) -> str:
    """Return the URL of ``job_id``'s event stream, with a token when API keys are in use.

    The token is issued to the API key of the current request (``KEY_NAME_ATTRIBUTE`` of
    ``quart.g``, set by authentication), so streams opened with it count against that key's
    stream limit.
    """
    url = f"{base_url}/v1/jobs/{job_id}/events"
    tokens: StreamTokens | None = current_app.extensions.get(EXTENSION)
    if tokens is None:
        return url
    key_name = g.get(KEY_NAME_ATTRIBUTE, "")
    return f"{url}?token={tokens.issue(job_id, key_name)}"


def _key_id(secret: bytes) -> str:
    # A public name for the secret: 12 characters of a domain-separated hash, which reveals
    # nothing useful about a secret of 32 or more characters.
    return _b64encode(hashlib.sha256(b"odin stream signing key id\0" + secret).digest())[:12]


def _sign(secret: bytes, signed_part: str) -> bytes:
    return hmac.new(secret, signed_part.encode(), hashlib.sha256).digest()


def _split(token: str) -> tuple[str, str, str, str]:
    parts = token.split(".")
    if len(parts) != 4 or not all(parts) or len(token) > 1024:
        raise InvalidStreamToken(
            "stream token is malformed; use the events_url of GET /v1/jobs/{id} as it is"
        )
    return parts[0], parts[1], parts[2], parts[3]


def _parse_payload(encoded: str) -> StreamGrant:
    # Only signed payloads get here, so a failure means a signing bug, not an attack.
    try:
        payload = json.loads(_b64decode(encoded))
        return StreamGrant(int(payload["job"]), str(payload["key"]), int(payload["exp"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidStreamToken("stream token payload is malformed") from exc


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidStreamToken("stream token is not valid base64url") from exc
