"""``WorkerPool``: claims due jobs in batches and runs them in this process.

One fetch loop claims up to the number of free slots with ``FOR UPDATE SKIP LOCKED`` (see the
``job_fetch`` query), wakes when the listener reports new jobs in one of its queues, and polls
every ``poll_interval_seconds`` as a fallback. A scheduler loop moves scheduled jobs to the
queue when they become due. Async jobs run as tasks on the event loop; sync jobs run in a
thread pool the size of the worker concurrency, so they never block the loop.

Outcomes go to the ``Completer``, which writes them in batches.

Kinds marked ``offload`` run in a process pool instead (see ``odin_ext.offload``), where a
cancel or timeout kills the process.

Limitations:
- A sync job (not offloaded) that exceeds its timeout or is cancelled is abandoned, not
  stopped: Python cannot stop a thread, so the thread runs on until the function returns,
  while its job is already retried, failed or cancelled. Offload kinds that must really stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from odin_ext.completer import Completer
from odin_ext.context import JobContext, JobInfo, SyncJobContext
from odin_ext.errors import AttemptLost, CancelJob, RetryLater, UnknownKind
from odin_ext.jobs import Event, Job, JobState
from odin_ext.kinds import Kind, Registry
from odin_ext.metrics import observe_attempt, observe_job_started
from odin_ext.offload import OffloadedJobFailed, ProcessPool
from odin_ext.payloads import UnstorableValue, check_storable, json_size
from odin_ext.retry import RetryPolicy
from odin_ext.settings import Settings
from odin_ext.store import JobStore, Outcome

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000
MAX_TRACEBACK_CHARS = 8000
# Maximum delay of a RetryLater: about ten years, as for submissions.
MAX_RETRY_DELAY_SECONDS = 10 * 365 * 24 * 3600.0


class WorkerPool:
    """Runs up to ``settings.worker_concurrency`` jobs of ``settings.queues`` at once."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        registry: Registry,
        owner: str,
        may_claim: asyncio.Event,
        on_events: Callable[[Sequence[Event]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.owner = owner
        # Set while this process holds its liveness lock; claiming without it would let the
        # leader rescue the claimed jobs at once.
        self._may_claim = may_claim
        self._store = store
        self._registry = registry
        self._retry_policy = RetryPolicy(settings.retry_base_seconds, settings.retry_max_seconds)
        self._completer = Completer(
            store, owner, on_recorded=self._log_recorded, on_events=on_events
        )
        # Started on the first offloaded job, so processes that never offload pay nothing.
        self._processes: ProcessPool | None = None
        self._threads_busy = 0
        self._threads_lock = threading.Lock()
        self._threads = ThreadPoolExecutor(
            max_workers=settings.worker_concurrency, thread_name_prefix="odin-job"
        )
        # Running job tasks by job id; only the event loop thread touches this mapping.
        self._running: dict[int, asyncio.Task[None]] = {}
        # Jobs whose task was cancelled because the attempt was lost; they record nothing.
        self._lost: set[int] = set()
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._schedule_changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        # Queue of each running job, for the per-queue concurrency caps.
        self._running_queues: dict[int, str] = {}
        self._fetch_round = 0
        self._has_limited_kinds = any(
            item.options.concurrency_limit is not None for item in registry
        )

    @property
    def running_count(self) -> int:
        return len(self._running)

    def start(self) -> None:
        self._completer.start()
        self._loops = [
            asyncio.create_task(self._fetch_loop(), name="odin-fetch"),
            asyncio.create_task(self._schedule_loop(), name="odin-scheduler"),
        ]
        logger.info(
            "worker pool started",
            extra={"event": "worker_pool_started", "owner": self.owner,
                   "queues": self.settings.queues,
                   "concurrency": self.settings.worker_concurrency},
        )

    def notify_queued(self, queue: str) -> None:
        """Wake the fetch loop: jobs became due in ``queue``."""
        if queue in self.settings.queues:
            self._wake.set()

    def notify_schedule_changed(self) -> None:
        """Wake the scheduler loop: a job was scheduled, maybe earlier than it expects."""
        self._schedule_changed.set()

    def notify_reconnected(self) -> None:
        """Wake both loops and drop lost jobs: notifications may have been missed."""
        self._wake.set()
        self._schedule_changed.set()
        if self._running:
            asyncio.create_task(self.drop_lost_jobs(), name="odin-ownership-check")

    def cancel_local(self, job_id: int, reason: str) -> bool:
        """Cancel the task running ``job_id`` here, if any; it records nothing afterwards.

        Called when the job was cancelled, rescued or timed out elsewhere: the job's own
        ``CancelledError`` handlers may still clean up.
        """
        task = self._running.get(job_id)
        if task is None or task.done():
            return False
        self._lost.add(job_id)
        task.cancel(reason)
        logger.info(
            "job task cancelled",
            extra={"event": "job_task_cancelled", "job_id": job_id, "reason": reason},
        )
        return True

    async def drop_lost_jobs(self) -> None:
        """Cancel the local tasks of jobs this worker no longer owns in the database."""
        # Only jobs claimed before the query started: a later claim may not be visible to it.
        candidates = dict(self._running)
        try:
            owned = await self._store.owned_job_ids(self.owner)
        except Exception as exc:  # noqa: BLE001 - checked again after the next reconnect
            logger.warning(
                "ownership check failed",
                extra={"event": "ownership_check_failed", "error": repr(exc)},
            )
            return
        for job_id, task in candidates.items():
            if job_id not in owned and self._running.get(job_id) is task:
                self.cancel_local(job_id, "attempt no longer owned by this worker")

    async def stop(self, grace_seconds: float) -> None:
        """Stop claiming, let running jobs finish for ``grace_seconds``, then interrupt the rest.

        Interrupted jobs go back to the queue, and get one more attempt in place of the one
        that was cut short.
        """
        self._stopping.set()
        self._wake.set()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)

        deadline = time.monotonic() + grace_seconds
        if self._running:
            logger.info(
                "waiting for running jobs",
                extra={"event": "worker_pool_draining", "count": len(self._running),
                       "grace_seconds": grace_seconds},
            )
            await asyncio.wait(list(self._running.values()), timeout=grace_seconds)
        for task in list(self._running.values()):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)
        await self._completer.stop(max(1.0, deadline - time.monotonic() + 2.0))
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            self._processes.close()
        logger.info("worker pool stopped", extra={"event": "worker_pool_stopped"})

    # The fetch loop -------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        concurrency = self.settings.worker_concurrency
        # With a backlog, claim in batches rather than one job per freed slot: one claim
        # statement per freed slot would cost a commit per job.
        refill = min(self.settings.fetch_batch_size, max(1, concurrency // 4))
        backlog = False
        while not self._stopping.is_set():
            free = concurrency - len(self._running)
            if free <= 0 or (backlog and free < refill):
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            if not self._may_claim.is_set():
                await self._may_claim.wait()
                continue
            limit = min(free, self.settings.fetch_batch_size)
            rooms = self._rooms(limit)
            self._wake.clear()
            jobs = await self._fetch(rooms, limit)
            for job in jobs:
                self._start_job(job)
            backlog = len(jobs) == limit
            if not backlog:
                await self._wait_for_work()

    def _rooms(self, limit: int) -> dict[str, int]:
        """Return how many jobs each queue may claim now, in a rotating order for fairness."""
        caps = self.settings.queue_concurrency
        running: dict[str, int] = {}
        for queue in self._running_queues.values():
            running[queue] = running.get(queue, 0) + 1
        queues = self.settings.queues
        offset = self._fetch_round % len(queues)
        self._fetch_round += 1
        rooms = {}
        for queue in queues[offset:] + queues[:offset]:
            cap = caps.get(queue)
            room = limit if cap is None else min(limit, cap - running.get(queue, 0))
            if room > 0:
                rooms[queue] = room
        return rooms

    async def _fetch(self, rooms: dict[str, int], limit: int) -> list[Job]:
        if not rooms:
            return []
        try:
            jobs = await self._store.fetch(self.owner, rooms, limit)
            if len(jobs) < limit and self._has_limited_kinds:
                jobs += await self._fetch_limited(rooms, jobs, limit - len(jobs))
            return jobs
        except Exception as exc:  # noqa: BLE001 - the loop must outlive database outages
            logger.warning(
                "fetching jobs failed",
                extra={"event": "job_fetch_failed", "error": repr(exc)},
            )
            await asyncio.sleep(self.settings.poll_interval_seconds)
            return []

    async def _fetch_limited(self, rooms: dict[str, int], claimed: list[Job], limit: int) -> list[Job]:
        """Claim jobs under concurrency limits, within each queue's remaining room."""
        left = dict(rooms)
        for job in claimed:
            left[job.queue] -= 1
        jobs: list[Job] = []
        if all(queue not in self.settings.queue_concurrency for queue in left):
            # No queue is capped: one statement for all of them.
            return await self._store.fetch_limited(self.owner, list(left), limit)
        for queue, room in left.items():
            want = min(room, limit - len(jobs))
            if want > 0:
                jobs += await self._store.fetch_limited(self.owner, [queue], want)
        return jobs

    async def _wait_for_work(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.poll_interval_seconds):
                await self._wake.wait()

    # The scheduler loop ---------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        while not self._stopping.is_set():
            self._schedule_changed.clear()
            wait_seconds = self.settings.poll_interval_seconds
            try:
                while await self._store.promote_scheduled(limit=1000) == 1000:
                    pass
                next_at = await self._store.next_scheduled_at()
                if next_at is not None:
                    until_due = (next_at - datetime.now(UTC)).total_seconds()
                    wait_seconds = max(0.001, min(wait_seconds, until_due))
            except Exception as exc:  # noqa: BLE001 - the loop must outlive database outages
                logger.warning(
                    "promoting scheduled jobs failed",
                    extra={"event": "job_promote_failed", "error": repr(exc)},
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_seconds):
                    await self._schedule_changed.wait()

    # Running one job ------------------------------------------------------------------

    def _start_job(self, job: Job) -> None:
        task = asyncio.create_task(self._run_job(job), name=f"odin-job-{job.id}")
        self._running[job.id] = task
        self._running_queues[job.id] = job.queue
        task.add_done_callback(functools.partial(self._job_done, job.id))
        observe_job_started(job)
        if not logger.isEnabledFor(logging.DEBUG):
            return
        logger.debug(
            "job fetched",
            extra={"event": "job_fetched", "job_id": job.id, "kind": job.kind,
                   "queue": job.queue, "attempt": job.attempt},
        )

    def _job_done(self, job_id: int, task: asyncio.Task[None]) -> None:
        self._running.pop(job_id, None)
        queue = self._running_queues.pop(job_id, None)
        if self._has_limited_kinds or queue in self.settings.queue_concurrency:
            # A job held back by a key limit or a queue cap may be claimable now; without
            # this wake it would wait for the next poll.
            self._wake.set()
        self._lost.discard(job_id)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "job task crashed",
                extra={"event": "job_task_crashed", "job_id": job_id,
                       "error": repr(task.exception())},
            )

    async def _run_job(self, job: Job) -> None:
        started = time.monotonic()
        try:
            outcome = await self._execute(job)
        except asyncio.CancelledError:
            if job.id in self._lost or not self._stopping.is_set():
                raise
            outcome = self._interrupted(job)
        except Exception as exc:  # noqa: BLE001 - a job must never stay running unrecorded
            logger.error(
                "recording the outcome of a job failed",
                exc_info=exc,
                extra={"event": "job_outcome_failed", "job_id": job.id, "error": repr(exc)},
            )
            outcome = self._failure(job, f"Odin could not record this attempt: {exc!r}",
                                    retry=False)
        if outcome is not None and job.id not in self._lost:
            self._completer.submit(outcome)
            observe_attempt(time.monotonic() - started, job.kind, outcome.event_type)
        else:
            observe_attempt(time.monotonic() - started, job.kind, "lost")
        if not logger.isEnabledFor(logging.DEBUG):
            return
        logger.debug(
            "job attempt ended",
            extra={"event": "job_attempt_ended", "job_id": job.id, "kind": job.kind,
                   "attempt": job.attempt,
                   "duration_ms": round((time.monotonic() - started) * 1000, 2)},
        )

    async def _execute(self, job: Job) -> Outcome | None:
        """Run the job's function; return the outcome to record, or None to record nothing."""
        try:
            kind = self._registry.get(job.kind)
        except UnknownKind:
            return self._failure(job, f"job kind {job.kind!r} is not registered on this worker",
                                 retry=False)
        timeout = job.timeout_seconds or kind.options.timeout_seconds
        try:
            async with asyncio.timeout(timeout) as deadline:
                result = await self._call(kind, job)
        except RetryLater as exc:
            return self._retry_later(job, exc)
        except CancelJob as exc:
            return self._failure(job, exc.reason, retry=False)
        except AttemptLost:
            logger.warning(
                "job attempt lost its ownership, result discarded",
                extra={"event": "job_attempt_lost", "job_id": job.id, "attempt": job.attempt},
            )
            return None
        except TimeoutError as exc:
            if deadline.expired():
                return self._failure(job, f"attempt timed out after {timeout} seconds")
            return self._failure(job, _describe(exc), exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any error of job code fails the attempt
            return self._failure(job, _describe(exc), exc)
        return self._success(job, result)

    async def _call(self, kind: Kind, job: Job) -> Any:
        arguments = kind.call_arguments(job.args)
        info = JobInfo(job.id, job.kind, job.queue, job.attempt, job.max_attempts)
        context = JobContext(info, functools.partial(self._write_event, job))
        if kind.is_async:
            if kind.context_parameter:
                arguments[kind.context_parameter] = context
            return await kind.function(**arguments)
        if kind.options.offload:
            return await self._offload(kind, arguments, info, context)
        if kind.context_parameter:
            arguments[kind.context_parameter] = SyncJobContext(context, asyncio.get_running_loop())
        call = functools.partial(self._in_thread, functools.partial(kind.function, **arguments))
        return await asyncio.get_running_loop().run_in_executor(self._threads, call)

    def _in_thread(self, call: Callable[[], Any]) -> Any:
        with self._threads_lock:
            self._threads_busy += 1
        try:
            return call()
        finally:
            with self._threads_lock:
                self._threads_busy -= 1

    @property
    def busy_threads(self) -> int:
        """Sync jobs still running in threads, including abandoned ones (cancelled, timed out)."""
        return self._threads_busy

    async def _offload(
        self, kind: Kind, arguments: dict[str, Any], info: JobInfo, context: JobContext
    ) -> Any:
        if self._processes is None:
            self._processes = ProcessPool(self.settings.offload_processes)

        async def relay(report: tuple[Any, ...]) -> None:
            if report[0] == "progress":
                await context.progress(report[1], report[2])
            else:
                await context.log(report[1], report[2])

        return await self._processes.run(
            kind.function, arguments, kind.context_parameter, info, relay
        )

    async def _write_event(self, job: Job, event_type: str, data: dict[str, Any]) -> int | None:
        return await self._store.append_event(job.id, job.attempt, self.owner, event_type, data)

    # Outcomes -------------------------------------------------------------------------

    def _success(self, job: Job, result: Any) -> Outcome:
        try:
            check_storable(result, "result")
        except UnstorableValue as exc:
            return self._failure(job, f"job returned a result that cannot be stored: {exc}",
                                 retry=False)
        size = json_size(result)
        if size > self.settings.max_result_bytes:
            return self._failure(
                job,
                f"result is {size} bytes of JSON, over the limit of "
                f"{self.settings.max_result_bytes} (ODIN_MAX_RESULT_BYTES)",
                retry=False,
            )
        return Outcome(
            job_id=job.id,
            attempt=job.attempt,
            state=JobState.COMPLETED,
            event_type="completed",
            event_data={"attempt": job.attempt, "result": result},
            result=result,
        )

    def _failure(
        self, job: Job, message: str, exc: BaseException | None = None, *, retry: bool = True
    ) -> Outcome:
        error = _error_entry(job, message, exc)
        if retry and job.attempt < job.max_attempts:
            delay = self._retry_policy.delay_seconds(job.attempt)
            return self._retry_outcome(job, error, delay)
        return Outcome(
            job_id=job.id,
            attempt=job.attempt,
            state=JobState.FAILED,
            event_type="failed",
            event_data={"attempt": job.attempt, "error": error["error"]},
            error=error,
        )

    def _retry_later(self, job: Job, exc: RetryLater) -> Outcome:
        if job.attempt >= job.max_attempts:
            return self._failure(job, f"{exc.reason} (no attempts left)", retry=False)
        error = _error_entry(job, exc.reason, None)
        return self._retry_outcome(job, error, exc.delay_seconds)

    def _retry_outcome(self, job: Job, error: dict[str, Any], delay_seconds: float) -> Outcome:
        # A job may ask for any delay; past the policy's maximum it would overflow dates.
        delay_seconds = min(delay_seconds, max(self.settings.retry_max_seconds, MAX_RETRY_DELAY_SECONDS))
        scheduled_at = datetime.now(UTC) + timedelta(seconds=delay_seconds)
        self._schedule_changed.set()
        return Outcome(
            job_id=job.id,
            attempt=job.attempt,
            state=JobState.SCHEDULED,
            event_type="retry_scheduled",
            event_data={"attempt": job.attempt, "error": error["error"],
                        "scheduled_at": scheduled_at.isoformat(),
                        "delay_seconds": round(delay_seconds, 3)},
            error=error,
            scheduled_at=scheduled_at,
        )

    def _interrupted(self, job: Job) -> Outcome:
        return Outcome(
            job_id=job.id,
            attempt=job.attempt,
            state=JobState.QUEUED,
            event_type="interrupted",
            event_data={"queue": job.queue, "attempt": job.attempt,
                        "reason": "worker shut down before the attempt ended"},
        )

    def _log_recorded(self, outcome: Outcome, applied: bool) -> None:
        if not applied:
            logger.warning(
                "outcome rejected: attempt no longer owned",
                extra={"event": "job_outcome_rejected", "job_id": outcome.job_id,
                       "attempt": outcome.attempt, "state": outcome.state.value},
            )
            return
        event = {
            JobState.COMPLETED: "job_completed",
            JobState.FAILED: "job_failed",
            JobState.SCHEDULED: "job_retry_scheduled",
            JobState.QUEUED: "job_interrupted",
        }.get(outcome.state, "job_recorded")
        level = logging.WARNING if outcome.state is JobState.FAILED else logging.DEBUG
        logger.log(
            level,
            event.replace("_", " "),
            extra={"event": event, "job_id": outcome.job_id, "attempt": outcome.attempt,
                   "state": outcome.state.value,
                   "error": outcome.error["error"] if outcome.error else None},
        )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OffloadedJobFailed):
        # Already "Type: message" of the exception raised in the child process.
        return str(exc)[:MAX_ERROR_CHARS]
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text.replace("\x00", "\ufffd")[:MAX_ERROR_CHARS]


def _error_entry(job: Job, message: str, exc: BaseException | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "attempt": job.attempt,
        "error": message.replace("\x00", "\ufffd")[:MAX_ERROR_CHARS],
        "at": datetime.now(UTC).isoformat(),
    }
    if isinstance(exc, OffloadedJobFailed) and exc.child_traceback:
        entry["traceback"] = exc.child_traceback.replace("\x00", "\ufffd")[-MAX_TRACEBACK_CHARS:]
    elif exc is not None:
        trace = "".join(traceback.format_exception(exc)).replace("\x00", "\ufffd")
        entry["traceback"] = trace[-MAX_TRACEBACK_CHARS:]
    return entry
