"""A whole deployment on one machine, for `promptq run`: simulator, Redis, workers.

What it starts it also stops; services that were already there (a configured Redis, an
embedded Redis another promptq process started) are used and left running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import TracebackType
from typing import Any

from jobs.lifeline import PARENT_PID_ENV
from jobs.settings import Settings

WORKER_STOP_S = 10.0
# The simulator `promptq run` starts without a key: answers arrive like a real model's would.
DEMO_LATENCY_MS = 400
DEMO_JITTER_MS = 400


class LocalDeployment:
    """Context manager: everything a batch needs on this machine, and nothing left behind."""

    def __init__(self, settings: Settings, *, workers: int, say: Any = print) -> None:
        self.settings = settings
        self.workers = workers
        self.say = say
        self.env = dict(os.environ)
        self.simulator: Any = None
        self.redis: Any = None
        self.redis_url = ""
        self.processes: list[subprocess.Popen[bytes]] = []
        self.log_dir = settings.resolved_data_dir / "logs"

    @property
    def owns_everything(self) -> bool:
        """True when no other process can be working on this deployment's requests."""
        return self.redis is not None

    def __enter__(self) -> LocalDeployment:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.upstream_key is None:
            from jobs.simulator import SimulatorProcess

            self.simulator = SimulatorProcess(
                latency_ms=DEMO_LATENCY_MS, jitter_ms=DEMO_JITTER_MS
            ).start()
            self.env["PROMPTQ_UPSTREAM_BASE_URL"] = self.simulator.base_url
            self.say(
                "[yellow]No COMETAPI_API_KEY is set: using promptq's built-in simulator at "
                f"{self.simulator.base_url}. Answers are simulated, not a model's.[/]"
            )
        else:
            self.say(f"Upstream: {self.settings.upstream_base_url}")
        if self.settings.redis_url:
            self.redis_url = self.settings.redis_url
        else:
            from jobs.embedded import EmbeddedRedis

            embedded = EmbeddedRedis(self.settings.resolved_data_dir)
            already = embedded.is_running()
            self.redis_url = embedded.start()
            if not already:
                self.redis = embedded
            self.say(f"Redis: embedded, {self.redis_url}")
        self.env["PROMPTQ_REDIS_URL"] = self.redis_url
        self.env["PROMPTQ_DATA_DIR"] = str(self.settings.resolved_data_dir)
        # workers stop themselves if `run` is killed before it can stop them
        self.env[PARENT_PID_ENV] = str(os.getpid())
        for n in range(self.workers):
            log = (self.log_dir / f"worker-{n + 1}.log").open("ab")
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "worker"],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # Ctrl-C reaches us; we stop them in order
                )
            )
            log.close()
        self.say(f"Workers: {self.workers} (logs in {self.log_dir})")

    def check_workers(self) -> None:
        """Raise if every worker has died (nothing would ever finish)."""
        if self.processes and all(p.poll() is not None for p in self.processes):
            from jobs.errors import ServiceError

            raise ServiceError(f"every worker exited; see the logs in {self.log_dir}")

    def stop(self) -> None:
        stop_processes(self.processes, WORKER_STOP_S)
        self.processes.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if self.simulator is not None:
            self.simulator.stop()
            self.simulator = None


def stop_processes(processes: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """SIGTERM (a worker hands its requests back), then SIGKILL the group of any that linger."""
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in processes:
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
