"""The worker's database operations: claim with a lease, renew, and record outcomes.

Every write is conditional on the row still being in the state (and attempt) this worker
put it in, so duplicate deliveries, expired leases and late answers never count twice.
An answer that arrives after its lease was taken back still counts if nobody claimed the
request since (the attempt number is unchanged): it was paid for, and it is the only one.
Every text written here is scrubbed of the upstream key, whatever the upstream echoed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, update
from sqlmodel import Session, col

from jobs import batches
from jobs.db import session_scope
from jobs.models import TOKEN_FIELDS, Batch, Priority, Request, RequestStatus, utcnow
from jobs.policy import window_of
from jobs.schedule import Window
from jobs.settings import get_settings
from worker.usage import Usage

RUNNING = RequestStatus.RUNNING
QUEUED = RequestStatus.QUEUED
REDACTED = "[redacted]"
# Columns whose text comes from the upstream (a body, a header, an error it wrote).
UPSTREAM_TEXT = ("upstream_request_id", "response_body", "error_code", "error_message")


@dataclass(frozen=True, slots=True)
class Claimed:
    """A request this worker now holds under a lease, with its batch's rules."""

    id: str
    batch_id: str
    url: str
    model: str
    body: str
    attempt: int
    priority: str = Priority.BULK
    window: Window | None = None
    budgeted: bool = False  # the batch has --max-cost or --max-tokens: reserve before calling


@dataclass(slots=True)
class Outcome:
    """What became of one attempt: `succeeded`, `failed`, `retry` (queued again after
    `not_before`), `released` (never sent: back to the queue, the attempt not counted) or
    `deferred` (never sent, outside the batch's window: queued again after `not_before`,
    uncounted)."""

    claimed: Claimed
    kind: str
    status_code: int | None = None
    upstream_request_id: str | None = None
    response_body: str | None = None
    latency_ms: float | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    error_code: str | None = None
    error_message: str | None = None
    not_before: datetime | None = None
    held: bool = False  # a retry this worker itself will take again (no message needed)


def claim(ids: list[str], lease_s: float) -> list[Claimed]:
    """queued -> running for those ids that are queued and due; the others are left alone."""
    now = utcnow()
    where: tuple[Any, ...] = (
        col(Request.id).in_(ids),
        col(Request.status) == QUEUED,
        or_(col(Request.not_before).is_(None), col(Request.not_before) <= now),
    )
    stmt = (
        update(Request)
        .where(*where)
        .values(
            status=RUNNING,
            attempts=Request.attempts + 1,
            lease_until=now + timedelta(seconds=lease_s),
        )
        .returning(
            col(Request.id),
            col(Request.batch_id),
            col(Request.url),
            col(Request.model),
            col(Request.body),
            col(Request.attempts),
        )
    )
    with session_scope() as session:
        _lock_in_id_order(session, *where)
        rows = session.execute(stmt).all()
        if not rows:
            return []
        rules = _batch_rules(session, {row[1] for row in rows})
        return [
            Claimed(rid, bid, url, model, body, attempt, *rules[bid])
            for rid, bid, url, model, body, attempt in rows
        ]


# A batch's rules (priority, window, budgeted) never change once it exists: each process
# reads them once per batch, not once per claim.
_RULES: dict[str, tuple[str, Window | None, bool]] = {}
RULES_CACHED_BATCHES = 10_000


def _batch_rules(
    session: Session, batch_ids: set[str]
) -> dict[str, tuple[str, Window | None, bool]]:
    missing = batch_ids - _RULES.keys()
    if missing:
        if len(_RULES) > RULES_CACHED_BATCHES:
            _RULES.clear()
        found = session.execute(
            select(
                col(Batch.id),
                col(Batch.priority),
                col(Batch.window),
                col(Batch.window_utc_offset_min),
                col(Batch.window_tz),
                col(Batch.max_cost_usd),
                col(Batch.max_tokens),
            ).where(col(Batch.id).in_(missing))
        )
        for bid, priority, window, offset, tz_name, cost, tokens in found:
            budgeted = cost is not None or tokens is not None
            _RULES[bid] = (priority, window_of(window, offset, tz_name), budgeted)
    return {bid: _RULES[bid] for bid in batch_ids}


