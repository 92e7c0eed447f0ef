"""batches.kind: a batch from a file, or a single job (a batch of one)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), server_default="batch", nullable=False)
        )
        batch_op.create_index(
            "ix_batches_owner_kind_created_at", ["owner", "kind", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_index("ix_batches_owner_kind_created_at")
        batch_op.drop_column("kind")
