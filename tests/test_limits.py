"""Limits of a real `odin.py serve` process: request body (with and without Content-Length),
job arguments, job results, jobs per bulk request, open event streams per process and per
API key, and CORS.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest

import odin
from odin_ext.settings import Settings
from tests.api_keys import TestKey, api_keys_setting, make_key
from tests.conftest import OdinLauncher, OdinServer
from tests.odin_client import wait_for_state
from tests.sse import EventStream
from tests.support import wait_until_async

MAX_BODY_BYTES = 8192
MAX_ARGS_BYTES = 2048
MAX_RESULT_BYTES = 1024
MAX_BULK_JOBS = 3
CONSOLE_ORIGIN = "https://console.example.com"

SUBMITTER = make_key("submitter", "submit", "read")


@pytest.fixture(scope="module")
def server(module_database_url: str, module_odin_server: OdinLauncher) -> OdinServer:
    return module_odin_server(
        module_database_url,
        ODIN_API_KEYS=api_keys_setting(SUBMITTER),
        ODIN_MAX_BODY_BYTES=MAX_BODY_BYTES,
        ODIN_MAX_ARGS_BYTES=MAX_ARGS_BYTES,
        ODIN_MAX_RESULT_BYTES=MAX_RESULT_BYTES,
        ODIN_MAX_BULK_JOBS=MAX_BULK_JOBS,
        ODIN_CORS_ALLOWED_ORIGINS=json.dumps([CONSOLE_ORIGIN]),
    )


@pytest.fixture(scope="module")
def client(server: OdinServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, timeout=10.0, trust_env=False, headers=SUBMITTER.headers
    ) as http:
        yield http


def assert_problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = answer.json()
    assert problem["status"] == status
    assert problem["detail"]
    return problem


def padded_submission(size: int) -> bytes:
    """Return a valid job submission of exactly `size` bytes of JSON."""
    prefix, suffix = b'{"kind": "noop", "queue": "parked-limits", "args": {}, "pad": "', b'"}'
    return prefix + b"x" * (size - len(prefix) - len(suffix)) + suffix


def chunks(body: bytes, size: int = 1000) -> Iterator[bytes]:
    """Yield `body` in pieces, which makes httpx send it chunked, without Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


# Request bodies ---------------------------------------------------------------------------


def test_body_over_limit_is_rejected(client: httpx.Client) -> None:
    answer = client.post(
        "/v1/jobs",
        content=padded_submission(MAX_BODY_BYTES + 1),
        headers={"Content-Type": "application/json"},
    )

    problem = assert_problem(answer, 413)
    assert "ODIN_MAX_BODY_BYTES" in problem["detail"]


def test_chunked_body_over_limit_is_rejected(client: httpx.Client) -> None:
    request = client.build_request(
        "POST",
        "/v1/jobs",
        content=chunks(padded_submission(MAX_BODY_BYTES * 4)),
        headers={"Content-Type": "application/json"},
    )
    assert "Content-Length" not in request.headers
    assert request.headers["Transfer-Encoding"] == "chunked"

    answer = client.send(request)

    problem = assert_problem(answer, 413)
    assert "ODIN_MAX_BODY_BYTES" in problem["detail"]
    # The rest of the body is never read, so the server closes the connection and says so.
    assert answer.headers["Connection"] == "close"
    assert client.get("/healthz").status_code == 200


def test_chunked_body_within_limit_is_accepted(client: httpx.Client) -> None:
    answer = client.post(
        "/v1/jobs",
        content=chunks(padded_submission(MAX_BODY_BYTES - 100)),
        headers={"Content-Type": "application/json"},
    )

    # The unknown "pad" member is rejected by validation, which proves the body was read whole.
    assert answer.status_code == 422, answer.text
    assert any(error["field"] == "pad" for error in answer.json()["errors"])


def test_chunked_submission_is_accepted(client: httpx.Client) -> None:
    body = json.dumps(
        {"kind": "echo", "args": {"value": "y" * 1500}, "queue": "parked-limits"}
    ).encode()

    answer = client.post(
        "/v1/jobs", content=chunks(body, 300), headers={"Content-Type": "application/json"}
    )

    assert answer.status_code == 202, answer.text


# Job arguments, results and bulk requests -------------------------------------------------


def test_args_over_limit_are_rejected(client: httpx.Client) -> None:
    answer = client.post("/v1/jobs", json={"kind": "echo", "args": {"value": "z" * MAX_ARGS_BYTES}})

    problem = assert_problem(answer, 422)
    assert "ODIN_MAX_ARGS_BYTES" in problem["detail"]
    assert problem["errors"][0]["field"] == "args"


def test_result_over_limit_fails_job(client: httpx.Client) -> None:
    answer = client.post("/v1/jobs", json={"kind": "echo", "args": {"value": "r" * 1500}})
    assert answer.status_code == 202, answer.text

    job = wait_for_state(client, answer.json()["id"], {"completed", "failed"})

    assert job["state"] == "failed"
    assert "ODIN_MAX_RESULT_BYTES" in job["error"]
    assert job["result"] is None


def test_bulk_over_limit_is_rejected(client: httpx.Client) -> None:
    jobs = [{"kind": "noop", "queue": "parked-limits"}] * (MAX_BULK_JOBS + 1)

    answer = client.post("/v1/jobs/bulk", json={"jobs": jobs})

    problem = assert_problem(answer, 413)
    assert "ODIN_MAX_BULK_JOBS" in problem["detail"]


def test_bulk_at_limit_is_accepted(client: httpx.Client) -> None:
    jobs = [{"kind": "noop", "queue": "parked-limits"}] * MAX_BULK_JOBS

    answer = client.post("/v1/jobs/bulk", json={"jobs": jobs})

    assert answer.status_code == 202, answer.text


