"""Enqueue jobs from Python code, inside the caller's own database transaction.

The job exists only if the caller's transaction commits, so a job can be created atomically
with the rows it is about (an order and the job that mails its receipt). Workers are woken
at commit by the event trigger's NOTIFY.

    async with conn.transaction():
        await conn.execute("INSERT INTO orders ...")
        job = await enqueue(conn, send_receipt, {"order_id": 42})

``enqueue_sync`` does the same on a sync psycopg connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from odin_ext.jobs import Job
from odin_ext.kinds import Kind, KindOptions, build_kind
from odin_ext.queries import QUERIES
from odin_ext.store import NewJob, enqueue_on, enqueue_one_params
from odin_ext.submissions import build_job

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_MAX_ARGS_BYTES = 262_144


async def enqueue(
    conn: psycopg.AsyncConnection[Any],
    kind: Callable[..., Any] | Kind,
    args: dict[str, Any] | None = None,
    **options: Any,
) -> Job:
    """Insert a job of ``kind`` (a function marked with ``kind`` or a ``Kind``) on ``conn``.

    ``options`` are those of a submission: queue, priority, max_attempts, timeout_seconds,
    delay_seconds, run_at. Raises ``ValidationFailed`` for invalid arguments, before any SQL
    runs. A duplicate of a unique job returns the job that holds the key.
    """
    new_job = _build(kind, args, options)
    [entry] = await enqueue_on(_DictRowConnection(conn), [new_job])
    return entry.job


def enqueue_sync(
    conn: psycopg.Connection[Any],
    kind: Callable[..., Any] | Kind,
    args: dict[str, Any] | None = None,
    **options: Any,
) -> Job:
    """Insert a job on a sync connection; see ``enqueue``.

    Raises ``LookupError`` when the job that has a duplicate's unique key left its unique
    states before it could be read. Calling again then inserts the job.
    """
    new_job = _build(kind, args, options)
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(QUERIES["job_enqueue_one"], enqueue_one_params(new_job))
        row = cursor.fetchone()
        if row is None:
            cursor.execute(QUERIES["job_find_unique"], {"unique_keys": [new_job.unique_key]})
            row = cursor.fetchone()
    if row is None:
        raise LookupError(
            f"the job holding unique key {new_job.unique_key!r} changed state before it "
            "could be read; enqueue the job again"
        )
    return Job.from_row(row)


def _build(kind: Callable[..., Any] | Kind, args: dict[str, Any] | None, options: Any) -> NewJob:
    resolved = kind if isinstance(kind, Kind) else _kind_of(kind)
    return build_job(
        resolved,
        args or {},
        default_max_attempts=options.pop("default_max_attempts", DEFAULT_MAX_ATTEMPTS),
        max_args_bytes=options.pop("max_args_bytes", DEFAULT_MAX_ARGS_BYTES),
        **options,
    )


def _kind_of(function: Callable[..., Any]) -> Kind:
    options = getattr(function, "__odin_kind__", None)
    if not isinstance(options, KindOptions):
        raise TypeError(f"{function!r} is not marked as a job kind with @kind")
    return build_kind(function, options)


class _DictRowConnection:
    """Runs ``execute`` on the caller's connection with dict rows, leaving its factory alone."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def execute(self, query: str, params: dict[str, Any], **options: Any) -> Any:
        cursor = self._conn.cursor(row_factory=dict_row)
        await cursor.execute(query, params, **options)
        return cursor
