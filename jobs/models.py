"""The tables: batches, their requests (with results and usage), files and API keys."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Column, Field, SQLModel

# Names for constraints and indexes, so Alembic's batch mode can alter SQLite tables.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware (SQLite keeps no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def _ts(index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=True, index=index))


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


BATCH_TERMINAL = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)


class RequestStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


REQUEST_ENDED = frozenset(
    {
        RequestStatus.SUCCEEDED,
        RequestStatus.FAILED,
        RequestStatus.CANCELLED,
        RequestStatus.EXPIRED,
    }
)


# The token columns of UsageColumns, in one order for every report, sum and copy of them.
TOKEN_FIELDS = (
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
)


class UsageColumns(SQLModel):
    """Token usage and cost, as plain columns (per request, and summed per batch)."""

    input_tokens: int = Field(default=0, sa_type=sa.BigInteger)
    cached_input_tokens: int = Field(default=0, sa_type=sa.BigInteger)
    output_tokens: int = Field(default=0, sa_type=sa.BigInteger)
    reasoning_tokens: int = Field(default=0, sa_type=sa.BigInteger)
    total_tokens: int = Field(default=0, sa_type=sa.BigInteger)
    cost_usd: float = 0.0


class Priority(StrEnum):
    """Interactive work goes before bulk work, on the broker and at the upstream's limits."""

    INTERACTIVE = "interactive"
    BULK = "bulk"


class BatchKind(StrEnum):
    """A batch of lines from a file, or a single job (a batch of one, shown as a `job`)."""

    BATCH = "batch"
    JOB = "job"


class Batch(UsageColumns, table=True):
    __tablename__ = "batches"
    __table_args__ = (
        # the API's lists: one owner's batches (or jobs), newest first
        sa.Index("ix_batches_owner_kind_created_at", "owner", "kind", "created_at"),
    )

    id: str = Field(default_factory=lambda: new_id("batch_"), primary_key=True, max_length=64)
    owner: str = Field(default="local", index=True, max_length=128)
    kind: str = Field(
        default=BatchKind.BATCH, max_length=16, sa_column_kwargs={"server_default": "batch"}
    )
    endpoint: str = Field(max_length=64)
    status: str = Field(default=BatchStatus.VALIDATING, index=True, max_length=16)
    completion_window: str = Field(default="24h", max_length=16)
    input_file_id: str | None = Field(default=None, max_length=64)
    input_sha256: str | None = Field(default=None, index=True, max_length=64)
    source: str | None = Field(default=None, max_length=1024)
    batch_metadata: dict[str, str] | None = Field(
        default=None, sa_column=Column("metadata", sa.JSON, nullable=True)
    )
    errors: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(sa.JSON))
    request_total: int = 0
    request_completed: int = 0
    request_failed: int = 0
    output_file_id: str | None = Field(default=None, max_length=64)
    error_file_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    in_progress_at: datetime | None = _ts()
    expires_at: datetime | None = _ts(index=True)
    finalizing_at: datetime | None = _ts()
    completed_at: datetime | None = _ts()
    failed_at: datetime | None = _ts()
    expired_at: datetime | None = _ts()
    cancelling_at: datetime | None = _ts()
    cancelled_at: datetime | None = _ts()
    # how the batch runs: priority, a daily window, a budget, a webhook, reuse of results
    priority: str = Field(
        default=Priority.BULK, max_length=16, sa_column_kwargs={"server_default": "bulk"}
    )
    window: str | None = Field(default=None, max_length=16)  # "HH:MM-HH:MM"
    window_utc_offset_min: int | None = None  # the submitter's offset: the window's clock
    window_tz: str | None = Field(default=None, max_length=64)  # its zone, when known
    max_cost_usd: float | None = None
    max_tokens: int | None = Field(default=None, sa_type=sa.BigInteger)
    webhook_url: str | None = Field(default=None, max_length=2048)
    reuse: bool = Field(default=False, sa_column_kwargs={"server_default": "0"})


