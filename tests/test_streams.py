"""Job event streams (SSE) of real `odin.py serve` processes: resuming, replay, keep-alives,
streams served by another process, a lost LISTEN connection and many subscribers.

Most tests share one server with short keep-alives; tests that need two servers or that
break the server's database sessions start their own.
"""

from __future__ import annotations

import asyncio

import uuid
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from tests.conftest import OdinLauncher, OdinServer
from tests.database import count_backends, job_events, job_row, terminate_backends
from tests.odin_client import submit_async, wait_for_state_async
from tests.sse import (
    Comment,
    ServerSentEvent,
    StreamRecord,
    assert_complete_sequence,
    open_stream,
    read_events,
    read_stream,
)
from tests.support import wait_until, wait_until_async

KEEPALIVE_SECONDS = 0.3


@pytest.fixture(scope="module")
def server(module_database_url: str, module_odin_server: OdinLauncher) -> OdinServer:
    return module_odin_server(module_database_url, ODIN_KEEPALIVE_SECONDS=KEEPALIVE_SECONDS)


@pytest.fixture
async def http(server: OdinServer) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(
        base_url=server.url, trust_env=False, timeout=10.0, limits=limits
    ) as client:
        yield client


def as_tuples(events: list[ServerSentEvent]) -> list[tuple[int, str, str]]:
    return [(event.seq, event.event, event.data) for event in events]


def assert_matches_database(database_url: str, job_id: int, events: list[ServerSentEvent]) -> None:
    stored = job_events(database_url, job_id)
    assert [(row["seq"], row["type"], row["data"]) for row in stored] == [
        (event.seq, event.event, event.payload["data"]) for event in events
    ]


@pytest.mark.anyio
async def test_resume_from_each_event_gets_the_rest(
    http: httpx.AsyncClient, module_database_url: str
) -> None:
    job = await submit_async(http, "countdown", {"steps": 4, "interval_seconds": 0.01})
    await wait_for_state_async(http, job["id"], {"completed"})
    full = await read_stream(http, job["events_url"])
    assert len(full.events) == 8
    assert_complete_sequence(full.events)
    assert_matches_database(module_database_url, job["id"], full.events)

    for after in range(len(full.events)):
        by_header = await read_stream(http, job["events_url"], last_event_id=after)
        by_param = await read_stream(http, job["events_url"], params={"last_event_id": str(after)})
        assert as_tuples(by_header.events) == as_tuples(full.events[after:]), after
        assert as_tuples(by_param.events) == as_tuples(full.events[after:]), after


@pytest.mark.anyio
@pytest.mark.parametrize("after", [3, 4, 1000])
async def test_resume_after_final_event_closes(http: httpx.AsyncClient, after: int) -> None:
    job = await submit_async(http, "noop")
    await wait_for_state_async(http, job["id"], {"completed"})

    # noop writes three events: queued, running and completed. Past the final one nothing
    # will come, and 204 No Content tells an EventSource to stop reconnecting.
    record = await read_stream(http, job["events_url"], last_event_id=after, timeout_seconds=3)

    assert record.status_code == 204
    assert record.events == []


@pytest.mark.anyio
async def test_header_wins_over_query_parameter(http: httpx.AsyncClient) -> None:
    # A browser's EventSource reconnects to the URL it opened, query included, and adds the
    # Last-Event-ID header; the header is the newer position.
    job = await submit_async(http, "countdown", {"steps": 2, "interval_seconds": 0.01})
    await wait_for_state_async(http, job["id"], {"completed"})

    record = await read_stream(
        http, job["events_url"], last_event_id=4, params={"last_event_id": "1"}
    )

    assert record.ids == [5, 6]


@pytest.mark.anyio
async def test_resume_after_future_event_waits_for_it(http: httpx.AsyncClient) -> None:
    job = await submit_async(http, "countdown", {"steps": 6, "interval_seconds": 0.05})

    record = await read_stream(http, job["events_url"], last_event_id=5)

    assert record.ids == [6, 7, 8, 9, 10]
    assert record.types[-1] == "completed"


@pytest.mark.anyio
async def test_resume_past_end_delays_no_other_stream(http: httpx.AsyncClient) -> None:
    job = await submit_async(http, "countdown", {"steps": 6, "interval_seconds": 0.1})
    # This stream subscribes first, with an id past the end of the job's log.
    ahead = asyncio.create_task(read_stream(http, job["events_url"], last_event_id=100))
    await asyncio.sleep(0.2)

    async with asyncio.timeout(15):
        record = await read_stream(http, job["events_url"])
        ahead_record = await ahead

    assert record.ids == list(range(1, 11))
    assert record.types[-1] == "completed"
    assert ahead_record.ids == []


@pytest.mark.anyio
async def test_reconnects_mid_run_lose_and_repeat_nothing(
    http: httpx.AsyncClient, module_database_url: str
) -> None:
    job = await submit_async(http, "countdown", {"steps": 16, "interval_seconds": 0.03})

    received: list[ServerSentEvent] = []
    for round_number in range(40):
        last = received[-1].seq if received else None
        params = None
        if round_number % 2 and last is not None:
            params, last = {"last_event_id": str(last)}, None
        received += await read_events(http, job["events_url"], 3, last_event_id=last, params=params)
        if received[-1].event == "completed":
            break

    assert_complete_sequence(received)
    assert [event.event for event in received].count("completed") == 1
    assert received[-1].event == "completed"
    assert_matches_database(module_database_url, job["id"], received)


