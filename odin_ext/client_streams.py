"""Following one job's event stream from a client: SSE parsing and the resume rules.

``EventStream`` holds everything about following a stream except the I/O, so the blocking
and the asyncio client (``odin_ext.client``) share it. A client loop calls ``connect`` for
the headers and timeouts of each connection, ``opened`` with the response, ``received`` with
each chunk of the body, ``should_reopen`` after each chunk, and ``next_delay`` when the
connection ends without the job's final event.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime

import httpx

from odin_ext.client_errors import OdinError, OdinUnavailable, WaitTimeout, error_from_response
from odin_ext.jobs import Event

# Seconds that a plain request (connecting, writing) may take on a stream connection.
CONNECT_TIMEOUT_SECONDS = 30.0
# Used until the stream's own "retry:" field names another delay.
RECONNECT_DELAY_SECONDS = 1.0
MAX_RECONNECT_DELAY_SECONDS = 5.0
RECONNECT_BACKOFF_FACTOR = 1.5
# A read may end this much after a wait's deadline before the stream is reopened sooner.
DEADLINE_SLACK_SECONDS = 0.25

# Statuses after which a stream is reopened instead of failing: the server or a proxy in
# front of it is overloaded, restarting or briefly without its database.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# SSE lines end at CRLF, CR or LF only. str.splitlines() would also split at U+2028 and
# other characters that the server's JSON may carry unescaped.
_LINE_END = re.compile(rb"\r\n|\r|\n")


class RetryableStatus(Exception):
    """A response to a stream connection that calls for a reconnect, such as 503."""


@dataclass(frozen=True)
class Frame:
    """One server-sent event as it came off the wire."""

    id: str | None
    type: str
    data: str


class SSEParser:
    """Incremental parser of a ``text/event-stream`` body (the WHATWG HTML SSE format).

    ``feed`` returns the events completed by a chunk, with None for each comment line: Odin
    sends comments as keep-alives. ``retry_ms`` is the latest reconnect delay the server named.
    """

    def __init__(self) -> None:
        self.retry_ms: int | None = None
        self._pending = b""
        self._at_start = True
        self._data: list[str] = []
        self._type = ""
        # The event id persists across events, as in browsers' EventSource.
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[Frame | None]:
        items: list[Frame | None] = []
        for line in self._split_lines(chunk):
            text = line.decode("utf-8", errors="replace")
            if self._at_start:
                text = text.removeprefix("\ufeff")
                self._at_start = False
            if not text:
                frame = self._dispatch()
                if frame is not None:
                    items.append(frame)
            elif text.startswith(":"):
                items.append(None)
            else:
                name, _, value = text.partition(":")
                self._apply_field(name, value.removeprefix(" "))
        return items

    def _split_lines(self, chunk: bytes) -> list[bytes]:
        data = self._pending + chunk
        # A CR at the end may be the first half of a CRLF split across two chunks.
        trailing_cr = b"\r" if data.endswith(b"\r") else b""
        if trailing_cr:
            data = data[:-1]
        *lines, tail = _LINE_END.split(data)
        self._pending = tail + trailing_cr
        return lines

    def _apply_field(self, name: str, value: str) -> None:
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id" and "\x00" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)

    def _dispatch(self) -> Frame | None:
        data, event_type = self._data, self._type
        self._data, self._type = [], ""
        if not data:
            return None
        return Frame(self._id, event_type or "message", "\n".join(data))


class EventStream:
    """Following one job's events across connections: what to request, and when to reconnect.

    Events at or below ``last_seq`` are dropped, so a replayed event is never yielded twice.
    Reconnects wait for the server's retry delay, growing by ``RECONNECT_BACKOFF_FACTOR`` per
    consecutive failure up to ``MAX_RECONNECT_DELAY_SECONDS``. When no connection succeeds
    for ``reconnect_timeout_seconds``, ``next_delay`` raises ``OdinUnavailable``. With a
    ``timeout_seconds``, the stream raises ``WaitTimeout`` once that time has passed since
    ``started_at`` (a ``time.monotonic()`` value, default: now).
    """

    def __init__(
        self,
        job_id: int,
        after: int,
        *,
        timeout_seconds: float | None,
        reconnect_timeout_seconds: float,
        idle_timeout_seconds: float,
        started_at: float | None = None,
    ) -> None:
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ValueError(f"after must be a non-negative event id, got {after!r}")
        if timeout_seconds is not None and timeout_seconds < 0:
            raise ValueError(f"timeout_seconds must not be negative, got {timeout_seconds}")
        self.job_id = job_id
        self.path = f"/v1/jobs/{job_id}/events"
        self.last_seq = after
        self.last_event: Event | None = None
        self.finished = False
        self._timeout_seconds = timeout_seconds
        # The wait may have begun before this stream, for example on an earlier stream.
        started_at = time.monotonic() if started_at is None else started_at
        self._deadline = started_at + timeout_seconds if timeout_seconds is not None else None
        self._reconnect_timeout_seconds = reconnect_timeout_seconds
        self._idle_timeout_seconds = idle_timeout_seconds
        self._parser = SSEParser()
        self._retry_seconds = RECONNECT_DELAY_SECONDS
        self._read_timeout_seconds = idle_timeout_seconds
        self._reopen = False
        self._failures = 0
        self._failing_since: float | None = None
        self._last_failure = ""

    def connect(self) -> tuple[dict[str, str], httpx.Timeout]:
        """Start a connection attempt; return its request headers and timeouts."""
        self._check_deadline()
        self._parser = SSEParser()
        self._reopen = False
        self._read_timeout_seconds = self._idle_timeout_seconds
        if self._deadline is not None:
            remaining = max(self._deadline - time.monotonic(), 0.001)
            self._read_timeout_seconds = min(self._idle_timeout_seconds, remaining)
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_seq:
            headers["Last-Event-ID"] = str(self.last_seq)
        timeout = httpx.Timeout(CONNECT_TIMEOUT_SECONDS, read=self._read_timeout_seconds)
        return headers, timeout

    def opened(self, response: httpx.Response) -> None:
        """Check the response to a connection attempt; the body of a failure must be read first.

        Raises ``RetryableStatus`` for statuses worth a reconnect and ``OdinError`` otherwise.
        """
        if response.status_code == 200:
            self._failures = 0
            self._failing_since = None
            return
        error = error_from_response("GET", self.path, response)
        if response.status_code in RETRYABLE_STATUSES:
            raise RetryableStatus(str(error))
        raise error

    def received(self, chunk: bytes) -> list[Event]:
        """Parse a chunk of the body; return its new events, ending at the final one."""
        events = []
        for frame in self._parser.feed(chunk):
            if frame is None:
                continue  # a keep-alive comment
            event = decode_event(frame)
            if event.seq <= self.last_seq:
                continue
            self.last_seq = event.seq
            self.last_event = event
            events.append(event)
            if event.is_final:
                self.finished = True
                break
        if self._parser.retry_ms is not None:
            self._retry_seconds = self._parser.retry_ms / 1000
        return events

    def should_reopen(self) -> bool:
        """Tell whether to drop this connection and open another, checking the deadline.

        A read may block for the whole read timeout that the connection was opened with.
        Near the deadline, a fresh connection with a shorter read timeout ends the wait on
        time, and ``Last-Event-ID`` makes the switch lossless.
        """
        if self._deadline is None:
            return False
        self._check_deadline()
        overrun = time.monotonic() + self._read_timeout_seconds - self._deadline
        self._reopen = overrun > DEADLINE_SLACK_SECONDS
        return self._reopen

    def next_delay(self, failure: Exception | None) -> float:
        """Record how the last connection ended; return the seconds to wait before the next.

        ``failure`` is None when the server ended the stream early (it is shutting down) or
        when ``should_reopen`` asked for a new connection. Raises ``WaitTimeout`` past the
        deadline and ``OdinUnavailable`` when reconnecting has failed for too long.
        """
        self._check_deadline()
        if failure is None:
            return 0.0 if self._reopen else self._bounded(self._retry_seconds)

        now = time.monotonic()
        self._failures += 1
        self._last_failure = str(failure) or "the connection failed"
        if self._failing_since is None:
            self._failing_since = now
        if now - self._failing_since > self._reconnect_timeout_seconds:
            raise OdinUnavailable(
                f"lost the event stream of job {self.job_id} after event {self.last_seq} and "
                f"could not reopen it within {self._reconnect_timeout_seconds:g} s: "
                f"{self._last_failure}"
            ) from failure
        delay = self._retry_seconds * RECONNECT_BACKOFF_FACTOR ** (self._failures - 1)
        return self._bounded(min(delay, max(MAX_RECONNECT_DELAY_SECONDS, self._retry_seconds)))

    def _bounded(self, delay: float) -> float:
        if self._deadline is None:
            return delay
        return max(0.0, min(delay, self._deadline - time.monotonic()))

    def _check_deadline(self) -> None:
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise WaitTimeout(self.job_id, self._timeout_seconds or 0.0, self.last_event)


def decode_event(frame: Frame) -> Event:
    """Return the Odin event that a frame carries; raise ``OdinError`` if it carries none."""
    try:
        document = json.loads(frame.data)
        return Event(
            job_id=document["job_id"],
            seq=document["seq"],
            type=document["type"],
            data=document["data"],
            created_at=datetime.fromisoformat(document["at"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise OdinError(
            f"event {frame.id} ({frame.type}) of the stream is not an Odin event: {exc}"
        ) from None
