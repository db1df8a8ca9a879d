"""Render ``bench/RESULTS.md`` and ``bench/results.png`` from the JSON summaries of a run.

``bench.run_all`` calls it at the end; run it alone to render again from the same files:

    python -m bench.summary bench/results
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
SCRIPTS = ("enqueue", "drain", "latency", "fanout", "scaleout", "compare", "profile")

TARGET_DRAIN_OVER_PGQUEUER = 2.0
TARGET_FRACTION_OF_CEILING = 0.7
TARGET_P50_MS = 5.0
TARGET_P99_MS = 50.0
TARGET_SUBSCRIBERS = 10_000
TARGET_KIB_PER_SUBSCRIBER = 20.0
TARGET_DELIVERY_P99_MS = 100.0


def load(folder: Path) -> dict[str, dict[str, Any]]:
    """Return the summaries found in ``folder``, by script name."""
    found = {}
    for script in SCRIPTS:
        path = folder / f"{script}.json"
        if path.is_file():
            found[script] = json.loads(path.read_text())
    return found


def _get(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return "n/a"
    return "met" if ok else "not met"


def targets(runs: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Return (target, measured, verdict) rows."""
    rows = []
    compare = _get(runs, "compare", "results") or {}
    over_pgqueuer = compare.get("odin_drain_over_best_pgqueuer")
    rows.append((
        f"Drain at least {TARGET_DRAIN_OVER_PGQUEUER:g}x PgQueuer's best tuned figure, events recorded",
        f"{_fmt(over_pgqueuer, 2)}x",
        _verdict(None if over_pgqueuer is None else over_pgqueuer >= TARGET_DRAIN_OVER_PGQUEUER),
    ))
    of_ceiling = compare.get("odin_drain_over_pgbench_batch_100")
    rows.append((
        f"Drain at least {TARGET_FRACTION_OF_CEILING:.0%} of the pgbench ceiling in batches of 100",
        f"{_fmt(None if of_ceiling is None else of_ceiling * 100, 0)}%",
        _verdict(None if of_ceiling is None else of_ceiling >= TARGET_FRACTION_OF_CEILING),
    ))
    half = _get(runs, "latency", "results", "rates", "0.5", "submit_to_final_event_ms") or {}
    p50, p99 = half.get("p50"), half.get("p99")
    rows.append((
        f"Submit to final event at half of saturation: p50 under {TARGET_P50_MS:g} ms, "
        f"p99 under {TARGET_P99_MS:g} ms",
        f"p50 {_fmt(p50, 1)} ms, p99 {_fmt(p99, 1)} ms",
        _verdict(None if p50 is None else p50 < TARGET_P50_MS and p99 < TARGET_P99_MS),
    ))
    fanout = _get(runs, "fanout", "results") or {}
    subscribers = _get(runs, "fanout", "parameters", "subscribers")
    kib = fanout.get("kib_per_subscriber")
    delivery_p99 = _get(fanout, "delivery_latency_ms", "p99")
    finished = fanout.get("streams_finished")
    rows.append((
        f"{TARGET_SUBSCRIBERS:,} streams on one replica under {TARGET_KIB_PER_SUBSCRIBER:g} KB each, "
        f"events delivered within {TARGET_DELIVERY_P99_MS:g} ms p99",
        f"{_fmt(finished)} of {_fmt(subscribers)} streams served, {_fmt(kib, 1)} KiB each, "
        f"p99 {_fmt(delivery_p99, 0)} ms",
        _verdict(None if kib is None else (
            (subscribers or 0) >= TARGET_SUBSCRIBERS and finished == subscribers
            and kib < TARGET_KIB_PER_SUBSCRIBER and delivery_p99 < TARGET_DELIVERY_P99_MS)),
    ))
    return rows


