"""A small HTTP/1.1 client on asyncio streams, cheap enough to load Odin from the same machine.

httpx spends more CPU per request than the server under test on a 2-core machine, which
would make the client the bottleneck. ``Connection`` sends requests on one keep-alive
connection, and ``ConnectionPool`` shares a fixed number of them. ``follow_events`` opens a
connection of its own for one event stream and reads it until the job's final event.

Limitations:
- Only what Odin's API sends is understood: ``Content-Length`` bodies, and chunked bodies
  for event streams. No TLS, no redirects, no HTTP/2.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

FINAL_EVENT_TYPES = frozenset({"completed", "failed", "cancelled"})


def path_of(url: str) -> str:
    """Return the path and query of an absolute URL from an API response."""
    parts = urllib.parse.urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


class HttpError(Exception):
    """Odin responded with an unexpected status, or the connection broke mid-response."""


@dataclass
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One keep-alive HTTP/1.1 connection to ``host:port``; one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = None

    async def request(self, method: str, path: str, body: Any = None) -> Response:
        """Send one request (``body`` as JSON when given) and read the whole response."""
        if self._writer is None:
            await self.open()
        assert self._reader is not None and self._writer is not None
        payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        self._writer.write(head.encode() + b"\r\n" + payload)
        try:
            status, headers = await _read_head(self._reader)
            length = int(headers.get("content-length", "0"))
            data = await self._reader.readexactly(length) if length else b""
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            raise HttpError(f"connection to {self.host}:{self.port} broke: {exc!r}") from exc
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Response(status, data)


class ConnectionPool:
    """``size`` keep-alive connections shared by many tasks; a request waits for a free one."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self._idle: asyncio.Queue[Connection] = asyncio.Queue()
        self._all = [Connection(host, port) for _ in range(size)]
        for connection in self._all:
            self._idle.put_nowait(connection)

    async def request(self, method: str, path: str, body: Any = None) -> Response:
        connection = await self._idle.get()
        try:
            return await connection.request(method, path, body)
        finally:
            self._idle.put_nowait(connection)

    async def close(self) -> None:
        for connection in self._all:
            await connection.close()


@dataclass
class StreamRecord:
    """Events one stream delivered: per event its type, ``at`` time and receipt time."""

    job_id: int
    events: list[tuple[str, float, float]] = field(default_factory=list)
    final_at: float | None = None
    error: str | None = None


async def follow_events(
    host: str,
    port: int,
    job_id: int,
    path: str | None = None,
    *,
    on_connected: Callable[[], None] | None = None,
    timeout_seconds: float = 120.0,
) -> StreamRecord:
    """Read the event stream of ``job_id`` until its final event.

    ``path`` is the stream's path and query from the job's ``events_url``, which may carry a
    token. Without it the plain ``/v1/jobs/{job_id}/events`` is used.

    Times are ``time.time()`` seconds: each event's ``at`` (parsed from its data) and when it
    was read. ``final_at`` is the read time of the final event. Errors and a timeout end the
    stream early and are kept in ``error`` rather than raised, so a load run goes on.
    """
    record = StreamRecord(job_id)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_seconds):
            reader, writer = await asyncio.open_connection(host, port)
            target = path or f"/v1/jobs/{job_id}/events"
            writer.write(
                f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Accept: text/event-stream\r\n\r\n".encode()
            )
            status, headers = await _read_head(reader)
            if status != 200:
                raise HttpError(f"event stream of job {job_id} responded with status {status}")
            if on_connected is not None:
                on_connected()
            await _read_stream(reader, headers, record)
    except (HttpError, OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
        record.error = repr(exc)
    finally:
        if writer is not None:
            writer.close()
    return record


async def _read_stream(
    reader: asyncio.StreamReader, headers: dict[str, str], record: StreamRecord
) -> None:
    chunked = headers.get("transfer-encoding", "").lower() == "chunked"
    buffer = b""
    while True:
        if chunked:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                return
            data = await reader.readexactly(size + 2)
            buffer += data[:-2]
        else:
            data = await reader.read(65536)
            if not data:
                return
            buffer += data
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            if _record_frame(frame, record):
                return


def _record_frame(frame: bytes, record: StreamRecord) -> bool:
    """Record one SSE frame; return True when it was the job's final event."""
    received = time.time()
    event_type = ""
    data = b""
    for line in frame.split(b"\n"):
        if line.startswith(b"event: "):
            event_type = line[7:].decode()
        elif line.startswith(b"data: "):
            data = line[6:]
    if not event_type or not data:
        return False  # retry hint or keep-alive comment
    at = datetime.fromisoformat(json.loads(data)["at"]).timestamp()
    record.events.append((event_type, at, received))
    if event_type in FINAL_EVENT_TYPES:
        record.final_at = received
        return True
    return False


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers
