"""Fixtures shared by the test suite: PostgreSQL servers, fresh databases and Odin processes.

Every pytest-xdist worker gets its own PostgreSQL server (an `EmbeddedPostgres` with
`durable=False` in a temporary folder) unless ODIN_TEST_DATABASE_URL names an existing server,
which all workers then share. Each worker migrates one template database, and each test that
requests `database_url` gets a clone of it, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow

from odin_ext.embedded import EmbeddedPostgres, make_death_signal_preexec

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
ODIN_READY_TIMEOUT_SECONDS = 20.0
ODIN_STOP_TIMEOUT_SECONDS = 10.0
LOG_TAIL_LINES = 40


class PostgresServer(Protocol):
    """A PostgreSQL server that tests may create and drop databases on."""

    @property
    def url(self) -> str: ...

    def database_url(self, dbname: str) -> str: ...


@dataclass(frozen=True)
class ExternalPostgres:
    """An existing server named by ODIN_TEST_DATABASE_URL; the suite never starts or stops it."""

    url: str

    def database_url(self, dbname: str) -> str:
        """Return `url` with its database name replaced by `dbname`."""
        parts = urllib.parse.urlsplit(self.url)
        path = "/" + urllib.parse.quote(dbname, safe="")
        return urllib.parse.urlunsplit(parts._replace(path=path))


@dataclass(frozen=True)
class TemplateDatabase:
    """The migrated database that each test's database is cloned from."""

    name: str
    # Clone with STRATEGY FILE_COPY (PostgreSQL 15 and later), which copies files instead of
    # writing each page to the WAL. It is faster for a small template, but its checkpoints
    # are cheap only with fsync off.
    copy_files: bool


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run `@pytest.mark.anyio` tests on asyncio only."""
    return "asyncio"


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """Replace pytest's `tmp_path` with a folder outside pytest's base folder, mode 711.

    When run as root, PostgreSQL servers started by tests run as another user, which must
    traverse the folders above their data directory. pytest removes that permission from its
    base folder (`/tmp/pytest-of-root`) whenever an xdist worker starts, which would lock a
    running server out of its own files.
    """
    folder = Path(tempfile.mkdtemp(prefix="odin-test-"))
    folder.chmod(0o711)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """Provide the PostgreSQL server of this test worker.

    Starts a throwaway `EmbeddedPostgres` unless ODIN_TEST_DATABASE_URL is set, and stops it
    and deletes its data at the end of the session.
    """
    external_url = os.environ.get("ODIN_TEST_DATABASE_URL")
    if external_url:
        yield ExternalPostgres(external_url)
        return

    # Not under pytest's basetemp: pytest resets that folder to mode 700 at each session,
    # which would lock out the unprivileged user that PostgreSQL runs as under root.
    data_root = Path(tempfile.mkdtemp(prefix="odin-test-postgres-"))
    data_root.chmod(0o711)
    server = EmbeddedPostgres(data_root / "data", durable=False)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_root, ignore_errors=True)


@pytest.fixture(scope="session")
def template_database(pg_server: PostgresServer) -> Iterator[TemplateDatabase]:
    """Create and migrate this worker's template database, and drop it at the end."""
    from odin_ext.migrations import migrate

    name = _unique_database_name("odin_template")
    with _admin_connection(pg_server) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        copy_files = _can_copy_files(connection)

    try:
        _run_in_new_event_loop(migrate, pg_server.database_url(name))
        yield TemplateDatabase(name, copy_files)
    finally:
        _drop_database(pg_server, name)


@pytest.fixture
def database_url(pg_server: PostgresServer, template_database: TemplateDatabase) -> Iterator[str]:
    """Provide the URL of a fresh, migrated database, dropped after the test."""
    name = _clone_template(pg_server, template_database)
    try:
        yield pg_server.database_url(name)
    finally:
        _drop_database(pg_server, name)


