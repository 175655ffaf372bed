"""Campaigns: campaigns, their recipients, and customers' preferences (opt-outs, marketing stopped).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIME = sa.DateTime(timezone=True)
DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TENANT = sa.String(length=63)
WA_ID = sa.String(length=32)
CAMPAIGN_ID = sa.String(length=16)
ID = sa.String(length=128)


def upgrade() -> None:
    op.create_table(
        "contact_preferences",
        sa.Column("tenant", TENANT, nullable=False),
        sa.Column("contact", WA_ID, nullable=False),
        sa.Column("opted_out_at", TIME, nullable=True),
        sa.Column("opt_out_source", sa.String(length=16), nullable=True),
        sa.Column("marketing_stopped_at", TIME, nullable=True),
        sa.Column("updated_at", TIME, nullable=False),
        sa.CheckConstraint(
            "opt_out_source IN ('keyword', 'admin', 'import')", name="ck_contact_preferences_opt_out_source"
        ),
        sa.PrimaryKeyConstraint("tenant", "contact", name="pk_contact_preferences"),
    )
    op.create_table(
        "campaigns",
        sa.Column("id", CAMPAIGN_ID, nullable=False),
        sa.Column("tenant", TENANT, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("template_name", sa.String(length=512), nullable=False),
        sa.Column("template_language", sa.String(length=16), nullable=False),
        sa.Column("template_category", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("start_at", TIME, nullable=False),
        sa.Column("next_at", TIME, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("created_by", sa.String(length=32), nullable=False),
        sa.CheckConstraint(
            "status IN ('scheduled', 'running', 'waiting', 'done', 'cancelled', 'failed')", name="ck_campaigns_status"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_campaigns"),
        sa.UniqueConstraint("tenant", "id", name="uq_campaigns_tenant_id"),
    )
    op.create_index("ix_campaigns_tenant_created_at", "campaigns", ["tenant", "created_at"])
    op.create_index("ix_campaigns_status_next_at", "campaigns", ["status", "next_at"])
    op.create_table(
        "campaign_recipients",
        sa.Column("campaign_id", CAMPAIGN_ID, nullable=False),
        sa.Column("contact", WA_ID, nullable=False),
        sa.Column("tenant", TENANT, nullable=False),
        sa.Column("parameters", DOCUMENT, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("error_title", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("not_before", TIME, nullable=True),
        sa.Column("command_id", ID, nullable=True),
        sa.Column("wamid", ID, nullable=True),
        sa.Column("updated_at", TIME, nullable=False),
        sa.CheckConstraint(
            "status IN ('queued', 'sending', 'sent', 'delivered', 'read', 'failed', 'skipped')",
            name="ck_campaign_recipients_status",
        ),
        sa.ForeignKeyConstraint(
            ["tenant", "campaign_id"],
            ["campaigns.tenant", "campaigns.id"],
            name="fk_campaign_recipients_campaign",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("campaign_id", "contact", name="pk_campaign_recipients"),
    )
    op.create_index("ix_campaign_recipients_campaign_id_status", "campaign_recipients", ["campaign_id", "status"])
    op.create_index("ix_campaign_recipients_tenant_wamid", "campaign_recipients", ["tenant", "wamid"])
    op.create_index("ix_campaign_recipients_tenant_contact", "campaign_recipients", ["tenant", "contact"])


def downgrade() -> None:
    for table in ("campaign_recipients", "campaigns", "contact_preferences"):
        op.drop_table(table)
