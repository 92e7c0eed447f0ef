"""End to end at C=200 against the ideal and against the plain script, in one invocation.

    python bench/efficiency.py [--db sqlite|postgres|both] [--requests 3000]
        [--latency-ms 1000] [--jitter-ms 400] [--max-concurrency 200]
        [--workers 2] [--threads 16] [--profile DIR]

For each database: bench/baseline.py runs the batch file first (no worker running), then
two `promptq worker` processes are started, warmed with a small batch, and the clock
starts as `promptq submit` is spawned; it stops at the batch's `completed_at`, stamped
in the transaction that stores the last result. Ideal: N x the mean latency the
simulator served / C. Threads: each Celery thread holds one message of
PROMPTQ_IDS_PER_MESSAGE (16) ids, so 2 workers x 16 threads hold up to 512 ids for 200
slots: the limiter, not the thread count, is what caps the calls in flight.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import baseline
import hotspots
from cluster import Cluster, cpu_by_group, cpu_delta
from common import record, write_batch

from jobs.simulator import SimulatorProcess

WARM_UP_REQUESTS = 64


def run_one(
    db: str, args: argparse.Namespace, sim: SimulatorProcess, batch_file: Path, tmp: Path
) -> dict[str, Any]:
    n, c = args.requests, args.max_concurrency
    env = {"PROMPTQ_MAX_CONCURRENCY": str(c)}
    with Cluster(tmp / db, db=db, upstream_base_url=sim.base_url, env=env) as cluster:
        sim.reset()
        plain = baseline.run(
            batch_file, tmp / f"{db}-baseline.jsonl", base_url=sim.base_url, max_in_flight=c
        )
        plain_stats = sim.stats()
        print(f"[{db}] baseline: {plain.wall_s:.2f} s", flush=True)

        pids = cluster.start_workers(args.workers, args.threads)
        cluster.warm_up(WARM_UP_REQUESTS)
        sim.reset()
        assert sim.process is not None
        groups = {"workers": pids, **cluster.service_pids(), "simulator": [sim.process.pid]}
        spy = hotspots.profiler(args, pids, args.profile / db if args.profile else None)
        cpu_before = cpu_by_group(groups)
        with spy:
            submitted = cluster.submit(batch_file)
            mean_latency_s = (args.latency_ms + args.jitter_ms / 2) / 1000
            finished = cluster.wait(
                submitted.batch_id, timeout_s=max(120, 8 * n * mean_latency_s / c)
            )
        cpu = cpu_delta(cpu_before, cpu_by_group(groups))
        stats = sim.stats()

    e2e_s = finished.completed_at - submitted.started_at
    ideal_s = stats["work_s"] / c
    figures = {
        "db": db,
        "requests": n,
        "latency_ms": args.latency_ms,
        "jitter_ms": args.jitter_ms,
        "max_concurrency": c,
        "workers": args.workers,
        "threads_per_worker": args.threads,
        "status": finished.status,
        "completed": finished.completed,
        "e2e_s": round(e2e_s, 2),
        "ideal_s": round(ideal_s, 2),
        "e2e_over_ideal": round(e2e_s / ideal_s, 3),
        "baseline_s": round(plain.wall_s, 2),
        "baseline_over_ideal": round(plain.wall_s / (plain_stats["work_s"] / c), 3),
        "e2e_over_baseline": round(e2e_s / plain.wall_s, 3),
        "upstream_busy_ratio": round(stats["work_s"] / (c * stats["busy_s"]), 3),
        "baseline_upstream_busy_ratio": round(
            plain_stats["work_s"] / (c * plain_stats["busy_s"]), 3
        ),
        "upstream_max_in_flight": stats["max_in_flight"],
        "submit_s": round(submitted.wall_s, 2),
        "first_call_after_s": round(stats["first_request_at"] - submitted.started_at, 2),
        "stored_after_last_answer_s": round(finished.completed_at - stats["last_answer_at"], 2),
        "cpu_s": {**cpu, "submit": round(submitted.cpu_s, 2), "baseline": round(plain.cpu_s, 2)},
        "cpu_ms_per_request": {
            "ours": round((cpu["workers"] + submitted.cpu_s) * 1000 / n, 2),
            "baseline": round(plain.cpu_s * 1000 / n, 2),
        },
        "profiled": bool(args.profile),
    }
    hotspots.write_summary(spy)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--latency-ms", type=float, default=1000)
    parser.add_argument("--jitter-ms", type=float, default=400)
    parser.add_argument("--max-concurrency", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16, help="Celery threads per worker")
    hotspots.add_arguments(parser)
    args = parser.parse_args()
    dbs = ("sqlite", "postgres") if args.db == "both" else (args.db,)

    with (
        tempfile.TemporaryDirectory(prefix="promptq-bench-") as tmp_name,
        SimulatorProcess(latency_ms=args.latency_ms, jitter_ms=args.jitter_ms) as sim,
    ):
        tmp = Path(tmp_name)
        batch_file = write_batch(tmp / "in.jsonl", args.requests)
        for db in dbs:
            record(f"efficiency-{db}", run_one(db, args, sim, batch_file, tmp))


if __name__ == "__main__":
    main()
