"""Schema migrations: numbered, forward-only SQL files in ``sql/migrations``.

``migrate`` takes a session advisory lock before it reads which versions are applied, so any
number of processes starting at once on the same database apply each migration exactly once:
the first applies them, the others wait and then find nothing left to do. Each migration runs
in its own transaction together with the row that records it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.rows import tuple_row

from odin_ext.queries import SQL_DIR

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = SQL_DIR / "migrations"

# Key of the advisory lock that serialises migrations; the bytes spell "odinmigr".
MIGRATION_LOCK_KEY = 0x6F64696E6D696772

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path


def list_migrations(folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Return the migration files in version order; raise ``ValueError`` on a misnamed file."""
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name!r} is not named NNNN_verb_noun.sql")
        migrations.append(Migration(match.group(1), match.group(2), path))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migration files share a version number in {folder}")
    return migrations


async def migrate(conninfo: str) -> list[str]:
    """Apply every migration not yet applied to the database; return the versions applied."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            return await _apply_missing(conn)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


async def _apply_missing(conn: psycopg.AsyncConnection) -> list[str]:
    await conn.execute("CREATE SCHEMA IF NOT EXISTS odin")
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS odin.schema_migrations ("
        " version text PRIMARY KEY,"
        " name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    applied = await _applied_versions(conn)
    done = []
    for migration in list_migrations():
        if migration.version in applied:
            continue
        async with conn.transaction():
            await conn.execute(migration.path.read_text(encoding="utf-8"))
            await conn.execute(
                "INSERT INTO odin.schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
        logger.info(
            "migration applied",
            extra={"event": "migration_applied", "version": migration.version,
                   "migration": migration.name},
        )
        done.append(migration.version)
    return done


async def _applied_versions(conn: psycopg.AsyncConnection) -> set[str]:
    cursor = conn.cursor(row_factory=tuple_row)
    await cursor.execute("SELECT to_regclass('odin.schema_migrations')")
    row = await cursor.fetchone()
    if row is None or row[0] is None:
        return set()
    await cursor.execute("SELECT version FROM odin.schema_migrations")
    return {r[0] for r in await cursor.fetchall()}
