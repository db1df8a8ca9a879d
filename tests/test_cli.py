"""The ``odin`` command line's client commands against a real Odin server, exit statuses included."""

from __future__ import annotations

import json
import os
import pty
import select
import socket
import subprocess
import sys
import time

import pytest

from odin_ext.cli import (
    EXIT_JOB_CANCELLED,
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from odin_ext.client import Client
from tests.conftest import REPO_ROOT, OdinLauncher, OdinServer
from tests.support import wait_until

CLI_TIMEOUT_SECONDS = 60.0
FAST_COUNTDOWN = '{"steps": 3, "interval_seconds": 0.05}'


def odin(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    """Run ``python odin.py ARGS --url URL`` and return its outcome, output decoded."""
    return subprocess.run(
        [sys.executable, "odin.py", *args, "--url", url],
        check=False,
        cwd=REPO_ROOT,
        env=_cli_environment(),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
    )


def _cli_environment() -> dict[str, str]:
    # The CLI must not pick up settings, a proxy or a URL from the test's environment.
    ignored = {
        "ODIN_URL",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    }
    return {name: value for name, value in os.environ.items() if name not in ignored}


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def server(database_url: str, odin_server: OdinLauncher) -> OdinServer:
    return odin_server(database_url)


def test_submit_wait_prints_events(server: OdinServer) -> None:
    result = odin("submit", "countdown", "--args", FAST_COUNTDOWN, "--wait", url=server.url)

    lines = result.stdout.splitlines()
    assert result.returncode == EXIT_OK, result.stderr
    assert lines[0] == f"job 1 queued: {server.url}/v1/jobs/1"
    assert [line.split()[1] for line in lines[1:]] == [
        "queued",
        "running",
        "log",
        "progress",
        "progress",
        "progress",
        "completed",
    ]
    assert lines[-1].endswith('result: {"steps": 3, "elapsed_seconds": 0.15}')
    assert "\x1b" not in result.stdout


def test_submit_without_wait_prints_job(server: OdinServer) -> None:
    plain = odin("submit", "noop", url=server.url)
    as_json = odin(
        "submit", "echo", "--args", '{"value": "hi"}', "--priority", "7", "--json", url=server.url
    )

    job = json.loads(as_json.stdout)
    assert plain.returncode == EXIT_OK
    assert plain.stdout == f"job 1 queued: {server.url}/v1/jobs/1\n"
    assert as_json.returncode == EXIT_OK
    assert job["id"] == 2
    assert job["kind"] == "echo"
    assert job["priority"] == 7


def test_submit_wait_json_prints_final_job(server: OdinServer) -> None:
    result = odin(
        "submit", "echo", "--args", '{"value": [1, 2]}', "--wait", "--json", url=server.url
    )

    job = json.loads(result.stdout)
    assert result.returncode == EXIT_OK
    assert job["state"] == "completed"
    assert job["result"] == [1, 2]


def test_submit_failing_job_exits_one(server: OdinServer) -> None:
    plain = odin("submit", "fail", "--args", '{"message": "boom"}', "--wait", url=server.url)
    as_json = odin("submit", "fail", "--wait", "--json", url=server.url)

    assert plain.returncode == EXIT_JOB_FAILED
    assert plain.stdout.splitlines()[-1].endswith("error: RuntimeError: boom")
    assert as_json.returncode == EXIT_JOB_FAILED
    assert json.loads(as_json.stdout)["state"] == "failed"


def test_submit_invalid_args_exits_two(server: OdinServer) -> None:
    rejected = odin("submit", "countdown", "--args", '{"steps": "many"}', url=server.url)
    not_json = odin("submit", "countdown", "--args", "{steps: 3}", url=server.url)
    not_object = odin("submit", "countdown", "--args", "[3]", url=server.url)
    unknown_kind = odin("submit", "no-such-kind", url=server.url)

    assert rejected.returncode == EXIT_USAGE
    assert "422" in rejected.stderr
    assert "args.steps" in rejected.stderr
    assert rejected.stdout == ""
    assert not_json.returncode == EXIT_USAGE
    assert "--args is not valid JSON" in not_json.stderr
    assert not_object.returncode == EXIT_USAGE
    assert "--args must be a JSON object" in not_object.stderr
    assert unknown_kind.returncode == EXIT_USAGE


def test_jobs_lists_filters_and_pages(server: OdinServer) -> None:
    with Client(server.url, trust_env=False) as client:
        echo_ids = [client.submit("echo", {"value": n})["id"] for n in range(3)]
        failed_id = client.submit("fail")["id"]
        for job_id in [*echo_ids, failed_id]:
            client.wait(job_id, timeout_seconds=30)

    table = odin("jobs", url=server.url)
    failed = odin("jobs", "--state", "failed", "--json", url=server.url)
    echoes = odin("jobs", "--kind", "echo", "--limit", "2", "--json", url=server.url)
    rest = odin(
        "jobs",
        "--kind",
        "echo",
        "--cursor",
        json.loads(echoes.stdout)["next_cursor"],
        "--json",
        url=server.url,
    )
    elsewhere = odin("jobs", "--queue", "no-such-queue", url=server.url)

    rows = table.stdout.splitlines()
    assert table.returncode == EXIT_OK
    assert rows[0].split() == ["ID", "STATE", "KIND", "QUEUE", "ATTEMPT", "PROGRESS", "CREATED"]
    assert [row.split()[0] for row in rows[1:]] == ["4", "3", "2", "1"]
    assert rows[1].split()[1:4] == ["failed", "fail", "default"]
    assert [job["id"] for job in json.loads(failed.stdout)["jobs"]] == [failed_id]
    assert [job["id"] for job in json.loads(echoes.stdout)["jobs"]] == echo_ids[:0:-1]
    assert [job["id"] for job in json.loads(rest.stdout)["jobs"]] == echo_ids[:1]
    assert json.loads(rest.stdout)["next_cursor"] is None
    assert elsewhere.returncode == EXIT_OK
    assert elsewhere.stdout == "no jobs match\n"


def test_jobs_invalid_limit_exits_two(server: OdinServer) -> None:
    result = odin("jobs", "--limit", "0", url=server.url)

    assert result.returncode == EXIT_USAGE
    assert "limit" in result.stderr


def test_watch_follows_job_to_its_end(server: OdinServer) -> None:
    with Client(server.url, trust_env=False) as client:
        job_id = client.submit("countdown", {"steps": 2, "interval_seconds": 0.2})["id"]

    plain = odin("watch", str(job_id), url=server.url)
    as_json = odin("watch", str(job_id), "--json", url=server.url)
    later = odin("watch", str(job_id), "--after", "4", "--json", url=server.url)

    events = json_lines(as_json.stdout)
    assert plain.returncode == EXIT_OK
    assert [line.split()[0] for line in plain.stdout.splitlines()] == ["1", "2", "3", "4", "5", "6"]
    assert as_json.returncode == EXIT_OK
    assert [event["seq"] for event in events] == [1, 2, 3, 4, 5, 6]
    assert events[-1]["type"] == "completed"
    assert [event["seq"] for event in json_lines(later.stdout)] == [5, 6]


def test_watch_and_cancel_exit_with_outcome(server: OdinServer) -> None:
    with Client(server.url, trust_env=False) as client:
        job_id = client.submit("sleep", {"seconds": 60})["id"]
        wait_until(lambda: client.get(job_id)["state"] == "running", 20, f"job {job_id} is running")

        watcher = subprocess.Popen(
            [sys.executable, "odin.py", "watch", str(job_id), "--url", server.url],
            cwd=REPO_ROOT,
            env=_cli_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # The watcher has its stream open once it has printed the job's running event.
            assert watcher.stdout is not None
            first_lines = [watcher.stdout.readline(), watcher.stdout.readline()]
            cancelled = odin("cancel", str(job_id), url=server.url)
            watch_output, _ = watcher.communicate(timeout=CLI_TIMEOUT_SECONDS)
        finally:
            watcher.kill()
            watcher.wait()
        cancelled_again = odin("cancel", str(job_id), "--json", url=server.url)
        retried = odin("retry", str(job_id), "--json", url=server.url)
        client.cancel(job_id)

    assert [line.split()[1] for line in first_lines] == ["queued", "running"]
    assert cancelled.returncode == EXIT_OK
    assert cancelled.stdout == f"job {job_id} cancelled\n"
    assert watcher.returncode == EXIT_JOB_CANCELLED
    assert watch_output.splitlines()[-1].split()[1] == "cancelled"
    assert cancelled_again.returncode == EXIT_USAGE
    assert "409" in cancelled_again.stderr
    assert retried.returncode == EXIT_OK
    assert json.loads(retried.stdout)["state"] in {"queued", "running"}


def test_watch_follows_retried_job(server: OdinServer) -> None:
    with Client(server.url, trust_env=False) as client:
        job_id = client.wait(client.submit("fail")["id"], timeout_seconds=30)["id"]
        client.retry(job_id)
        client.wait(job_id, timeout_seconds=30)

    result = odin("watch", str(job_id), "--json", url=server.url)

    events = json_lines(result.stdout)
    assert result.returncode == EXIT_JOB_FAILED
    assert [event["seq"] for event in events] == [1, 2, 3, 4, 5, 6]
    assert [event["type"] for event in events] == ["queued", "running", "failed"] * 2


def test_watch_timeout_exits_five(server: OdinServer) -> None:
    with Client(server.url, trust_env=False) as client:
        job_id = client.submit("sleep", {"seconds": 60})["id"]

        started = time.monotonic()
        watched = odin("watch", str(job_id), "--timeout", "1", url=server.url)
        elapsed = time.monotonic() - started
        waited = odin(
            "submit",
            "sleep",
            "--args",
            '{"seconds": 60}',
            "--wait",
            "--json",
            "--timeout",
            "0.5",
            url=server.url,
        )
        client.cancel(job_id)
        client.cancel(job_id + 1)

    assert watched.returncode == EXIT_TIMEOUT
    assert f"job {job_id} did not finish within 1 s" in watched.stderr
    assert elapsed < CLI_TIMEOUT_SECONDS
    assert waited.returncode == EXIT_TIMEOUT
    assert waited.stdout == ""


def test_unknown_job_exits_two(server: OdinServer) -> None:
    for command in ("watch", "cancel", "retry"):
        result = odin(command, "999", url=server.url)

        assert result.returncode == EXIT_USAGE, command
        assert "404" in result.stderr, command


def test_api_key_from_option_or_environment(database_url: str, odin_server: OdinLauncher) -> None:
    key = "cli-test-key-0123456789"
    server = odin_server(database_url, ODIN_DEV_API_KEYS=json.dumps([key]))

    anonymous = odin("jobs", url=server.url)
    with_option = odin("submit", "noop", "--wait", "--api-key", key, url=server.url)
    from_environment = subprocess.run(
        [sys.executable, "odin.py", "jobs", "--json", "--url", server.url],
        check=False,
        cwd=REPO_ROOT,
        env=_cli_environment() | {"ODIN_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
    )

    assert anonymous.returncode == EXIT_USAGE
    assert "401" in anonymous.stderr
    assert with_option.returncode == EXIT_OK, with_option.stderr
    assert from_environment.returncode == EXIT_OK, from_environment.stderr
    assert len(json.loads(from_environment.stdout)["jobs"]) == 1


def test_unreachable_server_exits_four() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"

    result = odin("jobs", url=url)

    assert result.returncode == EXIT_UNREACHABLE
    assert result.stderr.startswith(f"odin: cannot reach Odin at {url}")


def test_submit_on_terminal_draws_progress_bar(server: OdinServer) -> None:
    # A pseudo-terminal as stdout makes the CLI draw its progress bar.
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "odin.py",
            "submit",
            "countdown",
            "--args",
            FAST_COUNTDOWN,
            "--wait",
            "--url",
            server.url,
        ],
        cwd=REPO_ROOT,
        env=_cli_environment() | {"TERM": "xterm", "COLUMNS": "100"},
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=subprocess.PIPE,
    )
    os.close(terminal)
    try:
        output = _read_until_closed(controller)
        process.wait(CLI_TIMEOUT_SECONDS)
    finally:
        process.kill()
        process.wait()
        os.close(controller)

    text = output.decode("utf-8", errors="replace")
    assert process.returncode == EXIT_OK
    assert "\r\x1b[K" in text
    assert " 33%" in text
    assert "100%" in text
    assert 'result: {"steps": 3, "elapsed_seconds": 0.15}' in text


def _read_until_closed(fd: int) -> bytes:
    chunks = []
    deadline = time.monotonic() + CLI_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO once the child has closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)
