"""``sync_cursors`` and ``file_digests``: what the portal exchange reads incrementally.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

Why: tickets and comments written in the portal are taken into the ERP from a cursor (the
portal's time up to which everything was entered), and a document's file is hashed again only
when its size or modification time changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create both tables."""
    op.create_table(
        "sync_cursors",
        sa.Column("target", sa.String(20), primary_key=True),
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("value", sa.String(80), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "file_digests",
        sa.Column("path", sa.String(1000), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    """Drop both tables."""
    op.drop_table("file_digests")
    op.drop_table("sync_cursors")
