"""Reliability under real faults: killed and stopped replicas, terminated database sessions,
a PostgreSQL restart, cancels racing completions, replicas starting together, and timeouts.

Jobs of the `ledger_sleep` kind record each attempt's start and finish in `test_ledger`
(see `tests.kinds_for_tests`), so these tests can tell from the database whether a job ran
twice and which process ran it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from odin_ext.embedded import EmbeddedPostgres
from odin_ext.migrations import list_migrations
from tests.conftest import OdinLauncher, OdinServer
from tests.database import (
    all_jobs,
    count_backends,
    job_events,
    job_row,
    leader_lock_holders,
    terminate_backends,
)
from tests.kinds_for_tests import LEDGER_APPLICATION_NAME, create_ledger
from tests.odin_client import FINAL_STATES, submit_async, wait_for_state_async
from tests.sse import Comment, StreamRecord, assert_complete_sequence, open_stream, read_stream
from tests.support import wait_until, wait_until_async

TEST_KINDS = '["tests.kinds_for_tests"]'
# A job of this length is still running whenever a test stops or kills its server.
LONG_ATTEMPT_SECONDS = 60


def ledger(database_url: str) -> list[dict[str, Any]]:
    """Return every row of `test_ledger`, oldest first."""
    with psycopg.connect(database_url, row_factory=dict_row) as connection:
        return connection.execute(
            "SELECT job_id, attempt, pid, step FROM public.test_ledger ORDER BY at"
        ).fetchall()


def ledger_steps(database_url: str, job_id: int) -> list[tuple[str, int, int]]:
    """Return the (step, attempt, pid) rows of one job, oldest first."""
    return [
        (row["step"], row["attempt"], row["pid"])
        for row in ledger(database_url)
        if row["job_id"] == job_id
    ]


def log_entries(server: OdinServer, event: str | None = None) -> list[dict[str, Any]]:
    """Return the server's JSON log lines, only those of `event` when given."""
    entries = []
    for line in server.log_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if event is None or entry.get("event") == event:
                entries.append(entry)
    return entries


def assert_no_error_logged(server: OdinServer) -> None:
    """Check that the server wrote no log line at ERROR level."""
    errors = [entry for entry in log_entries(server) if entry.get("level") == "ERROR"]
    assert errors == [], errors


def assert_each_job_completed_once(jobs: list[dict[str, Any]]) -> None:
    """Check that every job is completed, with one `completed` event and no gap in its events."""
    not_completed = {job["id"]: job["state"] for job in jobs if job["state"] != "completed"}
    assert not_completed == {}, f"jobs not completed: {not_completed}"
    for job in jobs:
        types = list(job["event_types"])
        assert types.count("completed") == 1, f"job {job['id']} events {types}"
        assert types[-1] == "completed", f"job {job['id']} events {types}"
        seqs = list(job["event_seqs"])
        assert seqs == list(range(1, len(seqs) + 1)), f"job {job['id']} event ids {seqs}"
        assert job["last_event_seq"] == len(seqs)


async def wait_until_all_final(database_url: str, timeout_seconds: float) -> list[dict[str, Any]]:
    """Wait until every job in the database is in a final state; return them all."""

    def all_final() -> bool:
        return all(job["state"] in FINAL_STATES for job in all_jobs(database_url))

    try:
        await wait_until_async(all_final, timeout_seconds, "every job is final")
    except AssertionError:
        stuck = {
            job["id"]: (job["state"], job["owner"])
            for job in all_jobs(database_url)
            if job["state"] not in FINAL_STATES
        }
        raise AssertionError(
            f"jobs not final after {timeout_seconds} s (state, owner): {stuck}"
        ) from None
    return all_jobs(database_url)


# Replica crash and shutdown --------------------------------------------------------------


