"""Python clients of Odin's HTTP API: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

Both talk to one Odin base URL and return jobs as the API shows them: dicts with ``id``,
``state``, ``result``, ``error``, ``progress`` and the other fields of ``GET /v1/jobs/{id}``.
``events`` follows a job's event stream and yields ``odin_ext.jobs.Event`` records. After a
dropped connection, a server restart or a 5xx response it reconnects with ``Last-Event-ID``, so
every event arrives exactly once and in order. ``wait`` follows the stream until the job
reaches a final state and returns the job.

Every failure raises ``OdinError``. Its ``status`` is the HTTP status, or None for
``OdinUnavailable`` (no response at all). ``detail`` and ``errors`` come from the server's
problem document. ``wait`` raises ``WaitTimeout`` when its time runs out.

The two clients share everything except the I/O calls. Requests are built by the ``_*_call``
functions and responses read by ``_read_response``; ``odin_ext.client_streams.EventStream`` holds
the parsing and reconnect rules of event streams.

Limitations:
- An event stream that receives nothing, not even a keep-alive comment, for
  ``stream_idle_timeout_seconds`` is taken for a dead connection and reopened. Servers whose
  ``ODIN_KEEPALIVE_SECONDS`` is longer than that cause needless (but lossless) reconnects.
- An ``AsyncClient.events`` iterator left early keeps its connection open until it is
  garbage collected; close it with ``contextlib.aclosing`` to release it at once.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import anyio
import httpx

from odin_ext.client_errors import OdinError, OdinUnavailable, WaitTimeout, error_from_response
from odin_ext.client_streams import EventStream, RetryableStatus
from odin_ext.jobs import FINAL_STATES, Event

__all__ = [
    "AsyncClient",
    "Client",
    "Event",
    "JobPage",
    "OdinError",
    "OdinUnavailable",
    "WaitTimeout",
]

DEFAULT_URL = "http://127.0.0.1:8000"
REQUEST_TIMEOUT_SECONDS = 30.0
RECONNECT_TIMEOUT_SECONDS = 60.0
# Three keep-alive intervals of a server with the default ODIN_KEEPALIVE_SECONDS (15 s).
STREAM_IDLE_TIMEOUT_SECONDS = 45.0


# Requests and responses, shared by both clients -------------------------------------------


@dataclass(frozen=True)
class JobPage:
    """One page of ``list``: jobs newest first, and the cursor of the next page (None if last)."""

    jobs: builtins.list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True)
class _Call:
    """One API request, ready for either client to send."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def _submit_call(
    kind: str,
    args: dict[str, Any] | None,
    *,
    queue: str | None,
    priority: int | None,
    max_attempts: int | None,
    timeout_seconds: float | None,
    delay_seconds: float | None,
    run_at: datetime | None,
    idempotency_key: str | None,
) -> _Call:
    if not kind:
        raise ValueError("kind must be a non-empty job kind name, such as 'countdown'")
    if run_at is not None and run_at.tzinfo is None:
        raise ValueError(f"run_at must have a time zone, got {run_at.isoformat()}")
    body: dict[str, Any] = {"kind": kind, "args": args or {}}
    options = {
        "queue": queue,
        "priority": priority,
        "max_attempts": max_attempts,
        "timeout_seconds": timeout_seconds,
        "delay_seconds": delay_seconds,
        "run_at": run_at.isoformat() if run_at is not None else None,
    }
    body.update({name: value for name, value in options.items() if value is not None})
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return _Call("POST", "/v1/jobs", body=body, headers=headers)


def _list_call(
    state: str | None, kind: str | None, queue: str | None, limit: int | None, cursor: str | None
) -> _Call:
    filters = {"state": state, "kind": kind, "queue": queue, "limit": limit, "cursor": cursor}
    params = {name: str(value) for name, value in filters.items() if value is not None}
    return _Call("GET", "/v1/jobs", params=params)


