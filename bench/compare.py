"""Compare: Odin beside PgQueuer, Procrastinate and a pgbench ceiling, in one run.

Every system works on the same PostgreSQL server, each in a database of its own, one after
the other, and every figure is reported as a ratio to Odin's figure of the same run:

- drain: N no-op jobs inserted in bulk, then drained, timed from the first claim to the
  last completion that the system recorded. Odin runs one replica at each
  ``--odin-concurrency`` (fetching up to 500 jobs per statement) and records its events as
  always; PgQueuer runs each
  ``--pgqueuer-batch-sizes`` with 1 and 2 worker processes; Procrastinate one worker at
  each ``--procrastinate-concurrency``. The best setting of each system counts.
- pgbench ceiling: what PostgreSQL alone does with the smallest claim-and-complete per job
  in ``bench/pgbench/*.sql``. A claim with SKIP LOCKED and a completion each commit on their
  own, for one job at a time and for 100 at a time, at each ``--pgbench-clients``. The best
  client count counts.
- enqueue from Python: one job per call on 8 connections, and 1,000 jobs per call on 2,
  through each library's documented call (Odin: ``odin_ext.enqueue.enqueue`` and
  ``JobStore.enqueue``).

Procrastinate claims and completes one job per statement, so it drains fewer jobs
(``--procrastinate-jobs``) to keep the run short. Its rate does not depend on the backlog
once the table is analyzed.

    python -m bench.compare
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg

from bench import alternatives, postgres
from bench.postgres import ODIN_TABLES, BenchPostgres, pgbench_path, settle_tables, truncate_tables
from bench.replica import OdinReplica
from bench.report import Report, run_script
from bench.workload import OdinEnqueuers, drain_backlog, measure_enqueue_rate

PGBENCH_DIR = Path(__file__).resolve().parent / "pgbench"
PGBENCH_SCRIPTS = {1: "claim_complete_1.sql", 100: "claim_complete_100.sql"}
SINGLE_CALLERS = 8
BULK_CALLERS = 2
BULK_SIZE = 1000
ODIN_MAX_FETCH_BATCH = 500


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per drain (default 20000)")
    parser.add_argument("--procrastinate-jobs", type=int, default=10_000,
                        help="jobs per Procrastinate drain (default 10000)")
    parser.add_argument("--odin-concurrency", type=int, nargs="+", default=[100, 200, 1000],
                        help="Odin worker concurrencies to try, each with a fetch batch size of "
                             "min(concurrency, 500) (default 100 200 1000)")
    parser.add_argument("--pgqueuer-batch-sizes", type=int, nargs="+", default=[10, 100, 500],
                        help="PgQueuer batch sizes to try, each with 1 and 2 processes (default 10 100 500)")
    parser.add_argument("--procrastinate-concurrency", type=int, nargs="+", default=[10, 50],
                        help="Procrastinate worker concurrencies to try (default 10 50)")
    parser.add_argument("--pgbench-clients", type=int, nargs="+", default=[2, 4, 8],
                        help="pgbench client counts to try (default 2 4 8)")
    parser.add_argument("--pgbench-rows", type=int, default=100_000,
                        help="queued rows per pgbench run with batches of 100; a tenth for batches of 1")
    parser.add_argument("--enqueue-seconds", type=float, default=3.0,
                        help="seconds per enqueue measurement (default 3)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds one drain may take (default 240)")
    parser.add_argument("--log-dir", type=Path, help="folder for worker logs (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the summary to this JSON file")
    postgres.add_arguments(parser)
    return parser


EnqueuerFactory = Callable[[str, int], Awaitable[tuple[Callable[[], Awaitable[object]],
                                                       Callable[[], Awaitable[object]]]]]


async def measure_enqueue(url: str, factory: EnqueuerFactory, seconds: float,
                          clear: Callable[[], None]) -> dict[str, float]:
    """Return jobs per second enqueued one per call and ``BULK_SIZE`` per call."""
    rates = {}
    for mode, per_call, callers in (("single", 1, SINGLE_CALLERS), ("bulk", BULK_SIZE, BULK_CALLERS)):
        clear()
        opened = [await factory(url, per_call) for _ in range(callers)]
        try:
            rate = await measure_enqueue_rate([call for call, _ in opened], per_call,
                                              seconds=seconds, max_jobs=1_000_000)
        finally:
            for _, close in opened:
                await close()
        rates[f"enqueue_{mode}_jobs_per_second"] = round(rate, 1)
    return rates


async def odin_enqueuer(url: str, per_call: int) -> tuple[Callable[[], Awaitable[object]],
                                                        Callable[[], Awaitable[object]]]:
    enqueuers = OdinEnqueuers(url, per_call, 1)
    [call] = await enqueuers.open()
    return call, enqueuers.close


def run_pgbench(url: str, batch: int, clients: int, rows: int) -> dict[str, float]:
    """Fill ``bench_jobs`` with ``rows`` queued rows and drain them with pgbench."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE bench_jobs")
        conn.execute(
            "INSERT INTO bench_jobs (state) SELECT 'queued' FROM generate_series(1, %s)", (rows,)
        )
    settle_tables(url, "bench_jobs")
    transactions = rows // (batch * clients)
    command = [pgbench_path(), "--no-vacuum", "--protocol=prepared", f"--client={clients}",
               f"--jobs={min(clients, 4)}", f"--transactions={transactions}",
               f"--file={PGBENCH_DIR / PGBENCH_SCRIPTS[batch]}", url]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed with exit code {result.returncode}: {result.stderr[-500:]}")
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", result.stdout)
    if match is None:
        raise RuntimeError(f"no tps line in pgbench output: {result.stdout[-500:]}")
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM bench_jobs WHERE state = 'completed'").fetchone()
    completed = int(row[0]) if row else 0
    return {"clients": clients, "completed": completed, "wall_seconds": round(wall, 3),
            "jobs_per_second": round(float(match.group(1)) * batch, 1)}


