"""The HTTP API of a real `odin.py serve` process: submission, jobs, lists, kinds, health,
rejected input, cancel and retry.

All tests of this module share one server and one database. Jobs meant to stay queued go to a
queue of their own that no worker serves, so each test can tell its jobs apart.
"""

from __future__ import annotations

import re
import socket
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.conftest import OdinLauncher, OdinServer
from tests.database import count_stored, job_events, job_row
from tests.odin_client import submit, submit_async, wait_for_state
from tests.sse import ServerSentEvent, assert_complete_sequence, open_stream, read_stream
from tests.support import wait_until

MAX_BODY_BYTES = 4096
MAX_JOB_ID = 2**63 - 1


@pytest.fixture(scope="module")
def server(module_database_url: str, module_odin_server: OdinLauncher) -> OdinServer:
    return module_odin_server(
        module_database_url,
        ODIN_KIND_MODULES='["tests.kinds_for_tests"]',
        ODIN_MAX_BODY_BYTES=MAX_BODY_BYTES,
        ODIN_QUEUES='["default"]',
    )


@pytest.fixture(scope="module")
def client(server: OdinServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10.0, trust_env=False) as http:
        yield http


@pytest.fixture
def parked_queue() -> str:
    """A queue that no worker serves, so its jobs stay queued; unique to the test."""
    return f"parked-{uuid.uuid4().hex[:12]}"


