"""Results in OpenAI's batch output format: output lines (successes) and error lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from jobs.db import session_scope
from jobs.models import Request, RequestStatus

READ_CHUNK = 1000
# Rows per transaction when a download is streamed (see `paged`).
PAGE_ROWS = 500

ENDED_WITH_ERROR = (RequestStatus.FAILED, RequestStatus.CANCELLED, RequestStatus.EXPIRED)
ENDED = (RequestStatus.SUCCEEDED, *ENDED_WITH_ERROR)
PENDING = (RequestStatus.QUEUED, RequestStatus.RUNNING)

_COLUMNS = (
    col(Request.line),
    col(Request.id),
    col(Request.custom_id),
    col(Request.status),
    col(Request.status_code),
    col(Request.upstream_request_id),
    col(Request.response_body),
    col(Request.error_code),
    col(Request.error_message),
    col(Request.reused_from),
)


def _rows(
    session: Session,
    batch_id: str,
    statuses: tuple[str, ...],
    after_line: int = 0,
    through_line: int | None = None,
    limit: int | None = None,
):
    stmt = (
        select(*_COLUMNS)
        .where(
            col(Request.batch_id) == batch_id,
            col(Request.status).in_(statuses),
            col(Request.line) > after_line,
        )
        .order_by(col(Request.line))
        .execution_options(yield_per=READ_CHUNK)
    )
    if through_line is not None:
        stmt = stmt.where(col(Request.line) <= through_line)
    if limit is not None:
        stmt = stmt.limit(limit)
    return session.execute(stmt)


def _response(status_code: int, request_id: str | None, body: str | None) -> str:
    # the stored body is already JSON: splice it in rather than parse and re-serialise it
    return (
        f'{{"status_code":{status_code},"request_id":{json.dumps(request_id)},'
        f'"body":{body if body else "null"}}}'
    )


def _format(row: Any, extra: str = "") -> str:
    """A request's line in OpenAI's batch output format (its error line when it did not succeed)."""
    _line, rid, custom_id, status, code, upstream_id, body, err_code, message, reused_from = row
    if reused_from:  # promptq's mark: answered from an earlier identical request, for free
        extra = f',"reused_from":{json.dumps(reused_from)}{extra}'
    if status == RequestStatus.SUCCEEDED:
        response = _response(code or 200, upstream_id, body)
        error = "null"
    else:
        response = _response(code, upstream_id, body) if code else "null"
        error = json.dumps({"code": err_code or "request_failed", "message": message or ""})
    return (
        f'{{"id":{json.dumps(rid)},"custom_id":{json.dumps(custom_id)},'
        f'"response":{response},"error":{error}{extra}}}'
    )


def output_lines(session: Session, batch_id: str) -> Iterator[str]:
    """One line per succeeded request, in input order."""
    for row in _rows(session, batch_id, (RequestStatus.SUCCEEDED,)):
        yield _format(row)


def error_lines(session: Session, batch_id: str) -> Iterator[str]:
    """One line per failed, cancelled or expired request, in input order."""
    for row in _rows(session, batch_id, ENDED_WITH_ERROR):
        yield _format(row)


def finished_through(session: Session, batch_id: str) -> int:
    """The results cursor: the highest line L such that every request up to L has ended.

    Ended is final, so everything up to L can be sent once and never changes; a request
    still pending holds back the lines after it (they follow, in input order, when it ends).
    """
    first_pending = session.scalar(
        select(func.min(Request.line)).where(
            col(Request.batch_id) == batch_id,
            col(Request.status).in_(PENDING),
        )
    )
    if first_pending is not None:
        return int(first_pending) - 1
    last = session.scalar(select(func.max(Request.line)).where(col(Request.batch_id) == batch_id))
    return int(last or 0)


def paged(
    batch_id: str,
    which: str,
    *,
    after_line: int = 0,
    through_line: int | None = None,
    page_rows: int = PAGE_ROWS,
) -> Iterator[str]:
    """Lines of `which`: "output", "error", or "results" (every ended request, with its line).

    Each page is read in a short transaction of its own: a download may last minutes, and
    one long read would hold SQLite's write lock (every transaction begins IMMEDIATE) and
    stall the workers for as long.
    """
    statuses = {
        "output": (RequestStatus.SUCCEEDED,),
        "error": ENDED_WITH_ERROR,
        "results": ENDED,
    }[which]
    while True:
        with session_scope() as session:
            page = list(_rows(session, batch_id, statuses, after_line, through_line, page_rows))
        for row in page:
            yield _format(row, f',"line":{row[0]}' if which == "results" else "")
        if len(page) < page_rows:
            return
        after_line = page[-1][0]


def write_lines(lines: Iterator[str], path: Path) -> int:
    """Write lines to `path` atomically (a temp file renamed); returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as f:
        for line in lines:
            f.write(line)
            f.write("\n")
            count += 1
    tmp.replace(path)
    return count


def export(session: Session, batch_id: str, output: Path, errors: Path | None) -> tuple[int, int]:
    """Write the results so far; errors go to `errors`, or are not written when it is None."""
    written = write_lines(output_lines(session, batch_id), output)
    failed = write_lines(error_lines(session, batch_id), errors) if errors else 0
    return written, failed
