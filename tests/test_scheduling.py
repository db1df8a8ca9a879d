"""Tests of scheduled jobs: `delay_seconds` and `run_at`, and how close to its time a job starts.

Most tests share one idle server with the default poll interval of 1 s.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import psycopg
import pytest

from tests.odin_client import submit, wait_for_state

KIND_MODULES = '["tests.feature_kinds"]'
# An idle replica sleeps until the next scheduled time, so a job starts a few milliseconds
# after its time. A job found by the 1 s poll instead would be up to a second late.
MAX_LATENESS_SECONDS = 0.3


@pytest.fixture(scope="module")
def server(module_database_url: str, module_odin_server: Any) -> Any:
    return module_odin_server(module_database_url, ODIN_KIND_MODULES=KIND_MODULES)


def api(server: Any) -> httpx.Client:
    return httpx.Client(base_url=server.url, trust_env=False, timeout=10)


def lateness_seconds(job: dict[str, Any]) -> float:
    """Return how long after its scheduled time the job's attempt started."""
    started = datetime.fromisoformat(job["attempted_at"])
    return (started - datetime.fromisoformat(job["scheduled_at"])).total_seconds()


def stored_job_count(database_url: str) -> int:
    with psycopg.connect(database_url) as connection:
        row = connection.execute("SELECT count(*) FROM odin.jobs").fetchone()
    assert row is not None
    return int(row[0])


def test_delayed_jobs_start_on_time(server):
    delays = [0.7, 1.1, 1.6]
    with api(server) as client:
        submitted = [submit(client, "timed", {"seconds": 0}, delay_seconds=d) for d in delays]
        jobs = [wait_for_state(client, job["id"], {"completed", "failed"}, 10) for job in submitted]

    assert [job["state"] for job in submitted] == ["scheduled"] * 3
    for delay, job in zip(delays, submitted, strict=True):
        expected = datetime.fromisoformat(job["created_at"]) + timedelta(seconds=delay)
        assert abs((datetime.fromisoformat(job["scheduled_at"]) - expected).total_seconds()) < 0.1
    late = [lateness_seconds(job) for job in jobs]
    assert all(0 <= seconds < MAX_LATENESS_SECONDS for seconds in late), late


def test_run_at_with_offset_starts_on_time(server):
    india = timezone(timedelta(hours=5, minutes=30))
    run_at = (datetime.now(UTC) + timedelta(seconds=1.2)).astimezone(india)
    with api(server) as client:
        job = submit(client, "timed", {"seconds": 0}, run_at=run_at.isoformat())
        done = wait_for_state(client, job["id"], {"completed", "failed"}, 10)

    assert job["state"] == "scheduled"
    assert datetime.fromisoformat(job["scheduled_at"]) == run_at
    assert done["state"] == "completed"
    assert 0 <= lateness_seconds(done) < MAX_LATENESS_SECONDS


def test_earlier_job_wakes_sleeping_scheduler(database_url, odin_server):
    # With a 10 s poll interval, only the wake-up sent when a job is scheduled can make the
    # replica notice the earlier job in time: it is asleep until the later one is due.
    server = odin_server(
        database_url, ODIN_KIND_MODULES=KIND_MODULES, ODIN_POLL_INTERVAL_SECONDS=10
    )
    with api(server) as client:
        later = submit(client, "timed", {"label": "later", "seconds": 0}, delay_seconds=2.5)
        earlier = submit(client, "timed", {"label": "earlier", "seconds": 0}, delay_seconds=0.8)
        earlier = wait_for_state(client, earlier["id"], {"completed", "failed"}, 10)
        later = wait_for_state(client, later["id"], {"completed", "failed"}, 10)

    assert 0 <= lateness_seconds(earlier) < MAX_LATENESS_SECONDS
    assert 0 <= lateness_seconds(later) < MAX_LATENESS_SECONDS


def test_past_run_at_queues_at_once(server):
    with api(server) as client:
        job = submit(client, "timed", {"seconds": 0}, run_at="2020-01-01T00:00:00Z")
        done = wait_for_state(client, job["id"], {"completed", "failed"}, 10)

    assert job["state"] in ("queued", "running")
    assert done["state"] == "completed"


def test_scheduled_job_can_be_cancelled(server):
    with api(server) as client:
        job = submit(client, "timed", {"seconds": 0}, delay_seconds=60)
        answer = client.post(f"/v1/jobs/{job['id']}/cancel")

    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "cancelled"
    assert answer.json()["attempt"] == 0


def test_invalid_start_times_rejected(module_database_url, server):
    cases = {
        "naive run_at": {"run_at": "2030-01-01T00:00:00"},
        "both": {"run_at": "2030-01-01T00:00:00Z", "delay_seconds": 5},
        "negative delay": {"delay_seconds": -1},
        "delay over ten years": {"delay_seconds": 400_000_000},
        "run_at not a time": {"run_at": "tomorrow"},
    }
    answers = {}
    stored_before = stored_job_count(module_database_url)
    with api(server) as client:
        for name, fields in cases.items():
            answers[name] = client.post("/v1/jobs", json={"kind": "timed", **fields})

    for name, answer in answers.items():
        assert answer.status_code == 422, f"{name}: {answer.status_code} {answer.text}"
    assert answers["naive run_at"].json()["errors"][0]["field"] == "run_at"
    assert "delay_seconds or run_at" in answers["both"].json()["errors"][0]["message"]
    assert stored_job_count(module_database_url) == stored_before
