"""Tests of bulk submission: `POST /v1/jobs/bulk` stores all of its jobs or none.

Most tests share one server; each counts only the jobs it can tell apart, or compares
counts before and after.
"""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest

from tests.feature_kinds import PARKED_QUEUE
from tests.support import wait_until

KIND_MODULES = '["tests.feature_kinds"]'
THOUSANDS = 3000


@pytest.fixture(scope="module")
def server(module_database_url: str, module_odin_server: Any) -> Any:
    return module_odin_server(module_database_url, ODIN_KIND_MODULES=KIND_MODULES)


def api(server: Any) -> httpx.Client:
    return httpx.Client(base_url=server.url, trust_env=False, timeout=30)


def stored_counts(database_url: str, queue: str = "%") -> tuple[int, int]:
    """Return the number of jobs, and of their events, in the queues matching `queue` (SQL LIKE)."""
    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            "SELECT (SELECT count(*) FROM odin.jobs WHERE queue LIKE %(queue)s),"
            " (SELECT count(*) FROM odin.job_events AS e JOIN odin.jobs AS j ON j.id = e.job_id"
            "  WHERE j.queue LIKE %(queue)s)",
            {"queue": queue},
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_thousands_of_jobs_in_one_request(module_database_url, server):
    # No server serves this queue, so the jobs stay queued.
    items = [
        {"kind": "timed", "args": {"label": str(n)}, "queue": "thousands", "priority": n % 7}
        for n in range(THOUSANDS)
    ]
    with api(server) as client:
        answer = client.post("/v1/jobs/bulk", json={"jobs": items})

    assert answer.status_code == 202, answer.text
    jobs = answer.json()["jobs"]
    assert len(jobs) == THOUSANDS
    # Responses come in request order, with ids in the same order.
    assert [job["args"]["label"] for job in jobs] == [str(n) for n in range(THOUSANDS)]
    assert [job["priority"] for job in jobs] == [n % 7 for n in range(THOUSANDS)]
    ids = [job["id"] for job in jobs]
    assert ids == sorted(ids)
    assert all(job["created"] and job["state"] == "queued" for job in jobs)
    assert all(job["url"].endswith(f"/v1/jobs/{job['id']}") for job in jobs)
    # One job and one "queued" event each.
    assert stored_counts(module_database_url, "thousands") == (THOUSANDS, THOUSANDS)


def test_bulk_jobs_run(module_database_url, server):
    with api(server) as client:
        items = [{"kind": "echo", "args": {"value": n}} for n in range(200)]
        answer = client.post("/v1/jobs/bulk", json={"jobs": items})
    assert answer.status_code == 202, answer.text

    def results() -> list[Any] | None:
        with psycopg.connect(module_database_url) as connection:
            rows = connection.execute(
                "SELECT state, result FROM odin.jobs WHERE kind = 'echo' ORDER BY id"
            ).fetchall()
        return [result for _, result in rows] if all(s == "completed" for s, _ in rows) else None

    assert wait_until(results, 20, "the 200 jobs are completed") == list(range(200))


def test_invalid_items_reported_and_nothing_stored(module_database_url, server):
    stored_before = stored_counts(module_database_url)
    items: list[Any] = [{"kind": "timed", "args": {"label": str(n)}} for n in range(8)]
    items[1] = {"kind": "no_such_kind"}
    items[4] = {"kind": "timed", "args": {"seconds": "soon"}}
    items[6] = {"kind": "timed", "run_at": "2030-01-01T00:00:00"}
    items[7] = ["not", "an", "object"]
    with api(server) as client:
        answer = client.post("/v1/jobs/bulk", json={"jobs": items})

    assert answer.status_code == 422
    problem = answer.json()
    assert problem["detail"] == "4 of 8 jobs are invalid; none was stored"
    by_index = {error["index"]: error for error in problem["errors"]}
    assert sorted(by_index) == [1, 4, 6, 7]
    assert "no_such_kind" in by_index[1]["message"]
    assert by_index[4]["field"] == "args.seconds"
    assert by_index[6]["field"] == "run_at"
    assert stored_counts(module_database_url) == stored_before


def test_bulk_over_limit_rejected(database_url, odin_server):
    server = odin_server(database_url, ODIN_KIND_MODULES=KIND_MODULES, ODIN_MAX_BULK_JOBS=100)
    item = {"kind": "timed", "queue": PARKED_QUEUE}
    with api(server) as client:
        over = client.post("/v1/jobs/bulk", json={"jobs": [item] * 101})
        at_limit = client.post("/v1/jobs/bulk", json={"jobs": [item] * 100})

    assert over.status_code == 413
    assert "ODIN_MAX_BULK_JOBS" in over.json()["detail"]
    assert at_limit.status_code == 202
    assert len(at_limit.json()["jobs"]) == 100
    assert stored_counts(database_url) == (100, 100)


def test_malformed_bulk_bodies_rejected(module_database_url, server):
    stored_before = stored_counts(module_database_url)
    bodies: list[Any] = [
        {"jobs": []},
        {"jobs": {"kind": "timed"}},
        {"jobs": [{"kind": "timed"}], "extra": True},
        [{"kind": "timed"}],
    ]
    with api(server) as client:
        answers = [client.post("/v1/jobs/bulk", json=body) for body in bodies]

    assert [answer.status_code for answer in answers] == [400] * len(bodies)
    assert stored_counts(module_database_url) == stored_before
