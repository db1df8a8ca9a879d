"""Tests of unique jobs and of the Idempotency-Key header, alone and under concurrent
submissions to two replicas.

The tests share two replicas and one database, so each test uses customers, labels and
keys of its own. Most jobs go to a queue that no server serves, so they stay queued and
keep their unique key for the whole test.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import psycopg
import pytest

from tests.feature_kinds import PARKED_QUEUE
from tests.odin_client import wait_for_state
from tests.support import wait_until

KIND_MODULES = '["tests.feature_kinds"]'
CONCURRENT_SUBMISSIONS = 40


@pytest.fixture(scope="module")
def replicas(module_database_url: str, module_odin_server: Any) -> list[Any]:
    servers = [
        module_odin_server(module_database_url, wait_ready=False, ODIN_KIND_MODULES=KIND_MODULES)
        for _ in range(2)
    ]
    for server in servers:
        server.wait_until_ready()
    return servers


@pytest.fixture
def server(replicas: list[Any]) -> Any:
    return replicas[0]


def api(server: Any) -> httpx.Client:
    return httpx.Client(base_url=server.url, trust_env=False, timeout=10)


def post_job(
    client: httpx.Client, kind: str, args: dict[str, Any], key: str | None = None, **fields: Any
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/v1/jobs", json={"kind": kind, "args": args, **fields}, headers=headers)


async def post_concurrently(
    urls: list[str], body: dict[str, Any], headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    """POST `body` to every URL at once and return the responses in order."""
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        return list(
            await asyncio.gather(*(client.post(url, json=body, headers=headers) for url in urls))
        )


def stored_count(database_url: str, kind: str, arg: str, values: list[str]) -> int:
    """Return the number of jobs of `kind` whose argument `arg` is one of `values`."""
    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            "SELECT count(*) FROM odin.jobs WHERE kind = %s AND args->>%s = ANY(%s)",
            (kind, arg, values),
        ).fetchone()
    assert row is not None
    return int(row[0])


# Unique jobs -------------------------------------------------------------------------------


def test_duplicate_returns_existing_job(module_database_url, server):
    with api(server) as client:
        first = post_job(
            client, "unique_report", {"customer": "dup-acme", "day": "mon"}, queue=PARKED_QUEUE
        )
        duplicate = post_job(
            client, "unique_report", {"customer": "dup-acme", "day": "tue"}, queue=PARKED_QUEUE
        )
        other = post_job(client, "unique_report", {"customer": "dup-globex"}, queue=PARKED_QUEUE)
        by_email = post_job(
            client, "unique_by_email", {"email": " Ada@Example.com"}, queue=PARKED_QUEUE
        )
        same_email = post_job(
            client, "unique_by_email", {"email": "ada@example.com "}, queue=PARKED_QUEUE
        )

    assert first.status_code == 202
    assert first.json()["created"] is True
    assert first.json()["unique_key"]
    # Only the customer counts, so the response is the first job, with its own args.
    assert duplicate.status_code == 200
    assert duplicate.json()["created"] is False
    assert duplicate.json()["id"] == first.json()["id"]
    assert duplicate.json()["args"] == {"customer": "dup-acme", "day": "mon"}
    assert duplicate.headers["Location"] == first.json()["url"]
    assert other.status_code == 202
    assert other.json()["id"] != first.json()["id"]
    assert by_email.status_code == 202
    assert same_email.status_code == 200
    assert same_email.json()["id"] == by_email.json()["id"]
    assert (
        stored_count(module_database_url, "unique_report", "customer", ["dup-acme", "dup-globex"])
        == 2
    )


def test_reject_conflict_answers_409(module_database_url, server):
    with api(server) as client:
        first = post_job(client, "unique_reject", {"customer": "reject-acme"}, queue=PARKED_QUEUE)
        second = post_job(client, "unique_reject", {"customer": "reject-acme"}, queue=PARKED_QUEUE)

    assert first.status_code == 202
    assert second.status_code == 409
    assert second.headers["content-type"] == "application/problem+json"
    problem = second.json()
    assert problem["job_id"] == first.json()["id"]
    assert problem["state"] == "queued"
    assert f"job {first.json()['id']}" in problem["detail"]
    assert stored_count(module_database_url, "unique_reject", "customer", ["reject-acme"]) == 1


def test_finished_job_frees_unique_key(server):
    with api(server) as client:
        first = post_job(client, "unique_report", {"customer": "freed-acme"}).json()
        wait_for_state(client, first["id"], {"completed"}, 10)
        again = post_job(client, "unique_report", {"customer": "freed-acme"})

        forever = post_job(client, "unique_forever", {"customer": "freed-acme"}).json()
        wait_for_state(client, forever["id"], {"completed"}, 10)
        forever_again = post_job(client, "unique_forever", {"customer": "freed-acme"})

    # The default unique states end with running, so a completed job frees its key.
    assert again.status_code == 202
    assert again.json()["id"] != first["id"]
    # Listing every state keeps the key with the finished job.
    assert forever_again.status_code == 200
    assert forever_again.json()["id"] == forever["id"]
    assert forever_again.json()["state"] == "completed"


def test_cancelled_job_retry_blocked_by_new_holder(server):
    with api(server) as client:
        first = post_job(
            client, "unique_report", {"customer": "retry-acme"}, queue=PARKED_QUEUE
        ).json()
        assert client.post(f"/v1/jobs/{first['id']}/cancel").status_code == 200
        holder = post_job(client, "unique_report", {"customer": "retry-acme"}, queue=PARKED_QUEUE)
        retried = client.post(f"/v1/jobs/{first['id']}/retry")
        still = client.get(f"/v1/jobs/{first['id']}").json()

    assert holder.status_code == 202
    assert retried.status_code == 409
    assert "unique key" in retried.json()["detail"]
    assert still["state"] == "cancelled"


def test_unique_key_renews_each_period(server):
    answers: list[httpx.Response] = []
    with api(server) as client:

        def two_windows_seen() -> bool:
            answers.append(
                post_job(
                    client, "unique_per_second", {"customer": "period-acme"}, queue=PARKED_QUEUE
                )
            )
            return len({answer.json()["unique_key"] for answer in answers}) >= 2

        wait_until(two_windows_seen, 3, "submissions fall into two one-second windows")

    job_of_key: dict[str, int] = {}
    for answer in answers:
        job = answer.json()
        if job["unique_key"] not in job_of_key:
            assert answer.status_code == 202, "the first submission of a window creates a job"
            job_of_key[job["unique_key"]] = job["id"]
        else:
            assert answer.status_code == 200
            assert job["id"] == job_of_key[job["unique_key"]]
    assert len(set(job_of_key.values())) == len(job_of_key)


def test_bulk_duplicates_share_one_job(module_database_url, server):
    items = [
        {"kind": "unique_report", "args": {"customer": "bulk-acme", "day": "mon"}},
        {"kind": "unique_report", "args": {"customer": "bulk-acme", "day": "tue"}},
        {"kind": "unique_report", "args": {"customer": "bulk-globex"}},
    ]
    with api(server) as client:
        answer = client.post(
            "/v1/jobs/bulk", json={"jobs": [{**item, "queue": PARKED_QUEUE} for item in items]}
        )

    assert answer.status_code == 202, answer.text
    jobs = answer.json()["jobs"]
    assert [job["created"] for job in jobs] == [True, False, True]
    assert jobs[1]["id"] == jobs[0]["id"]
    assert jobs[2]["id"] != jobs[0]["id"]
    assert (
        stored_count(module_database_url, "unique_report", "customer", ["bulk-acme", "bulk-globex"])
        == 2
    )


@pytest.mark.anyio
async def test_concurrent_duplicates_on_two_replicas_create_one_job(module_database_url, replicas):
    urls = [f"{replicas[n % 2].url}/v1/jobs" for n in range(CONCURRENT_SUBMISSIONS)]

    existing = await post_concurrently(
        urls, {"kind": "unique_report", "args": {"customer": "race"}, "queue": PARKED_QUEUE}
    )
    rejected = await post_concurrently(
        urls, {"kind": "unique_reject", "args": {"customer": "race"}, "queue": PARKED_QUEUE}
    )

    statuses = sorted(answer.status_code for answer in existing)
    assert statuses == [200] * (CONCURRENT_SUBMISSIONS - 1) + [202]
    assert len({answer.json()["id"] for answer in existing}) == 1
    assert stored_count(module_database_url, "unique_report", "customer", ["race"]) == 1

    statuses = sorted(answer.status_code for answer in rejected)
    assert statuses == [202] + [409] * (CONCURRENT_SUBMISSIONS - 1)
    [created] = [answer.json() for answer in rejected if answer.status_code == 202]
    assert {answer.json()["job_id"] for answer in rejected if answer.status_code == 409} == {
        created["id"]
    }
    assert stored_count(module_database_url, "unique_reject", "customer", ["race"]) == 1


# Idempotency-Key ---------------------------------------------------------------------------


def test_idempotent_repeat_returns_first_job(module_database_url, server):
    with api(server) as client:
        first = post_job(client, "timed", {"label": "repeat", "seconds": 0}, key="order-1")
        wait_for_state(client, first.json()["id"], {"completed"}, 10)
        # The same request with its members in another order is the same request.
        repeat = client.post(
            "/v1/jobs",
            json={"args": {"seconds": 0, "label": "repeat"}, "kind": "timed"},
            headers={"Idempotency-Key": "order-1"},
        )

    assert first.status_code == 202
    assert first.json()["created"] is True
    assert "Idempotent-Replayed" not in first.headers
    assert repeat.status_code == 202
    assert repeat.headers["Idempotent-Replayed"] == "true"
    assert repeat.json()["id"] == first.json()["id"]
    assert repeat.json()["created"] is False
    assert repeat.json()["state"] == "completed"
    assert stored_count(module_database_url, "timed", "label", ["repeat"]) == 1


def test_idempotency_key_with_other_request_rejected(module_database_url, server):
    with api(server) as client:
        first = post_job(client, "timed", {"label": "other-a"}, key="order-2", queue=PARKED_QUEUE)
        other = post_job(client, "timed", {"label": "other-b"}, key="order-2", queue=PARKED_QUEUE)
        too_long = post_job(
            client, "timed", {"label": "other-c"}, key="k" * 256, queue=PARKED_QUEUE
        )
        empty = post_job(client, "timed", {"label": "other-d"}, key="", queue=PARKED_QUEUE)

    assert first.status_code == 202
    assert other.status_code == 422
    assert "order-2" in other.json()["detail"]
    assert too_long.status_code == 400
    assert empty.status_code == 400
    assert (
        stored_count(
            module_database_url, "timed", "label", ["other-a", "other-b", "other-c", "other-d"]
        )
        == 1
    )


@pytest.mark.anyio
async def test_concurrent_idempotent_submissions_create_one_job(module_database_url, replicas):
    urls = [f"{replicas[n % 2].url}/v1/jobs" for n in range(CONCURRENT_SUBMISSIONS)]

    answers = await post_concurrently(
        urls,
        {"kind": "timed", "args": {"label": "once"}, "queue": PARKED_QUEUE},
        headers={"Idempotency-Key": "checkout-42"},
    )

    assert [answer.status_code for answer in answers] == [202] * CONCURRENT_SUBMISSIONS
    assert len({answer.json()["id"] for answer in answers}) == 1
    replayed = [answer.headers.get("Idempotent-Replayed") for answer in answers]
    assert sorted(replayed, key=str) == [None] + ["true"] * (CONCURRENT_SUBMISSIONS - 1)
    assert stored_count(module_database_url, "timed", "label", ["once"]) == 1


def test_first_use_of_key_is_no_replay(server):
    # A new key whose request duplicates a unique job gets the response it would get
    # without a key. That is the existing job, and no replay of an earlier response.
    with api(server) as client:
        first = post_job(client, "unique_report", {"customer": "replay-acme"}, queue=PARKED_QUEUE)
        duplicate = post_job(
            client, "unique_report", {"customer": "replay-acme"}, key="fresh-1", queue=PARKED_QUEUE
        )

    assert first.status_code == 202
    assert duplicate.json()["id"] == first.json()["id"]
    assert "Idempotent-Replayed" not in duplicate.headers
    assert duplicate.status_code == 200


def test_unique_reject_applies_with_idempotency_key(server):
    with api(server) as client:
        first = post_job(client, "unique_reject", {"customer": "keyed-acme"}, queue=PARKED_QUEUE)
        duplicate = post_job(
            client, "unique_reject", {"customer": "keyed-acme"}, key="fresh-2", queue=PARKED_QUEUE
        )

    assert first.status_code == 202
    assert "Idempotent-Replayed" not in duplicate.headers
    assert duplicate.status_code == 409
