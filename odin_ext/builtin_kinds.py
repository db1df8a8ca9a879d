"""Job kinds that ship with Odin: demonstrations that do real work, and small kinds for tests.

- ``countdown`` waits like an I/O-bound job, reporting progress and log lines as it goes.
- ``primes`` is CPU-bound: it counts the primes below a limit in a child process (offloaded),
  reporting progress.
- ``checksum`` hashes a text in rounds, CPU-bound (offloaded) with a verifiable result.
- ``noop``, ``echo``, ``sleep`` and ``fail`` are small building blocks for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from typing import Annotated, Any

from pydantic import Field

from odin_ext.context import JobContext, SyncJobContext
from odin_ext.errors import RetryLater
from odin_ext.kinds import kind


@kind(timeout_seconds=3600)
async def countdown(
    ctx: JobContext,
    steps: Annotated[int, Field(ge=1, le=10_000)] = 5,
    interval_seconds: Annotated[float, Field(ge=0, le=3600)] = 1.0,
) -> dict[str, Any]:
    """Count down ``steps`` times, waiting ``interval_seconds`` between reports."""
    await ctx.log(f"counting down from {steps}")
    for done in range(1, steps + 1):
        await asyncio.sleep(interval_seconds)
        await ctx.progress(done / steps, f"{steps - done} to go")
    return {"steps": steps, "elapsed_seconds": round(steps * interval_seconds, 3)}


@kind(timeout_seconds=3600, offload=True)
def primes(
    ctx: SyncJobContext, limit: Annotated[int, Field(ge=2, le=2_000_000_000)] = 1_000_000
) -> dict[str, Any]:
    """Count the primes below ``limit`` with a segmented sieve; return the count and the largest."""
    segment = 1_000_000
    root = math.isqrt(limit)
    base = bytearray([1]) * (root + 1)
    base[0:2] = b"\x00\x00"
    for n in range(2, math.isqrt(root) + 1):
        if base[n]:
            base[n * n :: n] = bytearray(len(range(n * n, root + 1, n)))
    small = [n for n in range(2, root + 1) if base[n]]
    count, largest = 0, None
    segments = max(1, math.ceil(limit / segment))
    for index, low in enumerate(range(0, limit, segment)):
        high = min(low + segment, limit)
        sieve = bytearray([1]) * (high - low)
        for p in small:
            start = max(p * p, (low + p - 1) // p * p)
            if start < high:
                sieve[start - low :: p] = bytearray(len(range(start, high, p)))
        for n in range(low, min(2, high)):
            sieve[n - low] = 0
        count += sieve.count(1)
        last = sieve.rfind(1)
        if last >= 0:
            largest = low + last
        if segments > 1 and (index + 1) % max(1, segments // 20) == 0:
            ctx.progress((index + 1) / segments, f"checked numbers below {high}")
    return {"limit": limit, "count": count, "largest": largest}


@kind(timeout_seconds=3600, offload=True)
def checksum(
    ctx: SyncJobContext,
    text: Annotated[str, Field(max_length=10_000)] = "odin",
    rounds: Annotated[int, Field(ge=1, le=100_000_000)] = 100_000,
) -> dict[str, Any]:
    """Apply SHA-256 ``rounds`` times to ``text``; return the final digest."""
    digest = text.encode("utf-8")
    report_every = max(1, rounds // 10)
    for done in range(1, rounds + 1):
        digest = hashlib.sha256(digest).digest()
        if done % report_every == 0 and done < rounds:
            ctx.progress(done / rounds, f"{done} rounds")
    return {"rounds": rounds, "sha256": digest.hex()}


@kind()
async def noop() -> None:
    """Do nothing; for benchmarks."""
    return None


@kind()
async def echo(value: Any = None) -> Any:
    """Return ``value`` unchanged."""
    return value


@kind()
async def sleep(
    ctx: JobContext, seconds: Annotated[float, Field(ge=0, le=86_400)] = 1.0
) -> dict[str, float]:
    """Wait ``seconds``, then finish."""
    await asyncio.sleep(seconds)
    return {"slept_seconds": seconds}


@kind(max_attempts=1)
async def fail(message: str = "failed on purpose", retry_delay_seconds: float | None = None) -> None:
    """Fail every attempt with ``message``; with ``retry_delay_seconds``, ask for a retry instead."""
    if retry_delay_seconds is not None:
        raise RetryLater(retry_delay_seconds, message)
    raise RuntimeError(message)
