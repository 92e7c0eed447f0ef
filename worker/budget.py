"""Budgets (`--max-cost`, `--max-tokens`): a call sets aside its estimate before it is sent.

What a call sets aside is kept on its own request row while it runs, and a batch's
reservation is the sum over its running requests: an outcome (or a lease taken back) ends
the reservation with nothing to give back, and a worker that dies leaks none.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlmodel import col

from jobs import batches
from jobs.db import session_scope
from jobs.models import Batch, Request, RequestStatus
from worker.store import Claimed, this_attempt


def reserve(c: Claimed, cost_usd: float, tokens: int) -> str | None:
    """Set aside a call's estimated cost and tokens in its batch's budget.

    Returns None when it fits: spent, plus what the batch's other running requests set
    aside, plus this estimate, stays within every budget. Otherwise the batch is stopped
    (`batches.stop_for_budget`) and the reason is returned; this request is not sent.
    The request row is written (locked) before the batch row, the order `record` uses.
    """
    with session_scope() as session:
        held = session.execute(
            update(Request)
            .where(this_attempt(c.id, c.attempt))
            .values(reserved_cost_usd=cost_usd, reserved_tokens=tokens)
        ).rowcount  # type: ignore[attr-defined]
        if not held:
            return None  # no longer this attempt's: whatever it does next is refused anyway
        batch = session.execute(
            select(
                col(Batch.max_cost_usd),
                col(Batch.max_tokens),
                col(Batch.cost_usd),
                col(Batch.total_tokens),
            )
            .where(col(Batch.id) == c.batch_id)
            .with_for_update()
        ).one()
        held_cost, held_tokens = session.execute(
            select(
                func.coalesce(func.sum(Request.reserved_cost_usd), 0.0),
                func.coalesce(func.sum(Request.reserved_tokens), 0),
            ).where(
                col(Request.batch_id) == c.batch_id,
                col(Request.status) == RequestStatus.RUNNING,
            )
        ).one()
        why = None
        if batch.max_cost_usd is not None and batch.cost_usd + held_cost > batch.max_cost_usd:
            why = (
                f"the batch reached its budget of ${batch.max_cost_usd:g}: ${batch.cost_usd:.6f} "
                f"spent and ${held_cost - cost_usd:.6f} set aside for calls in flight, and the "
                f"next call could cost ${cost_usd:.6f}"
            )
        elif batch.max_tokens is not None and batch.total_tokens + held_tokens > batch.max_tokens:
            why = (
                f"the batch reached its budget of {batch.max_tokens:,} tokens: "
                f"{batch.total_tokens:,} used and {held_tokens - tokens:,} set aside for calls "
                f"in flight, and the next call could use {tokens:,}"
            )
        if why is not None:
            batches.stop_for_budget(session, c.batch_id, why)
        return why
