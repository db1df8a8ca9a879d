"""Polling helpers for tests that wait for something to happen in another process or task."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")

POLL_INTERVAL_SECONDS = 0.02


def wait_until(predicate: Callable[[], T], timeout_seconds: float, message: str) -> T:
    """Call `predicate` until it returns a truthy value, and return that value.

    Raises AssertionError naming `message` (what was awaited, for example "job 7 is
    completed") when `timeout_seconds` pass first. The predicate is called at least once,
    even with a zero timeout.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_seconds} s waiting until {message}")
        time.sleep(POLL_INTERVAL_SECONDS)


async def wait_until_async(
    predicate: Callable[[], T | Awaitable[T]], timeout_seconds: float, message: str
) -> T:
    """Call `predicate`, awaiting its result if it is awaitable, until the result is truthy.

    Same contract as `wait_until`, but sleeps with anyio so the event loop keeps running.
    Cancellation of the caller cancels the wait.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_seconds} s waiting until {message}")
        await anyio.sleep(POLL_INTERVAL_SECONDS)


def assert_stays(predicate: Callable[[], object], seconds: float, message: str) -> None:
    """Call `predicate` for `seconds`; raise AssertionError naming `message` (what should
    stay true, for example "job 7 stays queued") as soon as it returns a falsy value.

    Checks that something does not happen, so `seconds` must be long enough for it to
    happen if it were going to, for example longer than the workers' poll interval.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), f"expected that {message}, but it changed"
        time.sleep(POLL_INTERVAL_SECONDS)
    assert predicate(), f"expected that {message}, but it changed"