@pytest.mark.anyio
async def test_killed_replica_job_is_rescued(database_url: str, odin_server: OdinLauncher) -> None:
    create_ledger(database_url)
    doomed = odin_server(database_url, ODIN_KIND_MODULES=TEST_KINDS)
    async with httpx.AsyncClient(base_url=doomed.url, trust_env=False, timeout=10) as http:
        job = await submit_async(
            http,
            "ledger_sleep",
            {"seconds": 0.3, "first_attempt_seconds": LONG_ATTEMPT_SECONDS},
        )
        await wait_for_state_async(http, job["id"], {"running"})
    survivor = odin_server(database_url, ODIN_KIND_MODULES=TEST_KINDS)
    path = f"/v1/jobs/{job['id']}/events"

    async with httpx.AsyncClient(base_url=survivor.url, trust_env=False, timeout=10) as http:
        records: list[StreamRecord] = []

        async def follow() -> None:
            records.append(await read_stream(http, path, timeout_seconds=20))

        async with anyio.create_task_group() as group:
            group.start_soon(follow)
            killed_at = time.monotonic()
            doomed.kill()
        finished_after = time.monotonic() - killed_at

    record = records[0]
    assert_complete_sequence(record.events)
    assert record.types.count("rescued") == 1, record.types
    assert record.types.count("completed") == 1, record.types
    assert record.types[-1] == "completed"
    running = [event.payload["data"] for event in record.events if event.event == "running"]
    assert [item["attempt"] for item in running] == [1, 2]
    assert f":{doomed.pid}:" in running[0]["owner"]
    assert f":{survivor.pid}:" in running[1]["owner"]
    # Rescue grace, leader takeover and the 0.3 s second attempt fit well within this bound.
    assert finished_after < 8, f"the job finished {finished_after:.1f} s after the kill"
    row = job_row(database_url, job["id"])
    assert row["state"] == "completed"
    assert row["attempt"] == 2
    assert len(row["errors"]) == 1
    assert "rescued" in row["errors"][0]["error"]
    assert ledger_steps(database_url, job["id"]) == [
        ("start", 1, doomed.pid),
        ("start", 2, survivor.pid),
        ("finish", 2, survivor.pid),
    ]


@pytest.mark.anyio
async def test_sigterm_hands_unfinished_jobs_back(
    database_url: str, odin_server: OdinLauncher
) -> None:
    grace_seconds = 2.5
    create_ledger(database_url)
    stopping = odin_server(
        database_url, ODIN_KIND_MODULES=TEST_KINDS, ODIN_SHUTDOWN_GRACE_SECONDS=grace_seconds
    )
    first_streams: dict[int, StreamRecord] = {}

    async with httpx.AsyncClient(base_url=stopping.url, trust_env=False, timeout=10) as http:
        long_jobs = [
            await submit_async(
                http,
                "ledger_sleep",
                {"seconds": 0.2, "first_attempt_seconds": LONG_ATTEMPT_SECONDS},
            )
            for _ in range(3)
        ]
        # Runs 1 s, so it is running at SIGTERM and ends well within the grace period.
        short_job = await submit_async(
            http, "ledger_sleep", {"seconds": 0.2, "first_attempt_seconds": 1.0}
        )
        job_ids = [job["id"] for job in [*long_jobs, short_job]]
        for job_id in job_ids:
            await wait_for_state_async(http, job_id, {"running"})

        connected: set[int] = set()

        async def follow(job_id: int) -> None:
            record = first_streams[job_id] = StreamRecord(0, "")
            async with open_stream(http, f"/v1/jobs/{job_id}/events") as stream:
                record.status_code = stream.response.status_code
                async for item in stream:
                    if isinstance(item, Comment):
                        record.comments.append(item.text)
                    else:
                        record.events.append(item)
                        connected.add(job_id)

        async with anyio.create_task_group() as group:
            for job_id in job_ids:
                group.start_soon(follow, job_id)
            await wait_until_async(
                lambda: connected == set(job_ids), 5, "every stream has received an event"
            )
            signalled_at = time.monotonic()
            exit_code = await anyio.to_thread.run_sync(stopping.terminate, grace_seconds + 8)
            exited_after = time.monotonic() - signalled_at

    assert exit_code == 0, stopping.log_tail()
    assert exited_after < grace_seconds + 3, f"exited {exited_after:.1f} s after SIGTERM"
    assert_no_error_logged(stopping)
    for job_id in job_ids:
        record = first_streams[job_id]
        assert record.status_code == 200
        assert "server shutting down, reconnect" in record.comments, record.comments
        assert_complete_sequence(record.events)
    short_row = job_row(database_url, short_job["id"])
    assert short_row["state"] == "completed"
    assert short_row["attempt"] == 1
    for job in long_jobs:
        row = job_row(database_url, job["id"])
        assert row["state"] == "queued", row
        assert row["owner"] is None
        assert job_events(database_url, job["id"])[-1]["type"] == "interrupted"

    successor = odin_server(database_url, ODIN_KIND_MODULES=TEST_KINDS)
    async with httpx.AsyncClient(base_url=successor.url, trust_env=False, timeout=10) as http:
        for job in long_jobs:
            before = first_streams[job["id"]].events
            rest = await read_stream(
                http, f"/v1/jobs/{job['id']}/events", last_event_id=before[-1].seq
            )
            events = before + rest.events
            types = [event.event for event in events]
            assert_complete_sequence(events)
            assert types.count("interrupted") == 1, types
            assert types.count("completed") == 1, types
            assert types[-1] == "completed"
            assert ledger_steps(database_url, job["id"]) == [
                ("start", 1, stopping.pid),
                ("start", 2, successor.pid),
                ("finish", 2, successor.pid),
            ]


