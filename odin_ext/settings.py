"""Odin's settings, read once at start-up from ``ODIN_*`` environment variables and ``.env``.

Every field has a type, a default and a description; ``.env.example`` lists them all. A bad
value stops Odin at start-up with a message that names the variable, what was expected and
what was received (see ``load_settings``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "ODIN_"

QueueName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]


class Settings(BaseSettings):
    """All of Odin's configuration. Built once at the entry point and passed down."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
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
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port of the HTTP server.")
    public_url: str = Field(
        default="",
        description=(
            "Base URL clients use to reach Odin (for example https://jobs.example.com), used in "
            "the job and event URLs that the API returns. Empty uses the request's own host."
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

    @model_validator(mode="after")
    def _check_queue_concurrency(self) -> Settings:
        unknown = set(self.queue_concurrency) - set(self.queues)
        if unknown:
            raise ValueError(
                f"queue_concurrency names queues this process does not serve: "
                f"{', '.join(sorted(unknown))} (add them to ODIN_QUEUES)"
            )
        return self

    @model_validator(mode="after")
    def _check_poll_only(self) -> Settings:
        if self.poll_only and self.heartbeat_timeout_seconds < 3 * self.heartbeat_interval_seconds:
            raise ValueError(
                f"heartbeat_timeout_seconds ({self.heartbeat_timeout_seconds}) must be at least "
                f"three times heartbeat_interval_seconds ({self.heartbeat_interval_seconds}) in "
                "poll-only mode, or live workers would be taken for dead and their jobs run twice"
            )
        return self

    @model_validator(mode="after")
    def _check_pool(self) -> Settings:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"pool_min_size ({self.pool_min_size}) is larger than "
                f"pool_max_size ({self.pool_max_size})"
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


def _describe_errors(exc: ValidationError) -> str:
    lines = ["invalid settings:"]
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        variable = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
        received = error.get("input")
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {variable}: {message}; received {received!r}")
    return "\n".join(lines)
