"""``sync_keys``: random keys the syncs use, kept with the data they protect.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07

Why: the incremental memo in ``cache_dir`` keeps a digest of every ERP row it has seen. Unkeyed,
the digest of a row with few possible values (a contract's type and dates) can be guessed back;
keyed with a secret that lives in the state database, next to the personal data it stands for,
the digests say nothing to a reader of the cache.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the table, one row per key name."""
    op.create_table(
        "sync_keys",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("key_hex", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop the table."""
    op.drop_table("sync_keys")
