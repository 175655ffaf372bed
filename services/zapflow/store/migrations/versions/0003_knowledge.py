"""Knowledge bases (documents, chunks, vectors by model and content hash) and turn vectors.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIME = sa.DateTime(timezone=True)
AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "kb_documents",
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "name", name="pk_kb_documents"),
    )
    op.create_table(
        "kb_chunks",
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("document", sa.String(length=255), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("language", sa.String(length=8), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant", "document"],
            ["kb_documents.tenant", "kb_documents.name"],
            name="fk_kb_chunks_document",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant", "document", "position", name="pk_kb_chunks"),
    )
    op.create_index("ix_kb_chunks_tenant_content_hash", "kb_chunks", ["tenant", "content_hash"])
    op.create_table(
        "kb_vectors",
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "model", "content_hash", name="pk_kb_vectors"),
    )
    op.create_table(
        "turn_vectors",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("turn_id", sa.String(length=128), nullable=False),
        sa.Column("contact", sa.String(length=32), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("language", sa.String(length=8), nullable=False),
        sa.Column("customer_text", sa.Text(), nullable=False),
        sa.Column("answer_text", sa.Text(), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_turn_vectors"),
        sa.UniqueConstraint("tenant", "turn_id", name="uq_turn_vectors_tenant_turn_id"),
    )
    op.create_index("ix_turn_vectors_tenant_contact", "turn_vectors", ["tenant", "contact"])
    op.create_index("ix_turn_vectors_tenant_at", "turn_vectors", ["tenant", "at"])


def downgrade() -> None:
    op.drop_index("ix_turn_vectors_tenant_at", table_name="turn_vectors")
    op.drop_index("ix_turn_vectors_tenant_contact", table_name="turn_vectors")
    op.drop_table("turn_vectors")
    op.drop_table("kb_vectors")
    op.drop_index("ix_kb_chunks_tenant_content_hash", table_name="kb_chunks")
    op.drop_table("kb_chunks")
    op.drop_table("kb_documents")
