"""Tests of per-key concurrency limits, measured across two replicas.

Each limited kind logs a marker when its run starts and ends (see `tests.run_windows`). The
tests compute from those windows how many jobs of a key really ran at once. They also sample
the number of running jobs per key in the database while the jobs run.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from tests.odin_client import wait_for_state
from tests.run_windows import max_overlap, max_overlap_by, run_windows, sample_running

KIND_MODULES = '["tests.feature_kinds"]'
# Workers notice a slot freed under a limit at their next poll, so a short poll interval
# keeps these tests fast.
FAST_POLL_SECONDS = "0.2"
# How soon a job that no limit holds back must start, though limited jobs wait in line.
MAX_FREE_START_SECONDS = 1.0


def api(server: Any) -> httpx.Client:
    return httpx.Client(base_url=server.url, trust_env=False, timeout=30)


def submit_bulk(client: httpx.Client, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    answer = client.post("/v1/jobs/bulk", json={"jobs": jobs})
    assert answer.status_code == 202, answer.text
    submitted: list[dict[str, Any]] = answer.json()["jobs"]
    return submitted


def wait_all_completed(
    client: httpx.Client, jobs: list[dict[str, Any]], timeout_seconds: float
) -> list[dict[str, Any]]:
    finished = [
        wait_for_state(client, job["id"], {"completed", "failed", "cancelled"}, timeout_seconds)
        for job in jobs
    ]
    assert [job["state"] for job in finished] == ["completed"] * len(finished)
    return finished


def start_delay_seconds(job: dict[str, Any]) -> float:
    started = datetime.fromisoformat(job["attempted_at"])
    return (started - datetime.fromisoformat(job["created_at"])).total_seconds()


def two_replicas(odin_server: Any, database_url: str, **env: Any) -> list[Any]:
    """Start two servers at once and wait until both are ready."""
    servers = [
        odin_server(
            database_url,
            wait_ready=False,
            ODIN_KIND_MODULES=KIND_MODULES,
            ODIN_POLL_INTERVAL_SECONDS=FAST_POLL_SECONDS,
            **env,
        )
        for _ in range(2)
    ]
    for server in servers:
        server.wait_until_ready()
    return servers


def test_limit_holds_per_key_across_replicas(database_url, odin_server):
    # Three slots per replica and three customers with a limit of two each: running more
    # than three limited jobs at once takes both replicas.
    first, second = two_replicas(odin_server, database_url, ODIN_WORKER_CONCURRENCY=3)
    customers = ("acme", "globex", "initech")
    limited = [
        {"kind": "per_customer", "args": {"customer": customer, "seconds": 0.4}}
        for customer in customers
        for _ in range(4)
    ]
    with sample_running(database_url) as sampled, api(first) as a, api(second) as b:
        submitted = submit_bulk(a, limited[::2]) + submit_bulk(b, limited[1::2])
        wait_all_completed(a, submitted, 30)

    windows = run_windows(database_url)
    overlap = max_overlap_by(windows, "concurrency_key")
    # At most two at once per customer, and the limit is used, not undercut.
    assert overlap == {f'per_customer:"{customer}"': 2 for customer in customers}
    assert sampled.samples > 0
    assert max(sampled.by_key.values()) == 2, sampled
    assert max_overlap(windows) >= 4
    assert len({window.owner for window in windows}) == 2


def test_other_keys_and_free_jobs_not_held_back(database_url, odin_server):
    server = odin_server(
        database_url, ODIN_KIND_MODULES=KIND_MODULES, ODIN_POLL_INTERVAL_SECONDS=FAST_POLL_SECONDS
    )
    with api(server) as client:
        # Eight jobs of one customer, two at a time, keep it busy for about two seconds.
        busy = submit_bulk(
            client,
            [{"kind": "per_customer", "args": {"customer": "acme", "seconds": 0.5}}] * 8,
        )
        others = submit_bulk(
            client,
            [{"kind": "per_customer", "args": {"customer": "globex", "seconds": 0}}]
            + [{"kind": "timed", "args": {"seconds": 0}}] * 3,
        )
        others = wait_all_completed(client, others, 10)
        wait_all_completed(client, busy, 30)

    assert max(start_delay_seconds(job) for job in others) < MAX_FREE_START_SECONDS
    windows = run_windows(database_url)
    assert max_overlap_by(windows, "concurrency_key")['per_customer:"acme"'] == 2


def test_limit_without_key_holds_for_whole_kind(database_url, odin_server):
    first, second = two_replicas(odin_server, database_url)
    with api(first) as a, api(second) as b:
        submitted = submit_bulk(a, [{"kind": "one_at_a_time", "args": {"seconds": 0.2}}] * 2)
        submitted += submit_bulk(b, [{"kind": "one_at_a_time", "args": {"seconds": 0.2}}] * 2)
        wait_all_completed(a, submitted, 30)

    assert max_overlap(run_windows(database_url)) == 1


def test_limit_key_computed_by_function(database_url, odin_server):
    first, second = two_replicas(odin_server, database_url)
    accounts = ["north/1", "north/2", "north/3", "south/1", "south/2", "south/3"]
    with api(first) as a, api(second) as b:
        items = [
            {"kind": "per_tenant", "args": {"account": name, "seconds": 0.3}} for name in accounts
        ]
        submitted = submit_bulk(a, items)
        finished = wait_all_completed(b, submitted, 30)

    assert {job["concurrency_key"] for job in finished} == {"per_tenant:north", "per_tenant:south"}
    overlap = max_overlap_by(run_windows(database_url), "concurrency_key")
    assert overlap == {"per_tenant:north": 1, "per_tenant:south": 1}
    assert max_overlap(run_windows(database_url)) == 2


def test_key_past_first_hundred_not_starved(database_url, odin_server):
    # A hundred customers at their limit, each with a job waiting, must not keep a new
    # customer with free room from starting.
    server = odin_server(
        database_url,
        ODIN_KIND_MODULES=KIND_MODULES,
        ODIN_POLL_INTERVAL_SECONDS=FAST_POLL_SECONDS,
        ODIN_WORKER_CONCURRENCY=300,
        ODIN_FETCH_BATCH_SIZE=300,
    )
    busy = [
        {"kind": "per_customer", "args": {"customer": f"busy-{n}", "seconds": 2.0}}
        for n in range(100)
        for _ in range(3)
    ]
    with api(server) as client:
        submit_bulk(client, busy)
        [late] = submit_bulk(
            client, [{"kind": "per_customer", "args": {"customer": "late", "seconds": 0}}]
        )
        late = wait_for_state(client, late["id"], {"completed", "failed"}, 15)

    assert start_delay_seconds(late) < MAX_FREE_START_SECONDS
