"""Budgets in the database: what running calls set aside, and stopping at the budget."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from jobs import submit
from jobs.db import session_scope
from jobs.models import Batch, Request
from jobs.policy import Policy
from tests.worker.test_store import success
from worker import budget, store


def make_budgeted_batch(count: int, **policy: Any) -> tuple[str, list[str]]:
    lines = [
        json.dumps(
            {
                "custom_id": f"c{i}",
                "method": "POST",
                "url": "/v1/responses",
                "body": {"model": "m", "input": "p"},
            }
        ).encode()
        for i in range(count)
    ]
    batch = submit.create_batch(
        lambda: lines, name="t.jsonl", enqueue=False, policy=Policy(**policy)
    )
    stmt = select(Request.id).where(Request.batch_id == batch.id).order_by(Request.line)
    with session_scope() as session:
        return batch.id, list(session.scalars(stmt))


def test_a_reservation_fits_while_spent_plus_calls_in_flight_stay_within_the_budget(
    db: str,
) -> None:
    batch_id, ids = make_budgeted_batch(4, max_cost_usd=1.0)
    claimed = store.claim(ids[:3], lease_s=60)
    assert all(c.budgeted for c in claimed)
    assert budget.reserve(claimed[0], 0.4, 100) is None
    assert budget.reserve(claimed[1], 0.4, 100) is None
    why = budget.reserve(claimed[2], 0.4, 100)  # 0.8 already set aside for calls in flight
    assert why is not None and "$1" in why
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        assert [e["code"] for e in batch.errors or []] == ["budget_exceeded"]
        statuses = dict(session.execute(select(Request.id, Request.status)).all())
    assert statuses[ids[3]] == "failed"  # queued: ended at once, it will never be sent
    assert [statuses[i] for i in ids[:3]] == ["running"] * 3  # in flight: they finish


def test_a_reservation_is_given_back_by_the_outcome_so_the_budget_counts_only_spending(
    db: str,
) -> None:
    batch_id, ids = make_budgeted_batch(3, max_tokens=1000)
    first, second, third = store.claim(ids, lease_s=60)
    assert budget.reserve(first, 0.0, 600) is None
    store.record([success(first, tokens=50)])  # used 150 of the 600 set aside
    assert budget.reserve(second, 0.0, 600) is None  # 150 spent + 600 <= 1000
    assert budget.reserve(third, 0.0, 600) is not None  # 150 + 600 in flight + 600 > 1000
