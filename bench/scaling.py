"""Scaling: the same batch through 1, 2 and 4 worker processes; requests/s and CPU per request.

    python bench/scaling.py [--requests 3000] [--latency-ms 0] [--max-concurrency 200]
        [--workers 1,2,4] [--threads 16]
    python bench/scaling.py --latency-ms 200 --max-concurrency 64

PostgreSQL + Redis (tests/services.py, set up as in production), the simulator in its own
process. For each worker count, in one invocation: start the workers, warm them with a
small batch, then submit the batch and wait for its `completed_at`. requests/s is end to
end (submit spawned to completed_at); CPU is the workers' (psutil) plus the submit's, per
request. Both are also given as ratios against the 1-worker run of the same invocation.
With latency, the ideal is N x served latency / C and `e2e_over_ideal` is shown too.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from cluster import Cluster, cpu_by_group, cpu_delta
from common import record, write_batch

from jobs.simulator import SimulatorProcess

WARM_UP_REQUESTS = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--max-concurrency", type=int, default=200)
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma separated")
    parser.add_argument("--threads", type=int, default=16, help="Celery threads per worker")
    args = parser.parse_args()
    n, c = args.requests, args.max_concurrency
    counts = [int(x) for x in args.workers.split(",")]

    runs: list[dict[str, object]] = []
    figures: list[tuple[float, float]] = []  # requests/s, CPU ms per request (ours)
    with (
        tempfile.TemporaryDirectory(prefix="promptq-bench-") as tmp_name,
        SimulatorProcess(latency_ms=args.latency_ms) as sim,
    ):
        tmp = Path(tmp_name)
        batch_file = write_batch(tmp / "in.jsonl", n)
        env = {"PROMPTQ_MAX_CONCURRENCY": str(c)}
        with Cluster(tmp, db="postgres", upstream_base_url=sim.base_url, env=env) as cluster:
            for count in counts:
                pids = cluster.start_workers(count, args.threads)
                cluster.warm_up(WARM_UP_REQUESTS)
                sim.reset()
                assert sim.process is not None
                groups = {"workers": pids, **cluster.service_pids()}
                before = cpu_by_group(groups)
                submitted = cluster.submit(batch_file)
                finished = cluster.wait(submitted.batch_id, timeout_s=150)
                cpu = cpu_delta(before, cpu_by_group(groups))
                stats = sim.stats()
                assert cluster.workers is not None
                cluster.workers.stop()
                cluster.workers = None
                e2e_s = finished.completed_at - submitted.started_at
                ours_s = cpu["workers"] + submitted.cpu_s
                ideal_s = stats["work_s"] / c if args.latency_ms else 0.0
                run = {
                    "workers": count,
                    "status": finished.status,
                    "completed": finished.completed,
                    "e2e_s": round(e2e_s, 2),
                    "requests_per_s": round(n / e2e_s, 1),
                    "submit_s": round(submitted.wall_s, 2),
                    "upstream_max_in_flight": stats["max_in_flight"],
                    "cpu_ms_per_request": {
                        "ours": round(ours_s * 1000 / n, 2),
                        "workers": round(cpu["workers"] * 1000 / n, 2),
                        "submit": round(submitted.cpu_s * 1000 / n, 2),
                        "postgres": round(cpu["postgres"] * 1000 / n, 2),
                        "redis": round(cpu["redis"] * 1000 / n, 2),
                    },
                }
                if ideal_s:
                    run["ideal_s"] = round(ideal_s, 2)
                    run["e2e_over_ideal"] = round(e2e_s / ideal_s, 3)
                print(run, flush=True)
                runs.append(run)
                figures.append((n / e2e_s, ours_s * 1000 / n))

    for run, (per_s, cpu_ms) in zip(runs, figures, strict=True):
        run["requests_per_s_ratio"] = round(per_s / figures[0][0], 2)
        run["cpu_ms_per_request_ratio"] = round(cpu_ms / figures[0][1], 2)
    record(
        "scaling-postgres",
        {
            "requests": n,
            "latency_ms": args.latency_ms,
            "max_concurrency": c,
            "threads_per_worker": args.threads,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
