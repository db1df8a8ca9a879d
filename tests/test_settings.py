"""Settings read by `odin.py serve`, and the `.env.example` that documents them.

A bad value must stop start-up with a message that names the variable, what was expected and
what was received. `.env.example` must list every setting with its default.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from odin_ext.settings import ENV_PREFIX, Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_EXAMPLE = REPO_ROOT / ".env.example"
EXIT_USAGE = 2
START_TIMEOUT_SECONDS = 20

_EXAMPLE_LINE = re.compile(rf"^#\s*({ENV_PREFIX}[A-Z0-9_]+)=(.*)$")


@dataclass(frozen=True)
class BadSetting:
    """Environment that must stop Odin, and what the error must name."""

    env: dict[str, str]
    variable: str
    expected: str
    # The received value as the message must show it; None for a secret it must not show.
    received: str | None


BAD_SETTINGS = {
    "port not a number": BadSetting({"ODIN_PORT": "abc"}, "ODIN_PORT", "integer", "abc"),
    "port out of range": BadSetting({"ODIN_PORT": "70000"}, "ODIN_PORT", "65535", "70000"),
    "no worker slots": BadSetting(
        {"ODIN_WORKER_CONCURRENCY": "0"},
        "ODIN_WORKER_CONCURRENCY",
        "greater than or equal to 1",
        "0",
    ),
    "queues not JSON": BadSetting({"ODIN_QUEUES": "notjson"}, "ODIN_QUEUES", "JSON", "notjson"),
    "queue name invalid": BadSetting(
        {"ODIN_QUEUES": '["two words"]'}, "ODIN_QUEUES", "pattern", "two words"
    ),
    "log level unknown": BadSetting(
        {"ODIN_LOG_LEVEL": "loud"}, "ODIN_LOG_LEVEL", "DEBUG, INFO, WARNING", "loud"
    ),
    "database URL of another scheme": BadSetting(
        {"ODIN_DATABASE_URL": "mysql://odin:hunter2@db/odin"},
        "ODIN_DATABASE_URL",
        "postgresql://",
        None,
    ),
    "kind module not a module name": BadSetting(
        {"ODIN_KIND_MODULES": '["my jobs"]'}, "ODIN_KIND_MODULES", "module", "my jobs"
    ),
    "poll interval zero": BadSetting(
        {"ODIN_POLL_INTERVAL_SECONDS": "0"}, "ODIN_POLL_INTERVAL_SECONDS", "greater than 0", "0"
    ),
    "poll-only heartbeat timeout too short": BadSetting(
        {
            "ODIN_POLL_ONLY": "true",
            "ODIN_HEARTBEAT_INTERVAL_SECONDS": "5",
            "ODIN_HEARTBEAT_TIMEOUT_SECONDS": "6",
        },
        "ODIN_HEARTBEAT_TIMEOUT_SECONDS",
        "three times",
        "6",
    ),
    "pool minimum above maximum": BadSetting(
        {"ODIN_POOL_MIN_SIZE": "20", "ODIN_POOL_MAX_SIZE": "5"},
        "ODIN_POOL_MIN_SIZE",
        "ODIN_POOL_MAX_SIZE",
        "20",
    ),
}


def run_serve(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `odin.py serve` with only `env` among the ODIN_* variables, in `cwd`."""
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith(ENV_PREFIX)
    }
    # A valid database URL, so that no test falls back to starting an embedded PostgreSQL;
    # every case fails before connecting.
    environment["ODIN_DATABASE_URL"] = "postgresql://odin@127.0.0.1:1/odin"
    environment |= env
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "odin.py"), "serve"],
        cwd=cwd,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_SECONDS,
        check=False,
    )


@pytest.mark.parametrize("case", BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_bad_setting_stops_start_up(tmp_path: Path, case: BadSetting) -> None:
    # tmp_path as the working directory keeps a developer's .env out of the test.
    finished = run_serve(case.env, tmp_path)

    assert finished.returncode == EXIT_USAGE, finished.stderr
    assert "Traceback" not in finished.stderr
    error_line = next(
        (line for line in finished.stderr.splitlines() if case.variable in line), None
    )
    assert error_line is not None, f"{case.variable} not named in: {finished.stderr}"
    assert case.expected in error_line
    if case.received is not None:
        assert case.received in error_line
    else:
        for value in case.env.values():
            assert value not in finished.stderr


def test_env_file_settings_are_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("ODIN_PORT=not-a-port\n")

    finished = run_serve({}, tmp_path)

    assert finished.returncode == EXIT_USAGE, finished.stderr
    assert "ODIN_PORT" in finished.stderr
    assert "not-a-port" in finished.stderr


def _example_values() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = _EXAMPLE_LINE.match(line)
        if match:
            values[match.group(1)] = match.group(2)
    return values


def test_env_example_lists_every_setting() -> None:
    listed = set(_example_values())
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}

    missing = sorted(fields - listed)
    unknown = sorted(listed - fields)
    assert not missing, f"settings missing from .env.example: {', '.join(missing)}"
    assert not unknown, f".env.example lists unknown settings: {', '.join(unknown)}"


@pytest.mark.parametrize("variable", sorted(_example_values()))
def test_env_example_shows_defaults(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    field = variable.removeprefix(ENV_PREFIX).lower()
    if field not in Settings.model_fields:
        pytest.skip(f"{variable} is not a setting (test_env_example_lists_every_setting fails)")
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.setenv(variable, _example_values()[variable])

    from_example = Settings(_env_file=None)  # type: ignore[call-arg]

    default = Settings.model_fields[field].get_default(call_default_factory=True)
    assert getattr(from_example, field) == default
