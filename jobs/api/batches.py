"""`/v1/batches`: OpenAI's Batch API, and the results of a running batch (our extension)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from jobs import batches, files, results, submit
from jobs.api.deps import CurrentOwner, SessionDep
from jobs.api.envelope import documented, list_object
from jobs.db import session_scope
from jobs.errors import InputError, InvalidRequestError
from jobs.models import BatchKind, Priority
from jobs.policy import Policy
from jobs.schedule import Window

router = APIRouter(prefix="/v1/batches", tags=["batches"])

Endpoint = Literal["/v1/responses", "/v1/chat/completions", "/v1/embeddings"]
CompletionWindow = Literal["24h", "1h", "10m"]
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None,
    Field(max_length=16, description="up to 16 pairs; keys up to 64 chars, values up to 512"),
]
RESULTS_TYPE = "application/jsonl"
NEXT_AFTER_HEADER = "X-Promptq-Next-After"
STATUS_HEADER = "X-Promptq-Batch-Status"


class BatchCreate(BaseModel):
    input_file_id: str = Field(description="an uploaded file with purpose `batch`")
    endpoint: Endpoint
    completion_window: CompletionWindow = Field(
        description="`24h` as OpenAI's; `1h` and `10m` are promptq's extension"
    )
    metadata: Metadata = None
    # promptq's extensions (the SDK sends them with `extra_body`)
    priority: Priority = Field(
        default=Priority.BULK, description="promptq: `interactive` work goes before `bulk`"
    )
    not_before: int | None = Field(
        default=None, description="promptq: send nothing before this Unix time (seconds)"
    )
    window: str | None = Field(
        default=None,
        description="promptq: send only inside this daily window, `HH:MM-HH:MM` in UTC",
    )
    max_cost_usd: float | None = Field(
        default=None, gt=0, description="promptq: stop at this cost; the rest ends budget_exceeded"
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="promptq: stop at this many tokens"
    )
    webhook_url: str | None = Field(
        default=None, description="promptq: POST the Batch object here at its end, signed"
    )
    reuse: bool = Field(
        default=False, description="promptq: answer repeats of earlier successes from them, free"
    )

    def policy(self) -> Policy:
        """The batch's Policy; a bad value is refused naming its parameter."""
        try:
            window = Window.parse(self.window, 0, "UTC") if self.window else None
        except InputError as exc:
            raise InvalidRequestError(str(exc.faults[0].message), param="window") from exc
        return Policy(
            not_before=datetime.fromtimestamp(self.not_before, UTC) if self.not_before else None,
            window=window,
            priority=self.priority,
            max_cost_usd=self.max_cost_usd,
            max_tokens=self.max_tokens,
            webhook_url=self.webhook_url,
            reuse=self.reuse,
        )


class BatchError(BaseModel):
    code: str | None = None
    line: int | None = None
    message: str | None = None
    param: str | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class InputTokensDetails(BaseModel):
    cached_tokens: int


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int


class BatchUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: Literal[
        "validating",
        "in_progress",
        "finalizing",
        "completed",
        "failed",
        "expired",
        "cancelling",
        "cancelled",
    ]
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None
    usage: BatchUsage
    cost_usd: float = Field(description="promptq's extension: what the requests cost, in USD")
    priority: Priority = Field(default=Priority.BULK, description="promptq: the batch's priority")
    window: str | None = Field(
        default=None, description="promptq: the daily window requests are sent in, if any"
    )
    window_utc_offset_min: int | None = Field(
        default=None, description="promptq: the UTC offset (minutes) the window is read on"
    )
    window_tz: str | None = Field(
        default=None, description="promptq: the window's time zone (IANA), when known"
    )
    max_cost_usd: float | None = Field(default=None, description="promptq: the cost budget")
    max_tokens: int | None = Field(default=None, description="promptq: the token budget")
    webhook_url: str | None = Field(default=None, description="promptq: notified at the end")
    reuse: bool = Field(default=False, description="promptq: earlier answers were reused")


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


@router.post("", response_model=BatchObject, responses=documented(400, 401, 404, 422))
def create_batch(body: BatchCreate, owner: CurrentOwner) -> Any:
    """Create a batch from an uploaded file: `validating`, then `in_progress`, or `failed`
    with each bad line in `errors.data` (and nothing runs)."""
    with session_scope() as session:
        file = files.get_file(session, body.input_file_id, owner)
    if file.purpose != files.INPUT_PURPOSE:
        raise InvalidRequestError(
            f"file {file.id!r} has purpose {file.purpose!r}, not {files.INPUT_PURPOSE!r}",
            param="input_file_id",
        )
    path = files.stored_path(file.id)
    if not path.is_file():
        raise InvalidRequestError(
            f"the content of file {file.id!r} is gone from the data dir", param="input_file_id"
        )
    batch = submit.create_batch(
        submit.open_lines(path),
        name=file.filename,
        endpoint=body.endpoint,
        owner=owner,
        completion_window=body.completion_window,
        metadata=body.metadata,
        input_file_id=file.id,
        record_faults=True,
        policy=body.policy(),
    )
    return batches.to_openai(batch)


@router.get("", response_model=BatchList, responses=documented(401, 404, 422))
def list_batches(
    session: SessionDep,
    owner: CurrentOwner,
    after: Annotated[str | None, Query(description="a batch id: list those after it")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Any:
    """This owner's batches, newest first."""
    rows, has_more = batches.page(session, owner, BatchKind.BATCH, after=after, limit=limit)
    data = [batches.to_openai(row) for row in rows]
    return list_object(data, has_more)


@router.get("/{batch_id}", response_model=BatchObject, responses=documented(401, 404))
def retrieve_batch(batch_id: str, session: SessionDep, owner: CurrentOwner) -> Any:
    return batches.to_openai(batches.get_batch(session, batch_id, owner, BatchKind.BATCH))


@router.post("/{batch_id}/cancel", response_model=BatchObject, responses=documented(401, 404))
def cancel_batch(batch_id: str, session: SessionDep, owner: CurrentOwner) -> Any:
    """Queued requests end `batch_cancelled` (in the error file); finished results are kept."""
    batches.get_batch(session, batch_id, owner, BatchKind.BATCH)
    return batches.to_openai(batches.cancel(session, batch_id, owner))


@router.get(
    "/{batch_id}/results",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": (
                "Every request ended so far, in input order, up to the first one still "
                "pending: one OpenAI batch output line each (its error line if it did not "
                f"succeed) plus `line`, its input line. `{NEXT_AFTER_HEADER}` is the cursor "
                f"for the next call; `{STATUS_HEADER}` the batch's status."
            ),
            "content": {RESULTS_TYPE: {"schema": {"type": "string"}}},
            "headers": {
                NEXT_AFTER_HEADER: {"schema": {"type": "integer"}},
                STATUS_HEADER: {"schema": {"type": "string"}},
            },
        },
        **documented(401, 404, 422),
    },
)
def batch_results(
    batch_id: str,
    owner: CurrentOwner,
    after: Annotated[int, Query(ge=0, description="the cursor: lines up to it were sent")] = 0,
) -> Any:
    """Results while the batch runs (promptq's extension); resumable with `after`."""
    with session_scope() as session:
        batch = batches.get_batch(session, batch_id, owner, BatchKind.BATCH)
        through = results.finished_through(session, batch_id)
    lines = results.paged(batch_id, "results", after_line=after, through_line=through)
    return StreamingResponse(
        (line + "\n" for line in lines),
        media_type=RESULTS_TYPE,
        headers={NEXT_AFTER_HEADER: str(max(through, after)), STATUS_HEADER: batch.status},
    )
