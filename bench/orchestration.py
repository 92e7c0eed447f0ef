"""What the orchestration costs: requests per second and CPU per request at zero latency.

    python bench/orchestration.py [--requests 5000] [--db postgres|sqlite]
        [--max-concurrency 200] [--workers 2] [--threads 16] [--profile DIR]

The simulator answers at once, so the upstream costs (almost) nothing and what is left is
promptq: submit (validate, insert, publish), Celery delivery, claims, the limiter's Redis
round trips, the HTTP call, group-committed results. End to end: `promptq submit`
spawned to the batch's `completed_at`. CPU: the workers (psutil, read before they stop)
plus the submit process (its rusage), per request; Redis, PostgreSQL and the simulator
are listed apart. bench/baseline.py runs the same file first as the ceiling of this
machine (the simulator and an HTTP client alone).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import baseline
import hotspots
from cluster import Cluster, cpu_by_group, cpu_delta
from common import record, write_batch

from jobs.simulator import SimulatorProcess

WARM_UP_REQUESTS = 64
TARGET_PER_S = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--max-concurrency", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16, help="Celery threads per worker")
    hotspots.add_arguments(parser)
    args = parser.parse_args()
    n, c = args.requests, args.max_concurrency

    with (
        tempfile.TemporaryDirectory(prefix="promptq-bench-") as tmp_name,
        SimulatorProcess(latency_ms=0) as sim,
    ):
        tmp = Path(tmp_name)
        batch_file = write_batch(tmp / "in.jsonl", n)
        env = {"PROMPTQ_MAX_CONCURRENCY": str(c)}
        with Cluster(tmp, db=args.db, upstream_base_url=sim.base_url, env=env) as cluster:
            plain = baseline.run(
                batch_file, tmp / "baseline.jsonl", base_url=sim.base_url, max_in_flight=c
            )
            print(f"baseline: {n / plain.wall_s:.0f} requests/s", flush=True)
            pids = cluster.start_workers(args.workers, args.threads)
            cluster.warm_up(WARM_UP_REQUESTS)
            sim.reset()
            assert sim.process is not None
            groups = {"workers": pids, **cluster.service_pids(), "simulator": [sim.process.pid]}
            spy = hotspots.profiler(args, pids)
            cpu_before = cpu_by_group(groups)
            with spy:
                submitted = cluster.submit(batch_file)
                finished = cluster.wait(submitted.batch_id, timeout_s=170)
            cpu = cpu_delta(cpu_before, cpu_by_group(groups))
            stats = sim.stats()

    e2e_s = finished.completed_at - submitted.started_at
    ours_s = cpu["workers"] + submitted.cpu_s
    per_s = n / e2e_s
    record(
        f"orchestration-{args.db}",
        {
            "db": args.db,
            "requests": n,
            "max_concurrency": c,
            "workers": args.workers,
            "threads_per_worker": args.threads,
            "status": finished.status,
            "completed": finished.completed,
            "e2e_s": round(e2e_s, 2),
            "requests_per_s": round(per_s, 1),
            "target_met": per_s >= TARGET_PER_S,
            "baseline_requests_per_s": round(n / plain.wall_s, 1),
            "e2e_over_baseline": round(e2e_s / plain.wall_s, 2),
            "submit_s": round(submitted.wall_s, 2),
            "calls_s": round(stats["last_answer_at"] - stats["first_request_at"], 2),
            "first_call_after_s": round(stats["first_request_at"] - submitted.started_at, 2),
            "upstream_max_in_flight": stats["max_in_flight"],
            "cpu_ms_per_request": {
                "ours": round(ours_s * 1000 / n, 2),
                "workers": round(cpu["workers"] * 1000 / n, 2),
                "submit": round(submitted.cpu_s * 1000 / n, 2),
                **{
                    name: round(seconds * 1000 / n, 2)
                    for name, seconds in cpu.items()
                    if name != "workers"
                },
                "baseline_client": round(plain.cpu_s * 1000 / n, 2),
            },
            "profiled": bool(args.profile),
        },
    )
    hotspots.write_summary(spy)


if __name__ == "__main__":
    main()
