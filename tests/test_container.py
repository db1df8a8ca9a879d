"""The container image, built from the Containerfile and run with podman.

One container runs in development mode, with the embedded database. Two replica containers
share a PostgreSQL: they stream each other's jobs and pass their health check, and when one
of them is stopped mid-job, the other finishes the job.

Containers use the host's network and bind 127.0.0.1 on free ports, so they reach the test
PostgreSQL on 127.0.0.1 and nothing else can reach them. Skipped when podman is missing. Run
alone with `make test-container` (pytest -m container).
"""

from __future__ import annotations

import fcntl
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest

from tests.api_keys import api_keys_setting, make_key, make_signing_secret, signing_keys_setting
from tests.database import job_events
from tests.sse import assert_complete_sequence, read_stream
from tests.support import wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/odin:test"
BUILD_TIMEOUT_SECONDS = 600
READY_TIMEOUT_SECONDS = 90.0
GRACE_SECONDS = 2.0
# Time that `podman stop` may take beyond the grace period: draining, closing the pool, exit.
STOP_OVERHEAD_SECONDS = 3.0
# Mounted into the build (never copied into the image) so that pip trusts the machine's
# certificate authorities, such as those of a package proxy.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_LOCK = Path("/tmp/odin-test-image-build.lock")

ADMIN = make_key("admin", "admin")

pytestmark = [
    pytest.mark.container,
    pytest.mark.slow,
    pytest.mark.timeout(BUILD_TIMEOUT_SECONDS + 300),
    pytest.mark.skipif(
        shutil.which("podman") is None,
        reason="podman is not installed; install it to build and run the image (make test-container)",
    ),
]


