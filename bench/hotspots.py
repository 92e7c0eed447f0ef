"""Sampling profiles of running processes with py-spy, and where their samples go.

    python bench/hotspots.py PROFILE.txt [--top 20]     # summarise a saved raw profile

The benches take `--profile DIR` and `--profile-mode`: each measured process is sampled
at 100 Hz by py-spy (`record --format raw --nonblocking`) while the clock runs.

- `cpu` (`--gil`): only the thread holding the GIL is sampled, so the samples are the
  process's Python CPU, not threads waiting for the GIL or a socket;
- `wall` (`--idle --threads`): every thread at every tick, so the summary also shows
  where each thread spends its time (working, or waiting, and on what).

The summary lists functions by their share of samples, self and inclusive, by package,
and in wall mode per thread.
py-spy comes with the `bench` extra (`pip install -e .[bench]`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
from collections import Counter
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import TracebackType
from typing import Any

RATE_HZ = 100
MODES = {"cpu": ["--gil"], "wall": ["--idle", "--threads"]}
STOP_TIMEOUT_S = 30


class Profiler:
    """py-spy on each of `pids` (name -> pid) while the block runs; raw stacks in `out_dir`."""

    def __init__(
        self, pids: dict[str, int], out_dir: Path, mode: str = "cpu", rate_hz: int = RATE_HZ
    ) -> None:
        if shutil.which("py-spy") is None:
            raise RuntimeError("py-spy is not installed: pip install -e '.[bench]'")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.pids, self.out_dir, self.mode, self.rate_hz = pids, out_dir, mode, rate_hz
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def path(self, name: str) -> Path:
        return self.out_dir / f"{name}.txt"

    def __enter__(self) -> Profiler:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            with (self.out_dir / f"{name}.py-spy.log").open("wb") as log:
                self.processes[name] = subprocess.Popen(
                    [
                        "py-spy", "record", "--pid", str(pid), "--rate", str(self.rate_hz),
                        "--format", "raw", "--nonblocking", "--output", str(self.path(name)),
                        *MODES[self.mode],
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )  # fmt: skip
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for process in self.processes.values():
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def summaries(self, top: int = 15) -> dict[str, dict[str, Any]]:
        return {
            name: summarise(self.path(name), top) for name in self.pids if self.path(name).exists()
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", type=Path, help="py-spy the workers; stacks go here")
    parser.add_argument("--profile-mode", choices=tuple(MODES), default="cpu")


def profiler(
    args: argparse.Namespace, pids: list[int], out_dir: Path | None = None
) -> AbstractContextManager[Any]:
    """A Profiler of the worker pids if `--profile` was given, else a no-op."""
    if not args.profile:
        return nullcontext()
    named = {f"worker-{i + 1}": pid for i, pid in enumerate(pids)}
    return Profiler(named, out_dir or args.profile, args.profile_mode)


def write_summary(spy: AbstractContextManager[Any], top: int = 20) -> None:
    if isinstance(spy, Profiler):
        summaries = spy.summaries(top)
        (spy.out_dir / "summary.json").write_text(json.dumps(summaries, indent=1))
        print(f"profiles: {spy.out_dir} (summary.json)")


def _frames(stack: str) -> tuple[str | None, list[str]]:
    """The thread's name (with --threads) and the frames, outermost first."""
    # "thread (0x1f): promptq-loop;fn (pkg/module.py:12);fn2 (pkg/other.py:40)"
    frames = [frame for frame in stack.split(";") if frame]
    if frames and frames[0].startswith("thread ("):
        name = frames[0].partition(": ")[2] or "?"
        # pool threads differ only by a number: promptq-db_0, ThreadPoolExecutor-0_3
        return name.rstrip("0123456789").rstrip("_-"), frames[1:]
    return None, frames


def _where(frames: list[str]) -> str:
    """The leaf frame, and the innermost frame of ours (worker/, jobs/) that led to it."""
    ours = next((f for f in reversed(frames) if "(worker/" in f or "(jobs/" in f), None)
    return frames[-1] if ours in (None, frames[-1]) else f"{frames[-1]} <- {ours}"


def _package(frame: str) -> str:
    """`sqlalchemy`, `worker/runtime.py`, `<stdlib>/asyncio`..., from a frame's file."""
    start, end = frame.rfind("("), frame.rfind(")")
    where = frame[start + 1 : end].rsplit(":", 1)[0] if start >= 0 else frame
    parts = where.split("/")
    if parts[0] in ("worker", "jobs"):
        return "/".join(parts[:2])
    if where.startswith("<") or len(parts) == 1:
        return where
    return parts[0] if not parts[0].endswith(".py") else where


def summarise(path: Path, top: int = 15) -> dict[str, Any]:
    """Shares of samples: per leaf function (self), per function anywhere on the stack
    (inclusive, counted once per sample), and per package of the leaf frame."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    threads: dict[str, Counter[str]] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, frames = _frames(stack)
        if not frames:
            continue
        if thread is not None:
            threads.setdefault(thread, Counter())[_where(frames)] += count
        total += count
        own[frames[-1]] += count
        packages[_package(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count

    def shares(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(n / total, 3)] for name, n in counter.most_common(top)]

    if total == 0:
        return {"samples": 0}
    summary: dict[str, Any] = {
        "samples": total,
        "self": shares(own),
        "inclusive": shares(inclusive),
        "packages": shares(packages),
    }
    if threads:
        # per thread group: its share of all samples, then where it sat (self frames)
        summary["threads"] = {
            name: {
                "share": round(sum(leaves.values()) / total, 3),
                "top": [
                    [leaf, round(n / sum(leaves.values()), 3)] for leaf, n in leaves.most_common(6)
                ],
            }
            for name, leaves in sorted(threads.items(), key=lambda kv: -sum(kv[1].values()))
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", type=Path, nargs="+")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    for path in args.profiles:
        print(path, json.dumps(summarise(path, args.top), indent=1))


if __name__ == "__main__":
    main()
