"""Tests of offloaded kinds, which run in child processes that a cancel or a timeout kills.

The `crunch` kind logs its process ID first, so the tests can watch the child process
itself: it must be gone after a cancel or a timeout, not merely forgotten. The tests share
one server, whose child processes take over a second to start.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from httpx_sse import connect_sse

from tests.feature_kinds import CHILD_PID_PREFIX
from tests.odin_client import submit, wait_for_state
from tests.support import wait_until

KIND_MODULES = '["tests.feature_kinds"]'
# Healthz latency while an offloaded job keeps one core busy, on a 2-core machine that also
# runs the other test worker. An event loop blocked by the job would take seconds.
MAX_HEALTHZ_SECONDS = 0.25


@pytest.fixture(scope="module")
def server(module_database_url: str, module_odin_server: Any) -> Any:
    return module_odin_server(module_database_url, ODIN_KIND_MODULES=KIND_MODULES)


def logged_child_pid(database_url: str, job_id: int) -> int | None:
    """Return the PID that the job's child process logged, or None before it has."""
    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            "SELECT data->>'message' FROM odin.job_events"
            " WHERE job_id = %s AND type = 'log' AND data->>'message' LIKE %s",
            (job_id, CHILD_PID_PREFIX + "%"),
        ).fetchone()
    return int(row[0].removeprefix(CHILD_PID_PREFIX)) if row else None


def process_is_running(pid: int) -> bool:
    """Tell whether `pid` is a live process (a zombie that only waits to be reaped is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def test_offloaded_job_streams_progress_from_child(server):
    with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as client:
        job = submit(client, "crunch", {"seconds": 0.6, "steps": 3})
        events = []
        with connect_sse(
            client, "GET", f"/v1/jobs/{job['id']}/events", timeout=httpx.Timeout(10, read=15)
        ) as source:
            for sse in source.iter_sse():
                if not sse.data:
                    continue  # the opening retry hint
                events.append(json.loads(sse.data))
                if sse.event in ("completed", "failed", "cancelled"):
                    break

    types = [event["type"] for event in events]
    assert types == ["queued", "running", "log", "progress", "progress", "progress", "completed"]
    child_pid = int(events[2]["data"]["message"].removeprefix(CHILD_PID_PREFIX))
    assert child_pid != server.pid
    fractions = [event["data"]["fraction"] for event in events if event["type"] == "progress"]
    assert fractions == [1 / 3, 2 / 3, 1.0]
    assert events[3]["data"]["message"] == "step 1 of 3"
    assert events[-1]["data"]["result"] == {"pid": child_pid}


def test_cancel_kills_offloaded_process(module_database_url, server):
    with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as client:
        job = submit(client, "crunch", {"seconds": 60})
        child_pid = wait_until(
            lambda: logged_child_pid(module_database_url, job["id"]), 15, "the child logs its PID"
        )
        assert process_is_running(child_pid)

        answer = client.post(f"/v1/jobs/{job['id']}/cancel")
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == "cancelled"
        wait_until(lambda: not process_is_running(child_pid), 5, f"process {child_pid} is gone")

        # The pool replaces the killed child and goes on running offloaded jobs.
        after = submit(client, "crunch", {"seconds": 0.1, "steps": 1})
        done = wait_for_state(client, after["id"], {"completed", "failed"}, 15)
        cancelled = client.get(f"/v1/jobs/{job['id']}").json()

    assert done["state"] == "completed", done
    assert done["result"]["pid"] != child_pid
    assert cancelled["state"] == "cancelled"


def test_timeout_kills_offloaded_process(module_database_url, server):
    with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as client:
        # The first offloaded job starts the child process, which takes longer than the
        # timeout under test (about 1.7 s on a 2-core machine), so one runs beforehand.
        warm_up = submit(client, "crunch", {"seconds": 0, "steps": 1})
        wait_for_state(client, warm_up["id"], {"completed"}, 15)
        job = submit(client, "crunch", {"seconds": 60}, timeout_seconds=1, max_attempts=1)
        child_pid = wait_until(
            lambda: logged_child_pid(module_database_url, job["id"]), 15, "the child logs its PID"
        )
        failed = wait_for_state(client, job["id"], {"completed", "failed"}, 10)

    assert failed["state"] == "failed"
    assert failed["error"] == "attempt timed out after 1.0 seconds"
    wait_until(lambda: not process_is_running(child_pid), 5, f"process {child_pid} is gone")


def test_healthz_stays_fast_during_cpu_bound_job(module_database_url, server):
    latencies = []
    with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as client:
        job = submit(client, "crunch", {"seconds": 3, "steps": 30})
        wait_until(lambda: logged_child_pid(module_database_url, job["id"]), 15, "the child runs")
        measure_until = time.monotonic() + 1.5
        while time.monotonic() < measure_until:
            started = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - started)
        still = client.get(f"/v1/jobs/{job['id']}").json()

    assert still["state"] == "running", "the job ended before the measurement did"
    assert len(latencies) > 20
    assert max(latencies) < MAX_HEALTHZ_SECONDS, f"slowest /healthz took {max(latencies):.3f} s"


def test_offloaded_job_steers_its_retries(server):
    with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as client:
        retried = submit(client, "steer_offloaded", {"outcome": "retry"})
        cancelled = submit(client, "steer_offloaded", {"outcome": "cancel"})
        errored = submit(client, "steer_offloaded", {"outcome": "error"})
        retried = wait_for_state(client, retried["id"], {"completed", "failed"}, 15)
        cancelled = wait_for_state(client, cancelled["id"], {"completed", "failed"}, 15)
        errored = wait_for_state(client, errored["id"], {"completed", "failed"}, 15)

    assert retried["state"] == "completed"
    assert retried["result"] == {"attempt": 2}
    assert [e["error"] for e in retried["errors"]] == ["offloaded job asked for a retry"]

    assert cancelled["state"] == "failed"
    assert cancelled["attempt"] == 1
    assert cancelled["error"] == "offloaded job gave up"

    # A plain exception is retried with backoff, and its traceback comes from the child.
    assert errored["state"] == "completed"
    [error] = errored["errors"]
    assert "steer_offloaded" in error["traceback"]
    assert "ValueError: offloaded job failed on purpose" in error["traceback"]
    # The error names the job's own exception, as it would for a job run in-process.
    assert error["error"] == "ValueError: offloaded job failed on purpose"
