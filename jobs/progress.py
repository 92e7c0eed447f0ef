"""Live progress of a batch in the terminal: done, failed, tokens, cost, rate, ETA."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from jobs.db import read_scope
from jobs.models import BATCH_TERMINAL, Batch

POLL_S = 0.5


def snapshot(batch_id: str) -> Batch:
    with read_scope() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        session.expunge(batch)
        return batch


def follow(
    batch_id: str,
    console: Console,
    *,
    check: Callable[[], None] | None = None,
    poll_s: float = POLL_S,
) -> Batch:
    """Show progress until the batch reaches a final state; returns it then."""
    batch = snapshot(batch_id)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TextColumn("{task.fields[tokens]:,} tok"),
        TextColumn("${task.fields[cost]:.4f}"),
        TextColumn("{task.fields[rate]:.1f}/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    start_done = batch.request_completed + batch.request_failed
    started = time.monotonic()
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(
            batch.status, total=batch.request_total, failed=0, tokens=0, cost=0.0, rate=0.0
        )
        while True:
            done = batch.request_completed + batch.request_failed
            elapsed = max(time.monotonic() - started, 1e-6)
            progress.update(
                task,
                completed=done,
                failed=batch.request_failed,
                tokens=batch.total_tokens,
                cost=batch.cost_usd,
                rate=(done - start_done) / elapsed,
                description=batch.status,
            )
            if batch.status in BATCH_TERMINAL:
                return batch
            if check is not None:
                check()
            time.sleep(poll_s)
            batch = snapshot(batch_id)
