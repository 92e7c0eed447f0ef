"""What the simulator observed: counters, concurrency integrals and a bounded request log."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

LOG_LIMIT = 500_000


class Stats:
    """Counts every /v1 request; one instance per server, touched only from its event loop."""

    def __init__(self, log_limit: int = LOG_LIMIT) -> None:
        self._log_limit = log_limit
        # In-flight requests are real whatever reset() says, so reset() keeps this count.
        self.in_flight = 0
        self.generation = 0
        self.reset()

    def reset(self) -> None:
        # Requests that started before a reset finish without being counted or logged.
        self.generation += 1
        self.requests_total = 0
        self.max_in_flight = self.in_flight
        self.by_status: dict[int, int] = {}
        self.resets = 0
        self.busy_s = 0.0
        self.work_s = 0.0
        self.first_request_at: float | None = None
        self.last_request_at: float | None = None
        self.last_answer_at: float | None = None
        self._changed_at = time.monotonic()
        # Tuples rather than dicts: the log may hold half a million entries.
        self.log: deque[tuple[float, float, str, int | None, str]] = deque(maxlen=self._log_limit)

    def _advance(self, now: float) -> None:
        elapsed = now - self._changed_at
        if self.in_flight:
            self.busy_s += elapsed
            self.work_s += elapsed * self.in_flight
        self._changed_at = now

    def enter(self) -> float:
        """Count a request that just arrived; returns its start time (epoch seconds)."""
        self._advance(time.monotonic())
        self.in_flight += 1
        self.requests_total += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        started_at = time.time()
        if self.first_request_at is None:
            self.first_request_at = started_at
        self.last_request_at = started_at
        return started_at

    def leave(
        self, generation: int, started_at: float, path: str, status: int | None, body_sha: str
    ) -> None:
        """Count a request that ended; status None means the connection was dropped."""
        self._advance(time.monotonic())
        self.in_flight -= 1
        if generation != self.generation:
            return
        ended_at = time.time()
        self.last_answer_at = ended_at
        if status is None:
            self.resets += 1
        else:
            self.by_status[status] = self.by_status.get(status, 0) + 1
        self.log.append((started_at, ended_at, path, status, body_sha))

    def snapshot(self) -> dict[str, Any]:
        self._advance(time.monotonic())
        return {
            "requests_total": self.requests_total,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "by_status": {str(status): count for status, count in sorted(self.by_status.items())},
            "resets": self.resets,
            "busy_s": self.busy_s,
            "work_s": self.work_s,
            "first_request_at": self.first_request_at,
            "last_request_at": self.last_request_at,
            "last_answer_at": self.last_answer_at,
        }

    def log_entries(self) -> list[dict[str, Any]]:
        return [
            {"t_start": start, "t_end": end, "path": path, "status": status, "body_sha": sha}
            for start, end, path, status, sha in self.log
        ]
