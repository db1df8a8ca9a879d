"""Tests of EmbeddedPostgres against real PostgreSQL servers."""

from __future__ import annotations

import logging
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from odin_ext import embedded
from odin_ext.embedded import EmbeddedPostgres, EmbeddedPostgresError
from tests.support import wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent

# Stands in for `odin serve`: starts a server, reports the postmaster PID, then idles until
# the test kills it.
PARENT_SCRIPT = """
import sys, time
from pathlib import Path
from odin_ext.embedded import EmbeddedPostgres

server = EmbeddedPostgres(Path(sys.argv[1]), durable=False)
server.start()
print(server.pid, flush=True)
time.sleep(120)
"""


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., EmbeddedPostgres]]:
    """Provide `make(data_dir=None, **kwargs)`, which returns an EmbeddedPostgres (not started)
    on `data_dir`, by default `tmp_path / "data"`. Teardown stops every server it made."""
    servers: list[EmbeddedPostgres] = []

    def make(data_dir: Path | None = None, **kwargs: object) -> EmbeddedPostgres:
        server = EmbeddedPostgres(data_dir or tmp_path / "data", **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield make

    for server in servers:
        server.stop()


def setting(url: str, name: str) -> str:
    with psycopg.connect(url) as connection:
        row = connection.execute("SELECT current_setting(%s)", [name]).fetchone()
    assert row is not None
    return str(row[0])


def postmaster_running(pid: int) -> bool:
    """Return whether `pid` is a postgres process that has not exited (zombies have)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        command_name = Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return False
    state = stat_line.rsplit(")", 1)[1].split()[0]
    return command_name == "postgres" and state != "Z"


def test_start_serves_loopback_only(make_server: Callable[..., EmbeddedPostgres]) -> None:
    server = make_server(durable=False, max_connections=37)

    server.start()

    assert server.port != 0
    assert server.url == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
    assert server.database_url("jobs db") == (
        f"postgresql://postgres@127.0.0.1:{server.port}/jobs%20db"
    )
    assert setting(server.url, "listen_addresses") == "127.0.0.1"
    assert setting(server.url, "unix_socket_directories") == ""
    assert setting(server.url, "max_connections") == "37"
    assert setting(server.url, "fsync") == "off"
    assert setting(server.url, "synchronous_commit") == "off"
    assert setting(server.url, "full_page_writes") == "off"
    assert server.log_path.is_file()
    assert server.log_path.parent == server.data_dir.parent


def test_durable_server_keeps_safe_settings(make_server: Callable[..., EmbeddedPostgres]) -> None:
    server = make_server()

    server.start()

    assert setting(server.url, "fsync") == "on"
    assert setting(server.url, "synchronous_commit") == "on"
    assert setting(server.url, "full_page_writes") == "on"


def test_stop_ends_server_and_is_idempotent(make_server: Callable[..., EmbeddedPostgres]) -> None:
    server = make_server(durable=False)
    server.start()
    pid = server.pid
    assert pid is not None

    server.stop()
    server.stop()

    assert server.pid is None
    assert not postmaster_running(pid)
    assert "received fast shutdown request" in server.log_path.read_text()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.url, connect_timeout=2)


def test_url_before_start_raises(make_server: Callable[..., EmbeddedPostgres]) -> None:
    server = make_server()

    with pytest.raises(EmbeddedPostgresError, match="call start"):
        _ = server.url


def test_restart_keeps_port_and_data(make_server: Callable[..., EmbeddedPostgres]) -> None:
    server = make_server(durable=False)
    server.start()
    port = server.port
    with psycopg.connect(server.url) as connection:
        connection.execute("CREATE TABLE kept (id int)")
        connection.execute("INSERT INTO kept VALUES (7)")

    server.restart()

    assert server.port == port
    with psycopg.connect(server.url) as connection:
        assert connection.execute("SELECT id FROM kept").fetchall() == [(7,)]


def test_new_instance_reuses_data_dir(make_server: Callable[..., EmbeddedPostgres]) -> None:
    with make_server(durable=False) as first, psycopg.connect(first.url) as connection:
        connection.execute("CREATE TABLE kept (id int)")
        connection.execute("INSERT INTO kept VALUES (7)")

    second = make_server(first.data_dir, durable=False)
    second.start()

    with psycopg.connect(second.url) as connection:
        assert connection.execute("SELECT id FROM kept").fetchall() == [(7,)]


def test_start_after_kill_recovers(make_server: Callable[..., EmbeddedPostgres]) -> None:
    server = make_server(durable=False)
    server.start()
    with psycopg.connect(server.url) as connection:
        # With synchronous_commit off a commit may still be in the WAL buffers when the
        # server dies, so this session waits until its commits are written.
        connection.execute("SET synchronous_commit = on")
        connection.execute("CREATE TABLE kept (id int)")
        connection.execute("INSERT INTO kept VALUES (7)")
    pid = server.pid
    assert pid is not None

    server.kill()

    assert server.pid is None
    assert not postmaster_running(pid)
    assert (server.data_dir / "postmaster.pid").exists()

    server.start()

    with psycopg.connect(server.url) as connection:
        assert connection.execute("SELECT id FROM kept").fetchall() == [(7,)]


def test_killed_parent_leaves_no_orphan(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT, str(data_dir)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert parent.stdout is not None
        first_line = parent.stdout.readline()
        if not first_line:
            parent.wait()
            assert parent.stderr is not None
            pytest.fail(f"the parent process failed:\n{parent.stderr.read().decode()}")
        postmaster_pid = int(first_line)
        assert postmaster_running(postmaster_pid)
    finally:
        parent.kill()
        parent.wait()

    wait_until(
        lambda: not postmaster_running(postmaster_pid),
        10,
        f"postmaster {postmaster_pid} exits after its parent was killed",
    )
    log_text = (tmp_path / "data.log").read_text()
    assert "received fast shutdown request" in log_text

    # The next owner of the data directory starts, even if the old postmaster is not reaped.
    with EmbeddedPostgres(data_dir, durable=False) as server:
        assert setting(server.url, "data_directory") == str(data_dir.resolve())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_runs_server_unprivileged(
    tmp_path: Path,
    make_server: Callable[..., EmbeddedPostgres],
    caplog: pytest.LogCaptureFixture,
) -> None:
    private_folder = tmp_path / "private"
    private_folder.mkdir(mode=0o700)
    server = make_server(private_folder / "project" / "data", durable=False)

    with caplog.at_level(logging.WARNING, logger=embedded.__name__):
        server.start()

    status_lines = Path(f"/proc/{server.pid}/status").read_text().splitlines()
    real_uid = next(line for line in status_lines if line.startswith("Uid:")).split()[1]
    assert real_uid != "0"
    assert server.data_dir.stat().st_uid == int(real_uid)
    mode = private_folder.stat().st_mode
    assert mode & stat.S_IXOTH
    assert not mode & stat.S_IROTH
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert any(str(private_folder) in record.getMessage() for record in warnings)


def test_start_failure_shows_log_tail(make_server: Callable[..., EmbeddedPostgres]) -> None:
    with make_server(durable=False) as server:
        pass
    with (server.data_dir / "postgresql.auto.conf").open("a") as config:
        config.write("odin_no_such_setting = 1\n")

    with pytest.raises(EmbeddedPostgresError, match="odin_no_such_setting"):
        server.start()

    assert server.pid is None


def test_port_in_use_raises(make_server: Callable[..., EmbeddedPostgres]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        server = make_server(port=port, durable=False)

        with pytest.raises(EmbeddedPostgresError, match=f"port {port}"):
            server.start()

    assert server.pid is None


def test_foreign_data_dir_rejected(make_server: Callable[..., EmbeddedPostgres]) -> None:
    server = make_server()
    server.data_dir.mkdir()
    (server.data_dir / "notes.txt").write_text("not a database")

    with pytest.raises(EmbeddedPostgresError, match="not a PostgreSQL data directory"):
        server.start()

    assert sorted(path.name for path in server.data_dir.iterdir()) == ["notes.txt"]


def test_data_dir_in_use_rejected(
    make_server: Callable[..., EmbeddedPostgres], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_server(durable=False)
    first.start()
    second = make_server(first.data_dir, durable=False)
    monkeypatch.setattr(embedded, "PREVIOUS_SERVER_EXIT_TIMEOUT_SECONDS", 0.2)

    with pytest.raises(EmbeddedPostgresError, match=f"in use by PostgreSQL server PID {first.pid}"):
        second.start()

    assert setting(first.url, "data_directory") == str(first.data_dir)


def test_start_off_main_thread_raises(make_server: Callable[..., EmbeddedPostgres]) -> None:
    server = make_server()
    errors: list[BaseException] = []

    def start() -> None:
        try:
            server.start()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()

    assert len(errors) == 1
    assert isinstance(errors[0], EmbeddedPostgresError)
    assert "main thread" in str(errors[0])
    assert server.pid is None


def test_constructor_rejects_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="port"):
        EmbeddedPostgres(tmp_path, port=70000)
    with pytest.raises(ValueError, match="max_connections"):
        EmbeddedPostgres(tmp_path, max_connections=0)
