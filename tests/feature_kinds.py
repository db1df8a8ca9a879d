"""Job kinds for the tests of queues, scheduling, uniqueness, limits, offload and results.

Test servers load them with `ODIN_KIND_MODULES='["tests.feature_kinds"]'`; the servers run
with the repository root as working directory, so the `tests` package is importable there.

Kinds that time their runs log RUN_STARTED as their first step and RUN_ENDED as their last.
`tests.run_windows` reads those two log events back from the database to tell when each job
ran and how many ran at once.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from odin_ext import CancelJob, JobContext, RetryLater, kind
from odin_ext.context import SyncJobContext
from odin_ext.kinds import Unique

RUN_STARTED = "run started"
RUN_ENDED = "run ended"
# An offloaded job logs "child pid <pid>" first, so a test can watch its process.
CHILD_PID_PREFIX = "child pid "
# No test server serves this queue, so jobs submitted to it stay queued.
PARKED_QUEUE = "parked"
ALL_STATES = ("scheduled", "queued", "running", "completed", "failed", "cancelled")


async def _timed_run(ctx: JobContext, seconds: float) -> None:
    await ctx.log(RUN_STARTED)
    await asyncio.sleep(seconds)
    await ctx.log(RUN_ENDED)


# Queues, priorities and scheduling ---------------------------------------------------------


@kind()
async def timed(ctx: JobContext, label: str = "", seconds: float = 0.2) -> dict[str, Any]:
    """Wait `seconds` between the two run markers; return `label`."""
    await _timed_run(ctx, seconds)
    return {"label": label}


# Concurrency limits ------------------------------------------------------------------------


@kind(concurrency_limit=2, concurrency_key="customer")
async def per_customer(ctx: JobContext, customer: str, seconds: float = 0.3) -> dict[str, Any]:
    """Run timed, at most two at once per customer."""
    await _timed_run(ctx, seconds)
    return {"customer": customer}


@kind(concurrency_limit=1)
async def one_at_a_time(ctx: JobContext, seconds: float = 0.2) -> dict[str, Any]:
    """Run timed, at most one at once in all."""
    await _timed_run(ctx, seconds)
    return {}


def _tenant_of(args: dict[str, Any]) -> str:
    return str(args["account"]).split("/")[0]


@kind(concurrency_limit=1, concurrency_key=_tenant_of)
async def per_tenant(ctx: JobContext, account: str, seconds: float = 0.2) -> dict[str, Any]:
    """Run timed, at most one at once per tenant: the part of `account` before the slash."""
    await _timed_run(ctx, seconds)
    return {"account": account}


# Unique jobs -------------------------------------------------------------------------------


@kind(unique=Unique(args=("customer",)))
async def unique_report(customer: str, day: str = "") -> dict[str, Any]:
    """Unique per customer while scheduled, queued or running, whatever the day."""
    return {"customer": customer, "day": day}


@kind(unique=Unique(on_conflict="reject"))
async def unique_reject(customer: str) -> dict[str, Any]:
    """Unique per customer; a duplicate submission is rejected with 409."""
    return {"customer": customer}


@kind(unique=Unique(states=ALL_STATES))
async def unique_forever(customer: str) -> dict[str, Any]:
    """Unique per customer in every state, so a finished job keeps its key."""
    return {"customer": customer}


@kind(unique=Unique(period_seconds=1.0, states=ALL_STATES))
async def unique_per_second(customer: str) -> dict[str, Any]:
    """Unique per customer within each one-second window of submission time."""
    return {"customer": customer}


def _normalised_email(args: dict[str, Any]) -> str:
    return str(args["email"]).strip().lower()


@kind(unique=Unique(args=False, key=_normalised_email))
async def unique_by_email(email: str) -> dict[str, Any]:
    """Unique per email address, ignoring case and surrounding spaces."""
    return {"email": email}


# Process offload ---------------------------------------------------------------------------


@kind(offload=True)
def crunch(ctx: SyncJobContext, seconds: float = 0.5, steps: int = 5) -> dict[str, Any]:
    """Keep one CPU busy for `seconds`, reporting progress `steps` times; return the PID."""
    pid = os.getpid()
    ctx.log(f"{CHILD_PID_PREFIX}{pid}")
    started = time.monotonic()
    for step in range(1, steps + 1):
        step_ends_at = started + seconds * step / steps
        while time.monotonic() < step_ends_at:
            pass
        ctx.progress(step / steps, f"step {step} of {steps}")
    return {"pid": pid}


@kind(offload=True, max_attempts=3)
def steer_offloaded(ctx: SyncJobContext, outcome: str) -> dict[str, Any]:
    """Raise in the child process on the first attempt as `outcome` selects, then succeed.

    `outcome` is "retry" (RetryLater), "cancel" (CancelJob) or "error" (ValueError).
    """
    if ctx.attempt == 1:
        if outcome == "retry":
            raise RetryLater(0.1, "offloaded job asked for a retry")
        if outcome == "cancel":
            raise CancelJob("offloaded job gave up")
        raise ValueError("offloaded job failed on purpose")
    return {"attempt": ctx.attempt}


# Results and retries -----------------------------------------------------------------------


@kind()
async def sized_result(length: int) -> str:
    """Return a string of `length` characters, whose JSON is `length` + 2 bytes."""
    return "x" * length


@kind(max_attempts=3)
async def retry_once(ctx: JobContext, delay_seconds: float) -> dict[str, Any]:
    """Ask for a retry after `delay_seconds` on the first attempt; succeed on the second."""
    if ctx.attempt == 1:
        raise RetryLater(delay_seconds, "not ready yet")
    return {"attempt": ctx.attempt}


@kind(max_attempts=5)
async def give_up(reason: str) -> None:
    """Fail the job at once with `reason`, leaving its other attempts unused."""
    raise CancelJob(reason)


@kind(max_attempts=3)
async def always_fails(ctx: JobContext) -> None:
    """Fail every attempt with an error that names the attempt."""
    raise RuntimeError(f"attempt {ctx.attempt} failed")


# Transactional enqueue ---------------------------------------------------------------------


@kind()
async def receipt(order_id: int) -> dict[str, Any]:
    """Return the order id, standing in for mailing the receipt of an order."""
    return {"order_id": order_id}