@pytest.fixture(scope="module")
def module_database_url(
    pg_server: PostgresServer, template_database: TemplateDatabase
) -> Iterator[str]:
    """Provide a fresh, migrated database shared by the tests of one module, dropped after it.

    Meant for tests that can tell their own rows apart (by queue, for example), so that one
    Odin server can serve the whole module.
    """
    name = _clone_template(pg_server, template_database)
    try:
        yield pg_server.database_url(name)
    finally:
        _drop_database(pg_server, name)


@pytest.fixture
def empty_database_url(pg_server: PostgresServer) -> Iterator[str]:
    """Provide the URL of a fresh database without migrations, dropped after the test."""
    name = _unique_database_name("odin_empty")
    # template0 is empty on every server, while template1 may carry local additions.
    statement = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
    with _admin_connection(pg_server) as connection:
        connection.execute(statement)

    try:
        yield pg_server.database_url(name)
    finally:
        _drop_database(pg_server, name)


@dataclass
class OdinServer:
    """A running `odin.py serve` process started by the `odin_server` fixture."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """Process ID of the Odin server."""
        return self.process.pid

    def terminate(self, timeout_seconds: float = ODIN_STOP_TIMEOUT_SECONDS) -> int:
        """Send SIGTERM, wait for the process to exit and return its exit code.

        Raises AssertionError, after killing the process, if it is still running after
        `timeout_seconds`, because a server that ignores SIGTERM is a bug.
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(
                    f"Odin (PID {self.pid}) did not exit within {timeout_seconds} s of SIGTERM; "
                    f"tail of its log:\n{self.log_tail()}"
                ) from None
        return self.process.returncode

    def kill(self) -> None:
        """Kill the process with SIGKILL and wait until it has exited."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def log_text(self) -> str:
        """Return everything the process has written to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def log_tail(self) -> str:
        """Return the last LOG_TAIL_LINES lines of the log."""
        return "\n".join(self.log_text().splitlines()[-LOG_TAIL_LINES:])

    def wait_until_ready(self) -> None:
        """Wait until `GET /readyz` returns 200; fail the test if the server exits first or
        is not ready within ODIN_READY_TIMEOUT_SECONDS."""
        _wait_until_odin_ready(self)


class OdinLauncher:
    """Starts Odin servers that log into one folder, and stops them all at teardown.

    Call it as `start(database_url, wait_ready=True, **env)`: `env` adds ODIN_* variables
    (values are converted with str()); ODIN_* variables of the test process itself are not
    passed on. With `wait_ready` it waits until `GET /readyz` returns 200 and fails the test,
    with the log tail, when the server exits or is not ready within
    ODIN_READY_TIMEOUT_SECONDS. Without it, call `OdinServer.wait_until_ready()` later, for
    example to start several servers at once.
    """

    def __init__(self, log_folder: Path) -> None:
        self._log_folder = log_folder
        self._servers: list[OdinServer] = []

    def __call__(self, database_url: str, *, wait_ready: bool = True, **env: object) -> OdinServer:
        server = _launch_odin(database_url, env, self._log_folder)
        self._servers.append(server)
        if wait_ready:
            server.wait_until_ready()
        return server

    def stop_all(self) -> None:
        """Send SIGTERM to every running server, then SIGKILL after ODIN_STOP_TIMEOUT_SECONDS."""
        # Teardown does not judge the shutdown: a test that expects a clean exit calls
        # terminate() itself. All servers get SIGTERM first so they shut down in parallel.
        running = [server for server in self._servers if server.process.poll() is None]
        for server in running:
            server.process.terminate()
        for server in running:
            try:
                server.process.wait(ODIN_STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                server.kill()


@pytest.fixture
def odin_server(tmp_path: Path) -> Iterator[OdinLauncher]:
    """Provide an `OdinLauncher`: `start(database_url, **env)` launches a real Odin server and
    waits until it is ready. Servers still running at teardown get SIGTERM, then SIGKILL."""
    launcher = OdinLauncher(tmp_path)
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="module")
def module_odin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OdinLauncher]:
    """Like `odin_server`, but the servers run until the last test of the module has ended."""
    launcher = OdinLauncher(tmp_path_factory.mktemp("odin-logs"))
    yield launcher
    launcher.stop_all()