# Event streams ----------------------------------------------------------------------------


ALICE = make_key("alice", "submit", "read")
BOB = make_key("bob", "read")
CAROL = make_key("carol", "read")


@asynccontextmanager
async def stream_of(
    http: httpx.AsyncClient, url: str, key: TestKey | None
) -> AsyncIterator[EventStream]:
    headers = key.headers if key is not None else {}
    async with http.stream(
        "GET", url, headers=headers, timeout=httpx.Timeout(10.0, read=None)
    ) as response:
        stream = EventStream(response)
        try:
            yield stream
        finally:
            await stream.aclose()


async def open_and_check(
    stack: AsyncExitStack, http: httpx.AsyncClient, url: str, key: TestKey | None
) -> httpx.Response:
    """Open a stream and keep it open until `stack` closes; return its response."""
    stream = await stack.enter_async_context(stream_of(http, url, key))
    return stream.response


@pytest.mark.anyio
async def test_stream_limits_reject_with_retry_after(
    module_database_url: str, odin_server: OdinLauncher
) -> None:
    server = odin_server(
        module_database_url,
        ODIN_API_KEYS=api_keys_setting(ALICE, BOB, CAROL),
        ODIN_MAX_STREAMS=3,
        ODIN_MAX_STREAMS_PER_KEY=2,
        ODIN_RUN_WORKERS="false",
    )
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as http:
        submitted = await http.post(
            "/v1/jobs", json={"kind": "noop", "delay_seconds": 3600}, headers=ALICE.headers
        )
        job = submitted.json()
        url = f"/v1/jobs/{job['id']}/events"

        async with AsyncExitStack() as alice_streams:
            first = await open_and_check(alice_streams, http, url, ALICE)
            # The token of events_url was issued to alice, so it counts as hers.
            by_token = await open_and_check(alice_streams, http, job["events_url"], None)
            assert (first.status_code, by_token.status_code) == (200, 200)

            third_for_alice = await http.get(url, headers=ALICE.headers)
            problem = assert_problem(third_for_alice, 429)
            assert "ODIN_MAX_STREAMS_PER_KEY" in problem["detail"]
            assert int(third_for_alice.headers["Retry-After"]) > 0

            async with AsyncExitStack() as bob_streams:
                bob = await open_and_check(bob_streams, http, url, BOB)
                assert bob.status_code == 200

                over_process_limit = await http.get(url, headers=CAROL.headers)
                problem = assert_problem(over_process_limit, 429)
                assert "ODIN_MAX_STREAMS" in problem["detail"]
                assert int(over_process_limit.headers["Retry-After"]) > 0

            # Bob's stream has closed; its slot frees once the server notices the disconnect.
            async def carol_gets_a_stream() -> bool:
                async with stream_of(http, url, CAROL) as stream:
                    return stream.response.status_code == 200

            await wait_until_async(carol_gets_a_stream, 5.0, "a closed stream frees its slot")

        async def all_open(keys: tuple[TestKey, ...]) -> bool:
            async with AsyncExitStack() as stack:
                responses = [await open_and_check(stack, http, url, key) for key in keys]
                return all(response.status_code == 200 for response in responses)

        await wait_until_async(
            lambda: all_open((ALICE, ALICE)), 5.0, "alice's closed streams free their slots"
        )

        missing_job = await http.get("/v1/jobs/999999/events", headers=ALICE.headers)
        assert missing_job.status_code == 404
        # A rejected stream must not keep its slot: once the streams just closed are noticed,
        # the whole allowance fits again. A leaked slot would never free.
        await wait_until_async(
            lambda: all_open((ALICE, ALICE, BOB)), 5.0, "a rejected stream leaves no slot taken"
        )


# CORS -------------------------------------------------------------------------------------


def test_cors_allows_listed_origin(client: httpx.Client) -> None:
    answer = client.get("/v1/kinds", headers={"Origin": CONSOLE_ORIGIN})

    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == CONSOLE_ORIGIN
    assert "Origin" in answer.headers["Vary"]
    assert "Location" in answer.headers["Access-Control-Expose-Headers"]


def test_cors_preflight_needs_no_key(server: OdinServer) -> None:
    answer = httpx.options(
        f"{server.url}/v1/jobs",
        trust_env=False,
        headers={
            "Origin": CONSOLE_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )

    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Origin"] == CONSOLE_ORIGIN
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in answer.headers["Access-Control-Allow-Headers"]


def test_cors_ignores_other_origin(client: httpx.Client) -> None:
    answer = client.get("/v1/kinds", headers={"Origin": "https://evil.example.net"})

    assert answer.status_code == 200
    assert "Access-Control-Allow-Origin" not in answer.headers


def test_cors_headers_on_rejections(server: OdinServer) -> None:
    answer = httpx.get(
        f"{server.url}/v1/kinds", headers={"Origin": CONSOLE_ORIGIN}, trust_env=False
    )

    assert answer.status_code == 401
    assert answer.headers["Access-Control-Allow-Origin"] == CONSOLE_ORIGIN


@pytest.mark.anyio
async def test_cors_is_off_by_default() -> None:
    settings = Settings(_env_file=None, database_url="postgresql://odin@127.0.0.1:1/odin")  # type: ignore[call-arg]
    app = odin.create_app(settings)
    test_client = app.test_client()

    preflight = await test_client.options(
        "/healthz", headers={"Origin": CONSOLE_ORIGIN, "Access-Control-Request-Method": "GET"}
    )
    plain = await test_client.get("/healthz", headers={"Origin": CONSOLE_ORIGIN})

    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert "Access-Control-Allow-Origin" not in plain.headers
