"""Reading a test database directly, to check what Odin stored behind its API."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

# First key of Odin's advisory locks; the second is 0 for the leader lock.
ODIN_LOCK_CLASS = 0x6F64696E


def count_stored(database_url: str) -> tuple[int, int]:
    """Return the number of rows in odin.jobs and in odin.job_events."""
    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            "SELECT (SELECT count(*) FROM odin.jobs), (SELECT count(*) FROM odin.job_events)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def job_row(database_url: str, job_id: int) -> dict[str, Any]:
    """Return the odin.jobs row of `job_id`."""
    with psycopg.connect(database_url, row_factory=dict_row) as connection:
        row = connection.execute("SELECT * FROM odin.jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None, f"job {job_id} is not in odin.jobs"
    return row


def job_events(database_url: str, job_id: int) -> list[dict[str, Any]]:
    """Return the stored events of `job_id` in sequence order."""
    with psycopg.connect(database_url, row_factory=dict_row) as connection:
        return connection.execute(
            "SELECT seq, type, data FROM odin.job_events WHERE job_id = %s ORDER BY seq",
            (job_id,),
        ).fetchall()


def all_jobs(database_url: str) -> list[dict[str, Any]]:
    """Return every job with the types of its events in order, as `event_types`."""
    with psycopg.connect(database_url, row_factory=dict_row) as connection:
        return connection.execute(
            "SELECT j.*, coalesce("
            "  (SELECT array_agg(e.type ORDER BY e.seq) FROM odin.job_events AS e"
            "   WHERE e.job_id = j.id), '{}') AS event_types,"
            " (SELECT array_agg(e.seq ORDER BY e.seq) FROM odin.job_events AS e"
            "   WHERE e.job_id = j.id) AS event_seqs"
            " FROM odin.jobs AS j ORDER BY j.id"
        ).fetchall()


def leader_lock_holders(database_url: str) -> int:
    """Return how many sessions hold Odin's leader lock in this database."""
    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_locks"
            " WHERE locktype = 'advisory' AND granted AND classid = %s::oid"
            " AND objid = 0 AND objsubid = 2"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (ODIN_LOCK_CLASS,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def count_backends(database_url: str, query_pattern: str) -> int:
    """Return how many other sessions of this test database ran a query matching
    `query_pattern` (SQL LIKE) last."""
    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND query LIKE %s",
            (query_pattern,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def terminate_backends(
    database_url: str, query_pattern: str = "%", *, keep_application: str | None = None
) -> int:
    """Terminate the sessions of this test database whose last query matches `query_pattern`
    (SQL LIKE), except this one and those named `keep_application`; return how many."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'"
            " AND query LIKE %s AND application_name IS DISTINCT FROM %s",
            (query_pattern, keep_application),
        ).fetchall()
    return sum(1 for (terminated,) in rows if terminated)
