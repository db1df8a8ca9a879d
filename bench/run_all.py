"""Run the standard benchmark set against one throwaway PostgreSQL; write RESULTS.md and a chart.

Starts one ``EmbeddedPostgres`` with ``durable=True`` (fsync and synchronous commit on, as in
production, so commit costs count as they would there), runs every script with its standard
parameters against it, one after the other, and renders ``bench/RESULTS.md`` and
``bench/results.png``. Each script's output goes to the terminal and to
``bench/results/<script>.out``, its summary to ``bench/results/<script>.json``, and replica
logs and flame graphs to ``bench/results/``. Takes about 12 minutes on 2 cores.

Ctrl-C stops the running script cleanly (it gets the signal too), then the server.

    python -m bench.run_all
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import summary
from bench.postgres import BenchPostgres
from bench.report import EXIT_INTERRUPTED

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Chosen so the whole set takes about 12 minutes on a 2-core machine.
STANDARD_SET: list[tuple[str, list[str]]] = [
    ("enqueue", ["--seconds", "4"]),
    ("drain", ["--jobs", "20000", "--concurrency", "10", "50", "100", "200"]),
    ("latency", ["--saturation-seconds", "8", "--seconds", "8"]),
    ("fanout", ["--subscribers", "10000", "--jobs", "100", "--steps", "3"]),
    ("scaleout", ["--jobs", "20000", "--seconds", "6"]),
    ("compare", ["--jobs", "20000", "--procrastinate-jobs", "10000", "--pgbench-rows", "60000"]),
    ("profile", ["--jobs", "40000", "--seconds", "10"]),
]


def run_script(name: str, arguments: list[str], server: BenchPostgres) -> int:
    """Run ``python -m bench.NAME`` against ``url``, echoing and saving its output."""
    command = [sys.executable, "-m", f"bench.{name}", *arguments, "--database-url", server.url,
               "--json", str(RESULTS_DIR / f"{name}.json"), "--log-dir", str(RESULTS_DIR / "logs")]
    if name == "profile" and server.log_path is not None:
        command += ["--out", str(RESULTS_DIR), "--server-log", str(server.log_path)]
    print(f"\n=== bench.{name}: {' '.join(arguments)}", flush=True)
    with (RESULTS_DIR / f"{name}.out").open("w") as saved:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   cwd=Path(__file__).resolve().parent.parent)
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            saved.write(line)
        return process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=[name for name, _ in STANDARD_SET],
                        help="run only these scripts (default: all)")
    args = parser.parse_args(argv)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    info = {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": round(os.getloadavg()[0], 2),
        "revision": summary.odin_revision(),
    }
    failed = []
    try:
        with BenchPostgres(None, durable=True) as server:
            for name, arguments in STANDARD_SET:
                if args.only and name not in args.only:
                    continue
                status = run_script(name, arguments, server)
                if status == EXIT_INTERRUPTED:
                    raise KeyboardInterrupt
                if status != 0:
                    failed.append(name)
    except KeyboardInterrupt:
        print("interrupted: the PostgreSQL server is stopped; RESULTS.md was not written", flush=True)
        return EXIT_INTERRUPTED
    info["load_after"] = round(os.getloadavg()[0], 2)
    info["elapsed_minutes"] = round((time.monotonic() - started) / 60, 1)
    # Before the run nothing of ours is running, so load then comes from other work.
    info["shared"] = info["load_before"] >= 1.0
    info_path = RESULTS_DIR / "run.json"
    if args.only and info_path.is_file():
        # A partial run keeps the full run's facts and records which scripts ran again.
        full = json.loads(info_path.read_text())
        full.setdefault("rerun", []).append({**info, "scripts": args.only})
        full["shared"] = full.get("shared") or info["shared"]
        info = full
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    summary.write(RESULTS_DIR, info)
    print(f"\nwrote bench/RESULTS.md and bench/results.png in {info['elapsed_minutes']} min", flush=True)
    if failed:
        print(f"failed scripts: {', '.join(failed)} (see bench/results/*.out)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
