"""Scale: a large batch submitted, stored and exported; wall time, peak memory, bytes per request.

    python bench/scale.py [--requests 100000] [--db sqlite|postgres|both]

No worker runs: `promptq submit` validates the file (streamed), inserts every request in
one transaction and publishes the ids to a real Redis, where the messages just queue.
Each promptq command runs as a child process reaped with os.wait4, so its peak RSS
(ru_maxrss) is its own. Then every request is marked succeeded directly in the database
(one UPDATE: status, a ~1 KB JSON response body that differs per row, usage columns), and
`promptq results BATCH -o out.jsonl` exports them all. Database bytes per request:
SQLite, the database file plus its WAL after a TRUNCATE checkpoint; PostgreSQL,
pg_total_relation_size (table, TOAST, indexes) of requests + batches, after VACUUM.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from cluster import Cluster
from common import MODEL, ROOT, record
from sqlalchemy import text

from jobs.constants import QUEUE

TARGET_REQUESTS = 100_000
TARGET_SUBMIT_S = 30.0
TARGET_SUBMIT_MB = 300.0
TARGET_EXPORT_S = 10.0
COMMAND_TIMEOUT_S = 230

_TEXT = (
    "the of and to in a is that for it as with was on be by this are from at or an which "
    "customer order invoice shipment refund account billing product review summary report "
    "please classify extract translate rewrite answer explain compare list describe tone "
    "sentiment category priority support ticket email delivery warranty return policy"
)
_WORDS = _TEXT.split()

# A Responses API answer of about 1 KB; `id` and the text differ per row (SQL below).
_BODY_HEAD = '{"id":"resp_'
_BODY_TAIL = (
    '","object":"response","created_at":1764201600,"status":"completed","model":"'
    + MODEL
    + '","output":[{"type":"reasoning","id":"rs_1","summary":[]},{"type":"message",'
    '"id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text",'
    '"annotations":[],"text":"'
    + " ".join(_WORDS[i % len(_WORDS)] for i in range(7, 107))
    + '"}]}],"usage":{"input_tokens":112,"input_tokens_details":{"cached_tokens":0},'
    '"output_tokens":618,"output_tokens_details":{"reasoning_tokens":512},'
    '"total_tokens":730},"parallel_tool_calls":true,"temperature":1.0,"top_p":1.0,'
    '"truncation":"disabled","tool_choice":"auto","tools":[],"store":false}'
)


def write_file(path: Path, count: int) -> tuple[Path, float]:
    """`count` requests with prompts of 200 to 500 characters; returns the mean prompt size."""
    rng = random.Random(6)
    total = 0
    with path.open("wb") as f:
        for i in range(count):
            size = rng.randint(200, 500)
            words: list[str] = []
            n = 0
            while n < size:
                w = rng.choice(_WORDS)
                words.append(w)
                n += len(w) + 1
            prompt = f"Item {i}. " + " ".join(words)
            prompt = prompt[:size]
            total += len(prompt)
            body = {"model": MODEL, "input": prompt, "max_output_tokens": 1024}
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses", "body": body}
            f.write(orjson.dumps(line) + b"\n")
    return path, total / max(count, 1)


@dataclass(frozen=True)
class Ran:
    stdout: str
    wall_s: float
    cpu_s: float
    peak_mb: float


def run(args: list[str], env: dict[str, str]) -> Ran:
    """A promptq command in a child process; its wall time, CPU and its own peak RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "jobs", *args],
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
        deadline = started + COMMAND_TIMEOUT_S
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                raise TimeoutError(f"promptq {' '.join(args)} ran over {COMMAND_TIMEOUT_S} s")
            time.sleep(0.02)
        wall_s = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if process.returncode != 0:
        raise RuntimeError(f"promptq {' '.join(args)} failed:\n{stdout}\n{stderr[-3000:]}")
    return Ran(stdout, wall_s, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def db_bytes(cluster: Cluster) -> int:
    engine = cluster._engine
    if cluster.db == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        path = Path(cluster.env["PROMPTQ_DATA_DIR"]).resolve() / "promptq.db"
        return sum(
            p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists()
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE requests")
        conn.exec_driver_sql("VACUUM ANALYZE batches")
        return int(
            conn.exec_driver_sql(
                "SELECT pg_total_relation_size('requests') + pg_total_relation_size('batches')"
            ).scalar_one()
        )


def mark_succeeded(cluster: Cluster, batch_id: str, n: int) -> float:
    """Every request succeeded with a ~1 KB body (one UPDATE, as the workers would leave it)."""
    now = "CURRENT_TIMESTAMP"
    started = time.perf_counter()
    with cluster._engine.begin() as conn:
        conn.execute(
            text(
                f"""UPDATE requests SET status = 'succeeded', attempts = 1, status_code = 200,
                upstream_request_id = 'req_' || id, latency_ms = 1234.5,
                response_body = :head || id || :tail, finished_at = {now},
                input_tokens = 112, cached_input_tokens = 0, output_tokens = 618,
                reasoning_tokens = 512, total_tokens = 730, cost_usd = 0.0028544
                WHERE batch_id = :batch"""
            ),
            {"head": _BODY_HEAD, "tail": _BODY_TAIL, "batch": batch_id},
        )
        conn.execute(
            text(
                f"""UPDATE batches SET status = 'completed', request_completed = :n,
                completed_at = {now}, input_tokens = 112 * :n, output_tokens = 618 * :n,
                reasoning_tokens = 512 * :n, total_tokens = 730 * :n,
                cost_usd = 0.0028544 * :n WHERE id = :batch"""
            ),
            {"n": n, "batch": batch_id},
        )
    return time.perf_counter() - started


def redis_bytes(cluster: Cluster) -> tuple[int, int]:
    with cluster.redis.client() as client:
        info = client.info("memory")
        queued = client.llen(QUEUE)
    return int(info["used_memory"]), int(queued)


def one(db: str, n: int, tmp: Path, batch_file: Path, prompt_chars: float) -> None:
    with Cluster(tmp / db, db=db, upstream_base_url="http://127.0.0.1:9") as cluster:
        redis_before, _ = redis_bytes(cluster)
        bytes_before = db_bytes(cluster)
        print(f"{db}: submitting {n:,} requests", flush=True)
        submitted = run(["submit", str(batch_file)], cluster.env)
        batch_id = submitted.stdout.strip().splitlines()[-1]
        redis_after, messages = redis_bytes(cluster)
        stored = db_bytes(cluster) - bytes_before
        print(f"{db}: submit {submitted.wall_s:.1f} s, {submitted.peak_mb:.0f} MB", flush=True)
        update_s = mark_succeeded(cluster, batch_id, n)
        with_results = db_bytes(cluster) - bytes_before
        out = tmp / db / "out.jsonl"
        exported = run(["results", batch_id, "-o", str(out)], cluster.env)
        with out.open("rb") as f:
            lines = sum(1 for _ in f)
        print(f"{db}: export {exported.wall_s:.1f} s, {exported.peak_mb:.0f} MB", flush=True)

    record(
        f"scale-{db}",
        {
            "db": db,
            "requests": n,
            "input_bytes": batch_file.stat().st_size,
            "mean_prompt_chars": round(prompt_chars),
            "submit_s": round(submitted.wall_s, 2),
            "submit_requests_per_s": round(n / submitted.wall_s),
            "submit_cpu_s": round(submitted.cpu_s, 2),
            "submit_peak_mb": round(submitted.peak_mb, 1),
            # the targets are set for 100,000 requests (issue 6); None at other sizes
            "submit_target_met": submitted.wall_s < TARGET_SUBMIT_S
            and submitted.peak_mb < TARGET_SUBMIT_MB
            if n == TARGET_REQUESTS
            else None,
            "db_bytes_per_request_queued": round(stored / n),
            "db_bytes_per_request_with_results": round(with_results / n),
            "redis_messages_queued": messages,
            "redis_bytes_per_request": round((redis_after - redis_before) / n),
            "mark_succeeded_update_s": round(update_s, 2),
            "export_s": round(exported.wall_s, 2),
            "export_cpu_s": round(exported.cpu_s, 2),
            "export_peak_mb": round(exported.peak_mb, 1),
            "export_lines": lines,
            "export_bytes": out.stat().st_size if out.exists() else 0,
            "export_target_met": exported.wall_s < TARGET_EXPORT_S and lines == n
            if n == TARGET_REQUESTS
            else None,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    args = parser.parse_args()
    n = args.requests
    with tempfile.TemporaryDirectory(prefix="promptq-scale-") as tmp_name:
        tmp = Path(tmp_name)
        started = time.perf_counter()
        batch_file, prompt_chars = write_file(tmp / "in.jsonl", n)
        print(f"wrote {n:,} requests in {time.perf_counter() - started:.1f} s", flush=True)
        for db in ("sqlite", "postgres") if args.db == "both" else (args.db,):
            one(db, n, tmp, batch_file, prompt_chars)


if __name__ == "__main__":
    main()
