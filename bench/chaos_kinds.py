"""Job kinds for the chaos run: each records its starts and finishes in ``chaos_runs``.

A job that ran twice cannot hide: every execution leaves its own rows, written on the
kind's own connection (outside Odin), so the check counts executions, not outcomes.
The database URL comes from ``CHAOS_DATABASE_URL``, set by ``bench/chaos.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import psycopg

from odin_ext import JobContext, RetryLater, kind
from odin_ext.context import SyncJobContext

RECORD = "INSERT INTO chaos_runs (job_id, attempt, step, pid) VALUES (%s, %s, %s, %s)"


def _record(job_id: int, attempt: int, step: str) -> None:
    with psycopg.connect(os.environ["CHAOS_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(RECORD, (job_id, attempt, step, os.getpid()))


async def _record_async(job_id: int, attempt: int, step: str) -> None:
    async with await psycopg.AsyncConnection.connect(
        os.environ["CHAOS_DATABASE_URL"], autocommit=True
    ) as conn:
        await conn.execute(RECORD, (job_id, attempt, step, os.getpid()))


@kind(max_attempts=25)
async def chaos_sleep(ctx: JobContext, milliseconds: int = 200) -> dict[str, int]:
    """Wait, reporting progress half way; records start and finish."""
    await _record_async(ctx.job_id, ctx.attempt, "start")
    await asyncio.sleep(milliseconds / 2000)
    await ctx.progress(0.5, "half way")
    await asyncio.sleep(milliseconds / 2000)
    await _record_async(ctx.job_id, ctx.attempt, "finish")
    return {"slept_ms": milliseconds}


@kind(max_attempts=25)
def chaos_hash(ctx: SyncJobContext, rounds: int = 20_000) -> str:
    """Hash in a thread; records start and finish."""
    _record(ctx.job_id, ctx.attempt, "start")
    digest = b"chaos"
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    _record(ctx.job_id, ctx.attempt, "finish")
    return digest.hex()


@kind(max_attempts=25)
async def chaos_flaky(ctx: JobContext) -> str:
    """Ask for a retry on the first attempt, then succeed; records start and finish."""
    await _record_async(ctx.job_id, ctx.attempt, "start")
    if ctx.attempt == 1:
        raise RetryLater(0.2, "first attempt always retries")
    await _record_async(ctx.job_id, ctx.attempt, "finish")
    return "ok"
