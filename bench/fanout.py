"""Fan-out: many event-stream subscribers on one replica, their memory and event latency.

1. Start one replica that serves the queue ``fanout`` (and may open ``--subscribers`` streams),
   pause that queue and submit ``--jobs`` ``countdown`` jobs to it, which therefore wait.
2. Open ``--subscribers`` streams, spread evenly over the jobs, from ``--client-processes``
   client processes; each stream reads the job's log (its ``queued`` event) and then idles.
3. Once all are open, the replica's RSS minus its RSS before the streams, divided by the
   number of streams, is the memory per subscriber.
4. Resume the queue: the jobs run (ODIN_WORKER_CONCURRENCY at a time), each writing a
   ``running``, a ``log``, ``--steps`` ``progress`` and a ``completed`` event, which every
   subscriber of that job receives. Delivery latency is the time from an event's ``at``
   (when its transaction started) to its receipt by a subscriber.

Raises this process's open-files limit to its hard limit first; the replica and the client
processes inherit it. Bounded by ``--timeout`` seconds in all.

    python -m bench.fanout --subscribers 10000 --jobs 100
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import queue
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import postgres
from bench.client import ConnectionPool, follow_events, path_of
from bench.postgres import BenchPostgres
from bench.replica import OdinReplica, Replicas
from bench.report import Report, percentiles, run_script

DATABASE = "odin_bench_fanout"
QUEUE = "fanout"
CONNECTS_IN_FLIGHT = 64
SETTLE_SECONDS = 2.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000, help="streams to open (default 10000)")
    parser.add_argument("--jobs", type=int, default=100, help="jobs the streams follow (default 100)")
    parser.add_argument("--steps", type=int, default=5, help="progress events per job (default 5)")
    parser.add_argument("--interval", type=float, default=0.5,
                        help="seconds between a job's progress events (default 0.5)")
    parser.add_argument("--client-processes", type=int, default=2,
                        help="processes that hold the streams (default 2)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds the run may take (default 300)")
    parser.add_argument("--log-dir", type=Path, help="folder for the replica's log (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the summary to this JSON file")
    postgres.add_arguments(parser)
    return parser


def raise_open_files_limit() -> int:
    """Raise the soft limit of open files to the hard limit; return the new soft limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# Client processes ---------------------------------------------------------------------------


def client_process(
    index: int, port: int, streams: list[tuple[int, str]], timeout: float, messages: Any
) -> None:
    """Hold ``streams`` open until their final events.

    Sends ``("connected", index, count)`` on ``messages`` as streams open, then
    ``("records", index, records)`` with each stream's events and error.
    """
    raise_open_files_limit()
    records = asyncio.run(_client(index, port, streams, timeout, messages))
    messages.put(("records", index, records))


async def _client(index: int, port: int, streams: list[tuple[int, str]], timeout: float,
                  messages: Any) -> list[tuple[list[tuple[str, float, float]], str | None]]:
    gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
    connected = 0

    async def one(job_id: int, path: str) -> Any:
        nonlocal connected
        await gate.acquire()
        released = False

        def on_connected() -> None:
            nonlocal connected, released
            connected += 1
            gate.release()
            released = True
            if connected % 500 == 0 or connected == len(streams):
                messages.put(("connected", index, connected))

        try:
            return await follow_events("127.0.0.1", port, job_id, path,
                                       on_connected=on_connected, timeout_seconds=timeout)
        finally:
            if not released:
                gate.release()

    results = await asyncio.gather(*(one(job_id, path) for job_id, path in streams))
    return [(record.events, record.error) for record in results]


# The run ------------------------------------------------------------------------------------


async def submit_jobs(replica: OdinReplica, count: int, steps: int, interval: float) -> list[tuple[int, str]]:
    """Pause the queue and submit ``count`` countdown jobs; return their ids and stream paths."""
    pool = ConnectionPool("127.0.0.1", replica.port, 8)
    try:
        response = await pool.request("POST", f"/v1/queues/{QUEUE}/pause")
        if response.status != 200:
            raise RuntimeError(f"pausing queue {QUEUE} failed with status {response.status}")
        body = {"jobs": [{"kind": "countdown", "queue": QUEUE,
                          "args": {"steps": steps, "interval_seconds": interval}}] * count}
        response = await pool.request("POST", "/v1/jobs/bulk", body)
        if response.status != 202:
            raise RuntimeError(f"bulk submission failed with status {response.status}: {response.body[:200]!r}")
        return [(job["id"], path_of(job["events_url"])) for job in response.json()["jobs"]]
    finally:
        await pool.close()


