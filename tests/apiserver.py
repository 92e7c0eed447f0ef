"""`promptq api` as a real process on a free port, with `promptq worker` processes behind it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

from jobs.local import stop_processes
from tests.deploy import ROOT, Workers, promptq
from tests.services import free_tcp_port, log_tail

STARTUP_TIMEOUT_S = 30.0
# PROMPTQ_MAX_UPLOAD_BYTES in the tests' deployments
UPLOAD_LIMIT_BYTES = 256 * 1024
_PORT_TRIES = 3


class ApiServer:
    """A deployment driven over HTTP: the API process, its workers, and keys made by the CLI."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.workers = Workers(env, log_dir)
        self.simulator: Any = None

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What the `openai` SDK takes as `base_url`."""
        return self.root_url + "/v1"

    @property
    def data_dir(self) -> Path:
        return Path(self.env["PROMPTQ_DATA_DIR"])

    @property
    def log_path(self) -> Path:
        return self.log_dir / "api.log"

    def start(self, workers: int = 2, concurrency: int = 4) -> ApiServer:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        upgraded = promptq("db", "upgrade", env=self.env)
        assert upgraded.returncode == 0, upgraded.stderr
        for attempt in range(1, _PORT_TRIES + 1):
            try:
                self._launch(free_tcp_port())
                break
            except RuntimeError:
                # another process may take the free port before uvicorn binds it
                if attempt == _PORT_TRIES:
                    raise
        if workers:
            self.workers.start(workers, concurrency)
        return self

    def _launch(self, port: int) -> None:
        self.port = port
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jobs", "api", "--host", "127.0.0.1", "--port", str(port)],
                env={**os.environ, **self.env},
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                stop_processes([self.process], 5)
                raise RuntimeError(
                    f"promptq api did not start on port {port}:\n{log_tail(self.log_path, offset)}"
                )
            time.sleep(0.05)

    def _healthy(self) -> bool:
        try:
            return httpx.get(self.root_url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.workers.stop()
        if self.process is not None:
            stop_processes([self.process], 15)

    @contextmanager
    def workers_paused(self) -> Iterator[None]:
        """SIGSTOP the workers for the block: what is queued meanwhile stays queued."""
        groups = [p.pid for p in self.workers.processes if p.poll() is None]
        for group in groups:
            os.killpg(group, signal.SIGSTOP)
        try:
            yield
        finally:
            for group in groups:
                os.killpg(group, signal.SIGCONT)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`promptq ARGS` against this deployment."""
        return promptq(*args, env=self.env)

    def key(self, name: str, *extra: str) -> str:
        """A new API key from `promptq keys create NAME`, read from the last stdout line."""
        made = self.cli("keys", "create", name, *extra)
        assert made.returncode == 0, made.stderr
        return made.stdout.strip().splitlines()[-1]

    def client(self, key: str) -> OpenAI:
        """The official SDK, with only `base_url` and `api_key` set (and no retries to hide)."""
        return OpenAI(base_url=self.base_url, api_key=key, max_retries=0)

    def http(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.root_url, headers=headers, timeout=90)

    def logs(self) -> str:
        return f"--- api.log\n{log_tail(self.log_path)}\n{self.workers.logs()}"

    def errors(self) -> list[str]:
        """ERROR lines the workers logged (a healthy run has none)."""
        return [
            line
            for f in sorted(self.log_dir.glob("worker-*.log"))
            for line in f.read_text(errors="replace").splitlines()
            if " ERROR " in line
        ]

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