def odin_revision() -> str:
    try:
        head = subprocess.run(["git", "-C", str(BENCH_DIR.parent), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(BENCH_DIR.parent), "status", "--porcelain",
                                "--", "odin.py", "odin_ext", "sql"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} with uncommitted changes to the engine" if dirty else head


def render_markdown(runs: dict[str, dict[str, Any]], run_info: dict[str, Any]) -> str:
    first = next(iter(runs.values()), {})
    machine = first.get("machine", {})
    parameters = first.get("parameters", {})
    versions = _get(runs, "compare", "parameters", "versions") or {}
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`python -m bench.run_all`); `bench/README.md` explains each "
        "script. Absolute numbers depend on the machine and on what else ran on it, so the "
        "targets are judged on ratios and latencies measured in this one run, on one PostgreSQL.",
        "",
        "## Run",
        "",
        f"- Date: {run_info.get('started', 'n/a')}; total time {run_info.get('elapsed_minutes', 'n/a')} min.",
        f"- Machine: {machine.get('cpus')} cores ({machine.get('cpu_model')}), "
        f"{machine.get('memory_gib')} GiB memory. Load average before the run: "
        f"{run_info.get('load_before', 'n/a')}, after: {run_info.get('load_after', 'n/a')}.",
    ]
    for rerun in run_info.get("rerun", []):
        lines.append(f"- Run again on {rerun['started']} (another PostgreSQL server, same settings; "
                     f"load average {rerun['load_before']} before, {rerun['load_after']} after): "
                     + ", ".join(f"`bench.{name}`" for name in rerun["scripts"]) + ".")
    if run_info.get("shared"):
        lines.append("- The machine was shared with other work during the run (its load average was "
                     "already 1 or more before the run started), so every figure is noisy. Compare "
                     "ratios, not absolutes.")
    lines += [
        f"- Odin: revision {run_info.get('revision', odin_revision())}; Python {machine.get('python')}.",
        f"- PostgreSQL {parameters.get('postgres_server_version')} (throwaway embedded server, "
        f"fsync={parameters.get('postgres_fsync')}, synchronous_commit="
        f"{parameters.get('postgres_synchronous_commit')}, shared_buffers="
        f"{parameters.get('postgres_shared_buffers')}): durable like a production server.",
        "- Compared: " + ", ".join(f"{name} {version}" for name, version in versions.items()) + ".",
        "",
        "## Targets",
        "",
        "| Target | Measured | Verdict |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {target} | {measured} | {verdict} |" for target, measured, verdict in targets(runs)]
    lines += ["", "![Throughput and latency](results.png)", ""]
    lines += _compare_section(runs) + _drain_section(runs) + _enqueue_section(runs)
    lines += _latency_section(runs) + _fanout_section(runs) + _scaleout_section(runs)
    lines += _profile_section(runs)
    return "\n".join(lines) + "\n"


def _compare_section(runs: dict[str, dict[str, Any]]) -> list[str]:
    drain = _get(runs, "compare", "results", "drain")
    if not drain:
        return []
    lines = ["## Side by side (`bench.compare`)", "",
             "Drain of no-op jobs, first claim to last completion as each system recorded it; the "
             "best setting of each system. pgbench runs only the minimal claim-and-complete SQL.", "",
             "| System | Best setting | Jobs/s | Ratio to Odin |", "| --- | --- | --- | --- |"]
    for name, entry in drain.items():
        lines.append(f"| {name} | {entry['best_setting']} | {_fmt(entry['jobs_per_second'])} | "
                     f"{entry['ratio_to_odin']:.2f} |")
    lines += ["", "Every setting tried:", "", "| System | Setting | Jobs/s |", "| --- | --- | --- |"]
    for name, entry in drain.items():
        for setting, figures in entry["runs"].items():
            lines.append(f"| {name} | {setting} | {_fmt(figures['jobs_per_second'])} |")
    enqueue = _get(runs, "compare", "results", "enqueue") or {}
    if enqueue:
        lines += ["", "Enqueue from Python (one job per call on 8 connections, 1,000 per call on 2):", "",
                  "| System | One per call, jobs/s | Ratio | 1,000 per call, jobs/s | Ratio |",
                  "| --- | --- | --- | --- | --- |"]
        for name in enqueue.get("single", {}):
            single, bulk = enqueue["single"][name], enqueue["bulk"][name]
            lines.append(f"| {name} | {_fmt(single['jobs_per_second'])} | {single['ratio_to_odin']:.2f} | "
                         f"{_fmt(bulk['jobs_per_second'])} | {bulk['ratio_to_odin']:.2f} |")
    return lines + [""]


