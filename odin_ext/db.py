"""Database connections: the connection pool and the retry of transient errors.

Only transient failures are retried: a lost or refused connection, a pool timeout, a
serialization failure, a deadlock and a lock that was not available. Everything else (a
constraint violation, a syntax error, bad data) fails at once. Retries are bounded both in
attempts and in total time, use jittered exponential backoff, log a WARNING before each sleep
and re-raise the last error when they give up.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from odin_ext.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_ATTEMPTS = 6
RETRY_MAX_SECONDS = 15.0

_TRANSIENT_SQLSTATE_CLASSES = (
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
    pg_errors.LockNotAvailable,
    pg_errors.AdminShutdown,
    pg_errors.CrashShutdown,
    pg_errors.CannotConnectNow,
)


def is_transient(exc: BaseException) -> bool:
    """Tell whether ``exc`` is a database failure that may pass if the work is tried again."""
    if isinstance(exc, PoolTimeout):
        return True
    if isinstance(exc, _TRANSIENT_SQLSTATE_CLASSES):
        return True
    # OperationalError without a more specific class: connection refused, reset or closed.
    return type(exc) in (psycopg.OperationalError, psycopg.InterfaceError)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    logger.warning(
        "database operation failed, retrying",
        extra={
            "event": "db_retry",
            "attempt": state.attempt_number,
            "error": repr(exc),
            "sleep_seconds": round(state.next_action.sleep, 3) if state.next_action else None,
        },
    )


async def retry_transient(
    operation: Callable[[], Awaitable[T]],
    *,
    attempts: int = RETRY_ATTEMPTS,
    max_seconds: float = RETRY_MAX_SECONDS,
) -> T:
    """Run ``operation`` and run it again after transient database errors.

    ``operation`` must be safe to repeat: it opens its own transaction each time. Gives up
    after ``attempts`` tries or ``max_seconds`` and re-raises the last error.
    """
    # The first try runs without tenacity, whose bookkeeping costs more than a fast query;
    # the retries, rare by nature, go through it.
    try:
        return await operation()
    except Exception as exc:
        if not is_transient(exc) or attempts <= 1:
            raise
        logger.warning(
            "database operation failed, retrying",
            extra={"event": "db_retry", "attempt": 1, "error": repr(exc)},
        )
    attempts -= 1
    retrying = AsyncRetrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(attempts) | stop_after_delay(max_seconds),
        wait=wait_random_exponential(multiplier=0.05, max=2.0),
        before_sleep=_log_retry,
        reraise=True,
    )
    return await retrying(operation)


def create_pool(settings: Settings, conninfo: str) -> AsyncConnectionPool:
    """Create (not open) the connection pool; open it with ``await pool.open(wait=True)``.

    Connections are not checked before use: a check costs a round trip on every query.
    After a database restart, each stale connection fails its next query once with an
    ``OperationalError``, which ``retry_transient`` retries on a fresh connection, and the
    listener's reconnection calls ``pool.check()`` to drop the rest at once.
    """
    return AsyncConnectionPool(
        conninfo,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.pool_timeout_seconds,
        # Autocommit: most store methods are one statement, which then costs one round trip
        # instead of three (BEGIN, statement, COMMIT). Methods of several statements open a
        # transaction with ``conn.transaction()``.
        kwargs={"row_factory": dict_row, "autocommit": True},
        open=False,
        name="odin",
    )
