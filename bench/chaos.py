"""Chaos run: replicas process thousands of mixed jobs while processes and the database die.

Starts a throwaway PostgreSQL and several ``odin.py serve`` replicas, submits jobs of the
kinds in ``bench/chaos_kinds.py``, and while they run, at random moments: kills a replica
with SIGKILL and starts it again, stops one with SIGTERM and starts it again, and restarts
PostgreSQL. Then it waits for every job to reach a final state and checks each one:

- lost: submitted but not in the database (must be 0);
- stuck: not in a final state when the run ends (must be 0);
- executed more than once: more than one finish recorded by the kind itself (allowed by
  at-least-once delivery, reported);
- rescued attempts, and how long after a kill the rescue came.

    .venv/bin/python -m bench.chaos --jobs 3000 --replicas 3 --seconds 40 --seed 1

Every server listens on 127.0.0.1; the run stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

from odin_ext.embedded import EmbeddedPostgres

REPO = Path(__file__).resolve().parent.parent
FINAL_STATES = ["completed", "failed", "cancelled"]


@dataclass
class Replica:
    index: int
    port: int
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    kills: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "odin.py", "serve"], cwd=REPO, env=self.env,
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

    def wait_ready(self, timeout_seconds: float = 30) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"replica {self.index} not ready after {timeout_seconds} s: see {self.log_path}")

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def wait_exit(self, timeout_seconds: float) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def submit(replicas: list[Replica], count: int, rng: random.Random) -> list[int]:
    kinds = [
        {"kind": "chaos_sleep", "args": {"milliseconds": 200}},
        {"kind": "chaos_sleep", "args": {"milliseconds": 1500}},
        {"kind": "chaos_hash", "args": {"rounds": 20000}},
        {"kind": "chaos_flaky"},
    ]
    ids: list[int] = []
    while len(ids) < count:
        batch = [dict(rng.choice(kinds)) for _ in range(min(500, count - len(ids)))]
        answer = httpx.post(f"{rng.choice(replicas).url}/v1/jobs/bulk", json={"jobs": batch}, timeout=30)
        answer.raise_for_status()
        ids.extend(job["id"] for job in answer.json()["jobs"])
    return ids


def run_chaos(replicas: list[Replica], server: EmbeddedPostgres, seconds: float,
              rng: random.Random, grace: float) -> list[str]:
    actions: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(2.0, 5.0))
        choice = rng.random()
        victim = rng.choice(replicas)
        if choice < 0.45:
            victim.signal(signal.SIGKILL)
            victim.kills.append(time.time())
            victim.wait_exit(5)
            actions.append(f"kill -9 replica {victim.index}")
            victim.start()
        elif choice < 0.8:
            started = time.monotonic()
            victim.signal(signal.SIGTERM)
            code = victim.wait_exit(grace + 5)
            actions.append(
                f"SIGTERM replica {victim.index}: exit {code} after {time.monotonic() - started:.1f} s"
            )
            victim.start()
        else:
            started = time.monotonic()
            server.restart()
            actions.append(f"restart PostgreSQL ({time.monotonic() - started:.1f} s)")
        print(f"[{time.strftime('%H:%M:%S')}] {actions[-1]}", flush=True)
    return actions


def wait_final(conninfo: str, ids: list[int], timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        with psycopg.connect(conninfo) as conn:
            left = conn.execute(
                "SELECT count(*) FROM odin.jobs WHERE id = ANY(%s) AND state::text <> ALL(%s)",
                (ids, FINAL_STATES),
            ).fetchone()[0]
        print(f"  waiting for {left} unfinished jobs", flush=True)
        if left == 0:
            return
        time.sleep(2)


def report(conninfo: str, ids: list[int], replicas: list[Replica], actions: list[str]) -> dict[str, object]:
    with psycopg.connect(conninfo) as conn:
        found = conn.execute("SELECT count(*) FROM odin.jobs WHERE id = ANY(%s)", (ids,)).fetchone()[0]
        states = dict(conn.execute(
            "SELECT state::text, count(*) FROM odin.jobs WHERE id = ANY(%s) GROUP BY state", (ids,)
        ).fetchall())
        stuck = conn.execute(
            "SELECT count(*) FROM odin.jobs WHERE id = ANY(%s) AND state::text <> ALL(%s)", (ids, FINAL_STATES)
        ).fetchone()[0]
        multi_finish = conn.execute(
            "SELECT count(*) FROM (SELECT job_id FROM chaos_runs WHERE step = 'finish'"
            " GROUP BY job_id HAVING count(*) > 1) AS t"
        ).fetchone()[0]
        completed_without_finish = conn.execute(
            "SELECT count(*) FROM odin.jobs AS j WHERE j.id = ANY(%s) AND j.state = 'completed'"
            " AND j.kind <> 'noop' AND NOT EXISTS (SELECT 1 FROM chaos_runs AS r"
            " WHERE r.job_id = j.id AND r.step = 'finish')", (ids,)
        ).fetchone()[0]
        final_events = conn.execute(
            "SELECT count(*) FROM (SELECT job_id FROM odin.job_events WHERE job_id = ANY(%s)"
            " AND type IN ('completed', 'failed', 'cancelled') GROUP BY job_id"
            " HAVING count(*) > 1) AS t", (ids,)
        ).fetchone()[0]
        rescued = conn.execute(
            "SELECT count(*) FROM odin.job_events WHERE job_id = ANY(%s) AND type = 'rescued'", (ids,)
        ).fetchone()[0]
        interrupted = conn.execute(
            "SELECT count(*) FROM odin.job_events WHERE job_id = ANY(%s) AND type = 'interrupted'", (ids,)
        ).fetchone()[0]
        rescue_times = [row[0] for row in conn.execute(
            "SELECT extract(epoch FROM created_at) FROM odin.job_events"
            " WHERE job_id = ANY(%s) AND type = 'rescued' AND data->>'reason' = 'rescued'", (ids,)
        ).fetchall()]
    kills = sorted(t for replica in replicas for t in replica.kills)
    delays = []
    for kill_time in kills:
        after = [float(t) - kill_time for t in rescue_times if 0 <= float(t) - kill_time < 30]
        if after:
            delays.append(min(after))
    return {
        "submitted": len(ids),
        "lost": len(ids) - found,
        "stuck": stuck,
        "states": states,
        "executed_more_than_once": multi_finish,
        "completed_without_execution": completed_without_finish,
        "jobs_with_two_final_events": final_events,
        "rescued_attempts": rescued,
        "interrupted_attempts": interrupted,
        "first_rescue_after_kill_seconds": [round(d, 2) for d in delays],
        "actions": actions,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=40, help="how long the chaos lasts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--grace", type=float, default=3, help="ODIN_SHUTDOWN_GRACE_SECONDS")
    parser.add_argument("--finish-timeout", type=float, default=180)
    args = parser.parse_args(argv)
    print(f"chaos: jobs={args.jobs} replicas={args.replicas} seconds={args.seconds} "
          f"seed={args.seed} grace={args.grace}", flush=True)
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="odin-chaos-"))
    os.chmod(workdir, 0o711)
    server = EmbeddedPostgres(workdir / "pg", durable=False)
    server.start()
    replicas: list[Replica] = []
    try:
        conninfo = server.url
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE chaos_runs (job_id bigint, attempt int, step text, pid int,"
                " at timestamptz DEFAULT now())"
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith("ODIN_")}
        env.update({
            "ODIN_DATABASE_URL": conninfo, "CHAOS_DATABASE_URL": conninfo,
            "ODIN_KIND_MODULES": '["bench.chaos_kinds"]', "ODIN_WORKER_CONCURRENCY": "20",
            "ODIN_SHUTDOWN_GRACE_SECONDS": str(args.grace), "ODIN_LOG_LEVEL": "WARNING",
            "ODIN_RETRY_BASE_SECONDS": "0.2", "ODIN_RETRY_MAX_SECONDS": "2",
        })
        for index in range(args.replicas):
            port = free_port()
            replica = Replica(index, port, workdir / f"replica-{index}.log",
                              {**env, "ODIN_PORT": str(port)})
            replica.start()
            replicas.append(replica)
        for replica in replicas:
            replica.wait_ready()
        ids = submit(replicas, args.jobs, rng)
        print(f"submitted {len(ids)} jobs", flush=True)
        actions = run_chaos(replicas, server, args.seconds, rng, args.grace)
        for replica in replicas:
            replica.wait_ready(60)
        wait_final(conninfo, ids, args.finish_timeout)
        figures = report(conninfo, ids, replicas, actions)
    finally:
        for replica in replicas:
            replica.signal(signal.SIGTERM)
        for replica in replicas:
            replica.wait_exit(args.grace + 5)
        server.stop()
    print(json.dumps(figures, indent=2))
    print(f"logs and data in {workdir}")
    ok = figures["lost"] == 0 and figures["stuck"] == 0 and figures["jobs_with_two_final_events"] == 0
    print("RESULT:", "OK" if ok else "FAILED", f"lost={figures['lost']} stuck={figures['stuck']}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