def _job_call(method: str, job_id: int, action: str = "") -> _Call:
    return _Call(method, f"/v1/jobs/{_checked_job_id(job_id)}{action}")


def _checked_job_id(job_id: int) -> int:
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 1:
        raise ValueError(f"job_id must be a positive integer, got {job_id!r}")
    return job_id


def _read_response(call: _Call, response: httpx.Response) -> dict[str, Any]:
    """Return the JSON object of a successful response; raise ``OdinError`` for any other."""
    if not response.is_success:
        raise error_from_response(call.method, call.path, response)
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise OdinError(
            f"{call.method} {call.path} returned {response.status_code} without a JSON object; "
            "is the URL an Odin server?",
            status=response.status_code,
        )
    return body


def _unreachable(base_url: str, call: _Call, exc: httpx.TransportError) -> OdinUnavailable:
    reason = str(exc) or "the connection failed"
    return OdinUnavailable(f"cannot reach Odin at {base_url} ({call.method} {call.path}): {reason}")


def _job_page(body: dict[str, Any]) -> JobPage:
    return JobPage(jobs=body["jobs"], next_cursor=body.get("next_cursor"))


def _auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _checked_base_url(base_url: str) -> str:
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
    return base_url.rstrip("/")


# Clients ----------------------------------------------------------------------------------


