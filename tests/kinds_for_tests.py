"""Job kinds that only the test suite loads, with `ODIN_KIND_MODULES='["tests.kinds_for_tests"]'`.

`ledger_sleep` writes a row to the table `test_ledger` of the job's own database when an
attempt starts and when it finishes, so a test can tell from the database whether a job ran
twice and which server process ran it. The table is created by `create_ledger` before the
servers start; the kind reaches the database through ODIN_DATABASE_URL, which every test
server has. Its writes use connections of their own, named LEDGER_APPLICATION_NAME, so tests
that terminate Odin's database sessions can leave them alone.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import psycopg

from odin_ext import JobContext, kind

LEDGER_APPLICATION_NAME = "odin-test-ledger"

LEDGER_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS public.test_ledger (
    job_id  bigint NOT NULL,
    attempt integer NOT NULL,
    pid     integer NOT NULL,
    step    text NOT NULL CHECK (step IN ('start', 'finish')),
    at      timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

PROGRESS_INTERVAL_SECONDS = 0.1


def create_ledger(database_url: str) -> None:
    """Create the `test_ledger` table in the database at `database_url`."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(LEDGER_TABLE_SQL)


@kind(max_attempts=3)
async def ledger_sleep(
    ctx: JobContext, seconds: float, first_attempt_seconds: float | None = None
) -> dict[str, Any]:
    """Wait `seconds` (`first_attempt_seconds` on the first attempt), recording start and finish.

    Reports progress every PROGRESS_INTERVAL_SECONDS, so an attempt that lost its job notices
    within that time and stops.
    """
    await _record(ctx, "start")
    duration = seconds
    if ctx.attempt == 1 and first_attempt_seconds is not None:
        duration = first_attempt_seconds
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < duration:
        await asyncio.sleep(min(duration - elapsed, PROGRESS_INTERVAL_SECONDS))
        await ctx.progress(min(1.0, (time.monotonic() - started) / duration))
    await _record(ctx, "finish")
    return {"attempt": ctx.attempt, "pid": os.getpid()}


@kind(max_attempts=1)
async def sleep_until(wake_at: float) -> dict[str, float]:
    """Return at the Unix time `wake_at` (seconds), or at once when it has passed."""
    await asyncio.sleep(max(0.0, wake_at - time.time()))
    return {"woke_at": time.time()}


async def _record(ctx: JobContext, step: str) -> None:
    async with await psycopg.AsyncConnection.connect(
        os.environ["ODIN_DATABASE_URL"],
        autocommit=True,
        application_name=LEDGER_APPLICATION_NAME,
    ) as connection:
        await connection.execute(
            "INSERT INTO public.test_ledger (job_id, attempt, pid, step) VALUES (%s, %s, %s, %s)",
            (ctx.job_id, ctx.attempt, os.getpid(), step),
        )
