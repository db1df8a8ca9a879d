"""The Python clients (``odin_ext.client``) against real Odin servers, restarts included."""

from __future__ import annotations

import json
import socket
import time
import urllib.parse

import pytest

from odin_ext.client import AsyncClient, Client, JobPage, OdinError, OdinUnavailable, WaitTimeout
from odin_ext.client_streams import Frame, SSEParser
from tests.conftest import OdinLauncher, OdinServer

FAST_COUNTDOWN = {"steps": 3, "interval_seconds": 0.05}
# Long enough that a test can act while the job runs, short enough to finish in seconds.
SLOW_COUNTDOWN = {"steps": 16, "interval_seconds": 0.25}


def countdown_event_count(steps: int) -> int:
    """Return the events of a countdown: queued, running, a log line, a progress per step, completed."""
    return 4 + steps


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def port_of(server: OdinServer) -> int:
    port = urllib.parse.urlsplit(server.url).port
    assert port is not None
    return port


# SSE parsing ------------------------------------------------------------------------------


def test_sse_parser_joins_lines_split_across_chunks() -> None:
    parser = SSEParser()

    items = (
        parser.feed(b"id: 1\r")
        + parser.feed(b'\nevent: log\r\ndata: {"a"')
        + parser.feed(b": 1}\r\n\r\n")
    )

    assert items == [Frame(id="1", type="log", data='{"a": 1}')]


def test_sse_parser_reports_comments_and_retry() -> None:
    parser = SSEParser()

    items = parser.feed(b"retry: 1500\n\n: keep-alive\n\ndata: x\ndata: y\n\n")

    assert items == [None, Frame(id=None, type="message", data="x\ny")]
    assert parser.retry_ms == 1500


def test_sse_parser_keeps_unicode_separators() -> None:
    parser = SSEParser()

    items = parser.feed("data: a\u2028b\u2029c\x85d\n\n".encode())

    assert items == [Frame(id=None, type="message", data="a\u2028b\u2029c\x85d")]


# Sync client ------------------------------------------------------------------------------


def test_client_submits_and_waits_for_result(database_url: str, odin_server: OdinLauncher) -> None:
    server = odin_server(database_url)

    with Client(server.url, trust_env=False) as client:
        submitted = client.submit("countdown", FAST_COUNTDOWN)
        job = client.wait(submitted["id"], timeout_seconds=30)

    assert submitted["state"] == "queued"
    assert job["id"] == submitted["id"]
    assert job["state"] == "completed"
    assert job["result"] == {"steps": 3, "elapsed_seconds": 0.15}


def test_client_events_run_from_first_to_final(
    database_url: str, odin_server: OdinLauncher
) -> None:
    server = odin_server(database_url)

    with Client(server.url, trust_env=False) as client:
        job = client.submit("countdown", FAST_COUNTDOWN)
        events = list(client.events(job["id"]))
        later = list(client.events(job["id"], after=3))

    expected_count = countdown_event_count(FAST_COUNTDOWN["steps"])
    assert [event.seq for event in events] == list(range(1, expected_count + 1))
    assert [event.type for event in events[:3]] == ["queued", "running", "log"]
    assert events[-1].type == "completed"
    assert events[-1].data["result"] == {"steps": 3, "elapsed_seconds": 0.15}
    assert all(event.job_id == job["id"] for event in events)
    assert [event.seq for event in later] == list(range(4, expected_count + 1))


def test_events_keep_unicode_separators(database_url: str, odin_server: OdinLauncher) -> None:
    server = odin_server(database_url)
    value = "line\u2028separator\u2029paragraph\r\nnewline"

    with Client(server.url, trust_env=False) as client:
        job = client.submit("echo", {"value": value})
        events = list(client.events(job["id"]))

    assert events[-1].type == "completed"
    assert events[-1].data["result"] == value


def test_client_raises_problem_for_invalid_args(
    database_url: str, odin_server: OdinLauncher
) -> None:
    server = odin_server(database_url)

    with Client(server.url, trust_env=False) as client, pytest.raises(OdinError) as caught:
        client.submit("countdown", {"steps": "many"})

    assert caught.value.status == 422
    assert [error["field"] for error in caught.value.errors] == ["args.steps"]
    assert "args.steps" in str(caught.value)
    assert caught.value.detail == caught.value.problem["detail"]


