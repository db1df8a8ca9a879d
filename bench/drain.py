"""Drain: how fast one Odin replica works off a backlog of no-op jobs.

For each worker concurrency C of the sweep: empty the tables, insert N queued ``noop`` jobs
with one statement into the paused queue, start one replica (``odin.py serve`` with
ODIN_WORKER_CONCURRENCY=C), resume the queue and wait until every job is completed. Events are recorded as in production: each job gets its
``queued``, ``running`` and ``completed`` events. The rate is N divided by the time from the
first ``running`` event to the last ``completed`` one, as the database recorded them.

Also reported per run: commits per job (from ``pg_stat_database``, after the replica
stopped), and each C's rate as a fraction of the best C of the same run.

    python -m bench.drain --jobs 20000 --concurrency 10 50 100 200
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench import postgres
from bench.postgres import BenchPostgres
from bench.replica import OdinReplica
from bench.report import Report, run_script
from bench.workload import drain_backlog

DATABASE = "odin_bench_drain"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per drain (default 20000)")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[10, 50, 100, 200],
        help="worker concurrencies to sweep (default 10 50 100 200)",
    )
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds one drain may take (default 180)"
    )
    parser.add_argument("--log-dir", type=Path, help="folder for the replicas' logs (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the summary to this JSON file")
    postgres.add_arguments(parser)
    return parser


async def drain_once(
    url: str, jobs: int, concurrency: int, log_dir: Path, report: Report, timeout: float
) -> dict[str, float]:
    """Run one drain with one replica at ``concurrency`` and return its figures."""
    replica = OdinReplica(
        url, log_dir, name=f"drain-c{concurrency}",
        settings={"ODIN_WORKER_CONCURRENCY": str(concurrency)},
    )
    return await drain_backlog(url, jobs, [replica], report, timeout_seconds=timeout,
                               label=f"C={concurrency}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = Report("drain", {
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "kind": "noop",
        "replicas": 1,
        "events": "recorded (queued, running, completed per job)",
        "durable": args.durable if not args.database_url else "as configured",
    })

    async def run() -> None:
        log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="odin-bench-logs-"))
        with BenchPostgres(args.database_url, durable=args.durable) as server:
            report.parameters.update(server.describe())
            url = await server.create_odin_database(DATABASE)
            runs: dict[str, dict[str, float]] = {}
            for concurrency in args.concurrency:
                figures = await drain_once(url, args.jobs, concurrency, log_dir, report, args.timeout)
                runs[str(concurrency)] = figures
                print(
                    f"drain C={concurrency:<5} jobs={figures['completed']:<7} "
                    f"db={figures['db_seconds']:.3f}s wall={figures['wall_seconds']:.3f}s "
                    f"rate={figures['jobs_per_second']:.0f} jobs/s "
                    f"commits/job={figures['commits_per_job']}",
                    flush=True,
                )
                report.results["runs"] = runs
            best = max(runs, key=lambda c: runs[c]["jobs_per_second"])
            best_rate = runs[best]["jobs_per_second"]
            for figures in runs.values():
                figures["fraction_of_best"] = round(figures["jobs_per_second"] / best_rate, 3)
            report.result("runs", runs)
            report.result("best_concurrency", int(best))
            report.result("best_jobs_per_second", best_rate, "jobs/s")

    return run_script(report, run, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