# Database faults ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_terminated_sessions_lose_no_job(
    database_url: str, odin_server: OdinLauncher
) -> None:
    create_ledger(database_url)
    replicas = [odin_server(database_url, ODIN_KIND_MODULES=TEST_KINDS) for _ in range(2)]
    accepted: list[int] = []
    failed_submissions: list[str] = []
    terminated: list[int] = []
    load_done = anyio.Event()

    async def submit_load(http: httpx.AsyncClient, count: int) -> None:
        for _ in range(count):
            try:
                answer = await http.post(
                    "/v1/jobs", json={"kind": "ledger_sleep", "args": {"seconds": 0.1}}
                )
            except httpx.HTTPError as exc:
                failed_submissions.append(repr(exc))
                continue
            if answer.status_code == 202:
                accepted.append(answer.json()["id"])
            else:
                failed_submissions.append(f"{answer.status_code} {answer.text}")
            await anyio.sleep(0.03)

    async def break_sessions() -> None:
        while not load_done.is_set():
            terminated.append(
                await anyio.to_thread.run_sync(
                    lambda: terminate_backends(
                        database_url, keep_application=LEDGER_APPLICATION_NAME
                    )
                )
            )
            with anyio.move_on_after(0.4):
                await load_done.wait()

    async with (
        httpx.AsyncClient(base_url=replicas[0].url, trust_env=False, timeout=30) as first,
        httpx.AsyncClient(base_url=replicas[1].url, trust_env=False, timeout=30) as second,
    ):
        async with anyio.create_task_group() as group:
            group.start_soon(break_sessions)
            async with anyio.create_task_group() as load:
                load.start_soon(submit_load, first, 40)
                load.start_soon(submit_load, second, 40)
            load_done.set()

        jobs = await wait_until_all_final(database_url, 30)
        for http in (first, second):
            await wait_until_ready_status(http, 200, 5, "/readyz reports 200")

    assert sum(terminated) > 0
    assert set(accepted) <= {job["id"] for job in jobs}
    # The store retries transient errors, so nearly every submission gets through.
    assert len(accepted) >= 60, f"{len(accepted)} of 80 accepted; {failed_submissions[:5]}"
    assert_each_job_completed_once(jobs)
    steps = Counter((row["job_id"], row["step"]) for row in ledger(database_url))
    for job in jobs:
        starts = steps[(job["id"], "start")]
        finishes = steps[(job["id"], "finish")]
        assert (starts, finishes) == (1, 1), (
            f"job {job['id']}: {starts} starts, {finishes} finishes; ledger "
            f"{ledger_steps(database_url, job['id'])}, events {list(job['event_types'])}, "
            f"errors {job['errors']}"
        )


