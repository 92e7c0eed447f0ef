"""`promptq run` stopped with Ctrl-C resumes where it stopped: nothing lost, nothing redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.deploy import promptq, wait_for


def test_an_interrupted_run_resumes_and_sends_only_unfinished_requests(
    tmp_path: Path, simulator: Any
) -> None:
    count = 120
    with (tmp_path / "in.jsonl").open("w") as f:
        for i in range(count):
            body = {"model": "o1-mini-2024-09-12", "input": f"question {i}"}
            f.write(
                json.dumps(
                    {"custom_id": f"q{i}", "method": "POST", "url": "/v1/responses", "body": body}
                )
                + "\n"
            )
    simulator.configure(latency_ms=300)
    env = {
        "PROMPTQ_UPSTREAM_BASE_URL": simulator.base_url,
        "COMETAPI_API_KEY": simulator.key,
        "PROMPTQ_DATA_DIR": str(tmp_path / "data"),
        "PROMPTQ_MAX_CONCURRENCY": "4",
        "PROMPTQ_SWEEP_INTERVAL_S": "0.5",
    }
    first = subprocess.Popen(
        [sys.executable, "-m", "jobs", "run", "in.jsonl", "-o", "out.jsonl"],
        cwd=tmp_path,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    wait_for(lambda: simulator.stats()["requests_total"] >= 20, 60, "the first calls")
    first.send_signal(signal.SIGINT)  # what Ctrl-C sends
    started = time.monotonic()
    out, err = first.communicate(timeout=60)
    assert first.returncode == 130, out + err
    assert "run the same command again to resume" in " ".join(err.split())
    assert time.monotonic() - started < 15  # in-flight calls end; the rest are handed back
    sent_before = simulator.stats()["requests_total"]
    assert sent_before < count

    second = promptq("run", "in.jsonl", "-o", "out.jsonl", env=env, cwd=tmp_path, timeout_s=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Resuming batch_" in second.stderr
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(line["custom_id"] for line in lines) == sorted(f"q{i}" for i in range(count))
    sends = Counter(entry["body_sha"] for entry in simulator.log())
    assert len(sends) == count
    # only calls in flight at the interrupt may have been sent twice
    assert sum(n - 1 for n in sends.values()) <= 4

    again = promptq("run", "in.jsonl", "-o", "again.jsonl", env=env, cwd=tmp_path, timeout_s=60)
    assert again.returncode == 0, again.stderr
    assert "already ran this file to completion" in " ".join(again.stderr.split())
    assert (tmp_path / "again.jsonl").read_text() == (tmp_path / "out.jsonl").read_text()
    assert simulator.stats()["requests_total"] == sum(sends.values())  # nothing sent again


def _started_by(pid: int) -> list[int]:
    """Live processes whose environment names `pid` as the parent to stop with."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"PROMPTQ_PARENT_PID={pid}".encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


def test_a_killed_run_leaves_no_worker_or_simulator_behind_and_its_rerun_completes(
    tmp_path: Path,
) -> None:
    from jobs.embedded import EmbeddedRedis

    count = 200
    with (tmp_path / "in.jsonl").open("w") as f:
        for i in range(count):
            body = {"model": "o1-mini-2024-09-12", "input": f"question {i}"}
            line = {"custom_id": f"q{i}", "method": "POST", "url": "/v1/responses", "body": body}
            f.write(json.dumps(line) + "\n")
    # no key: `run` starts its own simulator as well as its worker and an embedded Redis
    env = {"PROMPTQ_DATA_DIR": str(tmp_path / "data"), "PROMPTQ_SWEEP_INTERVAL_S": "0.5"}
    env_without_key = {k: v for k, v in os.environ.items() if k != "COMETAPI_API_KEY"}
    first = subprocess.Popen(
        [sys.executable, "-m", "jobs", "run", "in.jsonl", "-o", "out.jsonl"],
        cwd=tmp_path,
        env={**env_without_key, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        children = wait_for(lambda: len(_started_by(first.pid)) >= 2, 60, "worker and simulator")
        db = tmp_path / "data" / "promptq.db"

        def some_done() -> bool:
            import sqlite3

            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                query = "SELECT count(*) FROM requests WHERE status = 'succeeded'"
                return bool(conn.execute(query).fetchone()[0])

        wait_for(some_done, 60, "the first results")
        first.kill()  # no chance to stop what it started
        first.wait()
        wait_for(lambda: not _started_by(first.pid), 30, f"{children} to stop by themselves")

        again = promptq("run", "in.jsonl", "-o", "out.jsonl", env=env, cwd=tmp_path, timeout_s=180)
        assert again.returncode == 0, again.stdout + again.stderr
        lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert sorted(line["custom_id"] for line in lines) == sorted(f"q{i}" for i in range(count))
    finally:
        if first.poll() is None:
            first.kill()
        EmbeddedRedis((tmp_path / "data").resolve()).stop()
