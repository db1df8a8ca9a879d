"""Latency: end to end, from submitting a no-op job over HTTP to its final event on a stream.

Two phases against one replica:

1. Saturation, closed loop: ``--saturation-clients`` loops each submit a ``noop`` job
   (``POST /v1/jobs``), open its event stream and wait for the final event, then start over,
   for ``--saturation-seconds``. Completed jobs per second is the saturation throughput.
2. Open loop, at each fraction of that throughput in ``--fractions``: jobs are submitted at
   a fixed rate for ``--seconds``, whether or not earlier jobs are done, and each job is
   followed by a stream of its own. Latencies count from the moment a job was due to be sent, so a client that falls
   behind shows up as latency instead of hiding it.

Per rate: submit to start (``attempted_at - created_at`` from the database) and submit to
the final event read from the stream, as p50, p95, p99 and max in milliseconds, and the
client's own CPU use, to show whether the client kept up.

    python -m bench.latency --fractions 0.25 0.5 0.75 1.0
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench import postgres
from bench.client import Connection, ConnectionPool, follow_events, path_of
from bench.postgres import ODIN_TABLES, BenchPostgres, truncate_tables
from bench.replica import OdinReplica, Replicas
from bench.report import Report, percentiles, run_script

DATABASE = "odin_bench_latency"
POST_CONNECTIONS = 64
DRAIN_TIMEOUT_SECONDS = 60.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n")[0])
    parser.add_argument("--saturation-clients", type=int, default=32,
                        help="closed-loop clients that find the saturation throughput (default 32)")
    parser.add_argument("--saturation-seconds", type=float, default=8.0,
                        help="length of the saturation phase (default 8)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0],
                        help="open-loop rates as fractions of saturation (default 0.25 0.5 0.75 1.0)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per open-loop rate (default 8)")
    parser.add_argument("--log-dir", type=Path, help="folder for the replica's log (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the summary to this JSON file")
    postgres.add_arguments(parser)
    return parser


@dataclass
class Submission:
    """One job of the open loop: when it was due, its id, and when its final event came."""

    due_at: float
    job_id: int | None = None
    final_at: float | None = None
    error: str | None = None


async def submit_and_follow(port: int, post: Any) -> tuple[int, float | None, str | None]:
    """Submit one ``noop`` job with ``post`` and read its stream; return id, final time, error."""
    response = await post("POST", "/v1/jobs", {"kind": "noop"})
    if response.status != 202:
        return 0, None, f"POST /v1/jobs answered {response.status}"
    answer = response.json()
    record = await follow_events("127.0.0.1", port, answer["id"], path_of(answer["events_url"]))
    return answer["id"], record.final_at, record.error


async def saturation(ports: list[int], clients: int, seconds: float) -> dict[str, Any]:
    """Run the closed loop, clients spread over ``ports``; return completed jobs per second."""
    completed = 0
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    async def loop(port: int) -> None:
        nonlocal completed
        connection = Connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                _, final_at, error = await submit_and_follow(port, connection.request)
                if error is None and final_at is not None:
                    completed += 1
                elif error is not None:
                    errors.append(error)
        finally:
            await connection.close()

    started = time.monotonic()
    await asyncio.gather(*(loop(ports[index % len(ports)]) for index in range(clients)))
    elapsed = time.monotonic() - started
    return {"jobs_per_second": round(completed / elapsed, 1), "errors": len(errors),
            "first_error": errors[0] if errors else None}


async def open_loop(ports: list[int], rate: float, seconds: float) -> list[Submission]:
    """Submit jobs at ``rate`` per second for ``seconds``, to ``ports`` in turn; return them all.

    Each job's stream is read from the replica that accepted the job.
    """
    pools = [ConnectionPool("127.0.0.1", port, POST_CONNECTIONS // len(ports)) for port in ports]
    count = max(1, int(rate * seconds))
    submissions = [Submission(0.0) for _ in range(count)]

    async def one(submission: Submission, port: int, pool: ConnectionPool) -> None:
        try:
            job_id, final_at, error = await submit_and_follow(port, pool.request)
        except (OSError, ValueError) as exc:
            job_id, final_at, error = 0, None, repr(exc)
        submission.job_id, submission.final_at, submission.error = job_id or None, final_at, error

    tasks = []
    start_wall = time.time() + 0.05
    start_mono = time.monotonic() + 0.05
    try:
        for index, submission in enumerate(submissions):
            offset = index / rate
            delay = start_mono + offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            submission.due_at = start_wall + offset
            turn = index % len(ports)
            tasks.append(asyncio.create_task(one(submission, ports[turn], pools[turn])))
        async with asyncio.timeout(DRAIN_TIMEOUT_SECONDS):
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        for pool in pools:
            await pool.close()
    return submissions


async def start_delays_ms(url: str, job_ids: list[int]) -> list[float]:
    """Return ``attempted_at - created_at`` in milliseconds for the given jobs."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT extract(epoch FROM attempted_at - created_at) * 1000 FROM odin.jobs"
            " WHERE id = ANY(%s) AND attempted_at IS NOT NULL",
            (job_ids,),
        )
        return [float(row[0]) for row in await cursor.fetchall()]