def assert_problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    """Check that `answer` is an RFC 9457 problem document with `status`; return its JSON."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = answer.json()
    assert problem["status"] == status
    assert problem["title"]
    assert problem["detail"]
    return problem


# Submission and events -------------------------------------------------------------------


@pytest.mark.anyio
async def test_countdown_streams_events_in_order(server: OdinServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as http:
        job = await submit_async(http, "countdown", {"steps": 3, "interval_seconds": 0.05})
        record = await read_stream(http, job["events_url"])

    assert record.status_code == 200
    assert record.content_type.startswith("text/event-stream")
    assert record.retry_ms == 1000
    assert record.types == [
        "queued",
        "running",
        "log",
        "progress",
        "progress",
        "progress",
        "completed",
    ]
    assert_complete_sequence(record.events)
    assert all(event.payload["job_id"] == job["id"] for event in record.events)
    progress = [event.payload["data"] for event in record.events if event.event == "progress"]
    assert [item["fraction"] for item in progress] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert [item["message"] for item in progress] == ["2 to go", "1 to go", "0 to go"]
    assert record.events[1].payload["data"]["attempt"] == 1
    assert record.events[-1].payload["data"] == {
        "attempt": 1,
        "result": {"steps": 3, "elapsed_seconds": 0.15},
    }


def test_submission_answer_describes_job(
    client: httpx.Client, server: OdinServer, parked_queue: str
) -> None:
    answer = client.post(
        "/v1/jobs",
        json={
            "kind": "echo",
            "args": {"value": [1, "two"]},
            "queue": parked_queue,
            "priority": 7,
            "max_attempts": 4,
            "timeout_seconds": 30,
        },
    )

    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["state"] == "queued"
    assert job["kind"] == "echo"
    assert job["queue"] == parked_queue
    assert job["args"] == {"value": [1, "two"]}
    assert job["priority"] == 7
    assert job["max_attempts"] == 4
    assert job["timeout_seconds"] == 30
    assert job["url"] == f"{server.url}/v1/jobs/{job['id']}"
    assert job["events_url"] == f"{job['url']}/events"
    assert answer.headers["location"] == job["url"]


def test_delayed_submission_is_scheduled(client: httpx.Client, parked_queue: str) -> None:
    job = submit(client, "echo", queue=parked_queue, delay_seconds=3600)

    assert job["state"] == "scheduled"
    assert job["scheduled_at"] > job["created_at"]


def test_completed_job_shows_result(client: httpx.Client) -> None:
    job = submit(client, "countdown", {"steps": 2, "interval_seconds": 0.01})

    done = wait_for_state(client, job["id"], {"completed"})

    assert done["attempt"] == 1
    assert done["result"] == {"steps": 2, "elapsed_seconds": 0.02}
    assert done["error"] is None
    assert done["errors"] == []
    assert done["progress"] == {"fraction": 1.0, "message": "0 to go"}
    assert done["last_event_id"] == 6
    assert done["attempted_at"] is not None
    assert done["finalized_at"] is not None
    assert done["finalized_at"] >= done["attempted_at"] >= done["created_at"]


def test_unknown_job_is_not_found(client: httpx.Client) -> None:
    for job_id in (MAX_JOB_ID, 0):
        problem = assert_problem(client.get(f"/v1/jobs/{job_id}"), 404)
        assert str(job_id) in problem["detail"]


@pytest.mark.parametrize("job_id", [MAX_JOB_ID + 1, 10**30])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs/{}"),
        ("GET", "/v1/jobs/{}/events"),
        ("POST", "/v1/jobs/{}/cancel"),
        ("POST", "/v1/jobs/{}/retry"),
    ],
)
def test_job_id_beyond_bigint_is_not_found(
    client: httpx.Client, method: str, path: str, job_id: int
) -> None:
    answer = client.request(method, path.format(job_id))

    assert_problem(answer, 404)


# Lists, kinds and health -----------------------------------------------------------------


def test_list_filters_by_state_kind_and_queue(client: httpx.Client, parked_queue: str) -> None:
    echoes = [submit(client, "echo", queue=parked_queue)["id"] for _ in range(3)]
    noops = [submit(client, "noop", queue=parked_queue)["id"] for _ in range(2)]
    scheduled = submit(client, "echo", queue=parked_queue, delay_seconds=3600)["id"]
    assert client.post(f"/v1/jobs/{echoes[0]}/cancel").status_code == 200

    def listed(**filters: str) -> list[int]:
        answer = client.get("/v1/jobs", params={"queue": parked_queue, **filters})
        assert answer.status_code == 200, answer.text
        return [job["id"] for job in answer.json()["jobs"]]

    everything = sorted([*echoes, *noops, scheduled], reverse=True)
    assert listed() == everything
    assert listed(state="queued") == sorted([*echoes[1:], *noops], reverse=True)
    assert listed(state="cancelled") == [echoes[0]]
    assert listed(state="scheduled") == [scheduled]
    assert listed(kind="noop") == sorted(noops, reverse=True)
    assert listed(kind="echo", state="queued") == sorted(echoes[1:], reverse=True)
    assert listed(state="running") == []


def test_list_pages_follow_cursor(client: httpx.Client, parked_queue: str) -> None:
    submitted = [submit(client, "noop", queue=parked_queue)["id"] for _ in range(7)]

    seen: list[int] = []
    pages = 0
    cursor: str | None = None
    while True:
        params = {"queue": parked_queue, "limit": "3"}
        if cursor is not None:
            params["cursor"] = cursor
        page = client.get("/v1/jobs", params=params).json()
        pages += 1
        seen.extend(job["id"] for job in page["jobs"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10, "pagination does not end"

    assert seen == sorted(submitted, reverse=True)
    assert pages == 3


def test_kinds_show_argument_schemas(client: httpx.Client) -> None:
    answer = client.get("/v1/kinds")

    assert answer.status_code == 200
    kinds = {item["name"]: item for item in answer.json()["kinds"]}
    assert {"countdown", "primes", "checksum", "noop", "echo", "sleep", "fail"} <= set(kinds)
    assert "ledger_sleep" in kinds
    countdown = kinds["countdown"]
    assert countdown["description"]
    assert countdown["queue"] == "default"
    schema = countdown["args_schema"]
    assert schema["type"] == "object"
    assert schema["properties"]["steps"]["type"] == "integer"
    assert schema["properties"]["steps"]["default"] == 5
    assert schema["properties"]["interval_seconds"]["type"] == "number"
    assert "ctx" not in schema["properties"]
    assert "required" not in schema
    assert kinds["ledger_sleep"]["args_schema"]["required"] == ["seconds"]
    assert kinds["fail"]["max_attempts"] == 1


def test_health_endpoints_report_ready(client: httpx.Client) -> None:
    health = client.get("/healthz")
    ready = client.get("/readyz")

    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


def test_unknown_route_is_problem(client: httpx.Client) -> None:
    assert_problem(client.get("/v1/nothing-here"), 404)
    assert_problem(client.delete("/v1/jobs"), 405)


# Rejected input --------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """A submission Odin must reject: the raw body, the status and what the problem names."""

    body: bytes
    status: int
    # Text the problem's detail or one of its errors must contain.
    names: str
    # A field one entry of the problem's `errors` list must name, if any.
    error_field: str | None = None
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})


def _padded_body(size: int) -> bytes:
    prefix = b'{"kind": "echo", "args": {"value": "'
    suffix = b'"}}'
    return prefix + b"x" * (size - len(prefix) - len(suffix)) + suffix


REJECTIONS = {
    "unknown kind": Rejection(b'{"kind": "no_such_kind"}', 422, "no_such_kind"),
    "kind not a string": Rejection(b'{"kind": 5}', 422, "kind", "kind"),
    "kind missing": Rejection(b'{"args": {}}', 422, "kind", "kind"),
    "args of wrong type": Rejection(
        b'{"kind": "countdown", "args": {"steps": "many"}}', 422, "integer", "args.steps"
    ),
    "extra arg": Rejection(
        b'{"kind": "countdown", "args": {"steps": 1, "colour": "red"}}',
        422,
        "colour",
        "args.colour",
    ),
    "missing required arg": Rejection(
        b'{"kind": "ledger_sleep", "args": {}}', 422, "seconds", "args.seconds"
    ),
    "args not an object": Rejection(b'{"kind": "echo", "args": [1]}', 422, "args", "args"),
    "extra field": Rejection(b'{"kind": "echo", "colour": "red"}', 422, "colour", "colour"),
    "malformed JSON": Rejection(b'{"kind": "echo",', 400, "not valid JSON"),
    "empty body": Rejection(b"", 400, "not valid JSON"),
    "JSON array body": Rejection(b'[{"kind": "echo"}]', 400, "array"),
    "JSON string body": Rejection(b'"echo"', 400, "string"),
    "NaN": Rejection(b'{"kind": "echo", "args": {"value": NaN}}', 400, "NaN"),
    "Infinity": Rejection(b'{"kind": "echo", "args": {"value": -Infinity}}', 400, "Infinity"),
    "invalid UTF-8": Rejection(b'{"kind": "echo", "args": {"value": "\xff"}}', 400, "UTF-8"),
    "NUL in args": Rejection(
        b'{"kind": "echo", "args": {"value": "a\\u0000b"}}', 422, "NUL", "args.value"
    ),
    "NUL in nested args": Rejection(
        b'{"kind": "echo", "args": {"value": [{"deep": ["\\u0000"]}]}}', 422, "NUL"
    ),
    "NUL in kind": Rejection(b'{"kind": "ec\\u0000ho"}', 422, "NUL", "kind"),
    "NUL in queue": Rejection(b'{"kind": "echo", "queue": "q\\u0000"}', 422, "NUL", "queue"),
    "NUL in args key": Rejection(
        b'{"kind": "echo", "args": {"val\\u0000ue": 1}}', 422, "NUL", "args"
    ),
    "NUL in top-level key": Rejection(b'{"kind": "echo", "\\u0000": 1}', 422, "NUL"),
    "invalid queue name": Rejection(
        b'{"kind": "echo", "queue": "two words"}', 422, "queue", "queue"
    ),
    "naive run_at": Rejection(
        b'{"kind": "echo", "run_at": "2030-01-01T00:00:00"}', 422, "timezone", "run_at"
    ),
    "delay_seconds and run_at": Rejection(
        b'{"kind": "echo", "delay_seconds": 5, "run_at": "2030-01-01T00:00:00Z"}',
        422,
        "delay_seconds or run_at",
    ),
    "negative delay_seconds": Rejection(
        b'{"kind": "echo", "delay_seconds": -1}', 422, "greater than", "delay_seconds"
    ),
    "priority above range": Rejection(b'{"kind": "echo", "priority": 101}', 422, "100", "priority"),
    "priority below range": Rejection(
        b'{"kind": "echo", "priority": -101}', 422, "-100", "priority"
    ),
    "priority not an integer": Rejection(
        b'{"kind": "echo", "priority": 1.5}', 422, "integer", "priority"
    ),
    "max_attempts zero": Rejection(
        b'{"kind": "echo", "max_attempts": 0}', 422, "1", "max_attempts"
    ),
    "timeout_seconds zero": Rejection(
        b'{"kind": "echo", "timeout_seconds": 0}', 422, "0", "timeout_seconds"
    ),
    "body over the limit": Rejection(_padded_body(MAX_BODY_BYTES + 1), 413, "ODIN_MAX_BODY_BYTES"),
    "wrong Content-Type": Rejection(
        b'{"kind": "echo"}', 415, "application/json", headers={"Content-Type": "text/plain"}
    ),
    "no Content-Type": Rejection(b'{"kind": "echo"}', 415, "application/json", headers={}),
    "form Content-Type": Rejection(
        b"kind=echo",
        415,
        "application/json",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
}


def _problem_text(problem: dict[str, Any]) -> str:
    messages = [f"{e.get('field', '')}: {e.get('message', '')}" for e in problem.get("errors", [])]
    return " | ".join([problem["detail"], *messages])


@pytest.mark.parametrize("case", REJECTIONS.values(), ids=REJECTIONS.keys())
def test_rejected_submission_stores_nothing(
    client: httpx.Client, server: OdinServer, module_database_url: str, case: Rejection
) -> None:
    stored_before = count_stored(module_database_url)

    answer = client.post("/v1/jobs", content=case.body, headers=case.headers)

    problem = assert_problem(answer, case.status)
    assert case.names in _problem_text(problem)
    if case.error_field is not None:
        fields = [error["field"] for error in problem.get("errors", [])]
        assert case.error_field in fields
    assert count_stored(module_database_url) == stored_before


def test_chunked_body_over_limit_is_rejected(
    client: httpx.Client, module_database_url: str
) -> None:
    body = _padded_body(MAX_BODY_BYTES * 3)
    stored_before = count_stored(module_database_url)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    # A generator body goes out with Transfer-Encoding: chunked and no Content-Length.
    answer = client.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})

    problem = assert_problem(answer, 413)
    assert "ODIN_MAX_BODY_BYTES" in problem["detail"]
    assert count_stored(module_database_url) == stored_before


def test_chunked_body_under_limit_is_accepted(client: httpx.Client, parked_queue: str) -> None:
    body = b'{"kind": "echo", "queue": "%s", "args": {"value": "chunked"}}' % parked_queue.encode()

    def chunks() -> Iterator[bytes]:
        yield body[:10]
        yield body[10:]

    answer = client.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})

    assert answer.status_code == 202, answer.text
    assert answer.json()["args"] == {"value": "chunked"}


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Last-Event-ID", "abc"),
        ("Last-Event-ID", "-1"),
        ("Last-Event-ID", "1.5"),
        ("Last-Event-ID", "99999999999999999999"),
        ("param", "abc"),
        ("param", "-3"),
    ],
)
def test_bad_last_event_id_is_rejected(
    client: httpx.Client, parked_queue: str, header: str, value: str
) -> None:
    job = submit(client, "noop", queue=parked_queue)
    if header == "param":
        answer = client.get(job["events_url"], params={"last_event_id": value})
    else:
        answer = client.get(job["events_url"], headers={header: value})

    problem = assert_problem(answer, 400)
    assert ("Last-Event-ID" if header != "param" else "last_event_id") in problem["detail"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("state", "bogus"),
        ("limit", "0"),
        ("limit", "501"),
        ("limit", "abc"),
        ("limit", "-1"),
        ("cursor", "abc"),
        ("cursor", "0"),
        ("cursor", str(MAX_JOB_ID + 1)),
        ("kind", "a\x00b"),
        ("queue", "q" * 300),
    ],
)
def test_bad_list_filter_is_rejected(client: httpx.Client, name: str, value: str) -> None:
    answer = client.get("/v1/jobs", params={name: value})

    problem = assert_problem(answer, 400)
    assert name in problem["detail"]


# Cancel and retry ------------------------------------------------------------------------


def test_cancel_queued_job(
    client: httpx.Client, parked_queue: str, module_database_url: str
) -> None:
    job = submit(client, "echo", queue=parked_queue)

    answer = client.post(f"/v1/jobs/{job['id']}/cancel")

    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "cancelled"
    assert answer.json()["finalized_at"] is not None
    assert [e["type"] for e in job_events(module_database_url, job["id"])] == [
        "queued",
        "cancelled",
    ]


def test_cancel_scheduled_job(client: httpx.Client, parked_queue: str) -> None:
    job = submit(client, "echo", queue=parked_queue, delay_seconds=3600)

    answer = client.post(f"/v1/jobs/{job['id']}/cancel")

    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "cancelled"


@pytest.mark.anyio
async def test_cancel_running_job_stops_it(server: OdinServer, module_database_url: str) -> None:
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=10) as http:
        job = await submit_async(http, "countdown", {"steps": 200, "interval_seconds": 0.05})
        await _wait_for_event(http, job["events_url"], "progress")

        answer = await http.post(f"/v1/jobs/{job['id']}/cancel")
        record = await read_stream(http, job["events_url"])

    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "cancelled"
    assert record.types[-1] == "cancelled"
    assert "completed" not in record.types
    assert_complete_sequence(record.events)
    row = job_row(module_database_url, job["id"])
    assert row["state"] == "cancelled"
    assert row["owner"] is None
    assert row["result"] is None


async def _wait_for_event(http: httpx.AsyncClient, url: str, event_type: str) -> None:
    async with open_stream(http, url) as stream:
        async for item in stream:
            if isinstance(item, ServerSentEvent) and item.event == event_type:
                return
    raise AssertionError(f"the stream of {url} ended without a {event_type} event")


@pytest.mark.parametrize("final_state", ["completed", "failed", "cancelled"])
def test_cancel_finished_job_conflicts(
    client: httpx.Client, parked_queue: str, module_database_url: str, final_state: str
) -> None:
    match final_state:
        case "completed":
            job_id = submit(client, "noop")["id"]
        case "failed":
            job_id = submit(client, "fail")["id"]
        case _:
            job_id = submit(client, "noop", queue=parked_queue)["id"]
            assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    wait_for_state(client, job_id, {final_state})
    events_before = job_events(module_database_url, job_id)

    answer = client.post(f"/v1/jobs/{job_id}/cancel")

    problem = assert_problem(answer, 409)
    assert problem["state"] == final_state
    assert final_state in problem["detail"]
    assert job_events(module_database_url, job_id) == events_before
    assert job_row(module_database_url, job_id)["state"] == final_state


def test_retry_failed_job_runs_again(client: httpx.Client, module_database_url: str) -> None:
    job = submit(client, "fail", {"message": "broken on purpose"})
    failed = wait_for_state(client, job["id"], {"failed"})
    assert failed["attempt"] == 1
    assert failed["error"] == "RuntimeError: broken on purpose"

    answer = client.post(f"/v1/jobs/{job['id']}/retry")

    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] in {"queued", "running", "failed"}
    again = _wait_for_second_failure(client, job["id"])
    assert again["attempt"] == 2
    assert [entry["attempt"] for entry in again["errors"]] == [1, 2]
    types = [event["type"] for event in job_events(module_database_url, job["id"])]
    assert types == ["queued", "running", "failed", "queued", "running", "failed"]


def _wait_for_second_failure(client: httpx.Client, job_id: int) -> dict[str, Any]:
    def failed_twice() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["state"] == "failed" and job["attempt"] == 2 else None

    job = wait_until(failed_twice, 10, f"job {job_id} failed its second attempt")
    assert job is not None
    return job


def test_retry_cancelled_job_queues_it(client: httpx.Client, parked_queue: str) -> None:
    job = submit(client, "noop", queue=parked_queue)
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200

    answer = client.post(f"/v1/jobs/{job['id']}/retry")

    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "queued"
    assert answer.json()["finalized_at"] is None


@pytest.mark.parametrize("state", ["queued", "completed"])
def test_retry_unfinished_or_completed_job_conflicts(
    client: httpx.Client, parked_queue: str, state: str
) -> None:
    if state == "queued":
        job_id = submit(client, "noop", queue=parked_queue)["id"]
    else:
        job_id = submit(client, "noop")["id"]
        wait_for_state(client, job_id, {"completed"})

    problem = assert_problem(client.post(f"/v1/jobs/{job_id}/retry"), 409)

    assert problem["state"] == state
    assert state in problem["detail"]


# Connections ------------------------------------------------------------------------------


def _closes_after_client_eof(server: OdinServer, request: bytes) -> bool:
    """Send `request`, read the response and half-close. Return True if the server then closes."""
    address = urllib.parse.urlsplit(server.url)
    with socket.create_connection((address.hostname, address.port), timeout=5.0) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        head, _, body = received.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += sock.recv(65536)
        # The connection is now idle and kept alive, and the client signals it is done with it.
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(3.0)
        try:
            return sock.recv(65536) == b""
        except TimeoutError:
            return False


@pytest.mark.parametrize("path", ["/healthz", "/v1/kinds"])
def test_idle_connection_closes_after_client(server: OdinServer, path: str) -> None:
    # The keep-alive timeout is 75 s; a server that waits it out keeps each connection a
    # client has left, and its memory, for that long.
    request = f"GET {path} HTTP/1.1\r\nHost: odin\r\n\r\n".encode()

    assert _closes_after_client_eof(server, request)