def _drain_section(runs: dict[str, dict[str, Any]]) -> list[str]:
    drain = _get(runs, "drain", "results", "runs")
    if not drain:
        return []
    jobs = _get(runs, "drain", "parameters", "jobs")
    lines = ["## Drain by worker concurrency (`bench.drain`)", "",
             f"{_fmt(jobs)} no-op jobs, one replica, events recorded.", "",
             "| Concurrency | Jobs/s | Fraction of best | Commits per job |", "| --- | --- | --- | --- |"]
    for concurrency, figures in drain.items():
        lines.append(f"| {concurrency} | {_fmt(figures['jobs_per_second'])} | "
                     f"{figures.get('fraction_of_best', 0):.2f} | {figures['commits_per_job']} |")
    return lines + [""]


def _enqueue_section(runs: dict[str, dict[str, Any]]) -> list[str]:
    results = _get(runs, "enqueue", "results")
    if not results:
        return []
    fractions = results.get("fraction_of_python_bulk", {})
    lines = ["## Enqueue paths (`bench.enqueue`)", "", "| Mode | Jobs/s | Fraction of python_bulk |",
             "| --- | --- | --- |"]
    for mode, fraction in fractions.items():
        lines.append(f"| {mode} | {_fmt(results.get(f'{mode}_jobs_per_second'))} | {fraction:.3f} |")
    return lines + [""]


