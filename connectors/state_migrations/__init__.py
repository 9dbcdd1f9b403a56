"""The state store's schema, as Alembic migrations run by the commands that open the store.

Why migrations: the state database outlives every release (it is the only record of what the
partners confirmed), and the project keeps adding tables. Each schema change is one revision in
``versions/``; :func:`migrate` brings any state database to the newest one when a store is opened,
so no one runs a separate upgrade step before a flow.

The model stays ``connectors.state_store.state_metadata`` (the tables the code reads and writes);
the revisions are how a database gets there. Revisions so far:

- ``0001`` the schema of the release before migrations, without the change sequence;
- ``0002`` the change sequence: ``sync_state.seq``, its index and the ``state_seq`` counter row;
- ``0003`` ``partner_credentials``: when each partner's credentials expire (never the secret);
- ``0004`` ``sync_keys``: random keys made once per database (the memo's digest key);
- ``0005`` ``sync_cursors`` and ``file_digests`` (the portal exchange's incremental reads);
- ``0006`` ``state_system``: the system (production, test, demo) the store belongs to.

Databases created before there were migrations have the tables but no ``alembic_version``;
:func:`migrate` recognises them by their tables and records the revision they match (``0002`` if
``sync_state`` has ``seq``, else ``0001``) before it upgrades them.

Adding a migration (a developer's steps)::

    # 1. change the tables in connectors/state_store.py (state_metadata)
    # 2. a scratch database at the current head, then the new revision compared against it
    python -m connectors.state_migrations --url sqlite:///var/migrations.sqlite upgrade head
    python -m connectors.state_migrations --url sqlite:///var/migrations.sqlite \\
        revision --autogenerate --rev-id 0005 -m "what the change is for"
    # 3. read and tidy versions/v0005_*.py (autogenerate misses renames and data changes; write
    #    downgrade too), set HEAD below to "0005", then check that the model and the revisions
    #    agree (tests/test_state_migrations.py does too, on SQLite and PostgreSQL):
    python -m connectors.state_migrations --url sqlite:///var/migrations.sqlite upgrade head
    python -m connectors.state_migrations --url sqlite:///var/migrations.sqlite check

``python -m connectors.state_migrations`` takes every Alembic command (``history``, ``current``,
``downgrade``, ...); without ``--url`` it works on ``HAUSFLOW_STATE_URL`` (default
``sqlite:///var/state.sqlite``). Revision ids are numbered (``--rev-id``) so the files sort in order.
Only the state store's tables are compared: the SEPA ledger shares the database but creates its own.
"""

from __future__ import annotations

import sys
import threading
import weakref
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from alembic.config import Config

FOLDER = Path(__file__).resolve().parent

#: The newest revision. Why written here: comparing with it needs no Alembic, whose import costs
#: a process 75-170 ms; Alembic is imported only to migrate. A test checks it against ``versions/``.
HEAD = "0006"
#: The revision of the release before migrations, and the one that added the change sequence.
BASELINE = "0001"
CHANGE_SEQUENCE = "0002"

#: The tables of the release before migrations: any of them without ``alembic_version`` means a
#: database of that release (the SEPA ledger's tables in the same database do not count).
PREVIOUS_RELEASE_TABLES = frozenset(
    {"sync_state", "sync_meta", "sync_pending", "quarantine", "sync_runs", "protocol"}
)

# PostgreSQL advisory lock of the migration (per database): the name's CRC, a stable 32-bit number.
_PG_LOCK_KEY = zlib.crc32(b"hausflow.state_migrations")

_current: weakref.WeakSet[Engine] = weakref.WeakSet()
# Alembic's ``context`` and ``op`` are module-wide: one migration at a time per process.
_ALEMBIC_LOCK = threading.Lock()


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """Alembic's configuration of the state store, built in code (there is no ``alembic.ini``).

    Args:
        connection: run the commands on this connection, inside its transaction (what
            :func:`migrate` does; also the only way to reach an in-memory SQLite database).
        url: else, the database the commands connect to themselves (the developer commands).
    """
    from alembic.config import Config

    config = Config(stdout=sys.stdout)  # the stream of now (Alembic's default is that of its import)
    config.set_main_option("script_location", str(FOLDER))
    config.set_main_option("path_separator", "os")
    config.set_main_option("file_template", "v%%(rev)s_%%(slug)s")
    # a new revision file leaves ``revision`` fixed and formatted as the house style wants
    config.set_section_option("post_write_hooks", "hooks", "ruff_fix, ruff_format")
    for hook, options in (
        ("ruff_fix", "check --fix REVISION_SCRIPT_FILENAME"),
        ("ruff_format", "format REVISION_SCRIPT_FILENAME"),
    ):
        config.set_section_option("post_write_hooks", f"{hook}.type", "module")
        config.set_section_option("post_write_hooks", f"{hook}.module", "ruff")
        config.set_section_option("post_write_hooks", f"{hook}.options", options)
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision as Alembic reads it from ``versions/`` (what :data:`HEAD` must be)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always has revisions
        raise RuntimeError(f"no state-store migrations in {FOLDER / 'versions'}")
    return head


