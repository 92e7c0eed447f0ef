"""Run the simulator as a child process, for tests, benchmarks and `promptq simulator`."""

from __future__ import annotations

import atexit
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from jobs.errors import ServiceError
from jobs.lifeline import PARENT_PID_ENV
from jobs.simulator.config import argv_from_fields
from jobs.simulator.server import LISTENING_PREFIX

# The directory holding the `jobs` package, so `-m jobs.simulator` resolves uninstalled too.
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


class SimulatorProcess:
    """`python -m jobs.simulator` in a subprocess, with clients for its /_sim controls.

    Options are SimConfig field names (`latency_ms=50`, `rate_500=0.1`, ...).
    """

    def __init__(
        self,
        *,
        startup_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
        python: str = sys.executable,
        **options: Any,
    ) -> None:
        self.argv = [python, "-m", "jobs.simulator", *argv_from_fields(options)]
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.base_url = ""
        self.root_url = ""
        self.process: subprocess.Popen[str] | None = None
        self._control: httpx.Client | None = None
        self._pump: threading.Thread | None = None

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> SimulatorProcess:
        """Start the process and wait for its listening line; raises ServiceError if it fails."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            path for path in (str(_SOURCE_ROOT), env.get("PYTHONPATH", "")) if path
        )
        env["PYTHONUNBUFFERED"] = "1"
        env[PARENT_PID_ENV] = str(os.getpid())  # it stops if we die without stopping it
        self.process = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, text=True, env=env, cwd=_SOURCE_ROOT
        )
        lines: queue.Queue[str] = queue.Queue()
        # Draining stdout for the process's whole life keeps a stray print from blocking it.
        self._pump = threading.Thread(
            target=_pump_lines, args=(self.process, lines), name="simulator-stdout", daemon=True
        )
        self._pump.start()
        # A caller that forgets stop() must not leave a server behind when Python exits.
        atexit.register(self.stop)
        try:
            line = lines.get(timeout=self.startup_timeout_s)
        except queue.Empty:
            self.stop()
            raise ServiceError(
                f"the simulator did not start within {self.startup_timeout_s} s"
            ) from None
        if not line.startswith(LISTENING_PREFIX):
            exit_code = self.stop()
            raise ServiceError(
                f"the simulator did not start (exit code {exit_code}, see its stderr)"
                + (f": {line.strip()!r}" if line else "")
            )
        self.base_url = line.strip().removeprefix(LISTENING_PREFIX)
        self.root_url = self.base_url.removesuffix("/v1")
        # trust_env=False: a proxy from the environment must never see loopback traffic.
        self._control = httpx.Client(base_url=self.root_url, trust_env=False, timeout=30.0)
        return self

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after stop_timeout_s; returns the exit code."""
        atexit.unregister(self.stop)
        if self._control is not None:
            self._control.close()
            self._control = None
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._pump is not None:
            self._pump.join(timeout=self.stop_timeout_s)
            self._pump = None
        if process.stdout is not None:
            process.stdout.close()
        return process.returncode

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def _client(self) -> httpx.Client:
        if self._control is None:
            raise ServiceError("the simulator is not running")
        return self._control

    def stats(self) -> dict[str, Any]:
        response = self._client().get("/_sim/stats")
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        self._client().post("/_sim/reset").raise_for_status()

    def config(self) -> dict[str, Any]:
        response = self._client().get("/_sim/config")
        response.raise_for_status()
        return response.json()

    def configure(self, **fields: Any) -> dict[str, Any]:
        """Change SimConfig fields at run time; raises ValueError on an unknown or bad one."""
        response = self._client().post("/_sim/configure", json=fields)
        if response.status_code == 400:
            raise ValueError(response.json()["error"]["message"])
        response.raise_for_status()
        return response.json()

    def log(self) -> list[dict[str, Any]]:
        response = self._client().get("/_sim/log")
        response.raise_for_status()
        return response.json()


def _pump_lines(process: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.put(line)
    lines.put("")
