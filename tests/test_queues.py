"""Tests of queues: pausing and resuming across replicas, per-queue caps and priorities."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.odin_client import submit, wait_for_state
from tests.run_windows import max_overlap_by, run_windows
from tests.support import assert_stays

REPO_ROOT = Path(__file__).resolve().parent.parent
KIND_MODULES = '["tests.feature_kinds"]'
# Longer than the 1 s poll interval, so that every replica has looked for jobs meanwhile.
PAUSE_WATCH_SECONDS = 1.5
# Resuming notifies the workers; a replica that waited for its next poll would take up to 1 s.
MAX_RESUME_START_SECONDS = 0.3
# Workers notice a freed slot under a cap or limit at their next poll, so a short poll
# interval keeps these tests fast.
FAST_POLL_SECONDS = "0.2"


def api(server: Any) -> httpx.Client:
    return httpx.Client(base_url=server.url, trust_env=False, timeout=10)


def states(client: httpx.Client, job_ids: list[int]) -> list[str]:
    return [client.get(f"/v1/jobs/{job_id}").json()["state"] for job_id in job_ids]


def submit_bulk(client: httpx.Client, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    answer = client.post("/v1/jobs/bulk", json={"jobs": jobs})
    assert answer.status_code == 202, answer.text
    submitted: list[dict[str, Any]] = answer.json()["jobs"]
    return submitted


def wait_all_final(
    client: httpx.Client, job_ids: list[int], timeout_seconds: float
) -> list[dict[str, Any]]:
    return [
        wait_for_state(client, job_id, {"completed", "failed", "cancelled"}, timeout_seconds)
        for job_id in job_ids
    ]


def test_pause_stops_claims_on_every_replica(database_url, odin_server):
    first = odin_server(database_url, wait_ready=False, ODIN_KIND_MODULES=KIND_MODULES)
    second = odin_server(database_url, wait_ready=False, ODIN_KIND_MODULES=KIND_MODULES)
    first.wait_until_ready()
    second.wait_until_ready()
    with api(first) as a, api(second) as b:
        paused = a.post("/v1/queues/default/pause")
        assert paused.status_code == 200, paused.text
        assert paused.json() == {"name": "default", "paused": True}

        job_ids = [submit(b, "timed", {"label": str(n), "seconds": 0})["id"] for n in range(4)]
        assert_stays(
            lambda: states(a, job_ids) == ["queued"] * 4,
            PAUSE_WATCH_SECONDS,
            "jobs of the paused queue stay queued",
        )
        listed = b.get("/v1/queues").json()["queues"]
        assert {"name": "default", "paused": True, "counts": {"queued": 4}} in listed

        with psycopg.connect(database_url) as connection:
            row = connection.execute("SELECT now()").fetchone()
        assert row is not None
        resumed_at = row[0]
        resumed = b.post("/v1/queues/default/resume")
        assert resumed.status_code == 200, resumed.text
        assert resumed.json() == {"name": "default", "paused": False}
        jobs = wait_all_final(a, job_ids, 10)

    assert [job["state"] for job in jobs] == ["completed"] * 4
    first_start = min(datetime.fromisoformat(job["attempted_at"]) for job in jobs)
    delay = (first_start - resumed_at).total_seconds()
    assert 0 <= delay < MAX_RESUME_START_SECONDS, f"first job started {delay:.3f} s after resume"


def test_pause_lets_running_job_finish(database_url, odin_server):
    server = odin_server(database_url, ODIN_KIND_MODULES=KIND_MODULES)
    with api(server) as client:
        running = submit(client, "timed", {"seconds": 0.5})
        wait_for_state(client, running["id"], {"running"}, 10)
        assert client.post("/v1/queues/default/pause").status_code == 200
        waiting = submit(client, "timed", {"seconds": 0})

        finished = wait_for_state(client, running["id"], {"completed", "failed"}, 10)
        assert finished["state"] == "completed"
        assert client.get(f"/v1/jobs/{waiting['id']}").json()["state"] == "queued"


def test_queues_listed_with_counts(database_url, odin_server):
    server = odin_server(
        database_url, ODIN_KIND_MODULES=KIND_MODULES, ODIN_QUEUES='["default", "mail"]'
    )
    with api(server) as client:
        assert client.get("/v1/queues").json() == {"queues": []}
        assert client.post("/v1/queues/reports/pause").status_code == 200
        done = submit(client, "timed", {"seconds": 0}, queue="mail")
        wait_for_state(client, done["id"], {"completed"}, 10)
        submit(client, "timed", {"seconds": 0}, queue="reports")
        submit(client, "timed", {"seconds": 0}, queue="reports")

        queues = client.get("/v1/queues").json()["queues"]
        invalid = client.post("/v1/queues/bad%20name/pause")

    assert queues == [
        {"name": "mail", "paused": False, "counts": {"completed": 1}},
        {"name": "reports", "paused": True, "counts": {"queued": 2}},
    ]
    assert invalid.status_code == 400
    assert invalid.headers["content-type"] == "application/problem+json"


def test_queue_concurrency_caps_one_queue(database_url, odin_server):
    server = odin_server(
        database_url,
        ODIN_KIND_MODULES=KIND_MODULES,
        ODIN_QUEUES='["default", "slow"]',
        ODIN_QUEUE_CONCURRENCY='{"slow": 1}',
        ODIN_POLL_INTERVAL_SECONDS=FAST_POLL_SECONDS,
    )
    with api(server) as client:
        submitted = submit_bulk(
            client,
            [{"kind": "timed", "args": {"seconds": 0.3}, "queue": "slow"}] * 4
            + [{"kind": "timed", "args": {"seconds": 0.3}}] * 4,
        )
        jobs = wait_all_final(client, [job["id"] for job in submitted], 20)

    assert [job["state"] for job in jobs] == ["completed"] * 8
    windows = run_windows(database_url)
    overlap = max_overlap_by(windows, "queue")
    assert overlap["slow"] == 1
    assert overlap["default"] == 4
    # The capped queue does not hold back the other one.
    last_slow_start = max(w.started_at for w in windows if w.queue == "slow")
    assert all(w.ended_at < last_slow_start for w in windows if w.queue == "default")


def test_queue_concurrency_caps_limited_kinds(database_url, odin_server):
    # Kinds with a concurrency limit are claimed by a fetch of their own, which must respect
    # the queue's cap too.
    server = odin_server(
        database_url,
        ODIN_KIND_MODULES=KIND_MODULES,
        ODIN_QUEUES='["default", "slow"]',
        ODIN_QUEUE_CONCURRENCY='{"slow": 1}',
        ODIN_POLL_INTERVAL_SECONDS=FAST_POLL_SECONDS,
    )
    with api(server) as client:
        submitted = submit_bulk(
            client,
            [
                {
                    "kind": "per_customer",
                    "args": {"customer": name, "seconds": 0.3},
                    "queue": "slow",
                }
                for name in ("a", "b", "c")
            ],
        )
        jobs = wait_all_final(client, [job["id"] for job in submitted], 20)

    assert [job["state"] for job in jobs] == ["completed"] * 3
    assert max_overlap_by(run_windows(database_url), "queue") == {"slow": 1}


def test_paused_queue_holds_limited_kinds(database_url, odin_server):
    server = odin_server(
        database_url, ODIN_KIND_MODULES=KIND_MODULES, ODIN_QUEUES='["default", "batch"]'
    )
    with api(server) as client:
        assert client.post("/v1/queues/batch/pause").status_code == 200
        # Same kind and customer, so both jobs share one concurrency key.
        paused_job = submit(client, "per_customer", {"customer": "x", "seconds": 0}, queue="batch")
        free = submit(client, "per_customer", {"customer": "x", "seconds": 0})

        done = wait_for_state(client, free["id"], {"completed", "failed"}, 10)
        assert done["state"] == "completed"
        assert_stays(
            lambda: states(client, [paused_job["id"]]) == ["queued"],
            PAUSE_WATCH_SECONDS,
            f"job {paused_job['id']} of the paused queue stays queued",
        )


def test_higher_priority_runs_first(database_url, odin_server):
    server = odin_server(database_url, ODIN_KIND_MODULES=KIND_MODULES, ODIN_WORKER_CONCURRENCY=1)
    priorities = [0, 50, -10, 100, 50, -100, 0]
    with api(server) as client:
        too_high = client.post("/v1/jobs", json={"kind": "timed", "priority": 101})
        submitted = submit_bulk(
            client,
            [
                {"kind": "timed", "args": {"label": str(n), "seconds": 0}, "priority": priority}
                for n, priority in enumerate(priorities)
            ],
        )
        jobs = wait_all_final(client, [job["id"] for job in submitted], 10)

    assert too_high.status_code == 422
    assert too_high.json()["errors"][0]["field"] == "priority"
    by_start = sorted(jobs, key=lambda job: datetime.fromisoformat(job["attempted_at"]))
    # Highest priority first; equal priorities in submission order.
    assert [(job["priority"], job["result"]["label"]) for job in by_start] == [
        (100, "3"),
        (50, "1"),
        (50, "4"),
        (0, "0"),
        (0, "6"),
        (-10, "2"),
        (-100, "5"),
    ]


def test_queue_cap_for_unserved_queue_stops_start_up(database_url):
    environment = {
        "PATH": "/usr/bin:/bin",
        "ODIN_DATABASE_URL": database_url,
        "ODIN_QUEUES": '["default"]',
        "ODIN_QUEUE_CONCURRENCY": '{"mail": 2}',
    }
    finished = subprocess.run(
        [sys.executable, str(REPO_ROOT / "odin.py"), "serve"],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert finished.returncode == 2
    assert "ODIN_QUEUE_CONCURRENCY" in finished.stderr
    assert "mail" in finished.stderr
