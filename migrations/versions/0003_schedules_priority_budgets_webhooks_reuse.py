"""schedules, priority, budgets, webhooks and reuse

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 01:54:43.806914
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name=op.f("fk_webhook_deliveries_batch_id_batches")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("batch_id", "event", name="uq_webhook_deliveries_batch_id_event"),
    )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhook_deliveries_pending",
            ["delivered_at", "failed_at", "next_attempt_at"],
            unique=False,
        )

    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("priority", sa.String(length=16), server_default="bulk", nullable=False)
        )
        batch_op.add_column(sa.Column("window", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("window_utc_offset_min", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("max_cost_usd", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("max_tokens", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("webhook_url", sa.String(length=2048), nullable=True))
        batch_op.add_column(sa.Column("reuse", sa.Boolean(), server_default="0", nullable=False))

    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("body_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("reused_from", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("reserved_cost_usd", sa.Float(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("reserved_tokens", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.create_index("ix_requests_body_sha256", ["body_sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_index("ix_requests_body_sha256")
        batch_op.drop_column("reserved_tokens")
        batch_op.drop_column("reserved_cost_usd")
        batch_op.drop_column("reused_from")
        batch_op.drop_column("body_sha256")

    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("reuse")
        batch_op.drop_column("webhook_url")
        batch_op.drop_column("max_tokens")
        batch_op.drop_column("max_cost_usd")
        batch_op.drop_column("window_utc_offset_min")
        batch_op.drop_column("window")
        batch_op.drop_column("priority")

    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_deliveries_pending")

    op.drop_table("webhook_deliveries")
