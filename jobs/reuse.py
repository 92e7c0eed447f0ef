"""`--reuse`: answer a request identical to an earlier success from the stored result.

Identical means the same url and the same body (so the same model and parameters), key
order aside: a SHA-256 over both is stored with every request and indexed. Only the same
owner's results are reused (a key never sees another's answers), and a reused answer costs
nothing: its usage stays zero, and `reused_from` names the request that paid for it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col

from jobs.models import Batch, Request, RequestStatus


def fingerprint(url: str, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{url}\n{canonical}".encode()).hexdigest()


def answer_from_earlier(
    session: Session, owner: str, rows: list[dict[str, Any]], now: datetime
) -> int:
    """Mark the rows (about to be inserted) that an earlier success answers; returns how many."""
    wanted = {row["body_sha256"] for row in rows}
    found = session.execute(
        select(
            col(Request.id),
            col(Request.reused_from),
            col(Request.body_sha256),
            col(Request.status_code),
            col(Request.upstream_request_id),
            col(Request.response_body),
        )
        .join(Batch, col(Batch.id) == Request.batch_id)
        .where(
            col(Request.body_sha256).in_(wanted),
            col(Request.status) == RequestStatus.SUCCEEDED,
            col(Batch.owner) == owner,
        )
        .order_by(col(Request.finished_at).desc())
    ).all()
    earlier: dict[str, Any] = {}
    for answer in found:
        earlier.setdefault(answer.body_sha256, answer)  # the latest answer wins
    reused = 0
    for row in rows:
        hit = earlier.get(row["body_sha256"])
        if hit is None:
            continue
        row.update(
            status=RequestStatus.SUCCEEDED,
            finished_at=now,
            enqueued_at=None,
            not_before=None,
            status_code=hit.status_code,
            upstream_request_id=hit.upstream_request_id,
            response_body=hit.response_body,
            reused_from=hit.reused_from or hit.id,  # the request that paid for it
        )
        reused += 1
    return reused
