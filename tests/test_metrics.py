"""Metrics and logs of a real `odin.py serve` process: `/metrics` values that move as jobs are
queued, run and finish, and log output that is one JSON object per line, with `job_id` on
every record about one job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api_keys import api_keys_setting, make_key
from tests.conftest import OdinLauncher, OdinServer
from tests.odin_client import wait_for_state
from tests.sse import open_stream
from tests.support import wait_until, wait_until_async

POOL_MAX_SIZE = 7
OPERATOR = make_key("operator", "submit", "read", "cancel")

# Events about one job; a record with one of them must name the job.
JOB_EVENTS = frozenset(
    {
        "job_enqueued",
        "job_fetched",
        "job_attempt_ended",
        "job_attempt_lost",
        "job_completed",
        "job_failed",
        "job_retry_scheduled",
        "job_interrupted",
        "job_cancelled",
        "job_retry_requested",
        "job_rescued",
        "job_timeout_rescued",
        "job_task_cancelled",
        "job_task_crashed",
        "job_outcome_rejected",
        "periodic_enqueued",
    }
)


@pytest.fixture(scope="module")
def server(module_database_url: str, module_odin_server: OdinLauncher) -> OdinServer:
    return module_odin_server(
        module_database_url,
        ODIN_API_KEYS=api_keys_setting(OPERATOR),
        ODIN_WORKER_CONCURRENCY=1,
        ODIN_POOL_MAX_SIZE=POOL_MAX_SIZE,
        ODIN_QUEUES='["default"]',
        ODIN_LOG_LEVEL="DEBUG",
    )


@pytest.fixture(scope="module")
def client(server: OdinServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, timeout=10.0, trust_env=False, headers=OPERATOR.headers
    ) as http:
        yield http


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: httpx.Client) -> Samples:
    """Return every sample of `GET /metrics`, keyed by name and label set."""
    answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """Return one sample; fail with the names present when it is missing."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} not in metrics: {sorted({n for n, _ in samples})}"
    return samples[key]


def test_metrics_need_read_key(server: OdinServer) -> None:
    anonymous = httpx.get(f"{server.url}/metrics", trust_env=False)

    assert anonymous.status_code == 401


def test_job_gauges_follow_jobs(client: httpx.Client) -> None:
    blocker = client.post("/v1/jobs", json={"kind": "sleep", "args": {"seconds": 1.5}}).json()
    waiting = [
        client.post("/v1/jobs", json={"kind": "sleep", "args": {"seconds": 0.05}}).json()
        for _ in range(2)
    ]
    later = client.post("/v1/jobs", json={"kind": "noop", "delay_seconds": 3600}).json()
    wait_for_state(client, blocker["id"], {"running"})

    busy = scrape(client)

    assert value(busy, "odin_jobs", queue="default", state="running") == 1
    assert value(busy, "odin_jobs", queue="default", state="queued") == 2
    assert value(busy, "odin_jobs", queue="default", state="scheduled") == 1
    assert value(busy, "odin_queue_due_jobs", queue="default") == 2
    assert value(busy, "odin_queue_oldest_due_job_age_seconds", queue="default") > 0
    assert value(busy, "odin_worker_running_jobs") == 1
    assert value(busy, "odin_worker_concurrency") == 1

    for job in (blocker, *waiting):
        wait_for_state(client, job["id"], {"completed"})
    client.post(f"/v1/jobs/{later['id']}/cancel")
    idle = scrape(client)

    for state in ("running", "queued", "scheduled"):
        assert value(idle, "odin_jobs", queue="default", state=state) == 0
    assert value(idle, "odin_queue_due_jobs", queue="default") == 0
    assert value(idle, "odin_queue_oldest_due_job_age_seconds", queue="default") == 0


def test_attempt_histograms_count_finished_jobs(client: httpx.Client) -> None:
    before = scrape(client)
    completed_before = before.get(
        (
            "odin_job_attempt_duration_seconds_count",
            frozenset({"kind": "echo", "outcome": "completed"}.items()),
        ),
        0.0,
    )
    started_before = before.get(
        (
            "odin_job_start_delay_seconds_count",
            frozenset({"kind": "echo", "queue": "default"}.items()),
        ),
        0.0,
    )

    jobs = [
        client.post("/v1/jobs", json={"kind": "echo", "args": {"value": n}}).json()
        for n in range(3)
    ]
    for job in jobs:
        wait_for_state(client, job["id"], {"completed"})
    after = scrape(client)

    assert (
        value(after, "odin_job_attempt_duration_seconds_count", kind="echo", outcome="completed")
        == completed_before + 3
    )
    assert (
        value(after, "odin_job_start_delay_seconds_count", kind="echo", queue="default")
        == started_before + 3
    )


