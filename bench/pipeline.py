"""The whole pipeline, both ways, against the simulator with a fixed latency.

    python bench/pipeline.py [--requests 2000] [--latency-ms 200] [--concurrency 16]

1. `promptq run` on embedded defaults (SQLite, embedded Redis, one worker);
2. `promptq submit` + two `promptq worker` on PostgreSQL and a real Redis.
Each reports wall time against the ideal N x L / C, and the tokens the batch accounted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import PostgresServer, RedisServer, promptq, record, write_batch

from jobs.simulator import SimulatorProcess
from tests.deploy import Workers


def status(batch_id: str, env: dict[str, str]) -> dict:
    return json.loads(promptq("status", batch_id, "--json", env=env).stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    n, latency_s, c = args.requests, args.latency_ms / 1000, args.concurrency
    ideal_s = n * latency_s / c

    with (
        tempfile.TemporaryDirectory() as tmp_name,
        SimulatorProcess(latency_ms=args.latency_ms) as sim,
    ):
        tmp = Path(tmp_name)
        batch_file = write_batch(tmp / "in.jsonl", n)
        base = {
            "PROMPTQ_UPSTREAM_BASE_URL": sim.base_url,
            "COMETAPI_API_KEY": "sk-bench",
            "PROMPTQ_MAX_CONCURRENCY": str(c),
        }

        # 1. promptq run, embedded
        env = {**base, "PROMPTQ_DATA_DIR": str(tmp / "run-data")}
        started = time.monotonic()
        promptq("run", str(batch_file), "-o", str(tmp / "run-out.jsonl"), env=env, cwd=tmp)
        wall_s = time.monotonic() - started
        import sqlite3

        batch_id = (
            sqlite3.connect(tmp / "run-data" / "promptq.db")
            .execute("SELECT id FROM batches")
            .fetchone()[0]
        )
        batch = status(batch_id, env)
        record(
            "pipeline-run-embedded",
            {
                "requests": n,
                "latency_ms": args.latency_ms,
                "concurrency": c,
                "wall_s": round(wall_s, 2),
                "ideal_s": round(ideal_s, 2),
                "ideal_over_wall": round(ideal_s / wall_s, 3),
                "total_tokens": batch["usage"]["total_tokens"],
                "reasoning_tokens": batch["usage"]["output_tokens_details"]["reasoning_tokens"],
                "cost_usd": batch["cost_usd"],
                "note": "wall includes starting Redis and the worker",
            },
        )
        sim.reset()

        # 2. submit + 2 workers, PostgreSQL + Redis
        redis = RedisServer(tmp / "redis")
        pg = PostgresServer(tmp / "pg")
        redis.start()
        pg.start()
        try:
            env = {
                **base,
                "PROMPTQ_DATA_DIR": str(tmp / "pg-data"),
                "PROMPTQ_REDIS_URL": redis.url,
                "PROMPTQ_DATABASE_URL": pg.create_database("bench"),
            }
            promptq("db", "upgrade", env=env)
            workers = Workers(env, tmp / "logs").start(2)
            time.sleep(3)  # workers up before the clock starts: we measure the batch
            started = time.monotonic()
            batch_id = promptq("submit", str(batch_file), env=env).stdout.strip().splitlines()[-1]
            while (batch := status(batch_id, env))["status"] != "completed":
                time.sleep(0.5)
            wall_s = time.monotonic() - started
            workers.stop()
            stats = sim.stats()
            record(
                "pipeline-submit-postgres",
                {
                    "requests": n,
                    "latency_ms": args.latency_ms,
                    "concurrency": c,
                    "workers": 2,
                    "wall_s": round(wall_s, 2),
                    "ideal_s": round(ideal_s, 2),
                    "ideal_over_wall": round(ideal_s / wall_s, 3),
                    "upstream_max_in_flight": stats["max_in_flight"],
                    "total_tokens": batch["usage"]["total_tokens"],
                    "reasoning_tokens": batch["usage"]["output_tokens_details"]["reasoning_tokens"],
                    "cost_usd": batch["cost_usd"],
                    "note": "wall: submit to completed status, polled every 0.5 s",
                },
            )
        finally:
            redis.stop()
            pg.stop()


if __name__ == "__main__":
    main()
