"""Files: uploaded batch inputs (kept in the data dir) and batches' output and error files.

An upload's bytes live at `<data dir>/files/<file id>`, not in the database: they arrive and
leave as streams at constant memory, and validation reads them twice as a line stream,
while a 200 MB row would be read whole into memory by the database drivers. Output and
error files have no bytes anywhere: their rows name a batch, whose requests make the lines.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select
from sqlmodel import Session, col

from jobs.db import session_scope
from jobs.errors import NotFoundError
from jobs.models import File
from jobs.settings import get_settings

INPUT_PURPOSE = "batch"
# OpenAI names both a batch's output and its error file `batch_output`
SHOWN_PURPOSE = {"batch_output": "batch_output", "batch_error": "batch_output"}


def stored_path(file_id: str) -> Path:
    return get_settings().files_dir / file_id


def get_file(session: Session, file_id: str, owner: str) -> File:
    """The file, if it exists and `owner` may see it."""
    file = session.get(File, file_id)
    if file is None or file.owner != owner:
        raise NotFoundError(f"no file {file_id!r}")
    return file


def page(
    session: Session,
    owner: str,
    *,
    after: str | None,
    limit: int,
    newest_first: bool = True,
    purpose: str | None = None,
) -> tuple[list[File], bool]:
    """One owner's files in creation order, those after `after`; and whether more follow."""
    stmt = select(File).where(col(File.owner) == owner)
    if purpose is not None:
        stored = [name for name, shown in SHOWN_PURPOSE.items() if shown == purpose] or [purpose]
        stmt = stmt.where(col(File.purpose).in_(stored))
    if after is not None:
        mark = get_file(session, after, owner)
        stmt = stmt.where(_beyond(mark.created_at, mark.id, newest_first))
    created: Any = File.created_at
    ident: Any = File.id
    order = (created.desc(), ident.desc()) if newest_first else (created.asc(), ident.asc())
    rows = list(session.scalars(stmt.order_by(*order).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def _beyond(created_at: datetime, file_id: str, newest_first: bool) -> Any:
    created: Any = File.created_at
    ident: Any = File.id
    if newest_first:
        return or_(created < created_at, and_(created == created_at, ident < file_id))
    return or_(created > created_at, and_(created == created_at, ident > file_id))


def delete(file_id: str, owner: str) -> None:
    """Forget the row, then the bytes (a crash in between leaves bytes no row names)."""
    with session_scope() as session:
        file = get_file(session, file_id, owner)
        session.delete(file)
    if file.batch_id is None:
        stored_path(file.id).unlink(missing_ok=True)


def to_openai(file: File) -> dict[str, Any]:
    """The File object as OpenAI's Files API returns it."""
    return {
        "id": file.id,
        "object": "file",
        "bytes": file.size_bytes,
        "created_at": int(file.created_at.timestamp()),
        "filename": file.filename,
        "purpose": SHOWN_PURPOSE.get(file.purpose, file.purpose),
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }
