"""Enqueue: how many jobs per second Odin accepts, over HTTP and from Python.

Four modes, each for ``--seconds`` on emptied tables, against one replica that runs no
workers (ODIN_RUN_WORKERS=false), so only enqueueing is measured:

- ``http_single``: ``POST /v1/jobs`` with one ``noop`` job, from ``--http-clients``
  keep-alive connections at once;
- ``http_bulk``: ``POST /v1/jobs/bulk`` with ``--bulk-size`` jobs, from 2 connections;
- ``python_single``: ``odin_ext.enqueue.enqueue`` on 8 autocommit psycopg connections;
- ``python_bulk``: ``JobStore.enqueue`` with ``--bulk-size`` jobs, on 2 connections.

Each mode is also shown as a fraction of ``python_bulk``, the fastest path into the table.

    python -m bench.enqueue --seconds 5
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import postgres
from bench.client import Connection, HttpError
from bench.postgres import ODIN_TABLES, BenchPostgres, truncate_tables
from bench.replica import OdinReplica, Replicas
from bench.report import Report, run_script
from bench.workload import OdinEnqueuers, measure_enqueue_rate

DATABASE = "odin_bench_enqueue"
PYTHON_SINGLE_CONNECTIONS = 8
BULK_CONNECTIONS = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.enqueue", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per mode (default 5)")
    parser.add_argument(
        "--max-jobs", type=int, default=300_000, help="stop a mode after this many jobs (default 300000)"
    )
    parser.add_argument("--http-clients", type=int, default=32, help="connections for http_single (default 32)")
    parser.add_argument("--bulk-size", type=int, default=1000, help="jobs per bulk call (default 1000)")
    parser.add_argument("--log-dir", type=Path, help="folder for the replica's log (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the summary to this JSON file")
    postgres.add_arguments(parser)
    return parser


def http_callers(replica: OdinReplica, count: int, body: dict[str, object], expected: int
                 ) -> tuple[list[Callable[[], Awaitable[object]]], list[Connection]]:
    """Return ``count`` callers that each POST ``body`` on a keep-alive connection of its own."""
    path = "/v1/jobs/bulk" if "jobs" in body else "/v1/jobs"
    connections = [Connection("127.0.0.1", replica.port) for _ in range(count)]

    def caller(connection: Connection) -> Callable[[], Awaitable[object]]:
        async def post() -> None:
            response = await connection.request("POST", path, body)
            if response.status != expected:
                raise HttpError(f"POST {path} failed with status {response.status}: {response.body[:200]!r}")

        return post

    return [caller(connection) for connection in connections], connections


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = Report("enqueue", {
        "seconds_per_mode": args.seconds,
        "http_clients": args.http_clients,
        "python_single_connections": PYTHON_SINGLE_CONNECTIONS,
        "bulk_size": args.bulk_size,
        "bulk_connections": BULK_CONNECTIONS,
        "kind": "noop",
        "workers": "off (ODIN_RUN_WORKERS=false)",
    })

    async def measure(url: str, mode: str, callers: list[Callable[[], Awaitable[object]]],
                      per_call: int) -> float:
        truncate_tables(url, ODIN_TABLES)
        report.progress(f"{mode}: {len(callers)} callers for {args.seconds:.0f} s")
        rate = await measure_enqueue_rate(callers, per_call, seconds=args.seconds, max_jobs=args.max_jobs)
        print(f"enqueue mode={mode:<14} callers={len(callers):<3} per_call={per_call:<5} "
              f"rate={rate:.0f} jobs/s", flush=True)
        return rate

    async def run() -> None:
        log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="odin-bench-logs-"))
        rates: dict[str, float] = {}
        with BenchPostgres(args.database_url, durable=args.durable) as server:
            report.parameters.update(server.describe())
            url = await server.create_odin_database(DATABASE)
            replica = OdinReplica(url, log_dir, name="enqueue", settings={"ODIN_RUN_WORKERS": "false"})
            with Replicas([replica]):
                single = {"kind": "noop"}
                bulk = {"jobs": [single] * args.bulk_size}
                for mode, count, body, per_call in (
                    ("http_single", args.http_clients, single, 1),
                    ("http_bulk", BULK_CONNECTIONS, bulk, args.bulk_size),
                ):
                    callers, connections = http_callers(replica, count, body, 202)
                    try:
                        rates[mode] = await measure(url, mode, callers, per_call)
                    finally:
                        for connection in connections:
                            await connection.close()
            for mode, count, per_call in (
                ("python_single", PYTHON_SINGLE_CONNECTIONS, 1),
                ("python_bulk", BULK_CONNECTIONS, args.bulk_size),
            ):
                enqueuers = OdinEnqueuers(url, per_call, count)
                try:
                    rates[mode] = await measure(url, mode, await enqueuers.open(), per_call)
                finally:
                    await enqueuers.close()
        for mode, rate in rates.items():
            report.result(f"{mode}_jobs_per_second", round(rate, 1), "jobs/s")
        fastest = rates["python_bulk"]
        report.result("fraction_of_python_bulk",
                      {mode: round(rate / fastest, 3) for mode, rate in rates.items()})

    return run_script(report, run, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