def test_client_raises_not_found_for_unknown_job(
    database_url: str, odin_server: OdinLauncher
) -> None:
    server = odin_server(database_url)

    with Client(server.url, trust_env=False) as client:
        with pytest.raises(OdinError) as on_get:
            client.get(999)
        with pytest.raises(OdinError) as on_events:
            list(client.events(999))

    assert on_get.value.status == 404
    assert on_get.value.detail == on_get.value.problem["detail"]
    assert on_events.value.status == 404


def test_client_lists_with_filters_and_cursor(database_url: str, odin_server: OdinLauncher) -> None:
    server = odin_server(database_url)

    with Client(server.url, trust_env=False) as client:
        echo_ids = [client.submit("echo", {"value": n})["id"] for n in range(3)]
        sleep_id = client.submit("sleep", {"seconds": 0})["id"]
        for job_id in [*echo_ids, sleep_id]:
            client.wait(job_id, timeout_seconds=30)
        first = client.list(kind="echo", limit=2)
        second = client.list(kind="echo", limit=2, cursor=first.next_cursor)
        completed = client.list(state="completed")
        by_queue = client.list(queue="no-such-queue")

    assert isinstance(first, JobPage)
    assert [job["id"] for job in first.jobs] == echo_ids[:0:-1]
    assert first.next_cursor is not None
    assert [job["id"] for job in second.jobs] == echo_ids[:1]
    assert second.next_cursor is None
    assert {job["id"] for job in completed.jobs} == {*echo_ids, sleep_id}
    assert by_queue.jobs == []


def test_client_cancels_and_retries(database_url: str, odin_server: OdinLauncher) -> None:
    server = odin_server(database_url)

    with Client(server.url, trust_env=False) as client:
        job = client.submit("sleep", {"seconds": 60})
        cancelled = client.cancel(job["id"])
        with pytest.raises(OdinError) as second_cancel:
            client.cancel(job["id"])
        retried = client.retry(job["id"])
        client.cancel(job["id"])
        final = client.wait(job["id"], timeout_seconds=30)

    assert cancelled["state"] == "cancelled"
    assert second_cancel.value.status == 409
    assert retried["state"] in {"queued", "running"}
    assert final["state"] == "cancelled"


def test_wait_timeout_names_job_and_time(database_url: str, odin_server: OdinLauncher) -> None:
    server = odin_server(database_url)

    with Client(server.url, trust_env=False) as client:
        job = client.submit("sleep", {"seconds": 60})
        started = time.monotonic()
        with pytest.raises(WaitTimeout) as caught:
            client.wait(job["id"], timeout_seconds=1.0)
        waited = time.monotonic() - started
        client.cancel(job["id"])

    assert 1.0 <= waited < 3.0
    assert caught.value.job_id == job["id"]
    assert caught.value.waited_seconds == 1.0
    assert str(caught.value).startswith(f"job {job['id']} did not finish within 1 s")
    assert isinstance(caught.value, TimeoutError)


def test_wait_timeout_despite_keepalives(database_url: str, odin_server: OdinLauncher) -> None:
    # Keep-alives every 0.2 s never let a read time out, so only the deadline ends the wait.
    server = odin_server(database_url, ODIN_KEEPALIVE_SECONDS=0.2)

    with Client(server.url, trust_env=False) as client:
        job = client.submit("sleep", {"seconds": 60})
        started = time.monotonic()
        with pytest.raises(WaitTimeout):
            client.wait(job["id"], timeout_seconds=1.5)
        waited = time.monotonic() - started
        client.cancel(job["id"])

    assert 1.5 <= waited < 3.0


def test_client_sends_api_key(database_url: str, odin_server: OdinLauncher) -> None:
    key = "client-test-key-0123456789"
    server = odin_server(database_url, ODIN_DEV_API_KEYS=json.dumps([key]))

    with Client(server.url, trust_env=False) as anonymous, pytest.raises(OdinError) as rejected:
        anonymous.list()
    with Client(server.url, api_key=key, trust_env=False) as client:
        job = client.submit("countdown", FAST_COUNTDOWN)
        events = list(client.events(job["id"]))
        final = client.wait(job["id"], timeout_seconds=30)

    assert rejected.value.status == 401
    assert events[-1].type == "completed"
    assert final["state"] == "completed"


def test_client_raises_unavailable_without_server() -> None:
    url = f"http://127.0.0.1:{closed_port()}"

    with Client(url, trust_env=False) as client, pytest.raises(OdinUnavailable) as caught:
        client.get(1)

    assert caught.value.status is None
    assert str(caught.value).startswith(f"cannot reach Odin at {url}")