@pytest.mark.anyio
@pytest.mark.parametrize("final_state", ["completed", "failed", "cancelled"])
async def test_finished_job_stream_replays_and_closes(
    http: httpx.AsyncClient, module_database_url: str, final_state: str
) -> None:
    match final_state:
        case "completed":
            job = await submit_async(http, "echo", {"value": {"n": 1}})
        case "failed":
            job = await submit_async(http, "fail", {"message": "no luck"})
        case _:
            job = await submit_async(http, "noop", queue=f"parked-{uuid.uuid4().hex[:8]}")
            assert (await http.post(f"/v1/jobs/{job['id']}/cancel")).status_code == 200
    await wait_for_state_async(http, job["id"], {final_state})

    record = await read_stream(http, job["events_url"], timeout_seconds=5)

    assert record.types[-1] == final_state
    assert_complete_sequence(record.events)
    assert_matches_database(module_database_url, job["id"], record.events)


@pytest.mark.anyio
async def test_idle_stream_carries_keepalives(http: httpx.AsyncClient) -> None:
    job = await submit_async(http, "noop", queue=f"parked-{uuid.uuid4().hex[:8]}")
    events: list[ServerSentEvent] = []
    comments: list[str] = []

    # Three keep-alives take about 3 * KEEPALIVE_SECONDS; the bound leaves room for a busy machine.
    with anyio.fail_after(3 * KEEPALIVE_SECONDS + 3):
        async with open_stream(http, job["events_url"]) as stream:
            async for item in stream:
                if isinstance(item, Comment):
                    comments.append(item.text)
                else:
                    events.append(item)
                if len(comments) == 3:
                    break

    assert [event.event for event in events] == ["queued"]
    assert comments == ["keep-alive"] * 3


@pytest.mark.anyio
async def test_many_subscribers_get_identical_sequences(
    http: httpx.AsyncClient, module_database_url: str
) -> None:
    subscribers = 40
    # The delay keeps the job scheduled while the subscribers connect, so they follow it live.
    job = await submit_async(
        http, "countdown", {"steps": 10, "interval_seconds": 0.05}, delay_seconds=1.5
    )
    connected: list[int] = []
    records: list[list[ServerSentEvent]] = []

    async def subscribe() -> None:
        events: list[ServerSentEvent] = []
        async with open_stream(http, job["events_url"]) as stream:
            async for item in stream:
                if isinstance(item, ServerSentEvent):
                    if not events:
                        connected.append(1)
                    events.append(item)
        records.append(events)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            for _ in range(subscribers):
                group.start_soon(subscribe)
            await wait_until_async(
                lambda: len(connected) == subscribers, 10, "every subscriber is connected"
            )
            assert job_row(module_database_url, job["id"])["state"] == "scheduled"

    assert len(records) == subscribers
    first = as_tuples(records[0])
    assert [item[1] for item in first][-1] == "completed"
    for events in records:
        assert as_tuples(events) == first
        assert_complete_sequence(events)
    assert_matches_database(module_database_url, job["id"], records[0])


@pytest.mark.anyio
async def test_stream_from_another_process(database_url: str, odin_server: OdinLauncher) -> None:
    api_only = odin_server(database_url, ODIN_RUN_WORKERS="false")
    worker = odin_server(database_url)

    async with (
        httpx.AsyncClient(base_url=api_only.url, trust_env=False) as front,
        httpx.AsyncClient(base_url=worker.url, trust_env=False) as back,
    ):
        job = await submit_async(front, "countdown", {"steps": 5, "interval_seconds": 0.05})
        path = f"/v1/jobs/{job['id']}/events"
        records: dict[str, StreamRecord] = {}

        async def follow(name: str, client: httpx.AsyncClient) -> None:
            records[name] = await read_stream(client, path)

        async with anyio.create_task_group() as group:
            group.start_soon(follow, "api_only", front)
            group.start_soon(follow, "worker", back)

    assert records["api_only"].types[-1] == "completed"
    assert as_tuples(records["api_only"].events) == as_tuples(records["worker"].events)
    assert_complete_sequence(records["api_only"].events)
    running = records["api_only"].events[1]
    assert running.event == "running"
    assert f":{worker.pid}:" in running.payload["data"]["owner"]


@pytest.mark.anyio
async def test_listener_loss_mid_stream_loses_no_event(
    database_url: str, odin_server: OdinLauncher
) -> None:
    server = odin_server(database_url)
    terminations: list[int] = []

    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=10) as http:
        job = await submit_async(http, "countdown", {"steps": 30, "interval_seconds": 0.05})
        received: list[ServerSentEvent] = []
        with anyio.fail_after(20):
            async with open_stream(http, job["events_url"]) as stream:
                async for item in stream:
                    if not isinstance(item, ServerSentEvent):
                        continue
                    received.append(item)
                    if item.event == "progress" and len(terminations) < 3 and item.seq % 6 == 0:
                        terminations.append(_terminate_listener(database_url))

    assert terminations == [1, 1, 1]
    assert_complete_sequence(received)
    assert [event.event for event in received].count("completed") == 1
    assert received[-1].event == "completed"
    assert_matches_database(database_url, job["id"], received)
    row = job_row(database_url, job["id"])
    assert row["attempt"] == 1
    assert "rescued" not in [event.event for event in received]


def _terminate_listener(database_url: str) -> int:
    """Terminate the server's LISTEN session once it exists (it reconnects after each loss)."""
    wait_until(lambda: count_backends(database_url, "LISTEN%") > 0, 5, "the listener is connected")
    return terminate_backends(database_url, "LISTEN%")
