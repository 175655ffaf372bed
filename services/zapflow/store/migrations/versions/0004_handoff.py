"""Human handoff: handoffs reshaped for the handoff service, their timeline, agents and API tokens;
messages' received_at.

The `handoffs` table of 0001 was never written (no service owned it before the handoff service),
so it is replaced rather than altered: no foreign keys to contacts and conversations (a handoff
can be asked for before the recorder has written the contact), a queue priority, the request id
that makes a redelivered request harmless, and the times the figures are computed from.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIME = sa.DateTime(timezone=True)
AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TENANT = sa.String(length=63)
WA_ID = sa.String(length=32)
EMAIL = sa.String(length=254)


def upgrade() -> None:
    # The inbox's transcripts order customers' messages against zapflow's own by it.
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("received_at", TIME, nullable=True))
    op.drop_table("handoffs")
    op.create_table(
        "handoffs",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("tenant", TENANT, nullable=False),
        sa.Column("contact", WA_ID, nullable=False),
        sa.Column("conversation_id", sa.BigInteger(), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("customer_name", sa.Text(), nullable=True),
        sa.Column("agent", EMAIL, nullable=True),
        sa.Column("labels", DOCUMENT, nullable=False),
        sa.Column("requested_at", TIME, nullable=False),
        sa.Column("assigned_at", TIME, nullable=True),
        sa.Column("first_reply_at", TIME, nullable=True),
        sa.Column("resolved_at", TIME, nullable=True),
        sa.Column("resolution", sa.String(length=32), nullable=True),
        sa.Column("resolved_by", EMAIL, nullable=True),
        sa.Column("last_customer_at", TIME, nullable=True),
        sa.Column("last_activity_at", TIME, nullable=False),
        sa.CheckConstraint("status IN ('waiting', 'assigned', 'resolved')", name="ck_handoffs_status"),
        sa.PrimaryKeyConstraint("id", name="pk_handoffs"),
        sa.UniqueConstraint("tenant", "request_id", name="uq_handoffs_tenant_request_id"),
    )
    op.create_index(
        "uq_handoffs_active_per_contact",
        "handoffs",
        ["tenant", "contact"],
        unique=True,
        postgresql_where=sa.text("status <> 'resolved'"),
        sqlite_where=sa.text("status <> 'resolved'"),
    )
    op.create_index(
        "ix_handoffs_tenant_status_priority_requested_at", "handoffs", ["tenant", "status", "priority", "requested_at"]
    )
    op.create_index("ix_handoffs_tenant_contact_requested_at", "handoffs", ["tenant", "contact", "requested_at"])
    op.create_index("ix_handoffs_tenant_agent_status", "handoffs", ["tenant", "agent", "status"])
    op.create_index("ix_handoffs_status_last_activity_at", "handoffs", ["status", "last_activity_at"])
    op.create_index("ix_handoffs_status_resolved_at", "handoffs", ["status", "resolved_at"])

    op.create_table(
        "handoff_events",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("handoff_id", sa.BigInteger(), nullable=False),
        sa.Column("tenant", TENANT, nullable=False),
        sa.Column("contact", WA_ID, nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("actor", EMAIL, nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("data", DOCUMENT, nullable=False),
        sa.ForeignKeyConstraint(["handoff_id"], ["handoffs.id"], name="fk_handoff_events_handoff", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_handoff_events"),
    )
    op.create_index("ix_handoff_events_handoff_id_id", "handoff_events", ["handoff_id", "id"])
    op.create_index("ix_handoff_events_tenant_contact", "handoff_events", ["tenant", "contact"])

    op.create_table(
        "agents",
        sa.Column("tenant", TENANT, nullable=False),
        sa.Column("email", EMAIL, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "email", name="pk_agents"),
    )
    op.create_table(
        "agent_tokens",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("tenant", TENANT, nullable=False),
        sa.Column("email", EMAIL, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant", "email"], ["agents.tenant", "agents.email"], name="fk_agent_tokens_agent", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_agent_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_agent_tokens_token_hash"),
    )


def downgrade() -> None:
    for table in ("agent_tokens", "agents", "handoff_events", "handoffs"):
        op.drop_table(table)
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("received_at")
    # The 0001 shape, empty as it always was.
    op.create_table(
        "handoffs",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("tenant", TENANT, nullable=False),
        sa.Column("contact", WA_ID, nullable=False),
        sa.Column("conversation_id", sa.BigInteger(), nullable=False),
        sa.Column("requested_at", TIME, nullable=False),
        sa.Column("accepted_at", TIME, nullable=True),
        sa.Column("closed_at", TIME, nullable=True),
        sa.Column("agent", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.CheckConstraint("status IN ('requested', 'accepted', 'closed')", name="ck_handoffs_status"),
        sa.ForeignKeyConstraint(
            ["tenant", "contact"], ["contacts.tenant", "contacts.wa_id"], name="fk_handoffs_contact"
        ),
        sa.ForeignKeyConstraint(
            ["tenant", "conversation_id"],
            ["conversations.tenant", "conversations.id"],
            name="fk_handoffs_conversation",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_handoffs"),
    )
    op.create_index(
        "uq_handoffs_active_per_contact",
        "handoffs",
        ["tenant", "contact"],
        unique=True,
        postgresql_where=sa.text("status <> 'closed'"),
        sqlite_where=sa.text("status <> 'closed'"),
    )
    op.create_index("ix_handoffs_tenant_status_requested_at", "handoffs", ["tenant", "status", "requested_at"])
    op.create_index("ix_handoffs_tenant_contact_requested_at", "handoffs", ["tenant", "contact", "requested_at"])
    op.create_index("ix_handoffs_tenant_requested_at", "handoffs", ["tenant", "requested_at"])
