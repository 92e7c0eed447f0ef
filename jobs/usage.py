"""What was spent: token usage and cost summed by model, day, key (owner) or batch."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Label, func, select
from sqlmodel import Session, col

from jobs.models import TOKEN_FIELDS, Batch, Request

USAGE = (*TOKEN_FIELDS, "cost_usd")


def summary(session: Session, by: str, since: datetime | None = None) -> list[dict[str, Any]]:
    """One row per group of finished requests, largest cost first."""
    groups = {
        "model": col(Request.model),
        "day": func.date(Request.finished_at),
        "key": col(Batch.owner),
        "batch": col(Request.batch_id),
    }
    if by not in groups:
        raise ValueError(f"--by must be one of {', '.join(groups)}")
    key: Label[Any] = groups[by].label(by)
    sums = [func.coalesce(func.sum(getattr(Request, name)), 0).label(name) for name in USAGE]
    stmt = (
        select(key, func.count().label("requests"), *sums)
        .select_from(Request)
        .join(Batch, col(Batch.id) == Request.batch_id)
        .where(col(Request.finished_at).is_not(None))
        .group_by(key)
        .order_by(func.sum(Request.cost_usd).desc(), key)
    )
    if since is not None:
        stmt = stmt.where(col(Request.finished_at) >= since)
    return [
        {
            by: str(row[0]),
            "requests": int(row[1]),
            **{
                name: (float(v) if name == "cost_usd" else int(v))
                for name, v in zip(USAGE, row[2:], strict=True)
            },
        }
        for row in session.execute(stmt)
    ]
