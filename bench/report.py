"""Output of a benchmark script: parameters, progress lines, result lines and a summary.

Every script prints the same shapes, so runs can be compared by eye and parsed:

- ``# name: value`` lines with the parameters, first;
- ``.. text`` progress lines on stderr while it runs;
- ``RESULT key value unit`` lines, one per measured figure, on stdout;
- a final summary, also written as JSON with ``--json PATH``, which ``bench.run_all`` reads.

``run_script`` runs a script's async main and turns Ctrl-C into a clean stop: the main
coroutine is cancelled, so its ``finally`` blocks stop the servers it started, then the
figures measured so far are printed with the exit status 130.
"""

from __future__ import annotations

import asyncio
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

EXIT_INTERRUPTED = 130


class Report:
    """The parameters and figures of one script run."""

    def __init__(self, script: str, parameters: dict[str, Any]) -> None:
        self.script = script
        self.parameters = parameters
        self.results: dict[str, Any] = {}
        self.notes: list[str] = []
        self._started = time.monotonic()

    def echo_parameters(self) -> None:
        """Print the parameters, the machine and the versions, one ``# key: value`` a line."""
        print(f"# bench.{self.script}", flush=True)
        for key, value in {**self.parameters, **machine_facts()}.items():
            print(f"# {key}: {value}", flush=True)

    def progress(self, text: str) -> None:
        elapsed = time.monotonic() - self._started
        print(f".. {elapsed:7.1f}s {text}", file=sys.stderr, flush=True)

    def result(self, key: str, value: Any, unit: str = "") -> None:
        """Record one figure and print it as a ``RESULT`` line."""
        self.results[key] = value
        text = f"{value:.6g}" if isinstance(value, float) else json.dumps(value)
        print(f"RESULT {key} {text} {unit}".rstrip(), flush=True)

    def note(self, text: str) -> None:
        """Record a sentence for the summary, such as a caveat about the machine."""
        self.notes.append(text)
        print(f"NOTE {text}", flush=True)

    def summary(self, *, interrupted: bool = False) -> dict[str, Any]:
        return {
            "script": self.script,
            "interrupted": interrupted,
            "elapsed_seconds": round(time.monotonic() - self._started, 1),
            "parameters": self.parameters,
            "machine": machine_facts(),
            "results": self.results,
            "notes": self.notes,
        }

    def print_summary(self, *, interrupted: bool = False) -> None:
        summary = self.summary(interrupted=interrupted)
        state = "interrupted" if interrupted else "done"
        print(f"== bench.{self.script} {state} in {summary['elapsed_seconds']}s", flush=True)
        for key, value in self.results.items():
            print(f"   {key}: {json.dumps(value)}", flush=True)

    def write_json(self, path: Path | None, *, interrupted: bool = False) -> None:
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.summary(interrupted=interrupted), indent=2) + "\n")


def machine_facts() -> dict[str, Any]:
    """Return what the figures depend on: CPU count and model, memory, Python version."""
    import os

    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """Return p50, p95, p99 and max of ``values`` (nearest rank), or None for an empty list."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "count": 0}
    ordered = sorted(values)

    def rank(fraction: float) -> float:
        index = max(0, math.ceil(fraction * len(ordered)) - 1)
        return round(ordered[index], 3)

    return {
        "p50": rank(0.50),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "max": round(ordered[-1], 3),
        "count": len(ordered),
    }


def run_script(
    report: Report, main: Callable[[], Coroutine[Any, Any, None]], json_path: Path | None
) -> int:
    """Run ``main`` on an event loop; return the exit status (130 after Ctrl-C)."""
    report.echo_parameters()
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("interrupted: servers stopped, figures measured so far follow", flush=True)
        report.print_summary(interrupted=True)
        report.write_json(json_path, interrupted=True)
        return EXIT_INTERRUPTED
    report.print_summary()
    report.write_json(json_path)
    return 0
