"""`/v1/jobs`: one request sent inline, answered with an id to poll or to wait on.

A job is stored as a batch of one (`batches.kind = 'job'`), so the workers, the sweeper,
retries, expiry, cancelling and usage accounting treat it exactly as any batch's request,
with no change to them. What the owner sees is its own object, `job`, with the response
inline; jobs are not listed among batches, nor do they make output files.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlmodel import Session, col
from starlette.concurrency import run_in_threadpool

from jobs import batches, submit
from jobs.api.batches import CompletionWindow, Endpoint, Metadata
from jobs.api.deps import CurrentOwner, SessionDep
from jobs.api.envelope import documented, list_object
from jobs.db import session_scope
from jobs.errors import InputError, InvalidRequestError
from jobs.models import REQUEST_ENDED, Batch, BatchKind, Priority, Request, RequestStatus
from jobs.policy import Policy

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MAX_WAIT_S = 60.0
POLL_S = 0.25
DEFAULT_CUSTOM_ID = "job"
Wait = Annotated[
    float,
    Query(
        ge=0,
        le=MAX_WAIT_S,
        description="seconds to wait for the job to end before answering (a long poll)",
    ),
]
# which request parameter a fault in the inline request is about
_FAULT_PARAM = {"missing_custom_id": "custom_id", "invalid_custom_id": "custom_id"}


class JobBody(BaseModel):
    """The request body, as the endpoint takes it: any fields, and `model` among them."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)


class JobCreate(BaseModel):
    endpoint: Endpoint = "/v1/responses"
    body: JobBody
    custom_id: str = Field(default=DEFAULT_CUSTOM_ID, min_length=1, max_length=512)
    completion_window: CompletionWindow = "24h"
    metadata: Metadata = None
    priority: Priority = Field(
        default=Priority.INTERACTIVE,
        description="`interactive` (the default for a job) goes before `bulk` work",
    )


class JobResponse(BaseModel):
    status_code: int
    request_id: str | None
    body: Any


class JobError(BaseModel):
    code: str
    message: str


class JobUsage(BaseModel):
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    total_tokens: int


class JobObject(BaseModel):
    id: str
    object: Literal["job"] = "job"
    endpoint: str
    model: str
    custom_id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]
    attempts: int
    created_at: int
    finished_at: int | None
    expires_at: int | None
    response: JobResponse | None
    error: JobError | None
    usage: JobUsage
    cost_usd: float
    metadata: dict[str, str] | None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


def _epoch(value: Any) -> int | None:
    return int(value.timestamp()) if value else None


def to_job(batch: Batch, req: Request) -> dict[str, Any]:
    ended = req.status in REQUEST_ENDED
    response = None
    if req.status_code is not None and (ended or req.status == RequestStatus.SUCCEEDED):
        body = json.loads(req.response_body) if req.response_body else None
        response = {
            "status_code": req.status_code,
            "request_id": req.upstream_request_id,
            "body": body,
        }
    error = None
    if ended and req.status != RequestStatus.SUCCEEDED:
        error = {"code": req.error_code or "request_failed", "message": req.error_message or ""}
    return {
        "id": batch.id,
        "object": "job",
        "endpoint": batch.endpoint,
        "model": req.model,
        "custom_id": req.custom_id,
        "status": req.status,
        "attempts": req.attempts,
        "created_at": _epoch(batch.created_at),
        "finished_at": _epoch(req.finished_at),
        "expires_at": _epoch(batch.expires_at),
        "response": response,
        "error": error,
        "usage": {
            "input_tokens": req.input_tokens,
            "cached_input_tokens": req.cached_input_tokens,
            "output_tokens": req.output_tokens,
            "reasoning_tokens": req.reasoning_tokens,
            "total_tokens": req.total_tokens,
        },
        "cost_usd": round(req.cost_usd, 9),
        "metadata": batch.batch_metadata,
    }


def _load(session: Session, job_id: str, owner: str) -> dict[str, Any]:
    batch = batches.get_batch(session, job_id, owner, BatchKind.JOB)
    req = session.scalars(select(Request).where(col(Request.batch_id) == batch.id)).one()
    return to_job(batch, req)


def _load_alone(job_id: str, owner: str) -> dict[str, Any]:
    with session_scope() as session:
        return _load(session, job_id, owner)


async def _waited(job_id: str, owner: str, wait_s: float) -> dict[str, Any]:
    """The job once it ended, or as it is after `wait_s`; each look is a short transaction."""
    deadline = time.monotonic() + wait_s
    while True:
        job = await run_in_threadpool(_load_alone, job_id, owner)
        left_s = deadline - time.monotonic()
        if job["status"] in REQUEST_ENDED or left_s <= 0:
            return job
        await asyncio.sleep(min(POLL_S, left_s))


def _create(body: JobCreate, owner: str) -> str:
    line = {
        "custom_id": body.custom_id,
        "method": "POST",
        "url": body.endpoint,
        "body": body.body.model_dump(),
    }
    encoded = json.dumps(line, ensure_ascii=False).encode()
    try:
        batch = submit.create_batch(
            lambda: [encoded],
            name="job",
            endpoint=body.endpoint,
            owner=owner,
            completion_window=body.completion_window,
            metadata=body.metadata,
            kind=BatchKind.JOB,
            policy=Policy(priority=body.priority),
        )
    except InputError as exc:
        fault = exc.faults[0]
        raise InvalidRequestError(
            fault.message, param=_FAULT_PARAM.get(fault.code, "body"), code=fault.code
        ) from exc
    return batch.id


@router.post("", response_model=JobObject, responses=documented(400, 401, 422))
async def create_job(body: JobCreate, owner: CurrentOwner, wait: Wait = 0) -> Any:
    """Queue one request; with `wait`, answer when it ended or after that many seconds."""
    job_id = await run_in_threadpool(_create, body, owner)
    return await _waited(job_id, owner, wait)


@router.get("", response_model=JobList, responses=documented(401, 404, 422))
def list_jobs(
    session: SessionDep,
    owner: CurrentOwner,
    after: Annotated[str | None, Query(description="a job id: list those after it")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Any:
    """This owner's jobs, newest first."""
    rows, has_more = batches.page(session, owner, BatchKind.JOB, after=after, limit=limit)
    data = [_load(session, row.id, owner) for row in rows]
    return list_object(data, has_more)


@router.get("/{job_id}", response_model=JobObject, responses=documented(401, 404, 422))
async def retrieve_job(job_id: str, owner: CurrentOwner, wait: Wait = 0) -> Any:
    """The job; with `wait`, answer when it ended or after that many seconds (a long poll)."""
    return await _waited(job_id, owner, wait)


@router.post("/{job_id}/cancel", response_model=JobObject, responses=documented(401, 404))
def cancel_job(job_id: str, session: SessionDep, owner: CurrentOwner) -> Any:
    """Cancel the job if it has not started; one already running finishes."""
    batches.get_batch(session, job_id, owner, BatchKind.JOB)
    batches.cancel(session, job_id, owner)
    return _load(session, job_id, owner)