async def measure_rate(url: str, ports: list[int], rate: float, seconds: float) -> dict[str, Any]:
    """Run the open loop at ``rate`` and return its latency figures."""
    truncate_tables(url, ODIN_TABLES)
    cpu_before, wall_before = time.process_time(), time.monotonic()
    submissions = await open_loop(ports, rate, seconds)
    client_cpu = (time.process_time() - cpu_before) / (time.monotonic() - wall_before)
    finished = [s for s in submissions if s.final_at is not None]
    end_to_end = [(s.final_at - s.due_at) * 1000 for s in finished]  # type: ignore[operator]
    job_ids = [s.job_id for s in submissions if s.job_id is not None]
    return {
        "offered_jobs_per_second": round(rate, 1),
        "jobs": len(submissions),
        "completed": len(finished),
        "errors": sum(1 for s in submissions if s.error),
        "submit_to_start_ms": percentiles(await start_delays_ms(url, job_ids)),
        "submit_to_final_event_ms": percentiles(end_to_end),
        "client_cpu_fraction": round(client_cpu, 2),
    }


async def measure_latency(
    url: str, replicas: list[OdinReplica], report: Report, *, clients: int,
    saturation_seconds: float, fractions: list[float], seconds: float,
) -> dict[str, Any]:
    """Find the saturation throughput of ``replicas``, then run the open loop at each fraction."""
    ports = [replica.port for replica in replicas]
    truncate_tables(url, ODIN_TABLES)
    report.progress(f"saturation: {clients} closed-loop clients for {saturation_seconds:.0f} s")
    saturated = await saturation(ports, clients, saturation_seconds)
    print(f"latency saturation clients={clients} rate={saturated['jobs_per_second']:.0f} jobs/s "
          f"errors={saturated['errors']}", flush=True)
    rates: dict[str, Any] = {}
    for fraction in fractions:
        rate = max(1.0, saturated["jobs_per_second"] * fraction)
        report.progress(f"open loop at {fraction:g} of saturation: {rate:.0f} jobs/s for {seconds:.0f} s")
        figures = await measure_rate(url, ports, rate, seconds)
        rates[f"{fraction:g}"] = figures
        e2e, start = figures["submit_to_final_event_ms"], figures["submit_to_start_ms"]
        print(f"latency fraction={fraction:<5g} rate={rate:.0f} jobs/s completed={figures['completed']}"
              f"/{figures['jobs']} start p50={start['p50']}ms p99={start['p99']}ms "
              f"final-event p50={e2e['p50']}ms p95={e2e['p95']}ms p99={e2e['p99']}ms "
              f"max={e2e['max']}ms client_cpu={figures['client_cpu_fraction']}", flush=True)
    return {"saturation": saturated, "rates": rates}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = Report("latency", {
        "saturation_clients": args.saturation_clients,
        "saturation_seconds": args.saturation_seconds,
        "fractions": args.fractions,
        "seconds_per_rate": args.seconds,
        "post_connections": POST_CONNECTIONS,
        "kind": "noop",
        "replicas": 1,
        "worker_concurrency": "default (10)",
    })

    async def run() -> None:
        log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="odin-bench-logs-"))
        with BenchPostgres(args.database_url, durable=args.durable) as server:
            report.parameters.update(server.describe())
            url = await server.create_odin_database(DATABASE)
            with Replicas([OdinReplica(url, log_dir, name="latency")]) as replicas:
                figures = await measure_latency(
                    url, replicas, report, clients=args.saturation_clients,
                    saturation_seconds=args.saturation_seconds, fractions=args.fractions,
                    seconds=args.seconds,
                )
        report.result("saturation_jobs_per_second", figures["saturation"]["jobs_per_second"], "jobs/s")
        report.result("rates", figures["rates"])

    return run_script(report, run, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
