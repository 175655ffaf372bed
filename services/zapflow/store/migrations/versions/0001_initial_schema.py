"""Initial schema: contacts, conversations, messages, message statuses, turns, handoffs.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A revision is a snapshot: it spells out its types instead of importing today's models.
TENANT = sa.String(length=63)
WA_ID = sa.String(length=32)
ID = sa.String(length=128)
TIME = sa.DateTime(timezone=True)
AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
STATUSES = "status IN ('sent', 'delivered', 'read', 'failed')"


def contact_key(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant", "contact"], ["contacts.tenant", "contacts.wa_id"], name=f"fk_{table}_contact"
    )


def conversation_key(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant", "conversation_id"], ["conversations.tenant", "conversations.id"], name=f"fk_{table}_conversation"
    )


def upgrade() -> None:
    op.create_table(
        "contacts",
        sa.Column("tenant", TENANT, nullable=False),
        sa.Column("wa_id", WA_ID, nullable=False),
        sa.Column("profile_name", sa.Text(), nullable=True),
        sa.Column("first_seen_at", TIME, nullable=False),
        sa.Column("last_seen_at", TIME, nullable=True),
        sa.Column("last_customer_message_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("tenant", "wa_id", name="pk_contacts"),
    )
    op.create_index("ix_contacts_tenant_last_customer_message_at", "contacts", ["tenant", "last_customer_message_at"])

    op.create_table(
        "conversations",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("tenant", TENANT, nullable=False),
        sa.Column("contact", WA_ID, nullable=False),
        sa.Column("opened_at", TIME, nullable=False),
        sa.Column("closed_at", TIME, nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.CheckConstraint("status IN ('open', 'closed')", name="ck_conversations_status"),
        contact_key("conversations"),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
        sa.UniqueConstraint("tenant", "id", name="uq_conversations_tenant_id"),
    )
    op.create_index(
        "uq_conversations_open_per_contact",
        "conversations",
        ["tenant", "contact"],
        unique=True,
        postgresql_where=sa.text("status = 'open'"),
        sqlite_where=sa.text("status = 'open'"),
    )
    op.create_index("ix_conversations_tenant_contact_opened_at", "conversations", ["tenant", "contact", "opened_at"])
    op.create_index("ix_conversations_tenant_opened_at", "conversations", ["tenant", "opened_at"])

    op.create_table(
        "messages",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("tenant", TENANT, nullable=False),
        sa.Column("contact", WA_ID, nullable=False),
        sa.Column("conversation_id", sa.BigInteger(), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("wamid", ID, nullable=True),
        sa.Column("command_id", ID, nullable=True),
        sa.Column("type", sa.String(length=32), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("body", DOCUMENT, nullable=True),
        sa.Column("quoted_wamid", ID, nullable=True),
        sa.Column("turn_id", ID, nullable=True),
        sa.Column("stream_seq", sa.BigInteger(), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("sent_at", TIME, nullable=True),
        sa.Column("delivered_at", TIME, nullable=True),
        sa.Column("read_at", TIME, nullable=True),
        sa.Column("failed_at", TIME, nullable=True),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("error_title", sa.Text(), nullable=True),
        sa.CheckConstraint("direction IN ('inbound', 'outbound')", name="ck_messages_direction"),
        sa.CheckConstraint(STATUSES, name="ck_messages_status"),
        contact_key("messages"),
        conversation_key("messages"),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.UniqueConstraint("tenant", "wamid", name="uq_messages_tenant_wamid"),
        sa.UniqueConstraint("tenant", "command_id", name="uq_messages_tenant_command_id"),
    )
    op.create_index("ix_messages_tenant_contact_created_at", "messages", ["tenant", "contact", "created_at"])
    op.create_index("ix_messages_tenant_created_at", "messages", ["tenant", "created_at"])
    op.create_index("ix_messages_tenant_conversation_id", "messages", ["tenant", "conversation_id"])
    op.create_index("ix_messages_tenant_turn_id", "messages", ["tenant", "turn_id"])

    op.create_table(
        "message_statuses",
        sa.Column("tenant", TENANT, nullable=False),
        sa.Column("wamid", ID, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("contact", WA_ID, nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("error_title", sa.Text(), nullable=True),
        sa.CheckConstraint(STATUSES, name="ck_message_statuses_status"),
        contact_key("message_statuses"),
        sa.PrimaryKeyConstraint("tenant", "wamid", "status", name="pk_message_statuses"),
    )
    op.create_index("ix_message_statuses_tenant_contact", "message_statuses", ["tenant", "contact"])

    op.create_table(
        "turns",
        sa.Column("tenant", TENANT, nullable=False),
        sa.Column("turn_id", ID, nullable=False),
        sa.Column("contact", WA_ID, nullable=False),
        sa.Column("conversation_id", sa.BigInteger(), nullable=False),
        sa.Column("responder", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("rule", sa.String(length=64), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("message_count", sa.Integer(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("answered_at", TIME, nullable=True),
        sa.Column("closed_at", TIME, nullable=True),
        contact_key("turns"),
        conversation_key("turns"),
        sa.PrimaryKeyConstraint("tenant", "turn_id", name="pk_turns"),
    )
    op.create_index("ix_turns_tenant_contact_created_at", "turns", ["tenant", "contact", "created_at"])
    op.create_index("ix_turns_tenant_created_at", "turns", ["tenant", "created_at"])

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
        contact_key("handoffs"),
        conversation_key("handoffs"),
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


def downgrade() -> None:
    # Dependants first; a table's indexes go with it.
    for table in ("handoffs", "turns", "message_statuses", "messages", "conversations", "contacts"):
        op.drop_table(table)
