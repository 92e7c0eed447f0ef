"""Results in OpenAI's batch output format: output lines (successes) and error lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import select
from sqlmodel import Session

from jobs.models import Request, RequestStatus

READ_CHUNK = 1000

_COLUMNS = (
    Request.id,
    Request.custom_id,
    Request.status,
    Request.status_code,
    Request.upstream_request_id,
    Request.response_body,
    Request.error_code,
    Request.error_message,
)


def _rows(session: Session, batch_id: str, statuses: tuple[str, ...], after_line: int = 0):  # type: ignore[no-untyped-def]
    stmt = (
        select(*_COLUMNS)
        .where(
            Request.batch_id == batch_id,  # type: ignore[arg-type]
            Request.status.in_(statuses),  # type: ignore[attr-defined]
            Request.line > after_line,  # type: ignore[arg-type]
        )
        .order_by(Request.line)  # type: ignore[arg-type]
        .execution_options(yield_per=READ_CHUNK)
    )
    return session.execute(stmt)


def _response(status_code: int, request_id: str | None, body: str | None) -> str:
    # the stored body is already JSON: splice it in rather than parse and re-serialise it
    return (
        f'{{"status_code":{status_code},"request_id":{json.dumps(request_id)},'
        f'"body":{body if body else "null"}}}'
    )


def output_lines(session: Session, batch_id: str) -> Iterator[str]:
    """One line per succeeded request, in input order."""
    for rid, custom_id, _s, code, upstream_id, body, _c, _m in _rows(
        session, batch_id, (RequestStatus.SUCCEEDED,)
    ):
        yield (
            f'{{"id":{json.dumps(rid)},"custom_id":{json.dumps(custom_id)},'
            f'"response":{_response(code or 200, upstream_id, body)},"error":null}}'
        )


def error_lines(session: Session, batch_id: str) -> Iterator[str]:
    """One line per failed, cancelled or expired request, in input order."""
    ended = (RequestStatus.FAILED, RequestStatus.CANCELLED, RequestStatus.EXPIRED)
    for rid, custom_id, _s, code, upstream_id, body, err_code, message in _rows(
        session, batch_id, ended
    ):
        response = _response(code, upstream_id, body) if code else "null"
        error = json.dumps({"code": err_code or "request_failed", "message": message or ""})
        yield (
            f'{{"id":{json.dumps(rid)},"custom_id":{json.dumps(custom_id)},'
            f'"response":{response},"error":{error}}}'
        )


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
