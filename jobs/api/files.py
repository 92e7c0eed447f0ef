"""`/v1/files`: upload a batch input, list, retrieve, download and delete files."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from jobs import files, results
from jobs.api.deps import CurrentOwner, SessionDep, SettingsDep
from jobs.api.envelope import documented, list_object
from jobs.api.upload import FILE_FIELD, receive_file
from jobs.db import session_scope
from jobs.errors import InvalidRequestError, NotFoundError
from jobs.models import File, new_id

router = APIRouter(prefix="/v1/files", tags=["files"])

MAX_FILENAME_CHARS = 255
CONTENT_TYPE = "application/octet-stream"


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["uploaded", "processed", "error"]
    expires_at: int | None = None
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD, "purpose"],
                    "properties": {
                        FILE_FIELD: {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": [files.INPUT_PURPOSE]},
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    response_model=FileObject,
    openapi_extra=_UPLOAD_BODY,
    responses=documented(400, 401, 413),
    summary="Upload a batch input file (JSONL), streamed, up to PROMPTQ_MAX_UPLOAD_BYTES",
)
async def upload_file(request: Request, owner: CurrentOwner, settings: SettingsDep) -> Any:
    file_id = new_id("file-")
    dest = files.stored_path(file_id)
    upload = await receive_file(request, dest, max_bytes=settings.max_upload_bytes)
    try:
        purpose = upload.fields.get("purpose")
        if purpose != files.INPUT_PURPOSE:
            raise InvalidRequestError(
                f"purpose must be {files.INPUT_PURPOSE!r}, got {purpose!r}", param="purpose"
            )
        name = upload.filename.replace("\\", "/").rsplit("/", 1)[-1][:MAX_FILENAME_CHARS]
        row = File(
            id=file_id,
            owner=owner,
            purpose=files.INPUT_PURPOSE,
            filename=name or "upload.jsonl",
            size_bytes=upload.size_bytes,
        )
        return await run_in_threadpool(_insert, row)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _insert(row: File) -> dict[str, Any]:
    with session_scope() as session:
        session.add(row)
    return files.to_openai(row)


@router.get("", response_model=FileList, responses=documented(401, 404))
def list_files(
    session: SessionDep,
    owner: CurrentOwner,
    after: Annotated[str | None, Query(description="a file id: list those after it")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    purpose: Literal["batch", "batch_output"] | None = None,
) -> Any:
    rows, has_more = files.page(
        session, owner, after=after, limit=limit, newest_first=order == "desc", purpose=purpose
    )
    data = [files.to_openai(row) for row in rows]
    return list_object(data, has_more)


@router.get("/{file_id}", response_model=FileObject, responses=documented(401, 404))
def retrieve_file(file_id: str, session: SessionDep, owner: CurrentOwner) -> Any:
    return files.to_openai(files.get_file(session, file_id, owner))


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The file's bytes (a batch's output and error files are JSONL)",
            "content": {CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        },
        **documented(401, 404),
    },
)
def file_content(file_id: str, owner: CurrentOwner) -> Any:
    with session_scope() as session:
        file = files.get_file(session, file_id, owner)
    if file.batch_id is not None:
        which = "error" if file.purpose == "batch_error" else "output"
        lines = results.paged(file.batch_id, which)
        return StreamingResponse((line + "\n" for line in lines), media_type=CONTENT_TYPE)
    path = files.stored_path(file.id)
    if not path.is_file():
        raise NotFoundError(f"the content of file {file_id!r} is gone from the data dir")
    return FileResponse(path, media_type=CONTENT_TYPE, filename=file.filename)


@router.delete("/{file_id}", response_model=FileDeleted, responses=documented(401, 404))
def delete_file(file_id: str, owner: CurrentOwner) -> Any:
    files.delete(file_id, owner)
    return {"id": file_id, "object": "file", "deleted": True}
