"""Authentication and authorization of a real `odin.py serve` process: API keys and scopes on
every route, signed event stream URLs (tampering, other jobs, expiry, rotation), development
keys, and the refusal to serve a public address without keys.

Most tests share one server with four keys, one per scope.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from odin_ext.auth import required_scope
from odin_ext.settings import ENV_PREFIX, Settings, load_settings
from odin_ext.tokens import StreamTokens
from tests.api_keys import (
    api_keys_setting,
    make_key,
    make_signing_secret,
    signing_keys_setting,
)
from tests.conftest import OdinLauncher, OdinServer
from tests.sse import read_stream

REPO_ROOT = Path(__file__).resolve().parent.parent
EXIT_USAGE = 2
START_TIMEOUT_SECONDS = 20
TOKEN_TTL_SECONDS = 600

SUBMITTER = make_key("submitter", "submit")
READER = make_key("reader", "read")
CANCELLER = make_key("canceller", "cancel")
ADMIN = make_key("admin", "admin")
KEYS = (SUBMITTER, READER, CANCELLER, ADMIN)
SIGNING_SECRET = make_signing_secret()
NEW_SIGNING_SECRET = make_signing_secret()


@pytest.fixture(scope="module")
def server(module_database_url: str, module_odin_server: OdinLauncher) -> OdinServer:
    return module_odin_server(
        module_database_url,
        ODIN_API_KEYS=api_keys_setting(*KEYS),
        ODIN_STREAM_SIGNING_KEYS=signing_keys_setting(SIGNING_SECRET),
        ODIN_STREAM_TOKEN_TTL_SECONDS=TOKEN_TTL_SECONDS,
    )


@pytest.fixture(scope="module")
def client(server: OdinServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10.0, trust_env=False) as http:
        yield http


def submit(
    client: httpx.Client, kind: str, args: dict[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    answer = client.post(
        "/v1/jobs", json={"kind": kind, "args": args or {}, **fields}, headers=SUBMITTER.headers
    )
    assert answer.status_code == 202, answer.text
    job: dict[str, Any] = answer.json()
    return job


def token_of(job: dict[str, Any]) -> str:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(job["events_url"]).query)
    [token] = query["token"]
    return token


def assert_problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = answer.json()
    assert problem["status"] == status
    assert problem["detail"]
    return problem


# Scopes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    scope: str
    body: Any = None


@pytest.fixture(scope="module")
def parked_jobs(client: httpx.Client) -> dict[str, int]:
    """A cancelled job to stream, and a job to cancel and retry, in a queue no worker serves."""
    queue = f"parked-{uuid.uuid4().hex[:12]}"
    streamed = submit(client, "noop", queue=queue)
    target = submit(client, "noop", queue=queue)
    cancelled = client.post(f"/v1/jobs/{streamed['id']}/cancel", headers=ADMIN.headers)
    assert cancelled.status_code == 200, cancelled.text
    return {"streamed": streamed["id"], "target": target["id"]}


def routes(jobs: dict[str, int]) -> list[Route]:
    streamed, target = jobs["streamed"], jobs["target"]
    return [
        Route("POST", "/v1/jobs", "submit", {"kind": "noop", "queue": "parked-scopes"}),
        Route(
            "POST",
            "/v1/jobs/bulk",
            "submit",
            {"jobs": [{"kind": "noop", "queue": "parked-scopes"}]},
        ),
        Route("GET", "/v1/jobs", "read"),
        Route("GET", f"/v1/jobs/{target}", "read"),
        Route("GET", f"/v1/jobs/{streamed}/events", "read"),
        Route("GET", "/v1/kinds", "read"),
        Route("GET", "/v1/queues", "read"),
        Route("GET", "/v1/stats", "read"),
        Route("GET", "/metrics", "read"),
        Route("POST", f"/v1/jobs/{target}/cancel", "cancel"),
        Route("POST", f"/v1/jobs/{target}/retry", "cancel"),
        Route("POST", "/v1/queues/parked-scopes/pause", "admin"),
        Route("POST", "/v1/queues/parked-scopes/resume", "admin"),
    ]


def test_each_route_needs_its_scope(client: httpx.Client, parked_jobs: dict[str, int]) -> None:
    for route in routes(parked_jobs):
        anonymous = client.request(route.method, route.path, json=route.body)
        assert_problem(anonymous, 401)

        for key in KEYS:
            answer = client.request(route.method, route.path, json=route.body, headers=key.headers)
            allowed = route.scope in key.scopes or "admin" in key.scopes
            if allowed:
                assert answer.status_code not in {401, 403}, (route, key.name, answer.text)
            else:
                problem = assert_problem(answer, 403)
                assert problem["required_scope"] == route.scope, (route, key.name)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/", "/console/app.js"])
def test_public_route_needs_no_key(client: httpx.Client, path: str) -> None:
    answer = client.get(path)

    assert answer.status_code == 200, answer.text


def test_registered_routes_have_intended_scopes() -> None:
    import odin

    expected = {
        ("odin_api.submit_job", "POST"): "submit",
        ("odin_api.submit_jobs", "POST"): "submit",
        ("odin_api.get_job", "GET"): "read",
        ("odin_api.list_jobs", "GET"): "read",
        ("odin_api.stream_events", "GET"): "read",
        ("odin_api.list_kinds", "GET"): "read",
        ("odin_api.list_queues", "GET"): "read",
        ("odin_stats.queue_stats", "GET"): "read",
        ("odin_metrics.serve_metrics", "GET"): "read",
        ("odin_api.cancel_job", "POST"): "cancel",
        ("odin_api.retry_job", "POST"): "cancel",
        ("odin_api.pause_queue", "POST"): "admin",
        ("odin_api.resume_queue", "POST"): "admin",
        ("odin_api.healthz", "GET"): None,
        ("odin_api.readyz", "GET"): None,
        ("odin_console.index", "GET"): None,
        ("odin_console.asset", "GET"): None,
        ("static", "GET"): None,
    }
    settings = Settings(_env_file=None, database_url="postgresql://odin@127.0.0.1:1/odin")  # type: ignore[call-arg]
    app = odin.create_app(settings)

    found = {}
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            scope = required_scope(rule.endpoint, method, rule.rule, metrics_public=False)
            found[(rule.endpoint, method)] = scope.value if scope is not None else None

    # A new route fails here until its scope is decided and added to `expected`.
    assert found == expected


def test_missing_key_gets_bearer_challenge(client: httpx.Client) -> None:
    answer = client.get("/v1/jobs")

    assert_problem(answer, 401)
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="odin"'


def test_rejected_body_closes_connection(client: httpx.Client) -> None:
    answer = client.post("/v1/jobs", json={"kind": "noop", "args": {"pad": "x" * 5000}})

    assert_problem(answer, 401)
    assert answer.headers["Connection"] == "close"
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "header",
    [f"Bearer {'x' * 40}", f"Basic {READER.key}", "Bearer", f"Bearer {READER.key}x"],
    ids=["unknown key", "basic scheme", "no key", "key with extra character"],
)
def test_invalid_key_is_rejected(client: httpx.Client, header: str) -> None:
    answer = client.get("/v1/jobs", headers={"Authorization": header})

    assert_problem(answer, 401)
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]


def test_missing_scope_is_named(client: httpx.Client) -> None:
    answer = client.post("/v1/queues/parked-scopes/pause", headers=READER.headers)

    problem = assert_problem(answer, 403)
    assert problem["required_scope"] == "admin"
    assert "reader" in problem["detail"]
    assert answer.headers["WWW-Authenticate"] == (
        'Bearer realm="odin", error="insufficient_scope", scope="admin"'
    )


def test_keys_never_appear_in_log(client: httpx.Client, server: OdinServer) -> None:
    client.get("/v1/jobs", headers={"Authorization": "Bearer wrong-key-that-must-not-be-logged"})
    client.get("/v1/jobs", headers=READER.headers)

    log = server.log_text()
    assert "wrong-key-that-must-not-be-logged" not in log
    for key in KEYS:
        assert key.key not in log
    assert SIGNING_SECRET not in log
    records = [json.loads(line) for line in log.splitlines()]
    enabled = [record for record in records if record["event"] == "auth_enabled"]
    assert enabled and sorted(enabled[0]["keys"]) == sorted(key.name for key in KEYS)


# Stream tokens ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_events_url_opens_stream_without_key(
    server: OdinServer, client: httpx.Client
) -> None:
    job = submit(client, "countdown", {"steps": 2, "interval_seconds": 0.05})

    async with httpx.AsyncClient(trust_env=False) as browser:
        record = await read_stream(browser, job["events_url"])

    assert record.status_code == 200
    assert record.types[-1] == "completed"


def test_every_job_answer_carries_a_token(client: httpx.Client) -> None:
    job = submit(client, "noop", queue="parked-scopes")

    fetched = client.get(f"/v1/jobs/{job['id']}", headers=READER.headers).json()
    listed = client.get("/v1/jobs", params={"queue": "parked-scopes"}, headers=READER.headers)

    assert token_of(fetched)
    assert all(token_of(item) for item in listed.json()["jobs"])


def altered_tokens(token: str, other_token: str) -> dict[str, str]:
    version, key_id, payload, signature = token.split(".")
    other_payload = other_token.split(".")[2]
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["exp"] += 3600
    longer = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return {
        "signature changed": f"{version}.{key_id}.{payload}.{flipped}",
        "payload of another job": f"{version}.{key_id}.{other_payload}.{signature}",
        "expiry extended": f"{version}.{key_id}.{longer}.{signature}",
        "unknown key id": f"{version}.AAAAAAAAAAAA.{payload}.{signature}",
        "other version": f"v9.{key_id}.{payload}.{signature}",
        "truncated": f"{version}.{key_id}.{payload}",
        "not base64": f"{version}.{key_id}.{payload}.!!!",
        "empty": "",
    }


def test_altered_token_is_rejected(client: httpx.Client) -> None:
    job = submit(client, "noop", queue="parked-scopes")
    other = submit(client, "noop", queue="parked-scopes")

    for case, token in altered_tokens(token_of(job), token_of(other)).items():
        answer = client.get(f"/v1/jobs/{job['id']}/events", params={"token": token})
        problem = assert_problem(answer, 401)
        assert "token" in problem["detail"], case


def test_token_of_other_job_is_forbidden(client: httpx.Client) -> None:
    job = submit(client, "noop", queue="parked-scopes")
    other = submit(client, "noop", queue="parked-scopes")

    answer = client.get(f"/v1/jobs/{other['id']}/events", params={"token": token_of(job)})

    problem = assert_problem(answer, 403)
    assert str(job["id"]) in problem["detail"]


def test_token_opens_only_the_events_route(client: httpx.Client) -> None:
    job = submit(client, "noop", queue="parked-scopes")

    answer = client.get(f"/v1/jobs/{job['id']}", params={"token": token_of(job)})

    assert_problem(answer, 401)


def test_expired_token_is_rejected(client: httpx.Client) -> None:
    job = submit(client, "noop", queue="parked-scopes")
    hour_ago = StreamTokens(
        [SIGNING_SECRET.encode()], TOKEN_TTL_SECONDS, clock=lambda: time.time() - 3600
    )

    answer = client.get(
        f"/v1/jobs/{job['id']}/events", params={"token": hour_ago.issue(job["id"], SUBMITTER.name)}
    )

    problem = assert_problem(answer, 401)
    assert "expired" in problem["detail"]


@pytest.mark.anyio
async def test_open_stream_outlives_its_token(server: OdinServer, client: httpx.Client) -> None:
    lifetime_seconds = 1.5
    job = submit(client, "countdown", {"steps": 3, "interval_seconds": 1.0})
    short_lived = StreamTokens(
        [SIGNING_SECRET.encode()], 10, clock=lambda: time.time() - 10 + lifetime_seconds
    )
    token = short_lived.issue(job["id"], SUBMITTER.name)
    url = f"{server.url}/v1/jobs/{job['id']}/events"

    async with httpx.AsyncClient(trust_env=False) as browser:
        started = time.monotonic()
        record = await read_stream(browser, url, params={"token": token})
        elapsed = time.monotonic() - started
        reopened = await browser.get(url, params={"token": token})

    assert record.types[-1] == "completed"
    assert elapsed > lifetime_seconds
    assert_problem(reopened, 401)


def test_rotated_keys_accept_old_tokens(
    client: httpx.Client, module_database_url: str, odin_server: OdinLauncher
) -> None:
    job = submit(client, "noop", queue="parked-scopes")
    old_token = token_of(job)
    rotated = odin_server(
        module_database_url,
        ODIN_API_KEYS=api_keys_setting(*KEYS),
        ODIN_STREAM_SIGNING_KEYS=signing_keys_setting(NEW_SIGNING_SECRET, SIGNING_SECRET),
        ODIN_RUN_WORKERS="false",
    )

    with httpx.Client(base_url=rotated.url, timeout=10.0, trust_env=False) as rotated_client:
        cancelled = rotated_client.post(f"/v1/jobs/{job['id']}/cancel", headers=ADMIN.headers)
        assert cancelled.status_code == 200, cancelled.text
        new_token = token_of(cancelled.json())
        old_on_rotated = rotated_client.get(
            f"/v1/jobs/{job['id']}/events", params={"token": old_token}
        )
        new_on_rotated = rotated_client.get(
            f"/v1/jobs/{job['id']}/events", params={"token": new_token}
        )
    new_on_old = client.get(f"/v1/jobs/{job['id']}/events", params={"token": new_token})

    assert new_token.split(".")[1] != old_token.split(".")[1]
    assert old_on_rotated.status_code == 200, old_on_rotated.text
    assert new_on_rotated.status_code == 200, new_on_rotated.text
    problem = assert_problem(new_on_old, 401)
    assert "ODIN_STREAM_SIGNING_KEYS" in problem["detail"]


def test_token_of_removed_key_is_rejected(
    client: httpx.Client, module_database_url: str, odin_server: OdinLauncher
) -> None:
    job = submit(client, "noop", queue="parked-scopes")
    without_submitter = odin_server(
        module_database_url,
        ODIN_API_KEYS=api_keys_setting(READER, ADMIN),
        ODIN_STREAM_SIGNING_KEYS=signing_keys_setting(SIGNING_SECRET),
        ODIN_RUN_WORKERS="false",
    )

    answer = httpx.get(
        f"{without_submitter.url}/v1/jobs/{job['id']}/events",
        params={"token": token_of(job)},
        trust_env=False,
    )

    problem = assert_problem(answer, 401)
    assert "submitter" in problem["detail"]


# Development keys and open servers ---------------------------------------------------------


def test_dev_key_has_every_scope(module_database_url: str, odin_server: OdinLauncher) -> None:
    dev_key = f"dev-{uuid.uuid4().hex}"
    server = odin_server(
        module_database_url, ODIN_DEV_API_KEYS=json.dumps([dev_key]), ODIN_RUN_WORKERS="false"
    )
    headers = {"Authorization": f"Bearer {dev_key}"}

    with httpx.Client(base_url=server.url, timeout=10.0, trust_env=False) as http:
        paused = http.post("/v1/queues/parked-dev/pause", headers=headers)
        listed = http.get("/v1/jobs", headers=headers)
        anonymous = http.get("/v1/jobs")

    assert paused.status_code == 200, paused.text
    assert listed.status_code == 200, listed.text
    assert anonymous.status_code == 401
    log = server.log_text()
    assert dev_key not in log
    assert any(json.loads(line)["event"] == "dev_api_keys_in_use" for line in log.splitlines())


def test_no_keys_on_loopback_allows_everything(
    module_database_url: str, odin_server: OdinLauncher
) -> None:
    server = odin_server(module_database_url, ODIN_RUN_WORKERS="false")

    answer = httpx.post(f"{server.url}/v1/queues/parked-open/pause", trust_env=False)

    assert answer.status_code == 200, answer.text
    events = [json.loads(line)["event"] for line in server.log_text().splitlines()]
    assert "auth_disabled" in events


def run_serve(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(ENV_PREFIX) and name != "PORT"
    }
    # An unreachable database: should the address check ever pass, start-up still fails
    # before Hypercorn binds the public address.
    environment["ODIN_DATABASE_URL"] = "postgresql://odin@127.0.0.1:1/odin"
    environment |= env
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "odin.py"), "serve"],
        cwd=cwd,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_SECONDS,
        check=False,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "odin.internal"])
def test_public_host_without_keys_refuses_to_start(tmp_path: Path, host: str) -> None:
    finished = run_serve({"ODIN_HOST": host}, tmp_path)

    assert finished.returncode == EXIT_USAGE, finished.stderr
    assert "Traceback" not in finished.stderr
    assert "ODIN_HOST" in finished.stderr
    assert "ODIN_API_KEYS" in finished.stderr
    assert "ODIN_ALLOW_UNAUTHENTICATED" in finished.stderr


def test_public_host_allowed_with_keys_or_opt_out() -> None:
    hashed = api_keys_setting(ADMIN)

    with_keys = load_settings(host="0.0.0.0", api_keys=json.loads(hashed), _env_file=None)
    opted_out = load_settings(host="0.0.0.0", allow_unauthenticated=True, _env_file=None)
    loopback = load_settings(host="::1", _env_file=None)

    assert with_keys.auth_enabled
    assert not opted_out.auth_enabled
    assert not loopback.auth_enabled


def test_key_hash_is_sha256_of_key() -> None:
    from odin_ext.auth import hash_key

    assert hash_key(ADMIN.key) == hashlib.sha256(ADMIN.key.encode()).hexdigest()


def test_stream_tokens_verify_with_any_listed_secret() -> None:
    job_id = 42
    old = StreamTokens([SIGNING_SECRET.encode()], 60)
    rotated = StreamTokens([NEW_SIGNING_SECRET.encode(), SIGNING_SECRET.encode()], 60)

    grant = rotated.verify(old.issue(job_id, "reader"), job_id)

    assert grant.job_id == job_id
    assert grant.key_name == "reader"
    assert rotated.key_ids[1] == old.key_ids[0]
    assert rotated.issue(job_id, "reader").split(".")[1] == rotated.key_ids[0]