def podman(
    *arguments: str, timeout: float = 60.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run one podman command and return its result; fail the test on a non-zero exit."""
    finished = subprocess.run(
        ["podman", *arguments], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and finished.returncode != 0:
        pytest.fail(
            f"podman {' '.join(arguments)} exited with {finished.returncode}:\n"
            f"{finished.stdout[-2000:]}\n{finished.stderr[-2000:]}",
            pytrace=False,
        )
    return finished


@pytest.fixture(scope="module")
def image() -> str:
    """Build the image once per test worker; concurrent builds wait for each other."""
    command = ["build", "--format", "docker", "-t", IMAGE, "-f", "Containerfile"]
    if HOST_CA_BUNDLE.is_file():
        command += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    with BUILD_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        podman(*command, str(REPO_ROOT), timeout=BUILD_TIMEOUT_SECONDS)
    return IMAGE


class Container:
    """A container started by a test, removed at teardown by the name the test gave it."""

    def __init__(self, image: str, role: str, env: dict[str, object]) -> None:
        self.name = f"odin-test-{uuid.uuid4().hex[:10]}-{role}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {
            "ODIN_HOST": "127.0.0.1",
            "ODIN_PORT": self.port,
            "ODIN_SHUTDOWN_GRACE_SECONDS": GRACE_SECONDS,
            **env,
        }
        options = [f"--env={name}={value}" for name, value in environment.items()]
        podman("run", "--detach", "--name", self.name, "--network=host", *options, image)

    def logs(self) -> str:
        finished = podman("logs", self.name, check=False)
        return finished.stdout + finished.stderr

    def owner(self) -> str:
        """The owner identity of the Odin process, from its odin_started log record."""
        for line in self.logs().splitlines():
            if '"odin_started"' in line:
                return str(json.loads(line)["owner"])
        raise AssertionError(f"{self.name} logged no odin_started record:\n{self.logs()[-3000:]}")

    def wait_until_ready(self) -> None:
        def ready() -> bool:
            state = podman("inspect", self.name, "--format", "{{.State.Status}}").stdout.strip()
            if state == "exited":
                raise AssertionError(
                    f"{self.name} exited before it was ready:\n{self.logs()[-3000:]}"
                )
            try:
                return (
                    httpx.get(f"{self.url}/readyz", timeout=1.0, trust_env=False).status_code == 200
                )
            except httpx.TransportError:
                return False

        wait_until(ready, READY_TIMEOUT_SECONDS, f"container {self.name} is ready")

    def exit_code(self) -> int:
        return int(podman("inspect", self.name, "--format", "{{.State.ExitCode}}").stdout.strip())

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


@pytest.fixture
def containers(image: str) -> Iterator[list[Container]]:
    """A list that tests add their containers to; every one is removed at teardown."""
    started: list[Container] = []
    yield started
    for container in started:
        container.remove()


def start(containers: list[Container], image: str, role: str, **env: object) -> Container:
    container = Container(image, role, env)
    containers.append(container)
    return container


def post_job(url: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(
        f"{url}/v1/jobs", json=body, headers=ADMIN.headers, timeout=10.0, trust_env=False
    )
    assert answer.status_code == 202, answer.text
    job: dict[str, Any] = answer.json()
    return job


def get_job(url: str, job_id: int) -> dict[str, Any]:
    answer = httpx.get(
        f"{url}/v1/jobs/{job_id}", headers=ADMIN.headers, timeout=10.0, trust_env=False
    )
    assert answer.status_code == 200, answer.text
    job: dict[str, Any] = answer.json()
    return job


def wait_for_job_state(
    url: str, job_id: int, states: set[str], timeout_seconds: float
) -> dict[str, Any]:
    def job_in_state() -> dict[str, Any] | None:
        job = get_job(url, job_id)
        return job if job["state"] in states else None

    return wait_until(
        job_in_state, timeout_seconds, f"job {job_id} on {url} is {' or '.join(states)}"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def job_owner(database_url: str, job_id: int) -> str | None:
    with psycopg.connect(database_url) as connection:
        row = connection.execute("SELECT owner FROM odin.jobs WHERE id = %s", (job_id,)).fetchone()
    return row[0] if row else None


def test_dev_container_runs_jobs_on_embedded_database(
    image: str, containers: list[Container]
) -> None:
    dev = start(containers, image, "dev")
    dev.wait_until_ready()

    job = post_job(dev.url, {"kind": "echo", "args": {"value": "dev"}})
    done = wait_for_job_state(dev.url, job["id"], {"completed", "failed"}, 20.0)

    assert done["state"] == "completed"
    assert done["result"] == "dev"
    assert '"embedded_db_starting"' in dev.logs()
    assert podman("healthcheck", "run", dev.name, check=False).returncode == 0
    podman("stop", "--time", "20", dev.name)
    assert dev.exit_code() == 0


def test_replicas_share_streams_and_hand_over_jobs(
    image: str, containers: list[Container], database_url: str
) -> None:
    shared = {
        "ODIN_DATABASE_URL": database_url,
        "ODIN_API_KEYS": api_keys_setting(ADMIN),
        "ODIN_STREAM_SIGNING_KEYS": signing_keys_setting(make_signing_secret()),
    }
    first = start(containers, image, "a", **shared)
    second = start(containers, image, "b", **shared)
    first.wait_until_ready()
    second.wait_until_ready()

    # A job submitted to one replica, followed on the other with the signed events_url.
    job = post_job(first.url, {"kind": "countdown", "args": {"steps": 3, "interval_seconds": 0.2}})
    events_url = job["events_url"].replace(first.url, second.url)
    record = anyio.run(read_stream_without_key, events_url)
    assert record.status_code == 200
    assert record.types[-1] == "completed"
    assert_complete_sequence(record.events)

    for container in (first, second):
        assert podman("healthcheck", "run", container.name, check=False).returncode == 0

    # Stop the replica that runs a long job: it exits 0 within the grace period and the
    # other replica finishes the job.
    long_job = post_job(first.url, {"kind": "sleep", "args": {"seconds": 4}, "max_attempts": 3})
    owner = wait_until(
        lambda: job_owner(database_url, long_job["id"]), 10.0, f"job {long_job['id']} is running"
    )
    running_on, survivor = (first, second) if owner == first.owner() else (second, first)
    assert owner == running_on.owner()

    stopping = time.monotonic()
    podman("stop", "--time", "30", running_on.name)
    stop_seconds = time.monotonic() - stopping

    assert running_on.exit_code() == 0, running_on.logs()[-3000:]
    assert stop_seconds < GRACE_SECONDS + STOP_OVERHEAD_SECONDS
    finished = wait_for_job_state(survivor.url, long_job["id"], {"completed", "failed"}, 20.0)
    assert finished["state"] == "completed"
    assert finished["attempt"] == 2
    assert "interrupted" in [event["type"] for event in job_events(database_url, long_job["id"])]
    assert job_owner(database_url, long_job["id"]) is None


async def read_stream_without_key(url: str) -> Any:
    async with httpx.AsyncClient(trust_env=False) as browser:
        return await read_stream(browser, url, timeout_seconds=20.0)