async def resume_queue(replica: OdinReplica) -> None:
    pool = ConnectionPool("127.0.0.1", replica.port, 1)
    try:
        response = await pool.request("POST", f"/v1/queues/{QUEUE}/resume")
        if response.status != 200:
            raise RuntimeError(f"resuming queue {QUEUE} failed with status {response.status}")
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    open_files = raise_open_files_limit()
    report = Report("fanout", {
        "subscribers": args.subscribers,
        "jobs": args.jobs,
        "subscribers_per_job": args.subscribers // args.jobs,
        "kind": f"countdown (steps={args.steps}, interval_seconds={args.interval})",
        "client_processes": args.client_processes,
        "worker_concurrency": "default (10)",
        "open_files_limit": open_files,
    })

    async def run() -> None:
        log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="odin-bench-logs-"))
        deadline = time.monotonic() + args.timeout
        with BenchPostgres(args.database_url, durable=args.durable) as server:
            report.parameters.update(server.describe())
            url = await server.create_odin_database(DATABASE)
            settings = {"ODIN_QUEUES": f'["default","{QUEUE}"]',
                        "ODIN_MAX_STREAMS": str(args.subscribers + 100)}
            with Replicas([OdinReplica(url, log_dir, name="fanout", settings=settings)]) as [replica]:
                await run_fanout(replica, deadline)

    async def run_fanout(replica: OdinReplica, deadline: float) -> None:
        jobs = await submit_jobs(replica, args.jobs, args.steps, args.interval)
        streams = [jobs[index % len(jobs)] for index in range(args.subscribers)]
        await asyncio.sleep(SETTLE_SECONDS)
        rss_before = replica.rss_bytes()
        context = multiprocessing.get_context("spawn")
        messages = context.Queue()
        shares = [streams[index::args.client_processes] for index in range(args.client_processes)]
        clients = [context.Process(target=client_process, daemon=True,
                                   args=(index, replica.port, share, args.timeout, messages))
                   for index, share in enumerate(shares)]
        connect_started = time.monotonic()
        for client in clients:
            client.start()
        try:
            await wait_for_connected(messages, shares, deadline)
            connect_seconds = time.monotonic() - connect_started
            await asyncio.sleep(SETTLE_SECONDS)
            rss_after = replica.rss_bytes()
            per_subscriber = (rss_after - rss_before) / args.subscribers
            print(f"fanout subscribers={args.subscribers} connect={connect_seconds:.1f}s "
                  f"rss_before={rss_before / 2**20:.1f}MiB rss_after={rss_after / 2**20:.1f}MiB "
                  f"per_subscriber={per_subscriber / 1024:.1f}KiB", flush=True)
            report.result("rss_before_mib", round(rss_before / 2**20, 1), "MiB")
            report.result("rss_after_mib", round(rss_after / 2**20, 1), "MiB")
            report.result("kib_per_subscriber", round(per_subscriber / 1024, 2), "KiB")
            report.result("connects_per_second", round(args.subscribers / connect_seconds, 1), "streams/s")
            resumed_at = time.time()
            await resume_queue(replica)
            report.progress("queue resumed, jobs run")
            records = await collect_records(messages, len(clients), report, deadline)
        finally:
            for client in clients:
                if client.is_alive():
                    client.terminate()
                client.join(5)
        summarize_delivery(records, resumed_at)

    async def wait_for_connected(messages: Any, shares: list[list[tuple[int, str]]], deadline: float) -> None:
        counts = [0] * len(shares)
        total = sum(len(share) for share in shares)
        while sum(counts) < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {sum(counts)} of {total} streams opened in time")
            try:
                message, index, value = messages.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.1)
                continue
            if message == "records":
                raise RuntimeError(f"client process {index} ended before all streams were open")
            counts[index] = value
            report.progress(f"{sum(counts):,}/{total:,} streams open")

    async def collect_records(messages: Any, count: int, report: Report, deadline: float) -> list[Any]:
        collected: list[Any] = []
        finished_processes = 0
        while finished_processes < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{finished_processes} of {count} client processes finished in time")
            try:
                message, _, value = messages.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.1)
                continue
            if message == "records":
                finished_processes += 1
                collected.extend(value)
                report.progress(f"{len(collected):,} streams finished")
        return collected

    def summarize_delivery(records: list[Any], resumed_at: float) -> None:
        latencies = [(received - at) * 1000 for events, _ in records for _, at, received in events
                     if at >= resumed_at - 0.5]
        errors = [error for _, error in records if error]
        finished = sum(1 for events, _ in records if events and events[-1][0] == "completed")
        figures = percentiles(latencies)
        span = max((received for events, _ in records for _, _, received in events), default=resumed_at)
        print(f"fanout deliveries={len(latencies)} streams_finished={finished}/{len(records)} "
              f"errors={len(errors)} latency p50={figures['p50']}ms p95={figures['p95']}ms "
              f"p99={figures['p99']}ms max={figures['max']}ms", flush=True)
        report.result("delivery_latency_ms", figures)
        report.result("deliveries", len(latencies))
        report.result("deliveries_per_second", round(len(latencies) / max(span - resumed_at, 1e-3), 1),
                      "events/s")
        report.result("streams_finished", finished)
        report.result("stream_errors", len(errors))
        if errors:
            report.note(f"first stream error: {errors[0]}")

    return run_script(report, run, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
