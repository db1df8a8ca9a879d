"""Live job event streams: the ``Broker`` that fans events out to subscribers, and SSE framing.

A stream reads the job's event log after the client's last event id, then follows live
events. The broker keeps one ``Topic`` per job with subscribers in this process. When the
listener reports new events of such a job, one fetch task reads them from the database for
all notified jobs at once and hands them to every subscriber, so a thousand clients on one
job cost one query. Subscribers drop events they already have (by sequence number) and
re-read the log whenever they see a gap, after a listener reconnect, or when their buffer
overflowed, so no event is lost or repeated.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from odin_ext.jobs import Event
from odin_ext.store import JobStore

logger = logging.getLogger(__name__)

BACKLOG_PAGE = 500


class Resync:
    """Queue marker: the subscriber missed events and must re-read the log."""


RESYNC = Resync()


class Stop:
    """Queue marker: the server is shutting down and the stream must end."""


STOP = Stop()


@dataclass(eq=False)
class Subscriber:
    """One client's view of a job's stream."""

    job_id: int
    queue: asyncio.Queue[Event | Resync | Stop]
    overflowed: bool = False

    def stop(self) -> None:
        """End the stream: drop what is buffered and leave only the stop marker."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(STOP)

    def put(self, item: Event | Resync) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            # Past its buffer the subscriber re-reads the log instead of buffering more.
            self.overflowed = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(RESYNC)


@dataclass(eq=False)
class Topic:
    """Subscribers of one job and the highest sequence number fetched for them.

    ``cursor`` stays None until the first subscriber has read the log, because until then
    the sequence number that the live feed must start after is unknown.
    """

    job_id: int
    subscribers: set[Subscriber] = field(default_factory=set)
    cursor: int | None = None
    pending: bool = False


