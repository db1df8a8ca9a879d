"""``ProcessPool``: runs CPU-bound job functions in child processes.

A kind marked ``offload=True`` runs here instead of in a thread, so it neither holds the GIL
against the event loop (streams, liveness, other jobs keep running) nor survives its own
cancellation: a cancelled or timed-out job's process is killed and replaced, which really
stops the work. Progress and log lines reported in the child travel back over a pipe and are
written as events by the parent like any other job's.

Children are started with the ``forkserver`` method (never forked from this process, which
has threads and open sockets) and each runs one job at a time. The function is imported in
the child by module and name, so an offloaded kind must be a module-level function, and its
arguments and result must be picklable (they are JSON values).
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import logging
import multiprocessing
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from odin_ext.context import JobInfo
from odin_ext.errors import CancelJob, RetryLater

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1

# Reports from a child: ("progress", fraction, message) or ("log", message, level).
ReportHandler = Callable[[tuple[Any, ...]], Awaitable[None]]


class OffloadedJobFailed(Exception):
    """The job function raised in its process; the message carries its type and text."""

    def __init__(self, message: str, child_traceback: str) -> None:
        super().__init__(message)
        self.child_traceback = child_traceback


class ProcessPool:
    """Up to ``size`` child processes, each running one offloaded job at a time."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._context: BaseContext = multiprocessing.get_context("forkserver")
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Child] = []
        self._children: set[_Child] = set()

    async def run(
        self,
        function: Callable[..., Any],
        arguments: dict[str, Any],
        context_parameter: str | None,
        info: JobInfo,
        on_report: ReportHandler,
    ) -> Any:
        """Run ``function(**arguments)`` in a child process and return its result.

        Raises ``RetryLater`` or ``CancelJob`` when the function raised them, and
        ``OffloadedJobFailed`` for any other exception. On cancellation (or a timeout
        around this call) the child is killed before ``CancelledError`` propagates.
        """
        async with self._slots:
            child = self._idle.pop() if self._idle else self._start_child()
            task = (function.__module__, function.__qualname__, arguments, context_parameter, info)
            try:
                outcome = await child.run(task, on_report)
            except BaseException:
                child.kill()
                self._children.discard(child)
                raise
            if child.alive:
                self._idle.append(child)
            else:
                self._children.discard(child)
        return _unpack(outcome)

    def close(self) -> None:
        """Kill every child process; running jobs end as if cancelled."""
        for child in list(self._children):
            child.kill()
        self._children.clear()
        self._idle.clear()

    def _start_child(self) -> _Child:
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(
            target=_child_main, args=(child_end,), name="odin-offload", daemon=True
        )
        process.start()
        child_end.close()
        child = _Child(process, parent_end)
        self._children.add(child)
        return child


@dataclass(eq=False)
class _Child:
    process: BaseProcess
    pipe: Connection

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    async def run(self, task: tuple[Any, ...], on_report: ReportHandler) -> tuple[Any, ...]:
        self.pipe.send(task)
        while True:
            message = await asyncio.to_thread(self._receive)
            if message[0] in ("progress", "log"):
                await on_report(message)
                continue
            return message

    def _receive(self) -> tuple[Any, ...]:
        try:
            return self.pipe.recv()  # type: ignore[no-any-return]
        except EOFError:
            return ("error", "offloaded job process exited unexpectedly", "")

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.pipe.close()


def _unpack(outcome: tuple[Any, ...]) -> Any:
    match outcome:
        case ("result", value):
            return value
        case ("retry", delay_seconds, reason):
            raise RetryLater(delay_seconds, reason)
        case ("cancel", reason):
            raise CancelJob(reason)
        case ("error", message, child_traceback):
            raise OffloadedJobFailed(message, child_traceback)
    raise OffloadedJobFailed(f"unexpected message from offloaded job: {outcome!r:.200}", "")


# The child side ----------------------------------------------------------------------------


class ProcessJobContext:
    """What an offloaded job sees as its ``SyncJobContext``: reports go to the parent."""

    def __init__(self, info: JobInfo, pipe: Connection) -> None:
        self.info = info
        self._pipe = pipe

    @property
    def job_id(self) -> int:
        return self.info.job_id

    @property
    def attempt(self) -> int:
        return self.info.attempt

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress; the parent validates and writes it."""
        self._pipe.send(("progress", fraction, message))

    def log(self, message: str, level: str = "info") -> None:
        """Add a log line to the job's stream."""
        self._pipe.send(("log", message, level))


def _child_main(pipe: Connection) -> None:
    _die_with_parent()
    while True:
        try:
            module_name, qualname, arguments, context_parameter, info = pipe.recv()
        except EOFError:
            return
        outcome = _call(module_name, qualname, arguments, context_parameter, info, pipe)
        try:
            pipe.send(outcome)
        except Exception as exc:  # noqa: BLE001 - an unpicklable result fails the attempt
            pipe.send(("error", f"result cannot be sent back: {exc}", ""))


def _die_with_parent() -> None:
    # The parent is the forkserver, which exits when Odin does, even on SIGKILL; without
    # this, a long job would run on as an orphan until it finished.
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _call(
    module_name: str,
    qualname: str,
    arguments: dict[str, Any],
    context_parameter: str | None,
    info: JobInfo,
    pipe: Connection,
) -> tuple[Any, ...]:
    try:
        function: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            function = getattr(function, part)
        if context_parameter:
            arguments = {**arguments, context_parameter: ProcessJobContext(info, pipe)}
        return ("result", function(**arguments))
    except RetryLater as exc:
        return ("retry", exc.delay_seconds, exc.reason)
    except CancelJob as exc:
        return ("cancel", exc.reason)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the attempt
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return ("error", text, traceback.format_exc())
