"""Submission: a checked JSONL stream becomes one Batch and its Requests, then messages."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import timedelta
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from jobs import queue, validate
from jobs.constants import COMPLETION_WINDOWS_S
from jobs.db import session_scope
from jobs.errors import InputError, LineFault
from jobs.models import Batch, BatchStatus, Request, RequestStatus, new_id, utcnow

log = logging.getLogger(__name__)

INSERT_CHUNK = 1000


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
) -> Batch:
    """Check every line, then store the batch and its requests in one transaction and queue them.

    On any bad line, raises InputError naming each bad line; nothing is written or queued.
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
    if scan is None:
        scan = validate.check(source(), name=name, endpoint=endpoint)
    assert scan.endpoint is not None
    now = utcnow()
    batch = Batch(
        owner=owner,
        endpoint=scan.endpoint,
        status=BatchStatus.IN_PROGRESS,
        completion_window=completion_window,
        input_file_id=input_file_id,
        input_sha256=scan.sha256,
        source=name,
        batch_metadata=metadata,
        request_total=scan.requests,
        created_at=now,
        in_progress_at=now,
        expires_at=now + timedelta(seconds=COMPLETION_WINDOWS_S[completion_window]),
    )
    ids: list[str] = []
    with session_scope() as session:
        session.add(batch)
        session.flush()
        rows = (_row(batch.id, req, now) for req in validate.requests(source(), scan.endpoint))
        while chunk := list(islice(rows, INSERT_CHUNK)):
            session.execute(insert(Request), chunk)
            ids.extend(row["id"] for row in chunk)
    log.info("batch %s stored with %d requests", batch.id, len(ids))
    if enqueue:
        publish_safely(ids)
    return batch


def publish_safely(ids: list[str]) -> None:
    """Queue ids; if the broker is down the rows stay queued and the sweeper sends them later."""
    try:
        queue.publish(ids)
    except Exception as exc:  # noqa: BLE001 - the database already holds the work
        log.warning("could not queue %d requests now (%s); the sweeper will", len(ids), exc)


def _row(batch_id: str, req: validate.RequestLine, now: Any) -> dict[str, Any]:
    return {
        "id": new_id("batch_req_"),
        "batch_id": batch_id,
        "line": req.line,
        "custom_id": req.custom_id,
        "method": "POST",
        "url": req.url,
        "model": req.model,
        "body": json.dumps(req.body, ensure_ascii=False, separators=(",", ":")),
        "status": RequestStatus.QUEUED,
        "attempts": 0,
        "enqueued_at": now,
        "created_at": now,
    }
