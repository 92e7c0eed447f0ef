"""What every benchmark shares: servers, a batch file, the commit, and the figures table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.services import PostgresServer, RedisServer  # noqa: E402

__all__ = ["PostgresServer", "RedisServer", "commit", "write_batch", "promptq", "record", "ROOT"]

MODEL = "o1-mini-2024-09-12"


_commit_at_start: str | None = None


def commit() -> str:
    """The commit a run started on (taken once, at the first call: call it early)."""
    global _commit_at_start
    if _commit_at_start is None:
        _commit_at_start = _current_commit()
    return _commit_at_start


def _current_commit() -> str:
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "jobs", "worker"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return sha + ("+dirty" if dirty else "")


def write_batch(path: Path, count: int, *, url: str = "/v1/responses") -> Path:
    with path.open("w") as f:
        for i in range(count):
            body = {"model": MODEL, "input": f"Summarise item {i}: {'lorem ipsum ' * 8}"}
            line = {"custom_id": f"r{i}", "method": "POST", "url": url, "body": body}
            f.write(json.dumps(line) + "\n")
    return path


def promptq(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout_s: float = 3600
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "jobs", *args],
        env={**os.environ, **env},
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise RuntimeError(f"promptq {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def record(name: str, figures: dict[str, Any]) -> None:
    """Print the figures and append them to bench/results/NAME.jsonl (not committed)."""
    figures = {"bench": name, "commit": commit(), "at": time.strftime("%Y-%m-%d %H:%M"), **figures}
    print(json.dumps(figures, indent=2))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    with (out / f"{name}.jsonl").open("a") as f:
        f.write(json.dumps(figures) + "\n")


# A bench imports this module as it starts: the commit it records is the one it started on,
# even if the tree changes while it runs.
commit()
