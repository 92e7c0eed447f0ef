"""A webhook receiver for tests: a real HTTP server on 127.0.0.1, in a thread."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Hit:
    """One POST the receiver got, and the status it answered."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int


class Receiver:
    """A webhook receiver on 127.0.0.1 in a thread: answers the n-th POST with `statuses[n]`
    (200 once they run out), after `delay_s`, with `answer` as its body."""

    def __init__(self, statuses: list[int] | None = None, delay_s: float = 0.0, answer: str = ""):
        self.statuses = list(statuses or [])
        self.delay_s = delay_s
        self.answer = answer.encode()
        self.hits: list[Hit] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def accepted(self) -> list[Hit]:
        with self._lock:
            return [hit for hit in self.hits if 200 <= hit.status < 300]

    def _answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            status = self.statuses[len(self.hits)] if len(self.hits) < len(self.statuses) else 200
            self.hits.append(Hit(path, headers, body, status))
        return status

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = receiver._answer(self.path, dict(self.headers.items()), body)
                time.sleep(receiver.delay_s)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(receiver.answer)))
                    self.end_headers()
                    self.wfile.write(receiver.answer)
                except OSError:
                    pass  # the notifier gave up waiting and hung up

            def log_message(self, *_: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
