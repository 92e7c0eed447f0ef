"""A promptq deployment for tests: environment, `promptq` commands and worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs.db import reset_engines
from jobs.local import stop_processes
from jobs.queue import get_celery
from jobs.settings import get_settings

ROOT = Path(__file__).resolve().parents[1]


def apply_env(monkeypatch: Any, env: dict[str, str]) -> None:
    """Point this test process's promptq (settings, engines, Celery app) at `env`."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_caches()


def reset_caches() -> None:
    get_settings.cache_clear()
    reset_engines()
    get_celery.cache_clear()


def deployment_env(tmp_path: Path, simulator: Any, redis_url: str, **extra: str) -> dict[str, str]:
    """A deployment on the simulator, a real Redis and SQLite in `tmp_path`, quick sweeps."""
    return {
        "PROMPTQ_UPSTREAM_BASE_URL": simulator.base_url,
        "COMETAPI_API_KEY": simulator.key,
        "PROMPTQ_DATA_DIR": str(tmp_path / "data"),
        "PROMPTQ_REDIS_URL": redis_url,
        "PROMPTQ_SWEEP_INTERVAL_S": "0.5",
        **extra,
    }


def promptq(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the `promptq` command as a user would, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "jobs", *args],
        env={**os.environ, **env},
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )


class Workers:
    """`promptq worker` processes, each in its own process group (so a kill takes it whole)."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, count: int = 1, concurrency: int = 8) -> Workers:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            n = len(self.processes) + 1
            with (self.log_dir / f"worker-{n}.log").open("ab") as log:
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "jobs", "worker", "--concurrency", str(concurrency)],
                        env=self.env,
                        cwd=ROOT,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
        return self

    def kill(self, index: int = 0) -> None:
        """SIGKILL a worker's whole process group, as a crashed host would."""
        p = self.processes[index]
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()

    def stop(self, timeout_s: float = 15) -> None:
        stop_processes(self.processes, timeout_s)

    def errors(self) -> list[str]:
        """Lines the workers logged at ERROR level (a healthy run has none)."""
        return [
            line
            for f in sorted(self.log_dir.glob("worker-*.log"))
            for line in f.read_text(errors="replace").splitlines()
            if " ERROR " in line
        ]

    def logs(self) -> str:
        return "\n".join(
            f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}"
            for f in sorted(self.log_dir.glob("worker-*.log"))
        )


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.2) -> Any:
    """Poll until `predicate()` is truthy; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


def submit_and_wait(
    path: Path, env: dict[str, str], workers: Workers, timeout_s: float = 120
) -> dict[str, Any]:
    """`promptq submit` a file, then poll `promptq status --json` until the batch ends."""
    import json

    submitted = promptq("submit", str(path), env=env)
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip().splitlines()[-1]

    def ended() -> dict[str, Any] | None:
        batch = json.loads(promptq("status", batch_id, "--json", env=env).stdout)
        return batch if batch["status"] in ("completed", "failed", "cancelled", "expired") else None

    batch: dict[str, Any] = wait_for(
        ended, timeout_s, f"batch {batch_id} to end\n{workers.logs()}", 0.5
    )
    return batch
