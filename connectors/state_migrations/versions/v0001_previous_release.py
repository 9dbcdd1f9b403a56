"""The schema of the release before migrations, without the change sequence (the baseline).

Revision ID: 0001
Revises:
Create Date: 2026-11-28

The tables are written out here as that release had them, not taken from ``state_store``: a
revision is a fixed step, whatever the model becomes later. ``migrate`` also calls
:func:`create_previous_release_tables` to complete a database of that release before it records
this revision for it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def previous_release_tables(metadata: sa.MetaData) -> list[sa.Table]:
    """The baseline's tables, defined on ``metadata``."""
    aware = sa.DateTime(timezone=True)
    return [
        sa.Table(
            "sync_state",
            metadata,
            sa.Column("target", sa.String(20), primary_key=True),
            sa.Column("entity", sa.String(30), primary_key=True),
            sa.Column("ref_id", sa.String(60), primary_key=True),
            sa.Column("payload_hash", sa.String(64)),
            sa.Column("status", sa.String(12), nullable=False),
            sa.Column("partner_internal_id", sa.String(40)),
            sa.Column("confirmed_at", aware, nullable=False),
            sa.Column("run_id", sa.String(40)),
        ),
        sa.Table(
            "sync_meta",
            metadata,
            sa.Column("name", sa.String(40), primary_key=True),
            sa.Column("value", sa.Integer, nullable=False),
        ),
        sa.Table(
            "sync_pending",
            metadata,
            sa.Column("target", sa.String(20), primary_key=True),
            sa.Column("entity", sa.String(30), primary_key=True),
            sa.Column("ref_id", sa.String(60), primary_key=True),
            sa.Column("op", sa.String(12), nullable=False),
            sa.Column("payload_hash", sa.String(64)),
            sa.Column("run_id", sa.String(40)),
            sa.Column("created_at", aware, nullable=False),
        ),
        sa.Table(
            "quarantine",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("target", sa.String(20), nullable=False),
            sa.Column("entity", sa.String(30), nullable=False),
            sa.Column("ref_id", sa.String(60), nullable=False),
            sa.Column("rule", sa.String(120), nullable=False),
            sa.Column("reason", sa.Text, nullable=False),
            sa.Column("record_json", sa.Text),
            sa.Column("run_id", sa.String(40)),
            sa.Column("first_seen", aware, nullable=False),
            sa.Column("last_seen", aware, nullable=False),
            sa.Column("resolved_at", aware),
            sa.UniqueConstraint("target", "entity", "ref_id", "rule", name="uq_quarantine_record_rule"),
            sa.Index("ix_quarantine_open", "target", "resolved_at"),
        ),
        sa.Table(
            "sync_runs",
            metadata,
            sa.Column("run_id", sa.String(40), primary_key=True),
            sa.Column("flow", sa.String(40), nullable=False),
            sa.Column("target", sa.String(20), nullable=False),
            sa.Column("started_at", aware, nullable=False),
            sa.Column("finished_at", aware),
            sa.Column("status", sa.String(20), nullable=False),
            sa.Column("dry_run", sa.Boolean, nullable=False),
            sa.Column("summary_json", sa.Text),
        ),
        sa.Table(
            "protocol",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("run_id", sa.String(40), nullable=False),
            sa.Column("entity", sa.String(30), nullable=False),
            sa.Column("ref_id", sa.String(60), nullable=False),
            sa.Column("outcome", sa.String(20), nullable=False),
            sa.Column("reason", sa.Text),
            sa.Column("at", aware, nullable=False),
            sa.Index("ix_protocol_run", "run_id", "outcome"),
        ),
    ]


def create_previous_release_tables(bind: sa.Connection) -> None:
    """Create those of the baseline's tables that are missing (all of them in a new database)."""
    metadata = sa.MetaData()
    previous_release_tables(metadata)
    metadata.create_all(bind, checkfirst=True)


def upgrade() -> None:
    """The tables every later revision builds on."""
    create_previous_release_tables(op.get_bind())


def downgrade() -> None:
    """An empty database again (the SEPA ledger's tables stay)."""
    metadata = sa.MetaData()
    previous_release_tables(metadata)
    metadata.drop_all(op.get_bind(), checkfirst=True)
