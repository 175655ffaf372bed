"""Erasures say what they erased: one contact (every erasure before this one) or a whole tenant.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("erasures") as batch:
        batch.add_column(sa.Column("scope", sa.String(length=16), server_default="contact", nullable=False))
        batch.create_check_constraint("ck_erasures_scope", "scope IN ('contact', 'tenant')")


def downgrade() -> None:
    with op.batch_alter_table("erasures") as batch:
        batch.drop_constraint("ck_erasures_scope", type_="check")
        batch.drop_column("scope")
