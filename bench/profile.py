"""Profile: where an Odin replica spends its time in a drain and in the end-to-end loop.

1. Drain: ``--jobs`` no-op jobs drained by one replica (ODIN_WORKER_CONCURRENCY=100) while
   py-spy samples it; then the end-to-end open loop (submit over HTTP, follow the stream)
   at ``--rate`` jobs per second for ``--seconds`` while py-spy samples again. py-spy runs
   non-blocking, so it does not pause the replica, and writes a flame graph (SVG) and the
   raw stacks of each phase to ``--out``.
2. Statements per job: the same two workloads, smaller, with PostgreSQL logging every
   statement (``log_min_duration_statement = 0``, set on the throwaway server only). The
   log lines are counted by kind: BEGIN, COMMIT and each named query. A pool that checks
   connections before use sends an empty query, which PostgreSQL does not log, so such a
   check is not counted.

Printed per phase: how busy the replica's main thread was, the leaf functions with the most
samples, and the functions on the most stacks.

    python -m bench.profile --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg

from bench import postgres
from bench.latency import open_loop
from bench.postgres import ODIN_TABLES, BenchPostgres, truncate_tables
from bench.replica import OdinReplica, Replicas
from bench.report import Report, percentiles, run_script
from bench.workload import drain_backlog
from odin_ext.queries import QUERIES

DATABASE = "odin_bench_profile"
SAMPLE_RATE = 200
DRAIN_SAMPLE_SECONDS = 4
TOP_FRAMES = 15


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=40_000, help="jobs in the profiled drain (default 40000)")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="jobs per second of the profiled end-to-end loop (default 50)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="seconds of the profiled end-to-end loop (default 10)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"),
                        help="folder for flame graphs and raw stacks (default bench/results)")
    parser.add_argument("--server-log", type=Path,
                        help="log file of the server named by --database-url, to count statements")
    parser.add_argument("--log-dir", type=Path, help="folder for the replicas' logs (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the summary to this JSON file")
    postgres.add_arguments(parser)
    return parser


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(__import__("sys").executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy not found: install it with pip install 'odin[bench]'")
    return found


async def record(pid: int, seconds: float, out: Path, name: str) -> Path:
    """Sample ``pid`` for ``seconds`` into ``<name>.svg`` and ``<name>.txt``; return the latter."""
    out.mkdir(parents=True, exist_ok=True)
    raw = out / f"{name}.txt"
    commands = [
        [py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate",
         str(SAMPLE_RATE), "--nonblocking", "--format", fmt, "--output", str(path)]
        for fmt, path in (("flamegraph", out / f"{name}.svg"), ("raw", raw))
    ]
    processes = [await asyncio.create_subprocess_exec(*command, stdout=subprocess.DEVNULL,
                                                      stderr=subprocess.PIPE)
                 for command in commands]
    for process in processes:
        _, stderr = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"py-spy failed: {stderr.decode()[-400:]}")
    return raw


def analyze(raw: Path, seconds: float) -> dict[str, Any]:
    """Summarize a raw profile: how busy the process was, and where its samples fell.

    py-spy leaves out samples in which a thread was idle, so ``busy_fraction`` (samples over
    the samples a fully busy thread would give) estimates the CPU the replica used. Shares
    are of the samples taken.
    """
    leaves: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        total += count
        leaves[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    busy = max(total, 1)
    return {
        "samples": total,
        "busy_fraction": round(total / (SAMPLE_RATE * seconds), 3),
        "top_self": [(frame, round(count / busy, 3)) for frame, count in leaves.most_common(TOP_FRAMES)],
        "top_inclusive": [(frame, round(count / busy, 3))
                          for frame, count in inclusive.most_common(TOP_FRAMES + 10)
                          if not _is_scaffolding(frame)][:TOP_FRAMES],
    }


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    match = re.match(r"(.*) \((?:.*/)?([^/]+?\.py)(?::\d+)?\)", frame)
    return f"{match.group(1)} ({match.group(2)})" if match else frame


def _is_scaffolding(frame: str) -> bool:
    return any(name in frame for name in ("<module>", "run_forever", "_run_once", "run_until_complete",
                                          "Runner.run", "asyncio.run", "_run (events.py)", "main (",
                                          "run (runners.py)", "_serve (", "serve (", "run (cli.py)"))


# Statements per job ---------------------------------------------------------------------------


def classify(statement: str) -> str:
    """Name a logged statement: BEGIN, COMMIT, the named query it is, or its first words."""
    text = _normalize(statement)
    word = text.split(" ", 1)[0].upper()
    if word in {"BEGIN", "COMMIT", "ROLLBACK"}:
        return word
    for name, prefix in QUERY_PREFIXES.items():
        if text.startswith(prefix):
            return name
    return "other: " + text[:50]


def _normalize(sql_text: str) -> str:
    # Drop comment lines and whitespace runs, and make %(name)s and $1 placeholders alike.
    lines = [line for line in sql_text.splitlines() if not line.strip().startswith("--")]
    text = " ".join(" ".join(lines).split())
    return re.sub(r"%\(\w+\)s|\$\d+", "?", text)


QUERY_PREFIXES = {name: _normalize(sql_text)[:80] for name, sql_text in QUERIES.items()}


def count_statements(log_path: Path, offset: int) -> collections.Counter[str]:
    """Count the statements logged after byte ``offset`` of the server log, by kind."""
    counts: collections.Counter[str] = collections.Counter()
    with log_path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    pattern = re.compile(r"duration: [0-9.]+ ms  (?:statement|execute [^:]*): (.*?)(?=\n\S|\Z)", re.S)
    for match in pattern.finditer(text):
        counts[classify(match.group(1))] += 1
    return counts


async def statements_per_job(server: BenchPostgres, url: str, log_dir: Path, report: Report,
                             log_path: Path | None) -> dict[str, Any]:
    """Count statements per job of a small drain and a small end-to-end loop."""
    if log_path is None:
        report.note("statements per job not counted: give --server-log with --database-url")
        return {}
    figures = {}
    for phase, jobs in (("drain", 2000), ("end_to_end", 200)):
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET log_min_duration_statement = 0")
            conn.execute("SELECT pg_reload_conf()")
        await asyncio.sleep(0.5)
        offset = log_path.stat().st_size
        try:
            if phase == "drain":
                replica = OdinReplica(url, log_dir, name="profile-count-drain",
                                      settings={"ODIN_WORKER_CONCURRENCY": "100"})
                await drain_backlog(url, jobs, [replica], report, timeout_seconds=120, label="counted drain")
            else:
                truncate_tables(url, ODIN_TABLES)
                with Replicas([OdinReplica(url, log_dir, name="profile-count-e2e")]) as [replica]:
                    offset = log_path.stat().st_size
                    await open_loop([replica.port], 50.0, jobs / 50.0)
        finally:
            with psycopg.connect(server.url, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM RESET log_min_duration_statement")
                conn.execute("SELECT pg_reload_conf()")
        counts = count_statements(log_path, offset)
        figures[phase] = {kind: round(count / jobs, 3) for kind, count in counts.most_common()}
        figures[phase]["all statements"] = round(sum(counts.values()) / jobs, 3)
    return figures


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = Report("profile", {
        "drain_jobs": args.jobs,
        "drain_concurrency": 100,
        "end_to_end_rate": args.rate,
        "end_to_end_seconds": args.seconds,
        "sample_rate_hz": SAMPLE_RATE,
        "out": str(args.out),
    })

    async def run() -> None:
        log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="odin-bench-logs-"))
        with BenchPostgres(args.database_url, durable=args.durable) as server:
            report.parameters.update(server.describe())
            url = await server.create_odin_database(DATABASE)
            await profile_drain(url, log_dir)
            await profile_end_to_end(url, log_dir)
            log_path = args.server_log or server.log_path
            report.result("statements_per_job",
                          await statements_per_job(server, url, log_dir, report, log_path))

    async def profile_drain(url: str, log_dir: Path) -> None:
        replica = OdinReplica(url, log_dir, name="profile-drain", settings={"ODIN_WORKER_CONCURRENCY": "100"})
        raw: list[Path] = []

        async def sample(replicas: list[OdinReplica]) -> None:
            # Stops before the drain ends, so no idle tail dilutes the profile.
            raw.append(await record(replicas[0].pid, DRAIN_SAMPLE_SECONDS, args.out, "profile-drain"))

        drain = await drain_backlog(url, args.jobs, [replica], report, timeout_seconds=240,
                                    label="profiled drain", during=sample)
        figures = analyze(raw[0], DRAIN_SAMPLE_SECONDS)
        print_profile("drain", figures)
        report.result("drain", {"figures": drain, "profile": figures})

    async def profile_end_to_end(url: str, log_dir: Path) -> None:
        truncate_tables(url, ODIN_TABLES)
        with Replicas([OdinReplica(url, log_dir, name="profile-e2e")]) as [replica]:
            sampling = asyncio.create_task(record(replica.pid, args.seconds, args.out, "profile-e2e"))
            submissions = await open_loop([replica.port], args.rate, args.seconds)
            raw = await sampling
        latencies = [(s.final_at - s.due_at) * 1000 for s in submissions if s.final_at is not None]
        figures = analyze(raw, args.seconds)
        print_profile("end to end", figures)
        report.result("end_to_end", {"latency_ms": percentiles(latencies), "profile": figures})

    def print_profile(phase: str, figures: dict[str, Any]) -> None:
        print(f"profile {phase}: {figures['samples']} samples, busy {figures['busy_fraction']:.0%} "
              "of one core", flush=True)
        for label, key in (("self", "top_self"), ("on stack", "top_inclusive")):
            for frame, share in figures[key][:8]:
                print(f"  {label:<8} {share:6.1%}  {frame}", flush=True)

    return run_script(report, run, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
