"""Archival state of conversations, retention's index, and the record of erasures.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIME = sa.DateTime(timezone=True)
DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UNARCHIVED = "status = 'closed' AND archived_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("archived_at", TIME, nullable=True))
    op.create_index("ix_conversations_tenant_closed_at", "conversations", ["tenant", "closed_at"])
    op.create_index(
        "ix_conversations_unarchived",
        "conversations",
        ["closed_at"],
        postgresql_where=sa.text(UNARCHIVED),
        sqlite_where=sa.text(UNARCHIVED),
    )
    op.create_table(
        "erasures",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("requested_by", sa.String(length=32), nullable=False),
        sa.Column("requested_at", TIME, nullable=False),
        sa.Column("completed_at", TIME, nullable=False),
        sa.Column("summary", DOCUMENT, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_erasures"),
    )
    op.create_index("ix_erasures_tenant_requested_at", "erasures", ["tenant", "requested_at"])


def downgrade() -> None:
    op.drop_index("ix_erasures_tenant_requested_at", table_name="erasures")
    op.drop_table("erasures")
    op.drop_index("ix_conversations_unarchived", table_name="conversations")
    op.drop_index("ix_conversations_tenant_closed_at", table_name="conversations")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("archived_at")
