"""The change sequence: ``sync_state.seq``, its index, and the counter row ``state_seq``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

Why: every confirmation gets the next position of one sequence, so a run reads only what was
confirmed since it last looked (``StateStore.changed_since``). Records confirmed before keep no
position (NULL): they are older than any position a run can have seen.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_sync_meta = sa.table("sync_meta", sa.column("name", sa.String), sa.column("value", sa.Integer))


def upgrade() -> None:
    """Add the position column, the index a run reads it by, and the counter at 0."""
    op.add_column("sync_state", sa.Column("seq", sa.Integer(), nullable=True))
    op.create_index("ix_sync_state_seq", "sync_state", ["target", "seq"])
    op.execute(_sync_meta.insert().values(name="state_seq", value=0))


def downgrade() -> None:
    """Drop the counter row, the index and the column."""
    op.execute(_sync_meta.delete().where(_sync_meta.c.name == "state_seq"))
    op.drop_index("ix_sync_state_seq", table_name="sync_state")
    with op.batch_alter_table("sync_state") as batch:
        batch.drop_column("seq")