def _latency_section(runs: dict[str, dict[str, Any]]) -> list[str]:
    results = _get(runs, "latency", "results")
    if not results:
        return []
    lines = ["## End-to-end latency (`bench.latency`)", "",
             f"Saturation (closed loop): {_fmt(results.get('saturation_jobs_per_second'))} jobs/s. "
             "Open loop at fractions of it; milliseconds.", "",
             "| Fraction | Jobs/s | Start p50 | Start p99 | Final event p50 | p95 | p99 | max | Client CPU |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for fraction, figures in results.get("rates", {}).items():
        start, final = figures["submit_to_start_ms"], figures["submit_to_final_event_ms"]
        lines.append(f"| {fraction} | {_fmt(figures['offered_jobs_per_second'])} | {_fmt(start['p50'], 1)} | "
                     f"{_fmt(start['p99'], 1)} | {_fmt(final['p50'], 1)} | {_fmt(final['p95'], 1)} | "
                     f"{_fmt(final['p99'], 1)} | {_fmt(final['max'], 1)} | {figures['client_cpu_fraction']} |")
    return lines + [""]


def _fanout_section(runs: dict[str, dict[str, Any]]) -> list[str]:
    results = _get(runs, "fanout", "results")
    if not results:
        return []
    parameters = runs["fanout"]["parameters"]
    latency = results.get("delivery_latency_ms", {})
    return ["## Fan-out (`bench.fanout`)", "",
            f"{_fmt(parameters['subscribers'])} streams over {parameters['jobs']} jobs of "
            f"{parameters['kind']}.", "",
            f"- RSS {results.get('rss_before_mib')} MiB before the streams, {results.get('rss_after_mib')} "
            f"MiB with all open: {results.get('kib_per_subscriber')} KiB per subscriber.",
            f"- Streams opened at {_fmt(results.get('connects_per_second'))} per second.",
            f"- {_fmt(results.get('deliveries'))} events delivered at {_fmt(results.get('deliveries_per_second'))} "
            f"per second: p50 {_fmt(latency.get('p50'), 0)} ms, p95 {_fmt(latency.get('p95'), 0)} ms, "
            f"p99 {_fmt(latency.get('p99'), 0)} ms, max {_fmt(latency.get('max'), 0)} ms.",
            f"- Streams that reached their final event: {_fmt(results.get('streams_finished'))}; "
            f"stream errors: {_fmt(results.get('stream_errors'))}.", ""]


def _scaleout_section(runs: dict[str, dict[str, Any]]) -> list[str]:
    results = _get(runs, "scaleout", "results", "by_replicas")
    if not results:
        return []
    lines = ["## Replicas on one database (`bench.scaleout`)", "",
             "All replicas, PostgreSQL and the clients share the same cores: this shows contention, "
             "not the capacity that more machines add.", "",
             "| Replicas | Drain jobs/s | Relative | Saturation jobs/s | Relative | Half-load p50 ms | p99 ms |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for count, entry in results.items():
        half = entry["half_saturation"]["submit_to_final_event_ms"]
        lines.append(f"| {count} | {_fmt(entry['drain']['jobs_per_second'])} | {entry['drain_relative']:.2f} | "
                     f"{_fmt(entry['saturation_jobs_per_second'])} | {entry['saturation_relative']:.2f} | "
                     f"{_fmt(half['p50'], 1)} | {_fmt(half['p99'], 1)} |")
    return lines + [""]


def _profile_section(runs: dict[str, dict[str, Any]]) -> list[str]:
    results = _get(runs, "profile", "results")
    if not results:
        return []
    lines = ["## Profile (`bench.profile`)", "",
             "py-spy samples of the replica (all threads); flame graphs in `bench/results/`.", ""]
    for phase in ("drain", "end_to_end"):
        profile = _get(results, phase, "profile")
        if not profile:
            continue
        lines += [f"{phase.replace('_', ' ').capitalize()}: busy {profile['busy_fraction']:.0%} of one core.", "",
                  "| Functions on the most stacks | Share |", "| --- | --- |"]
        lines += [f"| `{frame}` | {share:.0%} |" for frame, share in profile["top_inclusive"][:10]]
        lines += ["", "| Leaf functions | Share |", "| --- | --- |"]
        lines += [f"| `{frame}` | {share:.0%} |" for frame, share in profile["top_self"][:10]]
        lines.append("")
    statements = results.get("statements_per_job") or {}
    for phase, counts in statements.items():
        lines += [f"Statements per job, {phase.replace('_', ' ')} (from the server log):", "",
                  "| Statement | Per job |", "| --- | --- |"]
        lines += [f"| {kind} | {value} |" for kind, value in list(counts.items())[:12]]
        lines.append("")
    return lines


def render_chart(runs: dict[str, dict[str, Any]], path: Path) -> None:
    """Draw throughput and latency panels into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 3, figsize=(16, 9))
    _chart_compare(axes[0][0], runs)
    _chart_drain(axes[0][1], runs)
    _chart_enqueue(axes[0][2], runs)
    _chart_latency(axes[1][0], runs)
    _chart_fanout(axes[1][1], runs)
    _chart_scaleout(axes[1][2], runs)
    figure.suptitle("Odin benchmarks: one run, one PostgreSQL (ratios matter, absolutes depend on the machine)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _chart_compare(axis: Any, runs: dict[str, dict[str, Any]]) -> None:
    drain = _get(runs, "compare", "results", "drain") or {}
    names = list(drain)
    rates = [drain[name]["jobs_per_second"] for name in names]
    colors = ["tab:blue" if name == "odin" else "tab:gray" for name in names]
    bars = axis.bar([name.replace("_batch_", "\nbatch ") for name in names], rates, color=colors)
    for bar, name in zip(bars, names):
        axis.annotate(f"{drain[name]['ratio_to_odin']:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      ha="center", va="bottom", fontsize=9)
    axis.set_title("Drain, best setting each (ratio to Odin)")
    axis.set_ylabel("jobs/s")


def _chart_drain(axis: Any, runs: dict[str, dict[str, Any]]) -> None:
    drain = _get(runs, "drain", "results", "runs") or {}
    axis.plot([int(c) for c in drain], [f["jobs_per_second"] for f in drain.values()], marker="o")
    axis.set_xscale("log")
    axis.set_title("Odin drain by worker concurrency (1 replica)")
    axis.set_xlabel("ODIN_WORKER_CONCURRENCY")
    axis.set_ylabel("jobs/s")


def _chart_enqueue(axis: Any, runs: dict[str, dict[str, Any]]) -> None:
    enqueue = _get(runs, "compare", "results", "enqueue") or {}
    odin_paths = _get(runs, "enqueue", "results") or {}
    labels, values, colors = [], [], []
    for mode in ("single", "bulk"):
        for name, entry in enqueue.get(mode, {}).items():
            labels.append(f"{name}\n{mode}")
            values.append(entry["jobs_per_second"])
            colors.append("tab:blue" if name == "odin" else "tab:gray")
    for mode in ("http_single", "http_bulk"):
        if f"{mode}_jobs_per_second" in odin_paths:
            labels.append(f"odin\n{mode}")
            values.append(odin_paths[f"{mode}_jobs_per_second"])
            colors.append("tab:cyan")
    axis.bar(labels, values, color=colors)
    axis.set_yscale("log")
    axis.set_title("Enqueue (Python; Odin over HTTP in cyan)")
    axis.set_ylabel("jobs/s (log)")
    axis.tick_params(axis="x", labelsize=7, labelrotation=45)


def _chart_latency(axis: Any, runs: dict[str, dict[str, Any]]) -> None:
    rates = _get(runs, "latency", "results", "rates") or {}
    xs = [f["offered_jobs_per_second"] for f in rates.values()]
    for key, label, style in (("submit_to_final_event_ms", "final event", "-"),
                              ("submit_to_start_ms", "start", "--")):
        for percentile, color in (("p50", "tab:blue"), ("p99", "tab:red")):
            axis.plot(xs, [f[key][percentile] for f in rates.values()], style, marker="o", color=color,
                      label=f"{label} {percentile}")
    axis.axhline(TARGET_P50_MS, color="tab:blue", linewidth=0.8, linestyle=":")
    axis.axhline(TARGET_P99_MS, color="tab:red", linewidth=0.8, linestyle=":")
    axis.set_yscale("log")
    axis.set_title("End-to-end latency by offered load (targets dotted)")
    axis.set_xlabel("offered jobs/s")
    axis.set_ylabel("ms (log)")
    axis.legend(fontsize=8)


def _chart_fanout(axis: Any, runs: dict[str, dict[str, Any]]) -> None:
    results = _get(runs, "fanout", "results") or {}
    latency = results.get("delivery_latency_ms") or {}
    keys = ["p50", "p95", "p99", "max"]
    axis.bar(keys, [latency.get(key) or 0 for key in keys], color="tab:purple")
    axis.axhline(TARGET_DELIVERY_P99_MS, color="tab:red", linewidth=0.8, linestyle=":")
    axis.set_yscale("log")
    subscribers = _get(runs, "fanout", "parameters", "subscribers")
    axis.set_title(f"Fan-out: {_fmt(subscribers)} streams, {results.get('kib_per_subscriber', 'n/a')} KiB each")
    axis.set_ylabel("event delivery ms (log; target dotted)")


def _chart_scaleout(axis: Any, runs: dict[str, dict[str, Any]]) -> None:
    results = _get(runs, "scaleout", "results", "by_replicas") or {}
    counts = [int(c) for c in results]
    axis.plot(counts, [e["drain_relative"] for e in results.values()], marker="o", label="drain")
    axis.plot(counts, [e["saturation_relative"] for e in results.values()], marker="o", label="end-to-end saturation")
    axis.set_xticks(counts)
    axis.set_title("Replicas on one 2-core machine (relative to 1)")
    axis.set_xlabel("replicas")
    axis.legend(fontsize=8)


def write(folder: Path, run_info: dict[str, Any] | None = None) -> None:
    """Write ``bench/RESULTS.md`` and ``bench/results.png`` from the summaries in ``folder``."""
    runs = load(folder)
    info = run_info or {}
    (BENCH_DIR / "RESULTS.md").write_text(render_markdown(runs, info))
    render_chart(runs, BENCH_DIR / "results.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.summary", description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="folder with the scripts' JSON summaries")
    args = parser.parse_args(argv)
    info_path = args.folder / "run.json"
    write(args.folder, json.loads(info_path.read_text()) if info_path.is_file() else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
