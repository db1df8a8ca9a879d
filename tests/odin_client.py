"""Submitting jobs to a test server and waiting for them over Odin's HTTP API."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import httpx

from tests.support import wait_until, wait_until_async

FINAL_STATES = frozenset({"completed", "failed", "cancelled"})


def submit(
    client: httpx.Client, kind: str, args: dict[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    """Submit a job and return the response's JSON; fail unless the status is 202."""
    answer = client.post("/v1/jobs", json={"kind": kind, "args": args or {}, **fields})
    assert answer.status_code == 202, answer.text
    job: dict[str, Any] = answer.json()
    return job


async def submit_async(
    client: httpx.AsyncClient, kind: str, args: dict[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    """Like `submit`, with an async client."""
    answer = await client.post("/v1/jobs", json={"kind": kind, "args": args or {}, **fields})
    assert answer.status_code == 202, answer.text
    job: dict[str, Any] = answer.json()
    return job


def wait_for_state(
    client: httpx.Client, job_id: int, states: Collection[str], timeout_seconds: float = 10.0
) -> dict[str, Any]:
    """Poll `GET /v1/jobs/{job_id}` until the job is in one of `states`; return the job."""

    def job_in_state() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["state"] in states else None

    job = wait_until(job_in_state, timeout_seconds, f"job {job_id} is {' or '.join(states)}")
    assert job is not None
    return job


async def wait_for_state_async(
    client: httpx.AsyncClient, job_id: int, states: Collection[str], timeout_seconds: float = 10.0
) -> dict[str, Any]:
    """Like `wait_for_state`, with an async client."""

    async def job_in_state() -> dict[str, Any] | None:
        job: dict[str, Any] = (await client.get(f"/v1/jobs/{job_id}")).json()
        return job if job["state"] in states else None

    job = await wait_until_async(
        job_in_state, timeout_seconds, f"job {job_id} is {' or '.join(states)}"
    )
    assert job is not None
    return job
