"""Submission: a checked JSONL stream becomes one Batch and its Requests, then messages."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlmodel import Session, col

from jobs import batches, queue, reuse, validate
from jobs.constants import COMPLETION_WINDOWS_S
from jobs.db import session_scope
from jobs.errors import InputError, LineFault
from jobs.models import (
    Batch,
    BatchKind,
    BatchStatus,
    Priority,
    Request,
    RequestStatus,
    new_id,
    utcnow,
)
from jobs.policy import Policy

log = logging.getLogger(__name__)

INSERT_CHUNK = 1000
PUBLISH_PAGE = 10_000


def open_lines(path: Path) -> validate.LineSource:
    """A re-openable line source over a file (validation and insertion each read it once)."""

    def lines() -> Iterable[bytes]:
        with path.open("rb") as f:
            yield from f

    return lines


def create_batch(
    source: validate.LineSource,
    *,
    name: str,
    endpoint: str | None = None,
    owner: str = "local",
    completion_window: str = "24h",
    metadata: dict[str, str] | None = None,
    input_file_id: str | None = None,
    enqueue: bool = True,
    scan: validate.Scan | None = None,
    kind: BatchKind = BatchKind.BATCH,
    record_faults: bool = False,
    policy: Policy | None = None,
) -> Batch:
    """Check every line, then store the batch and its requests in one transaction and queue them.

    On any bad line, raises InputError naming each bad line; nothing is written or queued.
    With `record_faults` (the HTTP API, as OpenAI's Batch API), the batch is stored at once as
    `validating`, visible while its lines are checked, and bad lines end it `failed` with
    each fault in `errors` instead of raising; nothing runs either way.
    """
    if completion_window not in COMPLETION_WINDOWS_S:
        raise InputError(
            name,
            [
                LineFault(
                    0,
                    "invalid_completion_window",
                    f"completion window {completion_window!r} is not one of "
                    f"{', '.join(COMPLETION_WINDOWS_S)}",
                )
            ],
        )
    now = utcnow()
    policy = policy or Policy()
    start = policy.start_at(now)
    batch = Batch(
        **policy.columns(),
        id=new_id(f"{kind}_"),
        kind=kind,
        owner=owner,
        endpoint=endpoint or "",
        status=BatchStatus.VALIDATING,
        completion_window=completion_window,
        input_file_id=input_file_id,
        source=name,
        batch_metadata=metadata,
        created_at=now,
        # the completion window runs from when the batch may start
        expires_at=policy.expires_at(now, COMPLETION_WINDOWS_S[completion_window]),
    )
    if not record_faults:
        scan = scan or validate.check(source(), name=name, endpoint=endpoint)
        return _store(batch, source, scan, enqueue=enqueue, start=start)
    with session_scope() as session:
        session.add(batch)
    try:
        scan = scan or validate.scan(source(), endpoint=endpoint)
        if scan.faults:
            return _fail(batch.id, fault_entries(scan.faults, scan.more_faults))
        return _store(batch, source, scan, enqueue=enqueue, start=start)
    except BaseException:
        # never leave a batch `validating` behind a failure of our own
        _fail(batch.id, [_entry(None, "validation_aborted", "validation stopped unexpectedly")])
        raise


def _store(
    batch: Batch,
    source: validate.LineSource,
    scan: validate.Scan,
    *,
    enqueue: bool,
    start: datetime | None = None,
) -> Batch:
    """validating -> in_progress with every request inserted, in one transaction; then queue.

    With `reuse`, a request identical to an earlier success of the same owner is answered
    from it as it is inserted (marked `reused_from`, costing nothing) and never queued.
    """
    assert scan.endpoint is not None
    now = utcnow()
    values = {
        "status": BatchStatus.IN_PROGRESS,
        "endpoint": scan.endpoint,
        "input_sha256": scan.sha256,
        "request_total": scan.requests,
        "in_progress_at": now,
    }
    with session_scope() as session:
        if session.get(Batch, batch.id) is None:
            for column, value in values.items():
                setattr(batch, column, value)
            session.add(batch)
            session.flush()
        else:
            moved = session.execute(
                update(Batch)
                .where(col(Batch.id) == batch.id, col(Batch.status) == BatchStatus.VALIDATING)
                .values(**values)
            ).rowcount  # type: ignore[attr-defined]
            if not moved:  # cancelled while its lines were checked: nothing to run
                return _reload(session, batch.id)
        rows = (
            _row(batch.id, req, now, start) for req in validate.requests(source(), scan.endpoint)
        )
        reused = 0
        while chunk := list(islice(rows, INSERT_CHUNK)):
            if batch.reuse:
                reused += reuse.answer_from_earlier(session, batch.owner, chunk, now)
            session.execute(insert(Request), chunk)
        if reused:
            session.execute(
                update(Batch)
                .where(col(Batch.id) == batch.id)
                .values(request_completed=Batch.request_completed + reused)
            )
            batches.finalize_if_done(session, batch.id)
        stored = _reload(session, batch.id)
    log.info("batch %s stored with %d requests (%d reused)", batch.id, scan.requests, reused)
    if enqueue and start is None:  # scheduled requests are sent by the sweeper when due
        publish_batch(batch.id)
    return stored


def publish_batch(batch_id: str) -> None:
    """Queue a stored batch's queued requests, read back in input order a page at a time:
    memory stays flat whatever the batch's size, and each page is a short transaction."""
    after = 0
    with session_scope() as session:
        priority = session.scalar(select(col(Batch.priority)).where(col(Batch.id) == batch_id))
    while True:
        with session_scope() as session:
            page = session.execute(
                select(col(Request.id), col(Request.line))
                .where(
                    col(Request.batch_id) == batch_id,
                    col(Request.line) > after,
                    col(Request.status) == RequestStatus.QUEUED,
                )
                .order_by(col(Request.line))
                .limit(PUBLISH_PAGE)
            ).all()
        if not page:
            return
        publish_safely([rid for rid, _ in page], priority or Priority.BULK)
        after = page[-1][1]


def _fail(batch_id: str, errors: list[dict[str, Any]]) -> Batch:
    """validating -> failed, with its errors; nothing was inserted, nothing runs."""
    with session_scope() as session:
        moved = session.execute(
            update(Batch)
            .where(col(Batch.id) == batch_id, col(Batch.status) == BatchStatus.VALIDATING)
            .values(status=BatchStatus.FAILED, failed_at=utcnow(), errors=errors)
        ).rowcount  # type: ignore[attr-defined]
        if moved:
            batches.notify(session, batch_id)
        return _reload(session, batch_id)


def _reload(session: Session, batch_id: str) -> Batch:
    batch = session.get(Batch, batch_id, populate_existing=True)
    assert batch is not None
    return batch


def _entry(line: int | None, code: str, message: str) -> dict[str, Any]:
    # OpenAI's BatchError: code, line, message, param
    return {"code": code, "line": line, "message": message, "param": None}


def fault_entries(faults: list[LineFault], more: int = 0) -> list[dict[str, Any]]:
    """A batch's `errors.data`: one entry per bad line (line None when no line is at fault)."""
    entries = [_entry(f.line or None, f.code, f.message) for f in faults]
    if more:
        entries.append(_entry(None, "too_many_errors", f"and {more} more faulty line(s)"))
    return entries


def publish_safely(ids: list[str], priority: str = Priority.BULK) -> None:
    """Queue ids; if the broker is down the rows stay queued and the sweeper sends them later."""
    try:
        queue.publish(ids, priority=priority)
    except Exception as exc:  # noqa: BLE001 - the database already holds the work
        log.warning("could not queue %d requests now (%s); the sweeper will", len(ids), exc)
        # NULL enqueued_at: the next sweep sends them, without waiting for them to go stale
        with session_scope() as session:
            for chunk in queue.chunked(ids, INSERT_CHUNK):
                session.execute(
                    update(Request).where(col(Request.id).in_(chunk)).values(enqueued_at=None)
                )


def _row(
    batch_id: str, req: validate.RequestLine, now: Any, not_before: datetime | None = None
) -> dict[str, Any]:
    return {
        "id": new_id("batch_req_"),
        "batch_id": batch_id,
        "line": req.line,
        "custom_id": req.custom_id,
        "method": "POST",
        "url": req.url,
        "model": req.model,
        "body": json.dumps(req.body, ensure_ascii=False, separators=(",", ":")),
        "body_sha256": reuse.fingerprint(req.url, req.body),
        "status": RequestStatus.QUEUED,
        "attempts": 0,
        # NULL: no message yet; the sweeper sends it once `not_before` has passed
        "enqueued_at": None if not_before else now,
        "not_before": not_before,
        "created_at": now,
    }
