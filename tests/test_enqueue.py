"""Tests of transactional enqueue: `enqueue` and `enqueue_sync` insert a job inside the
caller's own transaction, so the job exists, and runs on a server, only if it commits."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import psycopg
import pytest

from odin_ext.enqueue import enqueue, enqueue_sync
from odin_ext.errors import ValidationFailed
from tests.feature_kinds import PARKED_QUEUE, receipt, unique_report
from tests.odin_client import wait_for_state, wait_for_state_async

KIND_MODULES = '["tests.feature_kinds"]'
ORDERS_TABLE_SQL = "CREATE TABLE public.orders (id integer PRIMARY KEY)"
# The commit's notification wakes the workers; the 1 s poll would take up to a second.
MAX_START_AFTER_COMMIT_SECONDS = 0.3


class Rollback(Exception):
    """Raised inside a transaction block to roll it back."""


def stored_jobs(database_url: str) -> int:
    with psycopg.connect(database_url) as connection:
        row = connection.execute("SELECT count(*) FROM odin.jobs").fetchone()
    assert row is not None
    return int(row[0])


def create_orders_table(database_url: str) -> None:
    with psycopg.connect(database_url) as connection:
        connection.execute(ORDERS_TABLE_SQL)


def api(server: Any) -> httpx.Client:
    return httpx.Client(base_url=server.url, trust_env=False, timeout=10)


@pytest.mark.anyio
async def test_enqueue_rolled_back_leaves_no_job(database_url):
    create_orders_table(database_url)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        with pytest.raises(Rollback):
            async with conn.transaction():
                await conn.execute("INSERT INTO public.orders (id) VALUES (7)")
                job = await enqueue(conn, receipt, {"order_id": 7})
                assert job.state == "queued"
                raise Rollback

    assert stored_jobs(database_url) == 0


@pytest.mark.anyio
async def test_enqueue_committed_job_runs(database_url, odin_server):
    create_orders_table(database_url)
    server = odin_server(database_url, ODIN_KIND_MODULES=KIND_MODULES)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        async with conn.transaction():
            await conn.execute("INSERT INTO public.orders (id) VALUES (42)")
            job = await enqueue(conn, receipt, {"order_id": 42}, priority=5)
            # Not visible to anyone else before the commit.
            assert stored_jobs(database_url) == 0
            # The caller's connection keeps its own row factory.
            cursor = await conn.execute("SELECT id FROM public.orders")
            assert await cursor.fetchone() == (42,)
        committed_at = await database_now(conn)

    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=10) as client:
        done = await wait_for_state_async(client, job.id, {"completed", "failed"}, 10)
    assert done["state"] == "completed"
    assert done["result"] == {"order_id": 42}
    assert done["priority"] == 5
    start_delay = (datetime.fromisoformat(done["attempted_at"]) - committed_at).total_seconds()
    assert start_delay < MAX_START_AFTER_COMMIT_SECONDS


async def database_now(conn: psycopg.AsyncConnection[Any]) -> datetime:
    cursor = await conn.execute("SELECT now()")
    row = await cursor.fetchone()
    assert row is not None
    await conn.rollback()
    moment: datetime = row[0]
    return moment


def test_enqueue_sync_follows_transaction(database_url, odin_server):
    create_orders_table(database_url)
    server = odin_server(database_url, ODIN_KIND_MODULES=KIND_MODULES)
    with psycopg.connect(database_url) as conn:
        with pytest.raises(Rollback), conn.transaction():
            enqueue_sync(conn, receipt, {"order_id": 1})
            raise Rollback
        assert stored_jobs(database_url) == 0

        with conn.transaction():
            conn.execute("INSERT INTO public.orders (id) VALUES (2)")
            job = enqueue_sync(conn, receipt, {"order_id": 2})
            assert stored_jobs(database_url) == 0
            assert conn.execute("SELECT id FROM public.orders").fetchone() == (2,)
        with conn.cursor() as cursor:
            cursor.execute("SELECT now()")
            row = cursor.fetchone()
            assert row is not None
            committed_at: datetime = row[0]

    with api(server) as client:
        done = wait_for_state(client, job.id, {"completed", "failed"}, 10)
    assert done["state"] == "completed"
    assert done["result"] == {"order_id": 2}
    start_delay = (datetime.fromisoformat(done["attempted_at"]) - committed_at).total_seconds()
    assert start_delay < MAX_START_AFTER_COMMIT_SECONDS


@pytest.mark.anyio
async def test_enqueue_checks_args_before_sql(database_url):
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        async with conn.transaction():
            with pytest.raises(ValidationFailed) as failure:
                await enqueue(conn, receipt, {"order_id": "forty-two"})
            with pytest.raises(ValidationFailed):
                await enqueue(conn, receipt, {"order_id": 1}, run_at=datetime(2030, 1, 1))
            # No statement failed, so the transaction is still usable.
            cursor = await conn.execute("SELECT 1")
            assert await cursor.fetchone() == (1,)
        with pytest.raises(TypeError):
            await enqueue(conn, print, {})

    assert failure.value.errors[0]["field"] == "args.order_id"
    assert stored_jobs(database_url) == 0


@pytest.mark.anyio
async def test_enqueue_duplicate_returns_unique_holder(database_url):
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        async with conn.transaction():
            first = await enqueue(conn, unique_report, {"customer": "acme"}, queue=PARKED_QUEUE)
            second = await enqueue(
                conn, unique_report, {"customer": "acme", "day": "tue"}, queue=PARKED_QUEUE
            )
            delayed = await enqueue(conn, receipt, {"order_id": 3}, delay_seconds=60)

    assert second.id == first.id
    assert delayed.state == "scheduled"
    assert stored_jobs(database_url) == 2


def test_enqueue_sync_duplicate_returns_holder(database_url):
    with psycopg.connect(database_url) as conn:
        first = enqueue_sync(conn, unique_report, {"customer": "acme"}, queue=PARKED_QUEUE)
        second = enqueue_sync(conn, unique_report, {"customer": "acme"}, queue=PARKED_QUEUE)

    assert second.id == first.id
    assert stored_jobs(database_url) == 1