def test_client_checks_arguments_locally() -> None:
    with Client("http://127.0.0.1:9", trust_env=False) as client:
        with pytest.raises(ValueError, match="job_id must be a positive integer"):
            client.get(0)
        with pytest.raises(ValueError, match="after must be a non-negative event id"):
            client.events(1, after=-1)
    with pytest.raises(ValueError, match="base_url must be an http"):
        Client("127.0.0.1:8000")


def test_stream_resumes_after_restart(database_url: str, odin_server: OdinLauncher) -> None:
    # One server runs the jobs; the client follows the stream on another, which restarts.
    odin_server(database_url)
    streams = odin_server(database_url, ODIN_RUN_WORKERS="false")
    restarted: list[OdinServer] = []

    with Client(streams.url, trust_env=False, reconnect_timeout_seconds=30) as client:
        job = client.submit("countdown", SLOW_COUNTDOWN)
        seqs = []
        for event in client.events(job["id"]):
            seqs.append(event.seq)
            if event.seq == 4:
                restarted.append(restart(odin_server, database_url, streams, kill=False))
        final = client.get(job["id"])

    assert restarted, "the stream server was not restarted"
    assert final["state"] == "completed"
    assert seqs == list(range(1, countdown_event_count(SLOW_COUNTDOWN["steps"]) + 1))


def restart(
    odin_server: OdinLauncher, database_url: str, server: OdinServer, *, kill: bool
) -> OdinServer:
    """Stop an API-only server and start another on its port, without waiting until it is ready.

    The client under test finds the port closed until the new server listens.
    """
    if kill:
        server.kill()
    else:
        server.terminate()
    # Started from the test's thread: the launcher ties the server's life to that thread.
    return odin_server(
        database_url, wait_ready=False, ODIN_RUN_WORKERS="false", ODIN_PORT=port_of(server)
    )


# Async client -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_client_submits_and_follows(
    database_url: str, odin_server: OdinLauncher
) -> None:
    server = odin_server(database_url)

    async with AsyncClient(server.url, trust_env=False) as client:
        job = await client.submit("countdown", FAST_COUNTDOWN, priority=5)
        events = [event async for event in client.events(job["id"])]
        final = await client.wait(job["id"], timeout_seconds=30)
        page = await client.list(state="completed")
        kinds = await client.kinds()
        stats = await client.stats()

    assert job["priority"] == 5
    assert [event.seq for event in events] == list(
        range(1, countdown_event_count(FAST_COUNTDOWN["steps"]) + 1)
    )
    assert final["state"] == "completed"
    assert [item["id"] for item in page.jobs] == [job["id"]]
    assert "countdown" in {kind["name"] for kind in kinds}
    assert stats["queues"][0]["counts"]["completed"] == 1


@pytest.mark.anyio
async def test_async_client_errors_match_sync_client(
    database_url: str, odin_server: OdinLauncher
) -> None:
    server = odin_server(database_url)

    async with AsyncClient(server.url, trust_env=False) as client:
        with pytest.raises(OdinError) as invalid:
            await client.submit("countdown", {"steps": 1.5})
        job = await client.submit("sleep", {"seconds": 60})
        with pytest.raises(WaitTimeout) as timed_out:
            await client.wait(job["id"], timeout_seconds=0.5)
        await client.cancel(job["id"])
        with pytest.raises(OdinError) as not_retryable:
            await client.retry((await client.submit("noop"))["id"])

    assert invalid.value.status == 422
    assert invalid.value.errors[0]["field"] == "args.steps"
    assert timed_out.value.job_id == job["id"]
    assert not_retryable.value.status == 409


@pytest.mark.anyio
async def test_async_stream_resumes_after_kill(
    database_url: str, odin_server: OdinLauncher
) -> None:
    odin_server(database_url)
    streams = odin_server(database_url, ODIN_RUN_WORKERS="false")
    restarted: list[OdinServer] = []

    async with AsyncClient(streams.url, trust_env=False, reconnect_timeout_seconds=30) as client:
        job = await client.submit("countdown", SLOW_COUNTDOWN)
        seqs = []
        async for event in client.events(job["id"]):
            seqs.append(event.seq)
            if event.seq == 4:
                restarted.append(restart(odin_server, database_url, streams, kill=True))
        final = await client.get(job["id"])

    assert restarted, "the stream server was not restarted"
    assert final["state"] == "completed"
    assert seqs == list(range(1, countdown_event_count(SLOW_COUNTDOWN["steps"]) + 1))