class Request(UsageColumns, table=True):
    """One line of a batch: what to send, where it stands, and what came back."""

    __tablename__ = "requests"
    __table_args__ = (
        sa.UniqueConstraint("batch_id", "custom_id", name="uq_requests_batch_id_custom_id"),
        sa.Index("ix_requests_batch_id_status", "batch_id", "status"),
        sa.Index("ix_requests_batch_id_line", "batch_id", "line"),
        sa.Index("ix_requests_status_lease_until", "status", "lease_until"),
        sa.Index("ix_requests_status_not_before", "status", "not_before"),
        sa.Index("ix_requests_status_enqueued_at", "status", "enqueued_at"),
        sa.Index("ix_requests_body_sha256", "body_sha256"),
    )

    id: str = Field(primary_key=True, max_length=64)
    batch_id: str = Field(foreign_key="batches.id", max_length=64)
    line: int
    custom_id: str = Field(max_length=512)
    method: str = Field(default="POST", max_length=8)
    url: str = Field(max_length=64)
    model: str = Field(max_length=128)
    body: str = Field(sa_type=sa.Text)
    status: str = Field(default=RequestStatus.QUEUED, max_length=16)
    attempts: int = 0
    not_before: datetime | None = _ts()
    lease_until: datetime | None = _ts()
    enqueued_at: datetime | None = _ts()
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    finished_at: datetime | None = _ts()
    # the result
    status_code: int | None = None
    upstream_request_id: str | None = Field(default=None, max_length=128)
    response_body: str | None = Field(default=None, sa_type=sa.Text)
    latency_ms: float | None = None
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = Field(default=None, sa_type=sa.Text)
    # SHA-256 of url and canonical body: `--reuse` finds an earlier identical request by it
    body_sha256: str | None = Field(default=None, max_length=64)
    reused_from: str | None = Field(default=None, max_length=64)  # the request answered before
    # cost and tokens set aside for this call while it runs (budgeted batches): a batch's
    # reservation is the sum over its running requests, so nothing has to give it back
    reserved_cost_usd: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})
    reserved_tokens: int = Field(
        default=0, sa_type=sa.BigInteger, sa_column_kwargs={"server_default": "0"}
    )


class WebhookDelivery(SQLModel, table=True):
    """One notification of a batch's terminal state (an outbox row: written in the same
    transaction as the state, delivered and retried by the sweeper until it is taken)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.UniqueConstraint("batch_id", "event", name="uq_webhook_deliveries_batch_id_event"),
        sa.Index("ix_webhook_deliveries_pending", "delivered_at", "failed_at", "next_attempt_at"),
    )

    id: str = Field(default_factory=lambda: new_id("whd_"), primary_key=True, max_length=64)
    batch_id: str = Field(foreign_key="batches.id", max_length=64)
    event: str = Field(max_length=32)  # batch.completed | batch.failed | batch.expired | ...
    url: str = Field(max_length=2048)
    payload: str = Field(sa_type=sa.Text)  # the exact body sent (and signed)
    attempts: int = 0
    next_attempt_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    delivered_at: datetime | None = _ts()
    failed_at: datetime | None = _ts()  # gave up after the last attempt
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )


class File(SQLModel, table=True):
    """An uploaded input, or a batch's output/error file (generated from its requests)."""

    __tablename__ = "files"

    id: str = Field(default_factory=lambda: new_id("file-"), primary_key=True, max_length=64)
    owner: str = Field(default="local", index=True, max_length=128)
    purpose: str = Field(max_length=32)
    filename: str = Field(max_length=1024)
    size_bytes: int = Field(default=0, sa_type=sa.BigInteger)
    batch_id: str | None = Field(default=None, index=True, max_length=64)
    content: bytes | None = Field(default=None, sa_type=sa.LargeBinary)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )


class ApiKey(SQLModel, table=True):
    """A key for the HTTP API; only its SHA-256 is stored."""

    __tablename__ = "api_keys"

    id: str = Field(default_factory=lambda: new_id("key_"), primary_key=True, max_length=64)
    name: str = Field(max_length=128)
    owner: str = Field(index=True, max_length=128)
    key_hash: str = Field(unique=True, max_length=64)
    prefix: str = Field(max_length=16)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    revoked_at: datetime | None = _ts()
