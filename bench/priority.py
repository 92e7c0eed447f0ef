"""Issue 7's priority figure: an interactive job behind a bulk backlog ends within a few latencies.

    python bench/priority.py [--backlog 3000] [--latency-ms 200] [--max-concurrency 16]
        [--workers 2] [--threads 8] [--probes 10] [--gap-s 0.5] [--db sqlite|postgres]

For each mode (`interactive`, then `bulk` as the baseline), on a fresh cluster: submit a
bulk backlog, wait until 2 x C of its requests are done (the cap is full and every Celery
thread holds a message), then submit single-request probes one by one with
`promptq submit --priority MODE`. A probe's wait is its request's `finished_at` minus its
batch's `created_at`, both from the database, in upstream latencies. The ideal is 2: one
latency for a slot to free up, one for its own call. The bulk batch's throughput while the
probes ran, against C / latency, shows whether going first slowed the backlog.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from cluster import Cluster
from common import MODEL, promptq, record, write_batch
from sqlalchemy import select

from jobs.models import Batch, Request
from jobs.simulator import SimulatorProcess

MODES = ("interactive", "bulk")
WARM_UP_REQUESTS = 48
IDEAL_WAIT_LATENCIES = 2.0
POLL_S = 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=3000, help="bulk requests queued first")
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--max-concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8, help="Celery threads per worker")
    parser.add_argument("--probes", type=int, default=10, help="single-request batches")
    parser.add_argument("--gap-s", type=float, default=0.5, help="pause between probes")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="promptq-bench-") as tmp_name,
        SimulatorProcess(latency_ms=args.latency_ms) as sim,
    ):
        tmp = Path(tmp_name)
        backlog_file = write_batch(tmp / "backlog.jsonl", args.backlog)
        modes = {mode: run_mode(args, sim, tmp / mode, backlog_file, mode) for mode in MODES}

    baseline, ours = modes["bulk"], modes["interactive"]
    record(
        f"priority-{args.db}",
        {
            "db": args.db,
            "backlog": args.backlog,
            "latency_ms": args.latency_ms,
            "max_concurrency": args.max_concurrency,
            "workers": args.workers,
            "threads_per_worker": args.threads,
            "probes": args.probes,
            "gap_s": args.gap_s,
            "ideal_wait_latencies": IDEAL_WAIT_LATENCIES,
            "bulk_over_interactive_median_wait": round(
                baseline["wait_latencies_median"] / ours["wait_latencies_median"], 1
            ),
            **{mode: figures for mode, figures in modes.items()},
        },
    )


def run_mode(
    args: argparse.Namespace, sim: SimulatorProcess, tmp: Path, backlog_file: Path, mode: str
) -> dict[str, Any]:
    """One cluster: the backlog, then the probes at `mode` priority; the figures."""
    c, latency_s = args.max_concurrency, args.latency_ms / 1000
    ideal_backlog_s = args.backlog * latency_s / c
    tmp.mkdir()
    env = {"PROMPTQ_MAX_CONCURRENCY": str(c)}
    with Cluster(tmp, db=args.db, upstream_base_url=sim.base_url, env=env) as cluster:
        cluster.start_workers(args.workers, args.threads)
        cluster.warm_up(WARM_UP_REQUESTS)
        sim.reset()
        backlog = cluster.submit(backlog_file)
        wait_for_completed(cluster, backlog.batch_id, 2 * c, timeout_s=60)
        probe_ids = []
        for i in range(args.probes):
            path = write_probe(tmp / f"probe-{i}.jsonl", mode, i)
            out = promptq("submit", str(path), "--priority", mode, env=cluster.env)
            probe_ids.append(out.stdout.strip().splitlines()[-1])
            time.sleep(args.gap_s)
        # bulk probes queue behind the whole backlog: wait for it, with room for a slow box
        finished = cluster.wait(backlog.batch_id, timeout_s=max(120, 4 * ideal_backlog_s))
        for batch_id in probe_ids:
            cluster.wait(batch_id, timeout_s=60)
        stats = sim.stats()
        probes = probe_times(cluster, probe_ids)
        backlog_created, backlog_done = backlog_times(cluster, backlog.batch_id)

    waits_s = [done - created for created, done in probes]
    waits = [w / latency_s for w in waits_s]
    meanwhile = [sum(created < t <= done for t in backlog_done) for created, done in probes]
    window_start, window_end = probes[0][0], max(done for _, done in probes)
    in_window = sum(window_start < t <= window_end for t in backlog_done)
    ideal_rate = c / latency_s
    backlog_s = finished.completed_at - backlog_created
    median = statistics.median(waits)
    return {
        "wait_latencies_median": round(median, 2),
        "wait_latencies_max": round(max(waits), 2),
        "median_wait_over_ideal": round(median / IDEAL_WAIT_LATENCIES, 2),
        "wait_s": [round(w, 3) for w in waits_s],
        "bulk_done_during_probe": meanwhile,
        "bulk_done_during_probe_median": statistics.median(meanwhile),
        "probes_window_s": round(window_end - window_start, 2),
        "bulk_rate_during_probes_over_ideal": round(
            in_window / (window_end - window_start) / ideal_rate, 3
        ),
        "backlog_status": finished.status,
        "backlog_completed": finished.completed,
        "backlog_s": round(backlog_s, 2),
        "backlog_rate_over_ideal": round(args.backlog / backlog_s / ideal_rate, 3),
        "upstream_max_in_flight": stats["max_in_flight"],
        "upstream_mean_latency_ms": round(1000 * stats["work_s"] / stats["requests_total"], 1),
    }


def write_probe(path: Path, mode: str, i: int) -> Path:
    """One request, its own text: nothing to reuse, nothing shared with the backlog."""
    body = {"model": MODEL, "input": f"Probe {mode} {i} at {time.time_ns()}: one line."}
    line = {"custom_id": f"probe-{i}", "method": "POST", "url": "/v1/responses", "body": body}
    path.write_text(json.dumps(line) + "\n")
    return path


def wait_for_completed(cluster: Cluster, batch_id: str, count: int, timeout_s: float) -> None:
    query = select(Batch.request_completed).where(Batch.id == batch_id)  # type: ignore[call-overload]
    deadline = time.monotonic() + timeout_s
    while True:
        with cluster._engine.connect() as conn:
            if conn.execute(query).scalar_one() >= count:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id}: fewer than {count} done after {timeout_s} s")
        time.sleep(POLL_S)


def probe_times(cluster: Cluster, batch_ids: list[str]) -> list[tuple[float, float]]:
    """(batch created_at, request finished_at) per probe, in submission order, epoch seconds."""
    query = (
        select(Batch.id, Batch.created_at, Request.finished_at)  # type: ignore[call-overload]
        .join(Request, Request.batch_id == Batch.id)
        .where(Batch.id.in_(batch_ids))  # type: ignore[attr-defined]
    )
    with cluster._engine.connect() as conn:
        rows = {batch_id: (created, done) for batch_id, created, done in conn.execute(query)}
    return [(rows[b][0].timestamp(), rows[b][1].timestamp()) for b in batch_ids]


def backlog_times(cluster: Cluster, batch_id: str) -> tuple[float, list[float]]:
    """The backlog batch's created_at and every request's finished_at, epoch seconds."""
    created_query = select(Batch.created_at).where(Batch.id == batch_id)  # type: ignore[call-overload]
    done_query = select(Request.finished_at).where(Request.batch_id == batch_id)  # type: ignore[call-overload]
    with cluster._engine.connect() as conn:
        created: datetime = conn.execute(created_query).scalar_one()
        done = [t.timestamp() for t in conn.execute(done_query).scalars() if t is not None]
    return created.timestamp(), done


if __name__ == "__main__":
    main()
