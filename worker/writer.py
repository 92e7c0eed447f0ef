"""Group commit: outcomes from many concurrent calls are stored in one transaction each flush."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BATCH = 500
RETRY_MAX_S = 5.0
GIVE_UP_AFTER_S = 300.0


class GroupWriter(Generic[T]):
    """`await write(item)` returns once `flush_fn` stored it together with whatever else came.

    One flush runs at a time; items that arrive meanwhile form the next flush, so the
    batch size grows with the load and a quiet system still writes at once. A failing
    database is retried (a PostgreSQL restart); after GIVE_UP_AFTER_S the writers get the
    error and the requests' leases, no longer renewed by them, bring the work back.
    """

    def __init__(self, flush_fn: Callable[[list[T]], None], executor: Executor) -> None:
        self.flush_fn = flush_fn
        self.executor = executor
        self.pending: list[tuple[T, asyncio.Future[None]]] = []
        self.flushing: asyncio.Task[None] | None = None

    async def write(self, item: T) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        if self.flushing is None or self.flushing.done():
            self.flushing = asyncio.create_task(self._drain())
        await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            taken, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
            items = [item for item, _ in taken]
            error = await self._flush_with_retries(loop, items)
            for _, future in taken:
                if not future.done():
                    if error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(error)

    async def _flush_with_retries(
        self, loop: asyncio.AbstractEventLoop, items: list[T]
    ) -> BaseException | None:
        delay_s, waited_s = 0.1, 0.0
        while True:
            try:
                await loop.run_in_executor(self.executor, self.flush_fn, items)
                return None
            except Exception as exc:  # noqa: BLE001 - the database may come back
                if waited_s >= GIVE_UP_AFTER_S:
                    return exc
                log.warning("storing %d outcomes failed (%s); retrying", len(items), exc)
                await asyncio.sleep(delay_s)
                waited_s += delay_s
                delay_s = min(delay_s * 2, RETRY_MAX_S)