def migrate(engine: Engine) -> None:
    """Bring the state database of ``engine`` to the newest schema; cheap when it is there already.

    Why here and not a separate step: every command that opens the store calls this, so a new
    release upgrades the database on its first run, and no flow ever meets an old schema. Per
    engine the first call reads ``alembic_version`` once and compares it with the head; later
    calls do nothing.

    Only a database that is behind takes the lock: ``BEGIN IMMEDIATE`` on SQLite, a
    transaction-level advisory lock on PostgreSQL; the migration runs in that transaction, and a
    process that waited finds the work done. Other databases have no lock: a process whose
    migration fails because another one migrated at the same moment re-reads the version and goes
    on if it is the head. Within a process, migrations run one at a time (Alembic keeps the
    running migration in module-wide state).

    Raises:
        RuntimeError: the database is at a revision this release does not know (a newer release
            migrated it).
    """
    if engine in _current:
        return
    if _stored_revision(engine) != HEAD:
        with _ALEMBIC_LOCK:
            try:
                with _exclusive(engine) as conn:
                    _migrate_locked(conn)
            except DBAPIError:
                if _stored_revision(engine) != HEAD:
                    raise
    _current.add(engine)


def _stored_revision(engine: Engine) -> str | None:
    """The revision recorded in the database (``None`` without ``alembic_version``)."""
    try:
        with engine.connect() as conn:
            value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:  # no such table: a new database or one of the release before migrations
        return None
    return None if value is None else str(value)


@contextmanager
def _exclusive(engine: Engine) -> Iterator[Connection]:
    """A transaction that holds the database's migration lock until it ends."""
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            # the driver begins transactions itself only before DML; this one takes the write lock
            # now, so a second process waits here (busy timeout) instead of creating tables too
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        yield conn


def _migrate_locked(conn: Connection) -> None:
    """Record what a database without ``alembic_version`` is, then upgrade it to the head."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = alembic_config(conn)
    tables = set(inspect(conn).get_table_names())
    if "alembic_version" in tables:
        current = MigrationContext.configure(conn).get_current_revision()
        if current == HEAD:
            return  # another process migrated it while this one waited for the lock
        known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
        if current is not None and current not in known:
            url = conn.engine.url.render_as_string(hide_password=True)
            raise RuntimeError(
                f"The state database {url} is at schema revision {current}, which this hausflow "
                f"release does not know (its newest is {HEAD}): a newer release has migrated it. "
                "Run that release against it, or restore the backup taken before."
            )
    elif tables & PREVIOUS_RELEASE_TABLES:
        command.stamp(config, _adopt_previous_release(conn, config))
    command.upgrade(config, "head")


def _adopt_previous_release(conn: Connection, config: Config) -> str:
    """Complete a database of the release before migrations and return the revision it matches.

    Why complete it: that release made its tables with ``create_all`` as it went, so a database
    may lack some (the release before the change sequence had no ``sync_meta``). The missing
    tables are created as the baseline has them; a database with ``seq`` gets the index and the
    counter row the release created with it, should a crash have left them out.
    """
    from alembic.script import ScriptDirectory

    baseline: Any = ScriptDirectory.from_config(config).get_revision(BASELINE).module
    baseline.create_previous_release_tables(conn)
    if "seq" not in {column["name"] for column in inspect(conn).get_columns("sync_state")}:
        return BASELINE
    if "ix_sync_state_seq" not in {index["name"] for index in inspect(conn).get_indexes("sync_state")}:
        conn.execute(text("CREATE INDEX ix_sync_state_seq ON sync_state (target, seq)"))
    counter = conn.execute(text("SELECT 1 FROM sync_meta WHERE name = 'state_seq'")).first()
    if counter is None:
        conn.execute(text("INSERT INTO sync_meta (name, value) VALUES ('state_seq', 0)"))
    return CHANGE_SEQUENCE
