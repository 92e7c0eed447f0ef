"""One Alembic history, on SQLite and PostgreSQL alike, that builds exactly the models' schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlmodel import SQLModel

import jobs.models  # noqa: F401 - the tables
from jobs.migrate import head_revision, upgrade

USAGE = {
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_usd",
}

EXPECTED = {
    "batches": USAGE
    | {
        "id",
        "owner",
        "kind",
        "endpoint",
        "status",
        "completion_window",
        "input_file_id",
        "input_sha256",
        "source",
        "metadata",
        "errors",
        "request_total",
        "request_completed",
        "request_failed",
        "output_file_id",
        "error_file_id",
        "created_at",
        "in_progress_at",
        "expires_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
        "priority",
        "window",
        "window_utc_offset_min",
        "window_tz",
        "max_cost_usd",
        "max_tokens",
        "webhook_url",
        "reuse",
    },
    "requests": USAGE
    | {
        "id",
        "batch_id",
        "line",
        "custom_id",
        "method",
        "url",
        "model",
        "body",
        "status",
        "attempts",
        "not_before",
        "lease_until",
        "enqueued_at",
        "created_at",
        "finished_at",
        "status_code",
        "upstream_request_id",
        "response_body",
        "latency_ms",
        "error_code",
        "error_message",
        "body_sha256",
        "reused_from",
        "reserved_cost_usd",
        "reserved_tokens",
    },
    "files": {
        "id",
        "owner",
        "purpose",
        "filename",
        "size_bytes",
        "batch_id",
        "content",
        "created_at",
    },
    "webhook_deliveries": {
        "id",
        "batch_id",
        "event",
        "url",
        "payload",
        "attempts",
        "next_attempt_at",
        "delivered_at",
        "failed_at",
        "last_error",
        "created_at",
    },
    "api_keys": {"id", "name", "owner", "key_hash", "prefix", "created_at", "revoked_at"},
    "alembic_version": {"version_num"},
}


def test_an_empty_database_migrates_to_exactly_the_models_schema(database_url: str) -> None:
    upgrade(database_url)
    engine = create_engine(database_url)
    try:
        inspector = inspect(engine)
        columns = {t: {c["name"] for c in inspector.get_columns(t)} for t in EXPECTED}
        assert set(inspector.get_table_names()) == set(EXPECTED)
        assert columns == EXPECTED
        uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints("requests")}
        assert ("batch_id", "custom_id") in uniques
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": False})
            assert context.get_current_revision() == head_revision()
            assert compare_metadata(context, SQLModel.metadata) == []
    finally:
        engine.dispose()


def test_upgrading_twice_changes_nothing(database_url: str) -> None:
    upgrade(database_url)
    upgrade(database_url)
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == head_revision()
    finally:
        engine.dispose()
