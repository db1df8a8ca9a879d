"""Odin's settings, read once at start-up from ``ODIN_*`` environment variables and ``.env``.

Every field has a type, a default and a description; ``.env.example`` lists them all. A bad
value stops Odin at start-up with a message that names the variable, what was expected and
what was received (see ``load_settings``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import urllib.parse
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
import pydantic_settings
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "ODIN_"

QueueName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]

# Fields whose values never appear in error messages.
SECRET_FIELDS = frozenset({"database_url", "dev_api_keys", "stream_signing_keys"})
MIN_SIGNING_KEY_CHARS = 32


class Scope(StrEnum):
    """Permission that an API key grants; ``admin`` includes every other scope."""

    SUBMIT = "submit"
    READ = "read"
    CANCEL = "cancel"
    ADMIN = "admin"


class ApiKeySetting(BaseModel):
    """One API key of ``ODIN_API_KEYS``: a name for logs, the key's SHA-256 and its scopes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$")
    sha256: str = Field(pattern=r"^[0-9A-Fa-f]{64}$")
    scopes: list[Scope] = Field(min_length=1)

    @field_validator("sha256")
    @classmethod
    def _lowercase(cls, value: str) -> str:
        return value.lower()


class Settings(BaseSettings):
    """All of Odin's configuration. Built once at the entry point and passed down."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        # Lets ``port`` be set by its field name too, besides ODIN_PORT and PORT.
        populate_by_name=True,
    )

    database_url: str = Field(
        default="",
        description=(
            "PostgreSQL connection URL, for example postgresql://user:pass@host:5432/odin. "
            "Empty starts an embedded PostgreSQL for development, kept in embedded_data_dir."
        ),
    )
    embedded_data_dir: Path = Field(
        default=Path(".odin/postgres"),
        description="Folder of the embedded development database, used when database_url is empty.",
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(
        default=8000,
        ge=0,
        le=65535,
        # PORT is what Cloud Run and similar platforms set; ODIN_PORT wins when both are set.
        validation_alias=AliasChoices("ODIN_PORT", "PORT"),
        description="TCP port of the HTTP server; when ODIN_PORT is unset, PORT is used.",
    )
    public_url: str = Field(
        default="",
        description=(
            "Base URL clients use to reach Odin (for example https://jobs.example.com), used in "
            "the job and event URLs that the API returns. Empty uses the request's own host."
        ),
    )

    api_keys: list[ApiKeySetting] = Field(
        default=[],
        description=(
            'API keys as a JSON list of {"name", "sha256", "scopes"}: the hex SHA-256 of each '
            "key, never the key, and its scopes among submit, read, cancel and admin (admin "
            "includes the others). Clients send a key as Authorization: Bearer <key>. With no "
            "keys at all, every request is allowed and Odin must bind a loopback address."
        ),
    )
    dev_api_keys: list[SecretStr] = Field(
        default=[],
        description=(
            "Development only: plain-text API keys as a JSON list, each with every scope. "
            "Use api_keys in production, so that no key is stored in clear."
        ),
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description=(
            "Allow binding a non-loopback host with no API keys, so that anyone who reaches "
            "the port can submit, read and cancel jobs. Only behind a gateway that authenticates."
        ),
    )
    stream_signing_keys: list[SecretStr] = Field(
        default=[],
        description=(
            "Secrets that sign the tokens of event stream URLs, as a JSON list of strings of "
            f"at least {MIN_SIGNING_KEY_CHARS} characters: the first signs, all verify, so a "
            "new key goes first and the old one stays until its tokens have expired. Every "
            "replica needs the same list. Empty with API keys configured uses a random key "
            "per process, so a stream URL works only on the replica that issued it."
        ),
    )
    stream_token_ttl_seconds: float = Field(
        default=600.0,
        ge=10,
        le=86_400,
        description=(
            "How long the token of an event stream URL stays valid. It is checked only when a "
            "stream opens, so an open stream outlives it; a client that reconnects later gets "
            "a fresh URL from GET /v1/jobs/{id}."
        ),
    )
    cors_allowed_origins: list[str] = Field(
        default=[],
        description=(
            'Origins that browsers may call Odin from, as a JSON list such as '
            '["https://console.example.com"], or ["*"] for any. Empty turns CORS off.'
        ),
    )
    metrics_public: bool = Field(
        default=False,
        description=(
            "Serve /metrics without an API key. Otherwise it needs a key with the read scope."
        ),
    )

    pool_min_size: int = Field(default=2, ge=1, description="Database connections kept open.")
    pool_max_size: int = Field(
        default=10, ge=1, description="Most database connections this process opens, listener excluded."
    )
    pool_timeout_seconds: float = Field(
        default=10.0, gt=0, description="How long a request waits for a free database connection."
    )

    run_workers: bool = Field(
        default=True, description="Run the worker pool in this process (false: API only)."
    )
    serve_api: bool = Field(
        default=True,
        description=(
            "Serve the HTTP API, event streams and console (false: workers only, serving "
            "/healthz, /readyz and /metrics)."
        ),
    )
    queues: list[QueueName] = Field(
        default=["default"],
        description='Queues this process works on, as a JSON list, for example ["default","mail"].',
    )
    worker_concurrency: int = Field(
        default=10, ge=1, le=10_000, description="Most jobs this process runs at the same time."
    )
    queue_concurrency: dict[QueueName, Annotated[int, Field(ge=1)]] = Field(
        default={},
        description=(
            'Most jobs of a queue this process runs at once, as a JSON object, for example '
            '{"mail": 2}; queues not named share worker_concurrency.'
        ),
    )
    offload_processes: int = Field(
        default=2,
        ge=1,
        le=256,
        description="Child processes that run offloaded (CPU-bound) kinds; started on first use.",
    )
    fetch_batch_size: int = Field(
        default=100, ge=1, le=10_000, description="Most jobs claimed by one fetch statement."
    )
    poll_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="How often workers look for due jobs when no notification wakes them.",
    )
    kind_modules: list[str] = Field(
        default=[],
        description=(
            'Python modules that define job kinds, imported at start-up, as a JSON list, for '
            'example ["myapp.jobs"]. The built-in kinds are always loaded.'
        ),
    )
    default_max_attempts: int = Field(
        default=3, ge=1, le=1000, description="Attempts of a job whose kind and request set none."
    )
    retry_base_seconds: float = Field(
        default=1.0, gt=0, description="First retry delay; each later retry doubles it, with jitter."
    )
    retry_max_seconds: float = Field(
        default=3600.0, gt=0, description="Upper bound of the delay between two attempts."
    )

    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest accepted request body, in bytes."
    )
    max_bulk_jobs: int = Field(
        default=5000, ge=1, le=100_000, description="Most jobs accepted in one bulk submission."
    )
    max_args_bytes: int = Field(
        default=262_144, ge=64, description="Largest job arguments accepted, in bytes of JSON."
    )
    max_result_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        description="Largest job result stored, in bytes of JSON; a larger result fails the attempt.",
    )
    max_streams: int = Field(
        default=1000,
        ge=1,
        description="Most event streams open at once on this process; more are rejected with 429.",
    )
    max_streams_per_key: int = Field(
        default=100,
        ge=1,
        description=(
            "Most event streams open at once on this process for one API key, counting streams "
            "opened with a token issued to that key; more are rejected with 429."
        ),
    )
    keepalive_seconds: float = Field(
        default=15.0,
        gt=0,
        le=300,
        description="Interval of keep-alive comments on an idle event stream.",
    )
    stream_queue_size: int = Field(
        default=1000,
        ge=10,
        description=(
            "Events buffered per stream subscriber; a subscriber that falls further behind "
            "re-reads the missed events from the database."
        ),
    )

    poll_only: bool = Field(
        default=False,
        description=(
            "Work without LISTEN/NOTIFY and session advisory locks, for a database reached "
            "through a transaction-pooling PgBouncer: workers poll, liveness comes from "
            "heartbeats, and streams poll for events."
        ),
    )
    heartbeat_interval_seconds: float = Field(
        default=2.0, gt=0, le=300, description="Poll-only mode: how often a worker records that it is alive."
    )
    heartbeat_timeout_seconds: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="Poll-only mode: a worker without a heartbeat for this long is dead.",
    )
    leader_interval_seconds: float = Field(
        default=0.25,
        gt=0,
        le=60,
        description="How often replicas try to become leader, and the leader checks for dead workers.",
    )
    rescue_grace_seconds: float = Field(
        default=1.0,
        ge=0,
        le=600,
        description=(
            "How long a worker's liveness lock must stay free before its jobs are rescued; "
            "gives workers time to take their lock again after a database restart."
        ),
    )
    timeout_grace_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How far past its timeout an attempt may run before the leader ends it.",
    )
    retention_completed_seconds: float = Field(
        default=86_400.0, ge=0, description="How long completed jobs and their events are kept."
    )
    retention_failed_seconds: float = Field(
        default=604_800.0, ge=0, description="How long failed jobs and their events are kept."
    )
    retention_cancelled_seconds: float = Field(
        default=604_800.0, ge=0, description="How long cancelled jobs and their events are kept."
    )

    shutdown_grace_seconds: float = Field(
        default=8.0,
        ge=0,
        le=3600,
        description=(
            "On SIGTERM or SIGINT, how long running jobs may finish before they are handed "
            "back to the queue. Keep it below the platform's kill deadline."
        ),
    )
    log_level: str = Field(default="INFO", description="Logging level: DEBUG, INFO, WARNING or ERROR.")

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("expected one of DEBUG, INFO, WARNING, ERROR")
        return level

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("expected a URL starting with postgresql:// or postgres://")
        return value

    @field_validator("kind_modules")
    @classmethod
    def _check_kind_modules(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name or not all(part.isidentifier() for part in name.split(".")):
                raise ValueError(f"expected dotted Python module names, got {name!r}")
        return value

    @field_validator("stream_signing_keys")
    @classmethod
    def _check_signing_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        for number, key in enumerate(value, start=1):
            if len(key.get_secret_value()) < MIN_SIGNING_KEY_CHARS:
                raise ValueError(
                    f"signing key {number} is shorter than {MIN_SIGNING_KEY_CHARS} characters; "
                    "generate one with: "
                    "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )
        return value

    @field_validator("dev_api_keys")
    @classmethod
    def _check_dev_api_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(not key.get_secret_value() for key in value):
            raise ValueError("expected non-empty keys")
        return value

    @field_validator("cors_allowed_origins")
    @classmethod
    def _check_cors_origins(cls, value: list[str]) -> list[str]:
        if "*" in value and len(value) > 1:
            raise ValueError('expected either ["*"] or a list of origins, not both')
        for origin in value:
            if origin != "*" and not _is_origin(origin):
                raise ValueError(
                    f"expected origins such as https://console.example.com (a scheme, a host, "
                    f"an optional port, no path), got {origin!r}"
                )
        return value

    @model_validator(mode="after")
    def _check_api_keys(self) -> Settings:
        names = [key.name for key in self.api_keys]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"api_keys has more than one key named {', '.join(duplicates)}")
        hashes = [key.sha256 for key in self.api_keys]
        if len(set(hashes)) != len(hashes):
            raise ValueError("api_keys has the same sha256 under two names; give each key once")
        return self

    @model_validator(mode="after")
    def _check_exposure(self) -> Settings:
        if self.auth_enabled or self.allow_unauthenticated or is_loopback(self.host):
            return self
        raise ValueError(
            f"ODIN_HOST is {self.host!r}, which other machines can reach, but no API keys are "
            "configured: set ODIN_API_KEYS (or ODIN_DEV_API_KEYS for development), bind a "
            "loopback address such as 127.0.0.1, or set ODIN_ALLOW_UNAUTHENTICATED=true if a "
            "gateway in front of Odin authenticates every request"
        )

    @model_validator(mode="after")
    def _check_roles(self) -> Settings:
        if not self.serve_api and not self.run_workers:
            raise ValueError(
                "ODIN_SERVE_API and ODIN_RUN_WORKERS are both false, so this process would "
                "serve no API and run no jobs; set at least one of them to true"
            )
        return self

    @property
    def auth_enabled(self) -> bool:
        """Whether requests must carry an API key (true as soon as one key is configured)."""
        return bool(self.api_keys or self.dev_api_keys)

    @model_validator(mode="after")
    def _check_queue_concurrency(self) -> Settings:
        unknown = set(self.queue_concurrency) - set(self.queues)
        if unknown:
            raise ValueError(
                f"ODIN_QUEUE_CONCURRENCY names queues this process does not serve: "
                f"{', '.join(sorted(unknown))}; add them to ODIN_QUEUES"
            )
        return self

    @model_validator(mode="after")
    def _check_poll_only(self) -> Settings:
        if self.poll_only and self.heartbeat_timeout_seconds < 3 * self.heartbeat_interval_seconds:
            raise ValueError(
                f"ODIN_HEARTBEAT_TIMEOUT_SECONDS ({self.heartbeat_timeout_seconds}) must be at "
                f"least three times ODIN_HEARTBEAT_INTERVAL_SECONDS "
                f"({self.heartbeat_interval_seconds}) when ODIN_POLL_ONLY is true, or live "
                "workers would be taken for dead and their jobs run twice"
            )
        return self

    @model_validator(mode="after")
    def _check_pool(self) -> Settings:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"ODIN_POOL_MIN_SIZE ({self.pool_min_size}) is larger than "
                f"ODIN_POOL_MAX_SIZE ({self.pool_max_size})"
            )
        return self


class SettingsError(Exception):
    """Invalid configuration; the message names each variable, the expectation and the value."""


def load_settings(**overrides: object) -> Settings:
    """Build ``Settings`` from the environment and ``.env``, with explicit overrides on top.

    Raises ``SettingsError`` with one line per invalid variable.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(_describe_errors(exc)) from None
    except pydantic_settings.SettingsError as exc:
        # Raised before validation when a list or object setting is not valid JSON.
        raise SettingsError(_describe_undecodable(str(exc))) from None