def terminate_pool_sessions(database_url: str) -> int:
    """End every session of the database except the listener's and the leader's, as an
    administrator or an idle-session timeout would, while the database stays up."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend' AND query NOT LIKE 'LISTEN%'"
            " AND query NOT LIKE '%pg_try_advisory_lock%' AND query <> 'SELECT 1'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_submission_survives_stale_pool_sessions(
    database_url: str, odin_server: OdinLauncher
) -> None:
    # More pool sessions than the store tries a statement, so that the stale sessions outlast
    # the retries; no workers and a leader that waits 60 s between duties use up none of them.
    server = odin_server(
        database_url,
        ODIN_POOL_MIN_SIZE=20,
        ODIN_POOL_MAX_SIZE=20,
        ODIN_RUN_WORKERS="false",
        ODIN_LEADER_INTERVAL_SECONDS=60,
    )
    wait_until(
        lambda: count_backends(database_url, "%") >= 20, 10, "the pool has opened its sessions"
    )
    assert terminate_pool_sessions(database_url) >= 20

    with httpx.Client(base_url=server.url, trust_env=False, timeout=30) as http:
        answers = [http.post("/v1/jobs", json={"kind": "noop"}) for _ in range(3)]

    assert [answer.status_code for answer in answers] == [202, 202, 202], answers[0].text


def test_readyz_ignores_stale_pool_sessions(database_url: str, odin_server: OdinLauncher) -> None:
    server = odin_server(database_url, ODIN_POOL_MIN_SIZE=2)
    assert terminate_pool_sessions(database_url) > 0

    with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as http:
        statuses = [http.get("/readyz") for _ in range(3)]

    assert [answer.status_code for answer in statuses] == [200, 200, 200], statuses[0].text


@pytest.fixture
def dedicated_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of the test's own, which it may stop and start at will."""
    # Outside pytest's base folder, which is mode 700 and would lock out the server's user.
    data_root = Path(tempfile.mkdtemp(prefix="odin-restart-postgres-"))
    data_root.chmod(0o711)
    server = EmbeddedPostgres(data_root / "data", durable=False)
    try:
        server.start()
        with psycopg.connect(server.url, autocommit=True) as connection:
            connection.execute("CREATE DATABASE odin_restart")
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_root, ignore_errors=True)


@pytest.mark.anyio
async def test_database_restart_under_load(
    dedicated_postgres: EmbeddedPostgres, odin_server: OdinLauncher
) -> None:
    database_url = dedicated_postgres.database_url("odin_restart")
    server = odin_server(database_url, ODIN_WORKER_CONCURRENCY=20)
    accepted: list[int] = []
    submit_errors: list[str] = []
    stop_load = anyio.Event()

    async def submit_steadily(http: httpx.AsyncClient) -> None:
        while not stop_load.is_set():
            try:
                answer = await http.post(
                    "/v1/jobs", json={"kind": "sleep", "args": {"seconds": 0.5}}, timeout=3
                )
            except httpx.HTTPError as exc:
                submit_errors.append(repr(exc))
            else:
                if answer.status_code == 202:
                    accepted.append(answer.json()["id"])
                else:
                    submit_errors.append(str(answer.status_code))
            with anyio.move_on_after(0.05):
                await stop_load.wait()

    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=10) as http:
        async with anyio.create_task_group() as group:
            group.start_soon(submit_steadily, http)
            await wait_until_async(lambda: len(accepted) >= 10, 10, "ten jobs are accepted")
            await wait_until_async(
                lambda: _running_count(database_url) > 0, 10, "some jobs are running"
            )

            dedicated_postgres.stop()
            await wait_until_ready_status(http, 503, 15, "/readyz reports 503")
            dedicated_postgres.start()
            await wait_until_ready_status(http, 200, 20, "/readyz reports 200 again")
            accepted_after_restart = len(accepted)
            await wait_until_async(
                lambda: len(accepted) >= accepted_after_restart + 10,
                15,
                "ten more jobs are accepted after the restart",
            )
            stop_load.set()

        jobs = await wait_until_all_final(database_url, 30)

    assert server.process.poll() is None, "Odin exited during the database restart"
    assert set(accepted) <= {job["id"] for job in jobs}
    assert_each_job_completed_once(jobs)


async def wait_until_ready_status(
    http: httpx.AsyncClient, expected: int, timeout_seconds: float, message: str
) -> None:
    """Poll `GET /readyz` until it returns `expected`; failed requests count as other statuses."""

    async def has_status() -> bool:
        try:
            answer = await http.get("/readyz", timeout=5)
        except httpx.HTTPError:
            return False
        return answer.status_code == expected

    await wait_until_async(has_status, timeout_seconds, message)


def _running_count(database_url: str) -> int:
    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            "SELECT count(*) FROM odin.jobs WHERE state = 'running'"
        ).fetchone()
    assert row is not None
    return int(row[0])