def _launch_odin(database_url: str, extra_env: dict[str, object], log_folder: Path) -> OdinServer:
    unknown = sorted(name for name in extra_env if not name.startswith("ODIN_"))
    if unknown:
        raise ValueError(f"odin_server accepts only ODIN_* variables, got {', '.join(unknown)}")

    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("ODIN_")
    }
    environment |= {
        "ODIN_DATABASE_URL": database_url,
        "ODIN_HOST": "127.0.0.1",
        "ODIN_PORT": str(_pick_free_port()),
        "PYTHONUNBUFFERED": "1",
    }
    environment |= {name: str(value) for name, value in extra_env.items()}
    if environment["ODIN_HOST"] != "127.0.0.1":
        raise ValueError(f"test servers listen on 127.0.0.1 only, got {environment['ODIN_HOST']}")

    port = int(environment["ODIN_PORT"])
    log_path = log_folder / f"odin-{port}.log"
    with log_path.open("wb") as log_file:
        # SIGKILL on the test worker's death, so a crashed or killed worker leaves no server.
        process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "odin.py"), "serve"],
            cwd=REPO_ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=make_death_signal_preexec(signal.SIGKILL),
        )
    return OdinServer(f"http://127.0.0.1:{port}", process, log_path)


def _wait_until_odin_ready(server: OdinServer) -> None:
    deadline = time.monotonic() + ODIN_READY_TIMEOUT_SECONDS
    # trust_env=False: a proxy from the environment must never carry loopback requests.
    with httpx.Client(timeout=1.0, trust_env=False) as client:
        while True:
            exit_code = server.process.poll()
            if exit_code is not None:
                pytest.fail(
                    f"Odin exited with code {exit_code} before it was ready; tail of "
                    f"{server.log_path}:\n{server.log_tail()}",
                    pytrace=False,
                )

            try:
                if client.get(f"{server.url}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass

            if time.monotonic() > deadline:
                server.kill()
                pytest.fail(
                    f"Odin (PID {server.pid}) was not ready within {ODIN_READY_TIMEOUT_SECONDS} s; "
                    f"tail of {server.log_path}:\n{server.log_tail()}",
                    pytrace=False,
                )
            time.sleep(0.05)


def _unique_database_name(prefix: str) -> str:
    # The worker name helps to trace a leftover database to its run; the random part keeps
    # concurrent runs on a shared external server apart.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"{prefix}_{worker}_{uuid.uuid4().hex[:12]}"


def _clone_template(pg_server: PostgresServer, template_database: TemplateDatabase) -> str:
    name = _unique_database_name("odin_test")
    statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
        sql.Identifier(name), sql.Identifier(template_database.name)
    )
    if template_database.copy_files:
        statement += sql.SQL(" STRATEGY FILE_COPY")
    with _admin_connection(pg_server) as connection:
        connection.execute(statement)
    return name


def _admin_connection(pg_server: PostgresServer) -> psycopg.Connection[TupleRow]:
    # CREATE and DROP DATABASE cannot run inside a transaction block.
    return psycopg.connect(pg_server.url, autocommit=True)


def _can_copy_files(connection: psycopg.Connection[TupleRow]) -> bool:
    fsync = connection.execute("SHOW fsync").fetchone()
    return connection.info.server_version >= 150000 and fsync is not None and fsync[0] == "off"


def _drop_database(pg_server: PostgresServer, name: str) -> None:
    # FORCE ends the sessions a test left open, such as those of a killed Odin server.
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with _admin_connection(pg_server) as connection:
        connection.execute(statement)


def _run_in_new_event_loop(function: Callable[[str], Awaitable[T]], argument: str) -> T:
    # A thread of its own keeps asyncio.run() away from the event loop that anyio may keep
    # for async tests in the main thread.
    async def call() -> T:
        return await function(argument)

    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, call()).result()


def _pick_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