def _describe_undecodable(message: str) -> str:
    match = re.search(r'field "(\w+)"', message)
    if match is None:
        return f"invalid settings:\n  {message}"
    field = match.group(1)
    variable = f"{ENV_PREFIX}{field.upper()}"
    default = Settings.model_fields[field].default
    example = json.dumps(default if default else ["example"])
    received = os.environ.get(variable)
    shown = "a value from .env" if received is None else repr(received)
    if field in SECRET_FIELDS:
        shown = "a value that is not shown"
    return (
        f"invalid settings:\n  {variable}: expected JSON, for example {example}; "
        f"received {shown}"
    )


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_origin(text: str) -> bool:
    parts = urllib.parse.urlsplit(text)
    try:
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        return False
    return (
        parts.scheme in {"http", "https"}
        and bool(parts.hostname)
        and parts.path == ""
        and not parts.query
        and not parts.fragment
        and not parts.username
    )


def _describe_errors(exc: ValidationError) -> str:
    lines = ["invalid settings:"]
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:
            # Errors across fields: their input is every setting, secrets included.
            lines.append(f"  settings: {message}")
            continue
        field = _field_name(str(error["loc"][0]))
        # The position inside a list or object setting, such as [0].sha256.
        where = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"][1:]
        )
        if field in SECRET_FIELDS:
            received = "a value that is not shown"
        else:
            received = repr(error.get("input"))
        lines.append(f"  {_variable_names(field)}{where}: {message}; received {received}")
    return "\n".join(lines)


def _field_name(location: str) -> str:
    """Return the field that an error location names; aliases map back to their field."""
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices) and location in alias.choices:
            return name
    return location


def _variable_names(field: str) -> str:
    info = Settings.model_fields.get(field)
    alias: Any = info.validation_alias if info is not None else None
    if isinstance(alias, AliasChoices):
        return " or ".join(str(choice) for choice in alias.choices)
    return f"{ENV_PREFIX}{field.upper()}"
