"""A batch's lifecycle: lookup, cancel, expire, finalize, and its OpenAI Batch object."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlmodel import Session, col

from jobs.errors import NotFoundError
from jobs.models import (
    BATCH_TERMINAL,
    Batch,
    BatchKind,
    BatchStatus,
    File,
    Request,
    RequestStatus,
    utcnow,
)
from jobs.results import PENDING, error_lines, output_lines


def get_batch(
    session: Session, batch_id: str, owner: str | None = None, kind: BatchKind | None = None
) -> Batch:
    """The batch, if it exists and `owner` (when given) may see it, and of `kind` if given."""
    batch = session.get(Batch, batch_id)
    if (
        batch is None
        or (owner is not None and batch.owner != owner)
        or (kind is not None and batch.kind != kind)
    ):
        raise NotFoundError(f"no {kind or 'batch'} {batch_id!r}")
    return batch


def page(
    session: Session, owner: str, kind: BatchKind, *, after: str | None, limit: int
) -> tuple[list[Batch], bool]:
    """One owner's batches (or jobs), newest first, those after `after`; and whether more follow."""
    created: Any = Batch.created_at
    ident: Any = Batch.id
    stmt = select(Batch).where(col(Batch.owner) == owner, col(Batch.kind) == kind)
    if after is not None:
        mark = get_batch(session, after, owner, kind)
        stmt = stmt.where(
            or_(created < mark.created_at, and_(created == mark.created_at, ident < mark.id))
        )
    rows = list(session.scalars(stmt.order_by(created.desc(), ident.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def cancel(session: Session, batch_id: str, owner: str | None = None) -> Batch:
    """Stop a batch: queued requests end `cancelled`; finished results are kept."""
    batch = get_batch(session, batch_id, owner)
    if batch.status in BATCH_TERMINAL or batch.status == BatchStatus.CANCELLING:
        return batch
    now = utcnow()
    session.execute(
        update(Batch)
        .where(col(Batch.id) == batch_id)
        .values(status=BatchStatus.CANCELLING, cancelling_at=now)
    )
    _end_queued(session, batch_id, RequestStatus.CANCELLED, "batch_cancelled", now)
    finalize_if_done(session, batch_id)
    session.refresh(batch)
    return batch


def expire(session: Session, batch_id: str) -> None:
    """Past its completion window: queued requests end `expired`; running ones may finish."""
    now = utcnow()
    marked = session.execute(
        update(Batch)
        .where(col(Batch.id) == batch_id, col(Batch.status) == BatchStatus.IN_PROGRESS)
        .where(col(Batch.expired_at).is_(None))
        .values(expired_at=now)
    )
    if marked.rowcount:  # type: ignore[attr-defined]
        _end_queued(session, batch_id, RequestStatus.EXPIRED, "batch_expired", now)
        finalize_if_done(session, batch_id)


def fail_interrupted_validations(session: Session, before: datetime) -> int:
    """Batches still `validating` since before `before`: the process validating them died
    (validation itself takes seconds); they end `failed` and can be submitted again."""
    now = utcnow()
    error = {
        "code": "validation_interrupted",
        "line": None,
        "message": "the server stopped while validating this batch's file; create it again",
        "param": None,
    }
    failed = session.scalars(
        update(Batch)
        .where(col(Batch.status) == BatchStatus.VALIDATING, col(Batch.created_at) < before)
        .values(status=BatchStatus.FAILED, failed_at=now, errors=[error])
        .returning(col(Batch.id))
    ).all()
    for batch_id in failed:
        notify(session, batch_id)
    return len(failed)


def overdue_batches(session: Session, now: datetime | None = None) -> list[str]:
    stmt = select(col(Batch.id)).where(
        col(Batch.status) == BatchStatus.IN_PROGRESS,
        col(Batch.expires_at) < (now or utcnow()),
        col(Batch.expired_at).is_(None),
    )
    return list(session.scalars(stmt))


def open_batches(session: Session) -> list[str]:
    """Batches that still run (or are being cancelled)."""
    stmt = select(col(Batch.id)).where(
        col(Batch.status).in_([BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING])
    )
    return list(session.scalars(stmt))


def find_resumable(session: Session, sha256: str, owner: str = "local") -> Batch | None:
    """The latest batch made from identical input that is running or completed."""
    stmt = (
        select(Batch)
        .where(
            col(Batch.input_sha256) == sha256,
            col(Batch.owner) == owner,
            col(Batch.status).in_(
                [BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.COMPLETED]
            ),
        )
        .order_by(col(Batch.created_at).desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


def resume(session: Session, batch_id: str, *, reclaim_running: bool) -> None:
    """Make a batch's unfinished requests go out again (after its processes stopped).

    `reclaim_running` takes back running requests at once; only safe when no worker can
    still hold them (otherwise their leases expire and the sweeper takes them back).
    """
    if reclaim_running:
        session.execute(
            update(Request)
            .where(col(Request.batch_id) == batch_id, col(Request.status) == RequestStatus.RUNNING)
            .values(status=RequestStatus.QUEUED, lease_until=None)
        )
    # NULL enqueued_at: the sweeper sends every one of them again (duplicates are harmless)
    session.execute(
        update(Request)
        .where(col(Request.batch_id) == batch_id, col(Request.status) == RequestStatus.QUEUED)
        .values(enqueued_at=None)
    )


def _end_queued(
    session: Session, batch_id: str, status: RequestStatus, code: str, now: datetime
) -> int:
    message = {
        "batch_cancelled": "the batch was cancelled before this request ran",
        "batch_expired": "the batch's completion window ended before this request ran",
        "budget_exceeded": "the batch reached its budget before this request ran",
    }[code]
    ended = session.execute(
        update(Request)
        .where(col(Request.batch_id) == batch_id, col(Request.status) == RequestStatus.QUEUED)
        .values(status=status, error_code=code, error_message=message, finished_at=now)
    ).rowcount  # type: ignore[attr-defined]
    if ended:
        session.execute(
            update(Batch)
            .where(col(Batch.id) == batch_id)
            .values(request_failed=Batch.request_failed + ended)
        )
    return int(ended or 0)


def has_pending(session: Session, batch_id: str) -> bool:
    stmt = select(
        exists().where(col(Request.batch_id) == batch_id, col(Request.status).in_(PENDING))
    )
    return bool(session.scalar(stmt))


def finalize_if_done(session: Session, batch_id: str) -> bool:
    """When no request is pending, move the batch to its final state (once, whoever calls)."""
    if has_pending(session, batch_id):
        return False
    now = utcnow()
    won = session.execute(
        update(Batch)
        .where(
            col(Batch.id) == batch_id,
            col(Batch.status).in_([BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING]),
        )
        .values(status=BatchStatus.FINALIZING, finalizing_at=now)
        .returning(
            col(Batch.cancelling_at),
            col(Batch.expired_at),
            col(Batch.owner),
            col(Batch.kind),
            col(Batch.webhook_url),
        )
    ).first()
    if won is None:
        return False
    cancelling_at, expired_at, owner, kind, webhook_url = won
    # a job's result is shown inline on the job; files are for batches
    files = _write_files(session, batch_id, owner) if kind == BatchKind.BATCH else {}
    if cancelling_at is not None:
        final = {"status": BatchStatus.CANCELLED, "cancelled_at": now}
    elif expired_at is not None:
        final = {"status": BatchStatus.EXPIRED}
    else:
        final = {"status": BatchStatus.COMPLETED, "completed_at": now}
    session.execute(update(Batch).where(col(Batch.id) == batch_id).values(**final, **files))
    if webhook_url:
        notify(session, batch_id)
    return True


def notify(session: Session, batch_id: str) -> None:
    """Queue the webhook of a batch that just reached a terminal state, in the same
    transaction: the notification exists if and only if the state does."""
    from jobs import webhooks

    batch = session.get(Batch, batch_id, populate_existing=True)
    if batch is not None and batch.webhook_url:
        webhooks.enqueue(session, to_openai(batch), batch.webhook_url)


def stop_for_budget(session: Session, batch_id: str, message: str) -> int:
    """The batch reached its budget: every request not yet sent ends `budget_exceeded`,
    the batch says why in its errors, and it ends once the calls in flight are stored."""
    now = utcnow()
    ended = _end_queued(session, batch_id, RequestStatus.FAILED, "budget_exceeded", now)
    batch = session.get(Batch, batch_id, populate_existing=True)
    if batch is not None and not any(
        e.get("code") == "budget_exceeded" for e in batch.errors or []
    ):
        entry = {"code": "budget_exceeded", "line": None, "message": message, "param": None}
        session.execute(
            update(Batch)
            .where(col(Batch.id) == batch_id)
            .values(errors=[*(batch.errors or []), entry])
        )
    return ended


def _write_files(session: Session, batch_id: str, owner: str) -> dict[str, str]:
    """Output and error files: rows whose content is generated from the requests on demand."""
    ids: dict[str, str] = {}
    for purpose, lines, column in (
        ("batch_output", output_lines, "output_file_id"),
        ("batch_error", error_lines, "error_file_id"),
    ):
        size = sum(len(line.encode()) + 1 for line in lines(session, batch_id))
        if size:
            file = File(
                owner=owner,
                purpose=purpose,
                filename=f"{batch_id}_{purpose.removeprefix('batch_')}.jsonl",
                size_bytes=size,
                batch_id=batch_id,
            )
            session.add(file)
            session.flush()
            ids[column] = file.id
    return ids


def status_counts(session: Session, batch_id: str) -> dict[str, int]:
    stmt = (
        select(col(Request.status), func.count())
        .where(col(Request.batch_id) == batch_id)
        .group_by(Request.status)
    )
    return {status: count for status, count in session.execute(stmt)}


def _epoch(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value else None


def to_openai(batch: Batch) -> dict[str, Any]:
    """The Batch object as OpenAI's Batch API returns it (plus `cost_usd`, our extension)."""
    errors = {"object": "list", "data": batch.errors} if batch.errors else None
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": errors,
        "input_file_id": batch.input_file_id or "",
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": _epoch(batch.created_at),
        "in_progress_at": _epoch(batch.in_progress_at),
        "expires_at": _epoch(batch.expires_at),
        "finalizing_at": _epoch(batch.finalizing_at),
        "completed_at": _epoch(batch.completed_at),
        "failed_at": _epoch(batch.failed_at),
        "expired_at": _epoch(batch.expired_at),
        "cancelling_at": _epoch(batch.cancelling_at),
        "cancelled_at": _epoch(batch.cancelled_at),
        "request_counts": {
            "total": batch.request_total,
            "completed": batch.request_completed,
            "failed": batch.request_failed,
        },
        "metadata": batch.batch_metadata,
        "usage": {
            "input_tokens": batch.input_tokens,
            "input_tokens_details": {"cached_tokens": batch.cached_input_tokens},
            "output_tokens": batch.output_tokens,
            "output_tokens_details": {"reasoning_tokens": batch.reasoning_tokens},
            "total_tokens": batch.total_tokens,
        },
        "cost_usd": round(batch.cost_usd, 9),
        # promptq's extensions: how the batch runs (README, "How a batch runs")
        "priority": batch.priority,
        "window": batch.window,
        "window_utc_offset_min": batch.window_utc_offset_min,  # the clock the window is on
        "window_tz": batch.window_tz,  # and its zone, when known (daylight saving followed)
        "max_cost_usd": batch.max_cost_usd,
        "max_tokens": batch.max_tokens,
        "webhook_url": batch.webhook_url,
        "reuse": batch.reuse,
    }