def renew(held: dict[str, int], lease_s: float) -> None:
    """Extend the leases of the requests this process still works on."""
    if not held:
        return
    until = utcnow() + timedelta(seconds=lease_s)
    where: tuple[Any, ...] = (col(Request.id).in_(list(held)), col(Request.status) == RUNNING)
    with session_scope() as session:
        _lock_in_id_order(session, *where)
        session.execute(update(Request).where(*where).values(lease_until=until))


def release(held: dict[str, int]) -> None:
    """Give requests back to the queue (a clean shutdown); the sweeper re-sends them."""
    if not held:
        return
    with session_scope() as session:
        for rid, attempt in sorted(held.items()):
            session.execute(
                update(Request)
                .where(this_attempt(rid, attempt))
                .values(status=QUEUED, lease_until=None, enqueued_at=None)
            )


def _lock_in_id_order(session: Session, *where: Any) -> None:
    """Lock the rows matching `where` in id order, before a write that takes several: every
    such write (and `record`, row by row) locks in the same order, so two of them cannot
    deadlock on PostgreSQL. SQLite locks the whole database and needs nothing."""
    if session.get_bind().dialect.name != "sqlite":
        rows = select(col(Request.id)).where(*where).order_by(col(Request.id))
        session.execute(rows.with_for_update())


def this_attempt(rid: str, attempt: int) -> Any:
    """The row, while it is still running the attempt a worker claimed."""
    return and_(
        col(Request.id) == rid,
        col(Request.status) == RUNNING,
        col(Request.attempts) == attempt,
    )


def record(outcomes: list[Outcome]) -> None:
    """Persist outcomes in one transaction, add them to their batches, finalize finished ones.

    One SELECT ... FOR UPDATE (in id order: concurrent writers cannot deadlock) finds which
    outcomes still belong to their rows; then one executemany UPDATE per kind of outcome.
    """
    now = utcnow()
    key = get_settings().upstream_key
    by_id = {o.claimed.id: o for o in outcomes}
    totals: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    with session_scope() as session:
        rows = session.execute(
            select(col(Request.id), col(Request.status), col(Request.attempts))
            .where(col(Request.id).in_(sorted(by_id)))
            .order_by(col(Request.id))
            .with_for_update()
        ).all()
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rid, status, attempts in rows:
            o = by_id[rid]
            if status not in (RUNNING, QUEUED) or attempts != o.claimed.attempt:
                # still this attempt's to finish: running it, or queued again (lease taken
                # back) without a newer claim; otherwise a later attempt owns the row
                continue
            values = _scrubbed(_values(o, now, attempts), key)
            groups[o.kind].append({"b_id": rid, **{f"v_{k}": v for k, v in values.items()}})
            if o.kind in ("retry", "released", "deferred"):
                continue
            t = totals[o.claimed.batch_id]
            t["request_completed" if o.kind == "succeeded" else "request_failed"] += 1
            for name in TOKEN_FIELDS:
                t[name] += getattr(o.usage, name)
            t["cost_usd"] += o.cost_usd
        table = Request.__table__  # type: ignore[attr-defined]
        for params in groups.values():
            columns = [k.removeprefix("v_") for k in params[0] if k != "b_id"]
            stmt = (
                table.update()
                .where(table.c.id == bindparam("b_id"))
                .values({c: bindparam(f"v_{c}", type_=table.c[c].type) for c in columns})
            )
            session.connection().execute(stmt, params)
        for batch_id, t in sorted(totals.items()):
            counts = session.execute(
                update(Batch)
                .where(col(Batch.id) == batch_id)
                .values({name: getattr(Batch, name) + amount for name, amount in t.items()})
                .returning(
                    col(Batch.request_completed),
                    col(Batch.request_failed),
                    col(Batch.request_total),
                )
            ).first()
            if counts and counts[0] + counts[1] >= counts[2]:
                batches.finalize_if_done(session, batch_id)


def _scrubbed(values: dict[str, Any], key: str | None) -> dict[str, Any]:
    """The values with the upstream key taken out of any text an upstream may have echoed
    (the client redacts error bodies; a header or a success body could still carry it)."""
    if key:
        for name in UPSTREAM_TEXT:
            text = values.get(name)
            if isinstance(text, str) and key in text:
                values[name] = text.replace(key, REDACTED)
    return values