def best(runs: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    key = max(runs, key=lambda name: runs[name]["jobs_per_second"])
    return key, runs[key]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = Report("compare", {
        "jobs": args.jobs,
        "procrastinate_jobs": args.procrastinate_jobs,
        "odin_concurrency": args.odin_concurrency,
        "pgqueuer_batch_sizes": args.pgqueuer_batch_sizes,
        "pgqueuer_processes": [1, 2],
        "procrastinate_concurrency": args.procrastinate_concurrency,
        "pgbench_clients": args.pgbench_clients,
        "pgbench_rows_batch_100": args.pgbench_rows,
        "pgbench_rows_batch_1": args.pgbench_rows // 10,
        "enqueue_seconds": args.enqueue_seconds,
        "versions": library_versions(),
    })

    async def run() -> None:
        log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="odin-bench-logs-"))
        with BenchPostgres(args.database_url, durable=args.durable) as server:
            report.parameters.update(server.describe())
            odin = await measure_odin(server, log_dir)
            pgqueuer = await measure_pgqueuer(server, log_dir)
            procrastinate = await measure_procrastinate(server, log_dir)
            ceiling = measure_pgbench(server)
        summarize(odin, pgqueuer, procrastinate, ceiling)

    async def measure_odin(server: BenchPostgres, log_dir: Path) -> dict[str, Any]:
        url = await server.create_odin_database("odin_bench_compare_odin")
        runs = {}
        for concurrency in args.odin_concurrency:
            # The largest batch matches PgQueuer's largest, so both get the same tuning room.
            batch_size = min(concurrency, ODIN_MAX_FETCH_BATCH)
            name = f"concurrency={concurrency},fetch_batch_size={batch_size}"
            replica = OdinReplica(url, log_dir, name=f"compare-c{concurrency}",
                                  settings={"ODIN_WORKER_CONCURRENCY": str(concurrency),
                                            "ODIN_FETCH_BATCH_SIZE": str(batch_size)})
            runs[name] = await drain_backlog(url, args.jobs, [replica], report,
                                             timeout_seconds=args.timeout, label=f"odin {name}")
            print_drain("odin", name, runs[name])
        # PgQueuer's best figure comes from two worker processes; give Odin two as well.
        concurrency = max(args.odin_concurrency)
        batch_size = min(concurrency, ODIN_MAX_FETCH_BATCH)
        name = f"concurrency={concurrency},fetch_batch_size={batch_size},processes=2"
        replicas = [
            OdinReplica(url, log_dir, name=f"compare-c{concurrency}-p{index}",
                        settings={"ODIN_WORKER_CONCURRENCY": str(concurrency),
                                  "ODIN_FETCH_BATCH_SIZE": str(batch_size)})
            for index in range(2)
        ]
        runs[name] = await drain_backlog(url, args.jobs, replicas, report,
                                         timeout_seconds=args.timeout, label=f"odin {name}")
        print_drain("odin", name, runs[name])
        enqueue = await measure_enqueue(url, odin_enqueuer, args.enqueue_seconds,
                                        lambda: truncate_tables(url, ODIN_TABLES))
        print_enqueue("odin", enqueue)
        return {"drain_runs": runs, **enqueue}

    async def measure_pgqueuer(server: BenchPostgres, log_dir: Path) -> dict[str, Any]:
        url = server.create_database("odin_bench_compare_pgqueuer")
        await alternatives.pgqueuer_install(url)
        runs = {}
        for batch_size in args.pgqueuer_batch_sizes:
            for processes in (1, 2):
                name = f"batch_size={batch_size},processes={processes}"
                truncate_tables(url, alternatives.PGQUEUER_TABLES)
                await alternatives.pgqueuer_insert(url, args.jobs)
                settle_tables(url, alternatives.PGQUEUER_TABLES)
                report.progress(f"pgqueuer {name}")
                workers = alternatives.start_workers(
                    ["pgqueuer-worker", "--url", url, "--batch-size", str(batch_size)],
                    processes, log_dir / "pgqueuer.log")
                wall = await alternatives.wait_for_workers(workers, args.timeout)
                completed, seconds = await alternatives.drain_figures(url, alternatives.PGQUEUER_DRAIN_SQL)
                runs[name] = drain_entry(completed, seconds, wall)
                print_drain("pgqueuer", name, runs[name])
        enqueue = await measure_enqueue(url, alternatives.pgqueuer_enqueuer, args.enqueue_seconds,
                                        lambda: truncate_tables(url, alternatives.PGQUEUER_TABLES))
        print_enqueue("pgqueuer", enqueue)
        return {"drain_runs": runs, **enqueue}

    async def measure_procrastinate(server: BenchPostgres, log_dir: Path) -> dict[str, Any]:
        url = server.create_database("odin_bench_compare_procrastinate")
        await alternatives.procrastinate_install(url)
        runs = {}
        for concurrency in args.procrastinate_concurrency:
            name = f"concurrency={concurrency}"
            truncate_tables(url, alternatives.PROCRASTINATE_TABLES)
            await alternatives.procrastinate_insert(url, args.procrastinate_jobs)
            settle_tables(url, alternatives.PROCRASTINATE_TABLES)
            report.progress(f"procrastinate {name}")
            workers = alternatives.start_workers(
                ["procrastinate-worker", "--url", url, "--concurrency", str(concurrency)],
                1, log_dir / "procrastinate.log")
            wall = await alternatives.wait_for_workers(workers, args.timeout)
            completed, seconds = await alternatives.drain_figures(url, alternatives.PROCRASTINATE_DRAIN_SQL)
            runs[name] = drain_entry(completed, seconds, wall)
            print_drain("procrastinate", name, runs[name])
        enqueue = await measure_enqueue(url, alternatives.procrastinate_enqueuer, args.enqueue_seconds,
                                        lambda: truncate_tables(url, alternatives.PROCRASTINATE_TABLES))
        print_enqueue("procrastinate", enqueue)
        return {"drain_runs": runs, **enqueue}

    def measure_pgbench(server: BenchPostgres) -> dict[str, Any]:
        url = server.create_database("odin_bench_compare_pgbench")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute((PGBENCH_DIR / "schema.sql").read_text())
        ceiling: dict[str, Any] = {}
        for batch in (1, 100):
            rows = args.pgbench_rows if batch == 100 else args.pgbench_rows // 10
            runs = {}
            for clients in args.pgbench_clients:
                report.progress(f"pgbench batch={batch} clients={clients}")
                runs[f"clients={clients}"] = run_pgbench(url, batch, clients, rows)
                print_drain(f"pgbench batch={batch}", f"clients={clients}", runs[f"clients={clients}"])
            ceiling[f"batch_{batch}"] = {"runs": runs}
        return ceiling

    def summarize(odin: dict[str, Any], pgqueuer: dict[str, Any], procrastinate: dict[str, Any],
                  ceiling: dict[str, Any]) -> None:
        systems = {"odin": odin, "pgqueuer": pgqueuer, "procrastinate": procrastinate}
        drain = {}
        for name, figures in systems.items():
            setting, entry = best(figures["drain_runs"])
            drain[name] = {"best_setting": setting, "jobs_per_second": entry["jobs_per_second"],
                           "runs": figures["drain_runs"]}
        for batch in (1, 100):
            setting, entry = best(ceiling[f"batch_{batch}"]["runs"])
            drain[f"pgbench_batch_{batch}"] = {"best_setting": setting,
                                               "jobs_per_second": entry["jobs_per_second"],
                                               "runs": ceiling[f"batch_{batch}"]["runs"]}
        odin_rate = drain["odin"]["jobs_per_second"]
        for entry in drain.values():
            entry["ratio_to_odin"] = round(entry["jobs_per_second"] / odin_rate, 3)
        report.result("drain", drain)
        enqueue = {}
        for mode in ("single", "bulk"):
            key = f"enqueue_{mode}_jobs_per_second"
            enqueue[mode] = {name: {"jobs_per_second": figures[key],
                                    "ratio_to_odin": round(figures[key] / odin[key], 3)}
                             for name, figures in systems.items()}
        report.result("enqueue", enqueue)
        report.result("odin_drain_over_best_pgqueuer",
                      round(odin_rate / drain["pgqueuer"]["jobs_per_second"], 3))
        report.result("odin_drain_over_pgbench_batch_100",
                      round(odin_rate / drain["pgbench_batch_100"]["jobs_per_second"], 3))
        report.result("odin_drain_over_pgbench_batch_1",
                      round(odin_rate / drain["pgbench_batch_1"]["jobs_per_second"], 3))

    return run_script(report, run, args.json)


def drain_entry(completed: int, seconds: float, wall: float) -> dict[str, float]:
    return {"completed": completed, "db_seconds": round(seconds, 3), "wall_seconds": round(wall, 3),
            "jobs_per_second": round(completed / max(seconds, 1e-6), 1)}


def print_drain(system: str, setting: str, figures: dict[str, Any]) -> None:
    print(f"compare drain system={system:<20} {setting:<32} jobs={figures['completed']:<7} "
          f"rate={figures['jobs_per_second']:.0f} jobs/s", flush=True)


def print_enqueue(system: str, figures: dict[str, float]) -> None:
    print(f"compare enqueue system={system:<14} single={figures['enqueue_single_jobs_per_second']:.0f} "
          f"jobs/s bulk={figures['enqueue_bulk_jobs_per_second']:.0f} jobs/s", flush=True)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("pgqueuer", "procrastinate", "asyncpg", "psycopg", "quart", "hypercorn"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


if __name__ == "__main__":
    raise SystemExit(main())
