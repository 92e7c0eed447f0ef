"""The interactive queue's consumer: a thread of every worker with a connection of its own.

Celery's threads each hold one bulk message until its requests are stored, so behind a
long backlog every thread is busy for several upstream latencies. Interactive messages are
taken here instead, at once, and run on the same runtime (whose limiter lets them go before
bulk calls); each is acked once its requests are stored, like Celery's late acks, and a
message whose database could not be reached goes back to the queue.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import Future
from typing import Any

from kombu import Connection, Exchange, Message, Queue

from jobs.constants import INTERACTIVE_QUEUE
from jobs.queue import kombu_url
from worker.runtime import ClaimFailed, get_runtime

log = logging.getLogger(__name__)

# Messages taken at once (one request each): more than an interactive burst needs.
PREFETCH = 32
# How often finished messages are acked: a message is taken as soon as it arrives anyway.
POLL_S = 0.2
RECONNECT_S = 1.0


class InteractiveConsumer(threading.Thread):
    """Takes interactive messages as they come and acks each once its work is stored."""

    def __init__(self, redis_url: str, prefetch: int = PREFETCH) -> None:
        super().__init__(name="promptq-interactive", daemon=True)
        self.url = kombu_url(redis_url)
        self.prefetch = prefetch
        self.stopping = threading.Event()
        self.pending: list[tuple[Future[None], Message]] = []
        self.queue = Queue(
            INTERACTIVE_QUEUE,
            Exchange(INTERACTIVE_QUEUE, type="direct"),
            routing_key=INTERACTIVE_QUEUE,
        )

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                with Connection(self.url) as conn:
                    self._consume(conn)
            except Exception as exc:  # noqa: BLE001 - Redis away: unacked messages come back
                log.warning("interactive consumer: %s; reconnecting", exc)
                self.pending.clear()
                self.stopping.wait(RECONNECT_S)

    def _consume(self, conn: Connection) -> None:
        with conn.Consumer(
            [self.queue],
            callbacks=[self._on_message],
            accept=["json"],
            prefetch_count=self.prefetch,
        ):
            while not self.stopping.is_set():
                self._settle()
                with contextlib.suppress(TimeoutError):  # socket.timeout is TimeoutError
                    conn.drain_events(timeout=POLL_S)
            # shutting down: what was taken ends fast (the runtime drains), then is acked
            while self.pending:
                self._settle()
                self.stopping.wait(POLL_S)

    def _on_message(self, body: Any, message: Message) -> None:
        try:
            ids = list(body[0][0])  # Celery's message body: [args, kwargs, embed]
        except (TypeError, IndexError, KeyError):
            log.warning("dropping a malformed interactive message: %r", body)
            message.ack()
            return
        self.pending.append((get_runtime().submit(ids), message))

    def _settle(self) -> None:
        """Ack the messages whose requests are stored; requeue those that could not claim."""
        still: list[tuple[Future[None], Message]] = []
        for future, message in self.pending:
            if not future.done():
                still.append((future, message))
                continue
            error = future.exception()
            if isinstance(error, ClaimFailed):
                message.requeue()
            else:
                if error is not None:
                    log.warning("interactive message failed: %s", error)
                message.ack()
        self.pending = still

    def stop(self) -> None:
        self.stopping.set()
