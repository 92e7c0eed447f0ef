"""A promptq deployment on loopback for the benches: Redis, a database, workers, CPU meters.

Servers are set up as in production, not as in the tests: Redis fsyncs its AOF every
second (docker-compose.yml), PostgreSQL fsyncs every commit. Workers are started and
warmed (a small batch run through them) before any clock starts.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
from common import ROOT, PostgresServer, RedisServer, promptq, write_batch
from sqlalchemy import create_engine, select

from jobs.models import Batch
from tests.deploy import Workers

READY_TIMEOUT_S = 60.0
POLL_S = 0.1
_PG_PRODUCTION_SETTINGS = ("fsync = on", "synchronous_commit = on", "full_page_writes = on")


@dataclass(frozen=True)
class Submitted:
    batch_id: str
    started_at: float  # epoch seconds, just before `promptq submit` was spawned
    wall_s: float  # the whole command: interpreter start, validation, insert, publish
    cpu_s: float


@dataclass(frozen=True)
class Finished:
    status: str
    completed: int
    failed: int
    completed_at: float  # epoch seconds: the transaction that stored the last result


class Cluster:
    """Redis + SQLite or PostgreSQL + `promptq worker` processes; a context manager."""

    def __init__(
        self, tmp: Path, *, db: str, upstream_base_url: str, env: dict[str, str] | None = None
    ) -> None:
        if db not in ("sqlite", "postgres"):
            raise ValueError(f"db must be sqlite or postgres, not {db!r}")
        self.tmp, self.db = tmp, db
        self.redis = RedisServer(tmp / "redis")
        self.pg = PostgresServer(tmp / "pg") if db == "postgres" else None
        self.env = {
            "PROMPTQ_UPSTREAM_BASE_URL": upstream_base_url,
            "COMETAPI_API_KEY": "sk-bench",
            "PROMPTQ_DATA_DIR": str(tmp / "data"),
            **(env or {}),
        }
        self.workers: Workers | None = None
        self._engine: Any = None

    def __enter__(self) -> Cluster:
        try:
            self.redis.start()
            with self.redis.client() as client:
                client.config_set("appendfsync", "everysec")
            self.env["PROMPTQ_REDIS_URL"] = self.redis.url
            if self.pg is not None:
                self.pg.start()
                with self.pg.connect() as conn:
                    for setting in _PG_PRODUCTION_SETTINGS:
                        conn.execute(f"ALTER SYSTEM SET {setting}")
                    conn.execute("SELECT pg_reload_conf()")
                self.env["PROMPTQ_DATABASE_URL"] = self.pg.create_database("bench")
            promptq("db", "upgrade", env=self.env)
            url = self.env.get("PROMPTQ_DATABASE_URL") or (
                f"sqlite:///{Path(self.env['PROMPTQ_DATA_DIR']).resolve() / 'promptq.db'}"
            )
            # A plain engine: the app's SQLite engine would BEGIN IMMEDIATE on every poll.
            self._engine = create_engine(url)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.workers is not None:
            self.workers.stop()
        if self._engine is not None:
            self._engine.dispose()
        self.redis.stop()
        if self.pg is not None:
            self.pg.stop()

    # -- workers ---------------------------------------------------------------------

    def start_workers(self, count: int, threads: int) -> list[int]:
        """Start `count` workers of `threads` Celery threads; returns their pids once ready."""
        self.workers = Workers(self.env, self.tmp / "logs").start(count, concurrency=threads)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self._ready_count() < count:
            if time.monotonic() > deadline or any(
                p.poll() is not None for p in self.workers.processes
            ):
                raise RuntimeError(f"workers did not get ready:\n{self.workers.logs()}")
            time.sleep(POLL_S)
        return [p.pid for p in self.workers.processes]

    def _ready_count(self) -> int:
        assert self.workers is not None
        logs = sorted(self.workers.log_dir.glob("worker-*.log"))
        return sum(" ready." in f.read_text(errors="replace") for f in logs)

    def warm_up(self, requests: int, timeout_s: float = 60) -> None:
        """Run a small batch through the workers (connections, caches, the runtime)."""
        path = write_batch(self.tmp / f"warm-{time.monotonic_ns()}.jsonl", requests)
        self.wait(self.submit(path).batch_id, timeout_s)

    # -- a batch ---------------------------------------------------------------------

    def submit(self, path: Path) -> Submitted:
        """`promptq submit` as a user runs it; its wall time and CPU (rusage, once reaped)."""
        cpu_before = _children_cpu_s()
        started_at = time.time()
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "jobs", "submit", str(path)],
            env={**os.environ, **self.env},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        stdout, stderr = process.communicate(timeout=600)
        # communicate() has reaped it: its rusage is in our children's totals
        wall_s = time.perf_counter() - started
        if process.returncode != 0:
            raise RuntimeError(f"promptq submit failed:\n{stdout.decode()}\n{stderr.decode()}")
        return Submitted(
            batch_id=stdout.decode().strip().splitlines()[-1],
            started_at=started_at,
            wall_s=wall_s,
            cpu_s=_children_cpu_s() - cpu_before,
        )

    def wait(self, batch_id: str, timeout_s: float) -> Finished:
        """Poll the database until the batch has ended; its final counts and completed_at."""
        deadline = time.monotonic() + timeout_s
        query = select(
            Batch.status,  # type: ignore[arg-type]
            Batch.request_completed,  # type: ignore[arg-type]
            Batch.request_failed,  # type: ignore[arg-type]
            Batch.completed_at,  # type: ignore[arg-type]
            Batch.failed_at,  # type: ignore[arg-type]
        ).where(Batch.id == batch_id)  # type: ignore[arg-type]
        while True:
            with self._engine.connect() as conn:
                status, completed, failed, completed_at, failed_at = conn.execute(query).one()
            if status in ("completed", "failed", "expired", "cancelled"):
                ended: datetime = completed_at or failed_at or datetime.now().astimezone()
                return Finished(status, completed, failed, ended.timestamp())
            if time.monotonic() > deadline:
                logs = self.workers.logs() if self.workers else ""
                raise TimeoutError(f"batch {batch_id} still {status} after {timeout_s} s\n{logs}")
            time.sleep(POLL_S)

    # -- CPU meters ------------------------------------------------------------------

    def service_pids(self) -> dict[str, list[int]]:
        """Redis' and PostgreSQL's processes (PostgreSQL: the postmaster and its children)."""
        pids = {"redis": [self.redis.process.pid] if self.redis.process else []}
        if self.pg is not None:
            postmaster = int((self.pg.data_dir / "postmaster.pid").read_text().split()[0])
            pids["postgres"] = [postmaster]
        return pids


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_s(pid: int) -> float:
    """A live process's CPU seconds, with its threads, its live children and reaped ones."""
    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in process.children(recursive=True):
            try:
                t = child.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return 0.0


def cpu_by_group(groups: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(cpu_s(pid) for pid in pids) for name, pids in groups.items()}


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before.get(name, 0.0), 2) for name in after}
