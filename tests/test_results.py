"""Tests of how attempts end: result size limit, RetryLater, CancelJob and the error history.

The tests share one server, with a small result limit and short retry delays.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import psycopg
import pytest

from tests.odin_client import submit, wait_for_state

KIND_MODULES = '["tests.feature_kinds"]'
RESULT_LIMIT_BYTES = 2048
# A retry asked for with RetryLater wakes the scheduler, so it starts close to its time.
MAX_RETRY_LATENESS_SECONDS = 0.3


@pytest.fixture(scope="module")
def server(module_database_url: str, module_odin_server: Any) -> Any:
    return module_odin_server(
        module_database_url,
        ODIN_KIND_MODULES=KIND_MODULES,
        ODIN_MAX_RESULT_BYTES=RESULT_LIMIT_BYTES,
        ODIN_RETRY_BASE_SECONDS=0.05,
    )


def api(server: Any) -> httpx.Client:
    return httpx.Client(base_url=server.url, trust_env=False, timeout=10)


def finished(client: httpx.Client, job_id: int) -> dict[str, Any]:
    return wait_for_state(client, job_id, {"completed", "failed", "cancelled"}, 15)


def event_types(database_url: str, job_id: int) -> list[str]:
    with psycopg.connect(database_url) as connection:
        rows = connection.execute(
            "SELECT type FROM odin.job_events WHERE job_id = %s ORDER BY seq", (job_id,)
        ).fetchall()
    return [event_type for (event_type,) in rows]


def test_result_over_limit_fails_without_retry(server):
    with api(server) as client:
        # A string's JSON has two quotes more than it has characters.
        at_limit = submit(client, "sized_result", {"length": RESULT_LIMIT_BYTES - 2})
        over = submit(client, "sized_result", {"length": RESULT_LIMIT_BYTES - 1}, max_attempts=3)
        at_limit = finished(client, at_limit["id"])
        over = finished(client, over["id"])

    assert at_limit["state"] == "completed"
    assert len(at_limit["result"]) == RESULT_LIMIT_BYTES - 2
    assert over["state"] == "failed"
    assert over["attempt"] == 1
    assert over["result"] is None
    assert over["error"] == (
        f"result is {RESULT_LIMIT_BYTES + 1} bytes of JSON, over the limit of "
        f"{RESULT_LIMIT_BYTES} (ODIN_MAX_RESULT_BYTES)"
    )


def test_retry_later_runs_again_after_delay(module_database_url, server):
    with api(server) as client:
        job = submit(client, "retry_once", {"delay_seconds": 0.8})
        done = finished(client, job["id"])

    assert done["state"] == "completed"
    assert done["result"] == {"attempt": 2}
    [error] = done["errors"]
    assert error["attempt"] == 1
    assert error["error"] == "not ready yet"
    assert "traceback" not in error
    requested_at = datetime.fromisoformat(error["at"])
    retried_at = datetime.fromisoformat(done["attempted_at"])
    waited = (retried_at - requested_at).total_seconds()
    assert 0.8 <= waited < 0.8 + MAX_RETRY_LATENESS_SECONDS
    assert event_types(module_database_url, job["id"]) == [
        "queued",
        "running",
        "retry_scheduled",
        "queued",
        "running",
        "completed",
    ]


def test_cancel_job_fails_without_retry(module_database_url, server):
    with api(server) as client:
        job = submit(client, "give_up", {"reason": "customer closed the account"})
        done = finished(client, job["id"])

    assert done["state"] == "failed"
    assert done["attempt"] == 1
    assert done["max_attempts"] == 5
    assert done["error"] == "customer closed the account"
    assert len(done["errors"]) == 1
    assert event_types(module_database_url, job["id"]) == ["queued", "running", "failed"]


def test_every_attempt_error_kept(module_database_url, server):
    with api(server) as client:
        job = submit(client, "always_fails")
        done = finished(client, job["id"])

    assert done["state"] == "failed"
    assert done["attempt"] == 3
    assert [e["attempt"] for e in done["errors"]] == [1, 2, 3]
    assert [e["error"] for e in done["errors"]] == [
        f"RuntimeError: attempt {n} failed" for n in (1, 2, 3)
    ]
    assert all("always_fails" in e["traceback"] for e in done["errors"])
    assert done["error"] == "RuntimeError: attempt 3 failed"
    assert event_types(module_database_url, job["id"]) == [
        "queued",
        "running",
        "retry_scheduled",
        "queued",
        "running",
        "retry_scheduled",
        "queued",
        "running",
        "failed",
    ]
