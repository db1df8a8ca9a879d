"""Scale-out: the drain and end-to-end figures with 1, 2 and 4 replicas on one database.

For each replica count R in ``--replicas``:

- drain: N no-op jobs in the paused queue, R replicas (each ODIN_WORKER_CONCURRENCY=C)
  started, the queue resumed; jobs per second from the first ``running`` to the last
  ``completed`` event;
- end to end: the closed-loop saturation throughput with clients spread over the R
  replicas, then an open loop at half of it, as ``bench.latency`` runs them.

Each figure is also shown relative to R=1 of the same run. All replicas, PostgreSQL and the
clients share this machine's cores. On a 2-core machine the curve shows how the replicas
contend with each other and with the database, not how much capacity another machine adds.

    python -m bench.scaleout --replicas 1 2 4
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from bench import postgres
from bench.latency import measure_latency
from bench.postgres import BenchPostgres
from bench.replica import OdinReplica, Replicas
from bench.report import Report, run_script
from bench.workload import drain_backlog

DATABASE = "odin_bench_scaleout"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4],
                        help="replica counts to measure (default 1 2 4)")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per drain (default 20000)")
    parser.add_argument("--concurrency", type=int, default=100,
                        help="worker concurrency of each replica in the drain (default 100)")
    parser.add_argument("--clients", type=int, default=32, help="closed-loop clients (default 32)")
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="seconds of the saturation and of the open-loop phase (default 6)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds one drain may take (default 180)")
    parser.add_argument("--log-dir", type=Path, help="folder for the replicas' logs (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the summary to this JSON file")
    postgres.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = Report("scaleout", {
        "replicas": args.replicas,
        "jobs": args.jobs,
        "drain_concurrency_per_replica": args.concurrency,
        "closed_loop_clients": args.clients,
        "seconds_per_phase": args.seconds,
        "open_loop_fraction": 0.5,
    })
    cpus = os.cpu_count() or 0
    if cpus <= 4:
        report.note(f"this machine has {cpus} cores shared by every replica, PostgreSQL and the "
                    "clients: the curve shows contention, not the capacity more machines add")

    async def run() -> None:
        log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="odin-bench-logs-"))
        figures: dict[str, Any] = {}
        with BenchPostgres(args.database_url, durable=args.durable) as server:
            report.parameters.update(server.describe())
            url = await server.create_odin_database(DATABASE)
            for count in args.replicas:
                figures[str(count)] = await measure(url, count, log_dir)
        base = figures[str(args.replicas[0])]
        for entry in figures.values():
            entry["drain_relative"] = round(entry["drain"]["jobs_per_second"]
                                            / base["drain"]["jobs_per_second"], 3)
            entry["saturation_relative"] = round(entry["saturation_jobs_per_second"]
                                                 / base["saturation_jobs_per_second"], 3)
        report.result("by_replicas", figures)

    async def measure(url: str, count: int, log_dir: Path) -> dict[str, Any]:
        drain_replicas = [
            OdinReplica(url, log_dir, name=f"scaleout-drain-{count}-{index}",
                        settings={"ODIN_WORKER_CONCURRENCY": str(args.concurrency)})
            for index in range(count)
        ]
        drain = await drain_backlog(url, args.jobs, drain_replicas, report,
                                    timeout_seconds=args.timeout, label=f"R={count}")
        print(f"scaleout replicas={count} drain rate={drain['jobs_per_second']:.0f} jobs/s "
              f"db={drain['db_seconds']:.3f}s", flush=True)
        with Replicas([OdinReplica(url, log_dir, name=f"scaleout-e2e-{count}-{index}")
                       for index in range(count)]) as replicas:
            latency = await measure_latency(
                url, replicas, report, clients=args.clients, saturation_seconds=args.seconds,
                fractions=[0.5], seconds=args.seconds,
            )
        half = latency["rates"]["0.5"]["submit_to_final_event_ms"]
        print(f"scaleout replicas={count} saturation={latency['saturation']['jobs_per_second']:.0f} "
              f"jobs/s half-load final-event p50={half['p50']}ms p99={half['p99']}ms", flush=True)
        return {
            "drain": drain,
            "saturation_jobs_per_second": latency["saturation"]["jobs_per_second"],
            "half_saturation": latency["rates"]["0.5"],
        }

    return run_script(report, run, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