def _values(o: Outcome, now: datetime, attempts: int) -> dict[str, Any]:
    if o.kind == "released":  # never sent: the attempt does not count
        return {
            "status": QUEUED,
            "lease_until": None,
            "enqueued_at": None,
            "attempts": attempts - 1,
            "reserved_cost_usd": 0.0,
            "reserved_tokens": 0,
        }
    if o.kind == "deferred":  # outside its window: the sweeper sends it when it opens
        return {
            "status": QUEUED,
            "lease_until": None,
            "enqueued_at": None,
            "not_before": o.not_before,
            "attempts": attempts - 1,
        }
    if o.kind == "retry":
        return {
            "status": QUEUED,
            "lease_until": None,
            "not_before": o.not_before,
            # NULL: no message exists, the sweeper sends one when due; held: we retry it
            "enqueued_at": now if o.held else None,
            "status_code": o.status_code,
            "error_code": o.error_code,
            "error_message": o.error_message,
            "reserved_cost_usd": 0.0,
            "reserved_tokens": 0,
        }
    values: dict[str, Any] = {
        "status": RequestStatus.SUCCEEDED if o.kind == "succeeded" else RequestStatus.FAILED,
        "lease_until": None,
        "finished_at": now,
        "status_code": o.status_code,
        "upstream_request_id": o.upstream_request_id,
        "response_body": o.response_body,
        "latency_ms": o.latency_ms,
        "error_code": o.error_code,
        "error_message": o.error_message,
        "cost_usd": o.cost_usd,
        "reserved_cost_usd": 0.0,
        "reserved_tokens": 0,
    }
    for name in TOKEN_FIELDS:
        values[name] = getattr(o.usage, name)
    return values


def expired_leases(now: datetime, limit: int = 1000) -> list[tuple[str, str, int]]:
    """Running requests whose worker stopped renewing their lease (it died)."""
    stmt = (
        select(col(Request.id), col(Request.batch_id), col(Request.attempts))
        .where(col(Request.status) == RUNNING, col(Request.lease_until) < now)
        .limit(limit)
    )
    with session_scope() as session:
        return [tuple(row) for row in session.execute(stmt)]


def requeue(ids: list[str], now: datetime) -> None:
    """Expired leases back to queued, without a message (the sweeper sends one)."""
    where: tuple[Any, ...] = (
        col(Request.id).in_(ids),
        col(Request.status) == RUNNING,
        col(Request.lease_until) < now,
    )
    with session_scope() as session:
        _lock_in_id_order(session, *where)
        session.execute(
            update(Request).where(*where).values(status=QUEUED, lease_until=None, enqueued_at=None)
        )


def due_unsent(now: datetime, stale_before: datetime | None, limit: int) -> dict[str, list[str]]:
    """Queued and due requests without a live message, by their batch's priority; marks
    them sent (the caller sends).

    Without a message: `enqueued_at` is NULL (a retry, a recovered lease) or, when the caller
    knows the broker's queue is empty (`stale_before` given), older than `stale_before`
    (Redis lost its messages).
    """
    unsent: Any = col(Request.enqueued_at).is_(None)
    if stale_before is not None:
        unsent = or_(unsent, col(Request.enqueued_at) < stale_before)
    where = (
        col(Request.status) == QUEUED,
        or_(col(Request.not_before).is_(None), col(Request.not_before) <= now),
        unsent,
    )
    with session_scope() as session:
        found = session.execute(
            select(col(Request.id), col(Batch.priority))
            .join(Batch, col(Batch.id) == Request.batch_id)
            .where(*where)
            .limit(limit)
        ).all()
        by_priority: dict[str, list[str]] = defaultdict(list)
        for rid, priority in found:
            by_priority[priority].append(rid)
        if found:
            ids = [rid for rid, _ in found]
            chosen: tuple[Any, ...] = (col(Request.id).in_(ids), *where)
            _lock_in_id_order(session, *chosen)
            session.execute(update(Request).where(*chosen).values(enqueued_at=now))
        return dict(by_priority)
