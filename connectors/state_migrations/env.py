"""Alembic's environment of the state store (run by every Alembic command; see ``__init__``).

The model is ``state_metadata``; only its tables are compared, since the SEPA ledger keeps its own
tables in the same database. SQLite gets batch mode, as it alters a table only by rebuilding it.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from connectors.erp.database import make_engine
from connectors.state_store import state_metadata


def _state_store_table(name: str | None, type_: str, _parent_names: object) -> bool:
    """Whether autogenerate looks at a database object: tables only if the state store has them."""
    return type_ != "table" or name in state_metadata.tables


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=state_metadata,
        include_name=_state_store_table,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():  # a no-op inside the caller's transaction (migrate)
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("The state-store migrations run against a database only (no --sql).")
_connection = context.config.attributes.get("connection")
if _connection is not None:
    _run(_connection)
else:
    _engine = make_engine(context.config.get_main_option("sqlalchemy.url") or "")
    try:
        with _engine.connect() as _conn:
            _run(_conn)
    finally:
        _engine.dispose()
