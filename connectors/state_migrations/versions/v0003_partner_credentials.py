"""``partner_credentials``: which key each partner's connector uses and when it expires.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

Why: a token or certificate that expires unnoticed stops a sync at night; with its expiry stored,
a run can warn days before. The table holds a hint of which key it is (its first characters),
never the key or token itself.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the table, one row per target."""
    op.create_table(
        "partner_credentials",
        sa.Column("target", sa.String(20), primary_key=True),
        sa.Column("key_hint", sa.String(40), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop the table."""
    op.drop_table("partner_credentials")