# Races -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cancel_racing_completion_ends_once(
    database_url: str, odin_server: OdinLauncher
) -> None:
    job_count = 60
    server = odin_server(database_url, ODIN_KIND_MODULES=TEST_KINDS, ODIN_WORKER_CONCURRENCY=100)
    answers: dict[int, httpx.Response] = {}

    async with httpx.AsyncClient(
        base_url=server.url,
        trust_env=False,
        timeout=10,
        limits=httpx.Limits(max_connections=100),
    ) as http:
        # Each job wakes at its own moment, from 60 ms before to 60 ms after the cancels.
        cancel_at = time.time() + 4.0
        jobs: list[dict[str, Any]] = []

        async def submit_one(index: int) -> None:
            wake_at = cancel_at + (index - job_count / 2) * 0.002
            jobs.append(await submit_async(http, "sleep_until", {"wake_at": wake_at}))

        async with anyio.create_task_group() as group:
            for index in range(job_count):
                group.start_soon(submit_one, index)
        await wait_until_async(
            lambda: _running_count(database_url) == job_count,
            max(0.0, cancel_at - time.time() - 0.2),
            f"all {job_count} jobs are running before the cancels go out",
        )

        async def cancel(job_id: int) -> None:
            answers[job_id] = await http.post(f"/v1/jobs/{job_id}/cancel")

        # The timing is the test: every cancel goes out at the same moment.
        await anyio.sleep(cancel_at - time.time())
        async with anyio.create_task_group() as group:
            for job in jobs:
                group.start_soon(cancel, job["id"])
        await wait_until_all_final(database_url, 10)

    outcomes: Counter[str] = Counter()
    for job in jobs:
        row = job_row(database_url, job["id"])
        types = [event["type"] for event in job_events(database_url, job["id"])]
        finals = [event_type for event_type in types if event_type in FINAL_STATES]
        assert finals == [row["state"]], f"job {job['id']}: state {row['state']}, events {types}"
        assert types[-1] == row["state"]
        answer = answers[job["id"]]
        if answer.status_code == 200:
            assert answer.json()["state"] == "cancelled"
            assert row["state"] == "cancelled"
            assert row["result"] is None
        else:
            assert answer.status_code == 409, answer.text
            assert answer.json()["state"] == row["state"] == "completed"
            assert row["result"] is not None
        outcomes[row["state"]] += 1
    assert sum(outcomes.values()) == job_count
    assert_no_error_logged(server)


# Start-up ----------------------------------------------------------------------------------


def test_replicas_starting_together_elect_one_leader(
    empty_database_url: str, odin_server: OdinLauncher
) -> None:
    replicas = [odin_server(empty_database_url, wait_ready=False) for _ in range(3)]
    for replica in replicas:
        replica.wait_until_ready()

    wait_until(lambda: leader_lock_holders(empty_database_url) == 1, 5, "a leader is elected")
    elected = [entry for replica in replicas for entry in log_entries(replica, "leader_elected")]
    assert len(elected) == 1, elected
    with psycopg.connect(empty_database_url) as connection:
        migrations = connection.execute(
            "SELECT version FROM odin.schema_migrations ORDER BY version"
        ).fetchall()
        workers = connection.execute("SELECT count(*) FROM odin.workers").fetchone()
    assert [version for (version,) in migrations] == [m.version for m in list_migrations()]
    assert workers == (3,)
    for replica in replicas:
        assert_no_error_logged(replica)


# Timeouts ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_timed_out_job_is_retried_then_failed(
    database_url: str, odin_server: OdinLauncher
) -> None:
    server = odin_server(database_url, ODIN_RETRY_BASE_SECONDS=0.05, ODIN_RETRY_MAX_SECONDS=0.1)

    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=10) as http:
        job = await submit_async(
            http, "sleep", {"seconds": 30}, timeout_seconds=0.3, max_attempts=2
        )
        failed = await wait_for_state_async(http, job["id"], {"failed"}, timeout_seconds=15)

    assert failed["attempt"] == 2
    assert [entry["attempt"] for entry in failed["errors"]] == [1, 2]
    for entry in failed["errors"]:
        assert "timed out" in entry["error"]
    assert failed["error"] == failed["errors"][-1]["error"]
    types = [event["type"] for event in job_events(database_url, job["id"])]
    assert types == ["queued", "running", "retry_scheduled", "queued", "running", "failed"]
