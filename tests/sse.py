"""A small Server-Sent Events reader for tests that keeps comments and detects how a stream ends.

httpx-sse hides comment lines (and, after an event with an id, shows keep-alive comments as
empty events), so tests that check keep-alives or the shutdown notice read streams with this
parser instead. It follows the event stream format of the HTML standard: fields `id`, `event`,
`data` and `retry`, comment lines starting with a colon, and a blank line ending each event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

STREAM_TIMEOUT = httpx.Timeout(10.0, read=None)
FINAL_EVENT_TYPES = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event; `data` is the raw text of its data lines."""

    id: str | None
    event: str
    data: str

    @property
    def payload(self) -> Any:
        """The decoded JSON of `data`."""
        return json.loads(self.data)

    @property
    def seq(self) -> int:
        """The event id as a number (Odin numbers each job's events from 1)."""
        assert self.id is not None, f"event {self.event!r} has no id"
        return int(self.id)


@dataclass(frozen=True)
class Comment:
    """A comment line (`: text`), such as a keep-alive."""

    text: str


@dataclass
class StreamRecord:
    """Everything read from one stream, in order."""

    status_code: int
    content_type: str
    events: list[ServerSentEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry_ms: int | None = None

    @property
    def ids(self) -> list[int]:
        return [event.seq for event in self.events]

    @property
    def types(self) -> list[str]:
        return [event.event for event in self.events]


class EventStream:
    """An open event stream: iterate it for `ServerSentEvent` and `Comment` items."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.retry_ms: int | None = None
        self._items: AsyncGenerator[ServerSentEvent | Comment, None] = self._parse()

    def __aiter__(self) -> AsyncIterator[ServerSentEvent | Comment]:
        return self._items

    async def aclose(self) -> None:
        """Stop parsing; the response itself is closed by `open_stream`."""
        await self._items.aclose()

    async def _parse(self) -> AsyncGenerator[ServerSentEvent | Comment, None]:
        event_id: str | None = None
        event_type = ""
        data: list[str] = []
        async for line in self.response.aiter_lines():
            if line == "":
                if data:
                    yield ServerSentEvent(event_id, event_type or "message", "\n".join(data))
                event_type, data = "", []
                continue
            if line.startswith(":"):
                yield Comment(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "event":
                event_type = value
            elif name == "id":
                # The last event id persists across events until a new one arrives.
                event_id = value
            elif name == "retry" and value.isdigit():
                self.retry_ms = int(value)


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient,
    url: str,
    *,
    last_event_id: int | str | None = None,
    params: dict[str, str] | None = None,
) -> AsyncIterator[EventStream]:
    """Open `url` as an event stream, sending `Last-Event-ID` when given.

    The caller checks the status code on `stream.response`; the body is not read for
    statuses other than 200.
    """
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    async with client.stream(
        "GET", url, headers=headers, params=params, timeout=STREAM_TIMEOUT
    ) as response:
        stream = EventStream(response)
        try:
            yield stream
        finally:
            await stream.aclose()


async def read_stream(
    client: httpx.AsyncClient,
    url: str,
    *,
    last_event_id: int | str | None = None,
    params: dict[str, str] | None = None,
    timeout_seconds: float = 15.0,
) -> StreamRecord:
    """Read a whole stream until the server ends it; raise AssertionError after `timeout_seconds`.

    A connection that breaks mid-stream raises `httpx.RemoteProtocolError`, so a record
    returned by this function comes from a stream that ended cleanly.
    """
    record = StreamRecord(0, "")
    with anyio.move_on_after(timeout_seconds) as scope:
        async with open_stream(client, url, last_event_id=last_event_id, params=params) as stream:
            response = stream.response
            record.status_code = response.status_code
            record.content_type = response.headers.get("content-type", "")
            if response.status_code != 200:
                await response.aread()
                return record
            async for item in stream:
                if isinstance(item, Comment):
                    record.comments.append(item.text)
                else:
                    record.events.append(item)
            record.retry_ms = stream.retry_ms
    if scope.cancelled_caught:
        raise AssertionError(
            f"the stream {url} (Last-Event-ID {last_event_id}, query {params}) did not end "
            f"within {timeout_seconds} s; it sent events {record.ids} and "
            f"{len(record.comments)} comments"
        )
    return record


async def read_events(
    client: httpx.AsyncClient,
    url: str,
    count: int,
    *,
    last_event_id: int | str | None = None,
    params: dict[str, str] | None = None,
    timeout_seconds: float = 15.0,
) -> list[ServerSentEvent]:
    """Read events until `count` have arrived or the stream ends, then disconnect."""
    events: list[ServerSentEvent] = []
    with anyio.fail_after(timeout_seconds):
        async with open_stream(client, url, last_event_id=last_event_id, params=params) as stream:
            assert stream.response.status_code == 200, stream.response.status_code
            async for item in stream:
                if isinstance(item, ServerSentEvent):
                    events.append(item)
                    if len(events) >= count:
                        break
    return events


def assert_complete_sequence(events: list[ServerSentEvent], first_id: int = 1) -> None:
    """Check that event ids run from `first_id` without a gap or a repeat, and that the
    JSON of each event agrees with its SSE fields."""
    ids = [event.seq for event in events]
    assert ids == list(range(first_id, first_id + len(ids))), f"event ids {ids}"
    for event in events:
        assert event.payload["seq"] == event.seq, event
        assert event.payload["type"] == event.event, event