class Broker:
    """Fans job events out to the subscribers of this process."""

    def __init__(self, store: JobStore, queue_size: int) -> None:
        self._store = store
        self._queue_size = queue_size
        # Touched only from the event loop thread.
        self._topics: dict[int, Topic] = {}
        self._fetch_needed = asyncio.Event()
        self._stopped = False
        self._task: asyncio.Task[None] | None = None

    @property
    def subscriber_count(self) -> int:
        return sum(len(topic.subscribers) for topic in self._topics.values())

    def start(self) -> None:
        self._task = asyncio.create_task(self._fetch_loop(), name="odin-broker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def subscribe(self, job_id: int) -> Subscriber:
        """Register a subscriber; call before reading the log so no live event slips by."""
        subscriber = Subscriber(job_id, asyncio.Queue(maxsize=self._queue_size))
        if self._stopped:
            subscriber.stop()
        topic = self._topics.get(job_id)
        if topic is None:
            topic = self._topics[job_id] = Topic(job_id)
        topic.subscribers.add(subscriber)
        return subscriber

    def stop_all(self) -> None:
        """End every open stream of this process (shutdown); later subscribers end at once."""
        self._stopped = True
        for topic in self._topics.values():
            for subscriber in topic.subscribers:
                subscriber.stop()

    def unsubscribe(self, subscriber: Subscriber) -> None:
        topic = self._topics.get(subscriber.job_id)
        if topic is None:
            return
        topic.subscribers.discard(subscriber)
        if not topic.subscribers:
            del self._topics[subscriber.job_id]

    def caught_up(self, subscriber: Subscriber, seq: int) -> None:
        """Tell the broker that ``subscriber`` has read the log up to ``seq``."""
        topic = self._topics.get(subscriber.job_id)
        if topic is not None and topic.cursor is None:
            topic.cursor = seq
            if topic.pending:
                self._fetch_needed.set()

    def on_notify(self, payload: str) -> None:
        """Handle an ``odin_events`` payload of ``job_id:seq`` pairs."""
        for item in payload.split(","):
            job_text, _, seq_text = item.partition(":")
            try:
                job_id, seq = int(job_text), int(seq_text)
            except ValueError:
                logger.warning(
                    "malformed event notification ignored",
                    extra={"event": "notify_malformed", "payload": payload[:200]},
                )
                return
            topic = self._topics.get(job_id)
            if topic is not None and (topic.cursor is None or seq > topic.cursor):
                topic.pending = True
                self._fetch_needed.set()

    def publish(self, events: Sequence[Event]) -> None:
        """Deliver committed events written by this process to its subscribers.

        This saves the read of the log that their notification would cost. Events of jobs
        with no subscriber here are ignored, and a subscriber that has not read the log yet
        gets them from the log instead.
        """
        if self._topics:
            self._dispatch(events)

    def on_reconnect(self) -> None:
        """Mark every topic for a re-read: notifications may have been lost."""
        for topic in self._topics.values():
            topic.pending = True
        self._fetch_needed.set()

    async def _fetch_loop(self) -> None:
        while True:
            await self._fetch_needed.wait()
            self._fetch_needed.clear()
            ready = {
                job_id: topic
                for job_id, topic in self._topics.items()
                if topic.pending and topic.cursor is not None
            }
            if not ready:
                continue
            for topic in ready.values():
                topic.pending = False
            try:
                events = await self._store.events_after_many(
                    {job_id: topic.cursor for job_id, topic in ready.items()}  # type: ignore[misc]
                )
            except Exception as exc:  # noqa: BLE001 - the loop must outlive database outages
                logger.warning(
                    "reading live events failed",
                    extra={"event": "broker_fetch_failed", "error": repr(exc)},
                )
                for topic in ready.values():
                    topic.pending = True
                await asyncio.sleep(0.5)
                self._fetch_needed.set()
                continue
            self._dispatch(events)

    def _dispatch(self, events: Sequence[Event]) -> None:
        for event in events:
            topic = self._topics.get(event.job_id)
            if topic is None or topic.cursor is None or event.seq <= topic.cursor:
                continue
            topic.cursor = event.seq
            for subscriber in topic.subscribers:
                subscriber.put(event)


async def follow(
    store: JobStore,
    broker: Broker,
    job_id: int,
    after: int,
    *,
    keepalive_seconds: float,
) -> AsyncIterator[Event | None]:
    """Yield the job's events after ``after`` until its final event; None means keep-alive.

    Ends early, without a final event, when the broker stops its streams (shutdown).
    """
    subscriber = broker.subscribe(job_id)
    try:
        seen = after
        # The log may hold a final event followed by more: a job retried after it failed
        # or was cancelled. So the whole log is replayed, and the job's current state
        # decides whether the stream ends.
        last: Event | None = None
        async for event in _read_log(store, job_id, seen):
            yield event
            seen = event.seq
            last = event
        # A final event that is the log's last means the job is over. With nothing new in
        # the log (a client resuming at or past the end), only the job's row can tell.
        if last is not None and last.is_final:
            return
        log_end = seen
        if last is None:
            # Nothing new in the log, so only the job's row shows whether it is over. A client
            # may also resume from an id past the log's end. The broker's cursor must stop at
            # that end, because otherwise the events up to that id would never be fetched for
            # the job's other subscribers on this process.
            job = await store.get(job_id)
            if job is None or (job.state.is_final and job.last_event_seq <= seen):
                return
            log_end = min(seen, job.last_event_seq)
        broker.caught_up(subscriber, log_end)
        while True:
            try:
                async with asyncio.timeout(keepalive_seconds):
                    item = await subscriber.queue.get()
            except TimeoutError:
                yield None
                continue
            if isinstance(item, Stop):
                return
            if isinstance(item, Resync) or item.seq > seen + 1:
                subscriber.overflowed = False
                events = [e async for e in _read_log(store, job_id, seen)]
            elif item.seq <= seen:
                if item.is_final:
                    # The client asked to resume past this job's end (an id from the future).
                    return
                continue
            else:
                events = [item]
            for event in events:
                yield event
                seen = event.seq
                if event.is_final:
                    return
    finally:
        broker.unsubscribe(subscriber)


async def _read_log(store: JobStore, job_id: int, after: int) -> AsyncIterator[Event]:
    while True:
        events = await store.events_after(job_id, after, limit=BACKLOG_PAGE)
        for event in events:
            yield event
            after = event.seq
        if len(events) < BACKLOG_PAGE:
            return


def encode_event(event: Event) -> bytes:
    """Frame one event for SSE: its sequence number as ``id``, its type as ``event``.

    The frame is cached on the event, so an event fanned out to many subscribers is
    encoded once.
    """
    return event.sse_frame


def encode_comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


def encode_retry(milliseconds: int) -> bytes:
    return f"retry: {milliseconds}\n\n".encode()
