"""Schema migrations and named queries against a real PostgreSQL.

Migrations must apply exactly once, even when several processes start on an empty database at
the same moment. Every named query must parse and plan against the migrated schema, so that a
typo in a column name fails here and not in production.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from odin_ext.migrations import MIGRATIONS_DIR, list_migrations
from odin_ext.queries import QUERIES, load_queries

REPO_ROOT = Path(__file__).resolve().parent.parent
RACING_PROCESSES = 4
MIGRATE_TIMEOUT_SECONDS = 30

_PARAMETER = re.compile(r"%\((\w+)\)s")


def test_migration_files_are_numbered_in_order() -> None:
    migrations = list_migrations()

    assert migrations, f"no migration files in {MIGRATIONS_DIR}"
    assert [m.version for m in migrations] == [f"{n:04d}" for n in range(1, len(migrations) + 1)]
    for migration in migrations:
        first_line = migration.path.read_text(encoding="utf-8").splitlines()[0]
        assert first_line.startswith("-- "), f"{migration.path.name} does not open with a comment"


@pytest.mark.parametrize(
    "file_name",
    [
        "1_create_jobs.sql",
        "0003-add-index.sql",
        "0003_Add_Index.sql",
        "0003_add index.sql",
        "0003_.sql",
        "00003_add_index.sql",
        "0003add_index.sql",
    ],
)
def test_misnamed_migration_file_is_rejected(tmp_path: Path, file_name: str) -> None:
    (tmp_path / "0001_create_jobs.sql").write_text("-- fine\nSELECT 1;\n")
    (tmp_path / file_name).write_text("-- misnamed\nSELECT 1;\n")

    with pytest.raises(ValueError, match=re.escape(file_name)):
        list_migrations(tmp_path)


def test_duplicate_migration_version_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "0001_create_jobs.sql").write_text("-- one\nSELECT 1;\n")
    (tmp_path / "0001_create_workers.sql").write_text("-- two\nSELECT 1;\n")

    with pytest.raises(ValueError, match="version"):
        list_migrations(tmp_path)


def test_racing_migrations_apply_each_once(empty_database_url: str, tmp_path: Path) -> None:
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("ODIN_")
    }
    environment |= {"ODIN_DATABASE_URL": empty_database_url, "ODIN_LOG_LEVEL": "INFO"}
    processes = [
        subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "odin.py"), "migrate"],
            cwd=tmp_path,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(RACING_PROCESSES)
    ]
    outputs = [process.communicate(timeout=MIGRATE_TIMEOUT_SECONDS) for process in processes]

    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr.decode()
        assert b"Traceback" not in stderr, stderr.decode()
        levels = {entry.get("level") for entry in _json_lines(stderr.decode())}
        assert levels <= {"DEBUG", "INFO"}, stderr.decode()
    applied_events = [
        entry["version"]
        for _, stderr in outputs
        for entry in _json_lines(stderr.decode())
        if entry.get("event") == "migration_applied"
    ]
    versions = [m.version for m in list_migrations()]
    assert sorted(applied_events) == versions
    with psycopg.connect(empty_database_url) as connection:
        rows = connection.execute(
            "SELECT version, name FROM odin.schema_migrations ORDER BY version"
        ).fetchall()
    assert rows == [(m.version, m.name) for m in list_migrations()]


def test_migrate_again_applies_nothing(database_url: str, tmp_path: Path) -> None:
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("ODIN_")
    }
    environment["ODIN_DATABASE_URL"] = database_url

    finished = subprocess.run(
        [sys.executable, str(REPO_ROOT / "odin.py"), "migrate"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        timeout=MIGRATE_TIMEOUT_SECONDS,
        check=False,
    )

    assert finished.returncode == 0, finished.stderr.decode()
    assert "applied 0 migration(s)" in finished.stdout.decode()


def _json_lines(text: str) -> list[dict[str, Any]]:
    entries = []
    for line in text.splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def _numbered(query: str) -> tuple[str, int]:
    """Turn psycopg's `%(name)s` placeholders into PostgreSQL's `$n`; return the text and n."""
    numbers: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        return f"${numbers.setdefault(match.group(1), len(numbers) + 1)}"

    return _PARAMETER.sub(number, query).replace("%%", "%"), len(numbers)


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_named_query_prepares(module_database_url: str, name: str) -> None:
    text, parameters = _numbered(QUERIES[name])

    with psycopg.connect(module_database_url, autocommit=True) as connection:
        # PREPARE parses and analyses the statement against the schema, inferring each
        # parameter's type from its context; a typo or an untyped parameter fails here.
        connection.execute(f"PREPARE odin_check AS {text}")
        types = connection.execute(
            "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = 'odin_check'"
        ).fetchone()
        connection.execute("DEALLOCATE odin_check")
        assert types is not None
        assert len(types[0]) == parameters
        if connection.info.server_version >= 160000:
            # GENERIC_PLAN plans the statement without parameter values (PostgreSQL 16+).
            connection.execute(f"EXPLAIN (GENERIC_PLAN) {text}")


def test_queries_folder_rejects_duplicate_names(tmp_path: Path) -> None:
    (tmp_path / "a.sql").write_text("-- name: job_get\n-- One job.\nSELECT 1;\n")
    (tmp_path / "b.sql").write_text("-- name: job_get\n-- Again.\nSELECT 2;\n")

    with pytest.raises(ValueError, match="job_get"):
        load_queries(tmp_path)
