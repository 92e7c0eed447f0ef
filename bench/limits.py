"""Issue 3's utilisation figure: a shared cap of 16 over three workers, kept full.

    python bench/limits.py [--requests 1500] [--latency-ms 200] [--max-concurrency 16]
        [--workers 3] [--threads 8] [--db postgres|sqlite] [--profile DIR]

Three `promptq worker` processes (the default 8 threads each) share
PROMPTQ_MAX_CONCURRENCY=16 through Redis. The simulator must never see more than 16
calls at once, and while it works it should be busy at 0.9 or more of the ideal:
busy ratio = work_s / (16 x busy_s), the mean calls in flight over the cap.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import hotspots
from cluster import Cluster, cpu_by_group, cpu_delta
from common import record, write_batch

from jobs.simulator import SimulatorProcess

WARM_UP_REQUESTS = 48


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--max-concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8, help="Celery threads per worker")
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    hotspots.add_arguments(parser)
    args = parser.parse_args()
    n, c = args.requests, args.max_concurrency

    with (
        tempfile.TemporaryDirectory(prefix="promptq-bench-") as tmp_name,
        SimulatorProcess(latency_ms=args.latency_ms) as sim,
    ):
        tmp = Path(tmp_name)
        batch_file = write_batch(tmp / "in.jsonl", n)
        env = {"PROMPTQ_MAX_CONCURRENCY": str(c)}
        with Cluster(tmp, db=args.db, upstream_base_url=sim.base_url, env=env) as cluster:
            pids = cluster.start_workers(args.workers, args.threads)
            cluster.warm_up(WARM_UP_REQUESTS)
            sim.reset()
            assert sim.process is not None
            groups = {"workers": pids, **cluster.service_pids(), "simulator": [sim.process.pid]}
            spy = hotspots.profiler(args, pids)
            cpu_before = cpu_by_group(groups)
            with spy:
                submitted = cluster.submit(batch_file)
                ideal_s = n * args.latency_ms / 1000 / c
                finished = cluster.wait(submitted.batch_id, timeout_s=max(120, 6 * ideal_s))
            cpu = cpu_delta(cpu_before, cpu_by_group(groups))
            stats = sim.stats()

    ideal_s = stats["work_s"] / c
    e2e_s = finished.completed_at - submitted.started_at
    busy_ratio = stats["work_s"] / (c * stats["busy_s"])
    record(
        f"limits-{args.db}",
        {
            "db": args.db,
            "requests": n,
            "latency_ms": args.latency_ms,
            "max_concurrency": c,
            "workers": args.workers,
            "threads_per_worker": args.threads,
            "status": finished.status,
            "completed": finished.completed,
            "upstream_max_in_flight": stats["max_in_flight"],
            "cap_held": stats["max_in_flight"] <= c,
            "upstream_busy_ratio": round(busy_ratio, 3),
            "busy_target_met": busy_ratio >= 0.9,
            "upstream_busy_s": round(stats["busy_s"], 2),
            "ideal_s": round(ideal_s, 2),
            "e2e_s": round(e2e_s, 2),
            "e2e_over_ideal": round(e2e_s / ideal_s, 3),
            "submit_s": round(submitted.wall_s, 2),
            "cpu_s": {**cpu, "submit": round(submitted.cpu_s, 2)},
            "cpu_ms_per_request_ours": round((cpu["workers"] + submitted.cpu_s) * 1000 / n, 2),
            "profiled": bool(args.profile),
        },
    )
    hotspots.write_summary(spy)


if __name__ == "__main__":
    main()