class Client:
    """Blocking client of one Odin server; use it as a context manager or call ``close``.

    ``request_timeout_seconds`` bounds each plain request (default 30). Event streams wait
    up to ``stream_idle_timeout_seconds`` (default 45) for the next byte before they
    reconnect, and give up after ``reconnect_timeout_seconds`` (default 60) of failed
    reconnects. ``api_key`` is sent as ``Authorization: Bearer`` on every request, streams
    included; without it, a server with API keys rejects requests with 401.
    ``trust_env`` lets httpx read proxy settings from the environment.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        request_timeout_seconds: float = REQUEST_TIMEOUT_SECONDS,
        reconnect_timeout_seconds: float = RECONNECT_TIMEOUT_SECONDS,
        stream_idle_timeout_seconds: float = STREAM_IDLE_TIMEOUT_SECONDS,
        api_key: str | None = None,
        trust_env: bool = True,
    ) -> None:
        self.base_url = _checked_base_url(base_url)
        self._reconnect_timeout_seconds = reconnect_timeout_seconds
        self._idle_timeout_seconds = stream_idle_timeout_seconds
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=_auth_headers(api_key),
            timeout=request_timeout_seconds,
            trust_env=trust_env,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections; the client cannot be used afterwards."""
        self._http.close()

    def submit(
        self,
        kind: str,
        args: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        timeout_seconds: float | None = None,
        delay_seconds: float | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit one job and return it; options left None take the kind's defaults.

        Raises ``OdinError`` with status 422 and per-field ``errors`` for invalid args.
        """
        return self._send(
            _submit_call(
                kind,
                args,
                queue=queue,
                priority=priority,
                max_attempts=max_attempts,
                timeout_seconds=timeout_seconds,
                delay_seconds=delay_seconds,
                run_at=run_at,
                idempotency_key=idempotency_key,
            )
        )

    def get(self, job_id: int) -> dict[str, Any]:
        """Return the job; raises ``OdinError`` with status 404 when there is none."""
        return self._send(_job_call("GET", job_id))

    def list(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        queue: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """Return one page of jobs, newest first, matching every filter given.

        The server's default page size applies when ``limit`` is None. Pass a page's
        ``next_cursor`` as ``cursor`` to get the page after it.
        """
        return _job_page(self._send(_list_call(state, kind, queue, limit, cursor)))

    def cancel(self, job_id: int) -> dict[str, Any]:
        """Cancel a scheduled, queued or running job and return it.

        Raises ``OdinError`` with status 409 when the job has already ended.
        """
        return self._send(_job_call("POST", job_id, "/cancel"))

    def retry(self, job_id: int) -> dict[str, Any]:
        """Queue a failed or cancelled job again and return it.

        Raises ``OdinError`` with status 409 when the job is in any other state.
        """
        return self._send(_job_call("POST", job_id, "/retry"))

    def kinds(self) -> builtins.list[dict[str, Any]]:
        """Return the registered job kinds with their defaults and argument schemas."""
        body = self._send(_Call("GET", "/v1/kinds"))
        kinds: builtins.list[dict[str, Any]] = body["kinds"]
        return kinds

    def stats(self) -> dict[str, Any]:
        """Return job counts by queue and state, and completions per minute (``GET /v1/stats``)."""
        return self._send(_Call("GET", "/v1/stats"))

    def events(
        self, job_id: int, after: int = 0, *, timeout_seconds: float | None = None
    ) -> Iterator[Event]:
        """Yield the job's events with a sequence number above ``after``, until its final event.

        Reconnects on its own (see ``EventStream``). Raises ``OdinError`` when the server
        rejects the stream (404 for an unknown job), ``OdinUnavailable`` when it stays
        unreachable for ``reconnect_timeout_seconds``, and ``WaitTimeout`` when
        ``timeout_seconds`` (default: no limit) pass before the final event.
        """
        return self._follow(self._event_stream(job_id, after, timeout_seconds))

    def wait(self, job_id: int, timeout_seconds: float | None = None) -> dict[str, Any]:
        """Wait until the job reaches a final state and return it; None waits without limit.

        Raises ``WaitTimeout`` naming the job and the time waited when ``timeout_seconds``
        pass first. A failed or cancelled job is returned, not raised.
        """
        started_at = time.monotonic()
        while True:
            job = self.get(job_id)
            if job["state"] in FINAL_STATES:
                return job
            # A stream ends at the job's next final event, so a job retried after that
            # event needs another stream.
            stream = self._event_stream(job_id, job["last_event_id"], timeout_seconds, started_at)
            for _ in self._follow(stream):
                pass

    def _send(self, call: _Call) -> dict[str, Any]:
        try:
            response = self._http.request(
                call.method, call.path, params=call.params, json=call.body, headers=call.headers
            )
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, call, exc) from exc
        return _read_response(call, response)

    def _event_stream(
        self,
        job_id: int,
        after: int,
        timeout_seconds: float | None,
        started_at: float | None = None,
    ) -> EventStream:
        return EventStream(
            _checked_job_id(job_id),
            after,
            timeout_seconds=timeout_seconds,
            reconnect_timeout_seconds=self._reconnect_timeout_seconds,
            idle_timeout_seconds=self._idle_timeout_seconds,
            started_at=started_at,
        )

    def _follow(self, stream: EventStream) -> Iterator[Event]:
        while True:
            headers, timeout = stream.connect()
            failure: Exception | None = None
            try:
                with self._http.stream(
                    "GET", stream.path, headers=headers, timeout=timeout
                ) as response:
                    if response.status_code != 200:
                        response.read()
                    stream.opened(response)
                    for chunk in response.iter_bytes():
                        yield from stream.received(chunk)
                        if stream.finished or stream.should_reopen():
                            break
            except (httpx.TransportError, RetryableStatus) as exc:
                failure = exc
            if stream.finished:
                return
            time.sleep(stream.next_delay(failure))


class AsyncClient:
    """Asynchronous client of one Odin server, with the same methods and options as ``Client``.

    Use it as an async context manager or call ``aclose``. Cancelling a call closes its
    connection; nothing else is undone (a submission that reached the server stays).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        request_timeout_seconds: float = REQUEST_TIMEOUT_SECONDS,
        reconnect_timeout_seconds: float = RECONNECT_TIMEOUT_SECONDS,
        stream_idle_timeout_seconds: float = STREAM_IDLE_TIMEOUT_SECONDS,
        api_key: str | None = None,
        trust_env: bool = True,
    ) -> None:
        self.base_url = _checked_base_url(base_url)
        self._reconnect_timeout_seconds = reconnect_timeout_seconds
        self._idle_timeout_seconds = stream_idle_timeout_seconds
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=_auth_headers(api_key),
            timeout=request_timeout_seconds,
            trust_env=trust_env,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections; the client cannot be used afterwards."""
        await self._http.aclose()

    async def submit(
        self,
        kind: str,
        args: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        timeout_seconds: float | None = None,
        delay_seconds: float | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit one job and return it; see ``Client.submit``."""
        return await self._send(
            _submit_call(
                kind,
                args,
                queue=queue,
                priority=priority,
                max_attempts=max_attempts,
                timeout_seconds=timeout_seconds,
                delay_seconds=delay_seconds,
                run_at=run_at,
                idempotency_key=idempotency_key,
            )
        )

    async def get(self, job_id: int) -> dict[str, Any]:
        """Return the job; see ``Client.get``."""
        return await self._send(_job_call("GET", job_id))

    async def list(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        queue: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """Return one page of jobs, newest first; see ``Client.list``."""
        return _job_page(await self._send(_list_call(state, kind, queue, limit, cursor)))

    async def cancel(self, job_id: int) -> dict[str, Any]:
        """Cancel a job that has not ended and return it; see ``Client.cancel``."""
        return await self._send(_job_call("POST", job_id, "/cancel"))

    async def retry(self, job_id: int) -> dict[str, Any]:
        """Queue a failed or cancelled job again and return it; see ``Client.retry``."""
        return await self._send(_job_call("POST", job_id, "/retry"))

    async def kinds(self) -> builtins.list[dict[str, Any]]:
        """Return the registered job kinds with their defaults and argument schemas."""
        body = await self._send(_Call("GET", "/v1/kinds"))
        kinds: builtins.list[dict[str, Any]] = body["kinds"]
        return kinds

    async def stats(self) -> dict[str, Any]:
        """Return job counts by queue and state, and completions per minute (``GET /v1/stats``)."""
        return await self._send(_Call("GET", "/v1/stats"))

    def events(
        self, job_id: int, after: int = 0, *, timeout_seconds: float | None = None
    ) -> AsyncIterator[Event]:
        """Yield the job's events after ``after`` until its final event; see ``Client.events``."""
        return self._follow(self._event_stream(job_id, after, timeout_seconds))

    async def wait(self, job_id: int, timeout_seconds: float | None = None) -> dict[str, Any]:
        """Wait until the job reaches a final state and return it; see ``Client.wait``."""
        started_at = time.monotonic()
        while True:
            job = await self.get(job_id)
            if job["state"] in FINAL_STATES:
                return job
            stream = self._event_stream(job_id, job["last_event_id"], timeout_seconds, started_at)
            async for _ in self._follow(stream):
                pass

    async def _send(self, call: _Call) -> dict[str, Any]:
        try:
            response = await self._http.request(
                call.method, call.path, params=call.params, json=call.body, headers=call.headers
            )
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, call, exc) from exc
        return _read_response(call, response)

    def _event_stream(
        self,
        job_id: int,
        after: int,
        timeout_seconds: float | None,
        started_at: float | None = None,
    ) -> EventStream:
        return EventStream(
            _checked_job_id(job_id),
            after,
            timeout_seconds=timeout_seconds,
            reconnect_timeout_seconds=self._reconnect_timeout_seconds,
            idle_timeout_seconds=self._idle_timeout_seconds,
            started_at=started_at,
        )

    async def _follow(self, stream: EventStream) -> AsyncIterator[Event]:
        while True:
            headers, timeout = stream.connect()
            failure: Exception | None = None
            try:
                async with self._http.stream(
                    "GET", stream.path, headers=headers, timeout=timeout
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                    stream.opened(response)
                    async for chunk in response.aiter_bytes():
                        for event in stream.received(chunk):
                            yield event
                        if stream.finished or stream.should_reopen():
                            break
            except (httpx.TransportError, RetryableStatus) as exc:
                failure = exc
            if stream.finished:
                return
            await anyio.sleep(stream.next_delay(failure))
