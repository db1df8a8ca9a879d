"""``OdinReplica``: one ``odin.py serve`` process on 127.0.0.1, started and stopped by PID.

A replica runs in a session of its own, so a Ctrl-C in the terminal reaches the benchmark
script and not the replica. The script stops its replicas in its ``finally`` blocks. The
kernel also sends a replica SIGTERM when the script's main thread ends, so a killed script
leaves no replica behind. Each replica's output goes to ``<log_dir>/<name>.log``, and it runs
in ``log_dir``, so a ``.env`` file in the repository does not change its settings.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from odin_ext.embedded import make_death_signal_preexec

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class OdinReplica:
    """An Odin process serving the API, the streams and (unless turned off) a worker pool."""

    def __init__(
        self,
        database_url: str,
        log_dir: Path,
        *,
        name: str = "odin",
        settings: dict[str, str] | None = None,
    ) -> None:
        self.database_url = database_url
        self.name = name
        self.port = free_port()
        self.log_path = log_dir / f"{name}.log"
        self._settings = settings or {}
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError(f"replica {self.name} is not running")
        return self._process.pid

    def start(self) -> None:
        """Start the process and wait until ``/readyz`` returns 200; raise if it does not."""
        environment = {key: value for key, value in os.environ.items()
                       if not key.startswith("ODIN_")}
        environment.update({
            "ODIN_DATABASE_URL": self.database_url,
            "ODIN_HOST": "127.0.0.1",
            "ODIN_PORT": str(self.port),
            "ODIN_SHUTDOWN_GRACE_SECONDS": "2",
            **self._settings,
        })
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, str(REPO_ROOT / "odin.py"), "serve"],
                cwd=self.log_path.parent,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=make_death_signal_preexec(signal.SIGTERM),
            )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._process is not None and self._process.poll() is not None:
                    raise RuntimeError(
                        f"replica {self.name} exited with code {self._process.returncode} "
                        f"while starting; see {self.log_path}"
                    )
                try:
                    if client.get(f"{self.url}/readyz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"replica {self.name} was not ready within {READY_TIMEOUT_SECONDS:.0f} s; "
            f"see {self.log_path}"
        )

    def rss_bytes(self) -> int:
        """Return the resident memory of the replica process, in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS line for PID {self.pid}")

    def stop(self) -> None:
        """Send SIGTERM and wait; SIGKILL the process if it is still running after 15 s."""
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Replicas:
    """Several replicas on one database, started in order and all stopped on exit."""

    def __init__(self, replicas: list[OdinReplica]) -> None:
        self.replicas = replicas

    def __enter__(self) -> list[OdinReplica]:
        try:
            for replica in self.replicas:
                replica.start()
        except BaseException:
            self.stop()
            raise
        return self.replicas

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()
