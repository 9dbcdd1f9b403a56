"""``state_system``: the system a state store belongs to.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08

Why: a run of the test system must never use the production system's state store (nor the other
way round). The first run records its system here; a run of another system is refused
(``StateStore.claim_system``). A store of an earlier release is recorded by its next run.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the table (one row, written by the store's first run)."""
    op.create_table(
        "state_system",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("system", sa.String(20), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop the table."""
    op.drop_table("state_system")