@pytest.mark.anyio
async def test_stream_subscribers_are_counted(server: OdinServer, client: httpx.Client) -> None:
    job = client.post("/v1/jobs", json={"kind": "noop", "delay_seconds": 3600}).json()

    async with (
        httpx.AsyncClient(trust_env=False) as browser,
        open_stream(browser, job["events_url"]) as stream,
    ):
        assert stream.response.status_code == 200
        await wait_until_async(
            lambda: value(scrape(client), "odin_stream_subscribers") == 1,
            5.0,
            "the open stream is counted",
        )

    wait_until(
        lambda: value(scrape(client), "odin_stream_subscribers") == 0,
        5.0,
        "the closed stream is no longer counted",
    )
    client.post(f"/v1/jobs/{job['id']}/cancel")


def test_process_pool_and_leader_are_reported(client: httpx.Client) -> None:
    wait_until(lambda: value(scrape(client), "odin_leader") == 1, 10.0, "the only replica leads")
    samples = scrape(client)

    assert value(samples, "odin_metrics_database_up") == 1
    assert value(samples, "odin_db_pool_max_connections") == POOL_MAX_SIZE
    in_use = value(samples, "odin_db_pool_connections", state="in_use")
    idle = value(samples, "odin_db_pool_connections", state="idle")
    assert 0 <= in_use + idle <= POOL_MAX_SIZE
    assert value(samples, "odin_db_pool_requests_total") > 0
    assert value(samples, "odin_rescued_jobs_total") == 0
    info = [labels for (name, labels) in samples if name == "odin_process_info"]
    assert len(info) == 1
    assert dict(info[0])["run_workers"] == "true"
    assert dict(info[0])["owner"]


def test_rejections_are_counted(client: httpx.Client) -> None:
    admin = make_key("unused", "admin")  # not configured: pausing needs the admin scope
    assert client.post("/v1/queues/metrics-paused/pause").status_code == 403
    assert client.post("/v1/queues/metrics-paused/pause", headers=admin.headers).status_code == 401

    samples = scrape(client)

    assert value(samples, "odin_http_rejections_total", reason="insufficient_scope") >= 1
    assert value(samples, "odin_http_rejections_total", reason="invalid_key") >= 1


def test_log_lines_are_json_with_job_ids(client: httpx.Client, server: OdinServer) -> None:
    job = client.post("/v1/jobs", json={"kind": "fail", "args": {"message": "on purpose"}}).json()
    wait_for_state(client, job["id"], {"failed"})

    records: list[dict[str, Any]] = []
    for number, line in enumerate(server.log_text().splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"log line {number} is not JSON: {line!r}")

    for record in records:
        assert {"time", "level", "logger", "event", "message"} <= record.keys(), record
        if record["event"] in JOB_EVENTS:
            assert isinstance(record.get("job_id"), int), record
    events = {record["event"] for record in records}
    assert {"odin_started", "auth_enabled", "job_enqueued", "job_failed"} <= events
    failed = [r for r in records if r["event"] == "job_failed" and r["job_id"] == job["id"]]
    assert failed and failed[0]["level"] == "WARNING" and "on purpose" in failed[0]["error"]


def test_paused_queue_gauge(module_database_url: str, odin_server: OdinLauncher) -> None:
    admin = make_key("admin", "admin")
    server = odin_server(
        module_database_url,
        ODIN_API_KEYS=api_keys_setting(admin),
        ODIN_METRICS_PUBLIC="true",
        ODIN_RUN_WORKERS="false",
    )

    with httpx.Client(base_url=server.url, timeout=10.0, trust_env=False) as http:
        assert (
            http.post("/v1/queues/metrics-paused/pause", headers=admin.headers).status_code == 200
        )
        samples = scrape(http)
        assert (
            http.post("/v1/queues/metrics-paused/resume", headers=admin.headers).status_code == 200
        )
        resumed = scrape(http)

    assert value(samples, "odin_queue_paused", queue="metrics-paused") == 1
    # Resuming forgets the pause record, so the queue leaves the gauge (or shows 0).
    key = ("odin_queue_paused", frozenset({"queue": "metrics-paused"}.items()))
    assert resumed.get(key, 0) == 0
    assert ("odin_worker_running_jobs", frozenset()) not in samples
