"""The state store's schema by migrations: a new database, databases of the release before
migrations (with and without the change sequence), a second open that migrates nothing, first
opens at the same moment, downgrades, and the partner credentials with their aware times."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, event, inspect, select, text

from connectors.erp.database import make_engine
from connectors.sepa.ledger import SepaLedger
from connectors.state_migrations import HEAD, alembic_config, head_revision
from connectors.state_migrations.__main__ import main as state_migrations_cli
from connectors.state_store import (
    Confirmation,
    StateStore,
    credential_hint,
    state_metadata,
    sync_meta,
)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.sqlite"
    make: Callable[[], str] = request.getfixturevalue("pg_database")
    return make()


@pytest.fixture
def engine(state_url: str) -> Iterator[Engine]:
    """An engine of its own (not the store's shared one), to build or look at a database with."""
    engine = make_engine(state_url)
    yield engine
    engine.dispose()


def _version(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


def _ddl(engine: Engine, statements: list[str]) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


def _previous_release(engine: Engine, with_seq: bool) -> None:
    """The tables as the releases before migrations created them, with a row in each.

    Without the change sequence there was no ``sync_meta`` either: it came with ``seq``.
    """
    pg = engine.dialect.name == "postgresql"
    ts = "TIMESTAMP WITH TIME ZONE" if pg else "DATETIME"
    serial = "SERIAL" if pg else "INTEGER"
    seq = ", seq INTEGER" if with_seq else ""
    statements = [
        "CREATE TABLE sync_state (target VARCHAR(20) NOT NULL, entity VARCHAR(30) NOT NULL, "
        "ref_id VARCHAR(60) NOT NULL, payload_hash VARCHAR(64), status VARCHAR(12) NOT NULL, "
        f"partner_internal_id VARCHAR(40), confirmed_at {ts} NOT NULL, run_id VARCHAR(40){seq}, "
        "PRIMARY KEY (target, entity, ref_id))",
        "CREATE TABLE sync_pending (target VARCHAR(20) NOT NULL, entity VARCHAR(30) NOT NULL, "
        "ref_id VARCHAR(60) NOT NULL, op VARCHAR(12) NOT NULL, payload_hash VARCHAR(64), "
        f"run_id VARCHAR(40), created_at {ts} NOT NULL, PRIMARY KEY (target, entity, ref_id))",
        f"CREATE TABLE quarantine (id {serial} NOT NULL, target VARCHAR(20) NOT NULL, "
        "entity VARCHAR(30) NOT NULL, ref_id VARCHAR(60) NOT NULL, rule VARCHAR(120) NOT NULL, "
        "reason TEXT NOT NULL, record_json TEXT, run_id VARCHAR(40), "
        f"first_seen {ts} NOT NULL, last_seen {ts} NOT NULL, resolved_at {ts}, PRIMARY KEY (id), "
        "CONSTRAINT uq_quarantine_record_rule UNIQUE (target, entity, ref_id, rule))",
        "CREATE INDEX ix_quarantine_open ON quarantine (target, resolved_at)",
        "CREATE TABLE sync_runs (run_id VARCHAR(40) NOT NULL, flow VARCHAR(40) NOT NULL, "
        f"target VARCHAR(20) NOT NULL, started_at {ts} NOT NULL, finished_at {ts}, "
        "status VARCHAR(20) NOT NULL, dry_run BOOLEAN NOT NULL, summary_json TEXT, PRIMARY KEY (run_id))",
        f"CREATE TABLE protocol (id {serial} NOT NULL, run_id VARCHAR(40) NOT NULL, "
        "entity VARCHAR(30) NOT NULL, ref_id VARCHAR(60) NOT NULL, outcome VARCHAR(20) NOT NULL, "
        f"reason TEXT, at {ts} NOT NULL, PRIMARY KEY (id))",
        "CREATE INDEX ix_protocol_run ON protocol (run_id, outcome)",
        "INSERT INTO sync_state (target, entity, ref_id, payload_hash, status, confirmed_at, run_id"
        f"{', seq' if with_seq else ''}) VALUES ('portal', 'contacts', 'P1', 'h1', 'active', "
        f"'2026-01-02 03:04:05', 'r0'{', 7' if with_seq else ''})",
        "INSERT INTO sync_pending VALUES ('portal', 'contacts', 'P2', 'upsert', 'h2', 'r0', '2026-01-02 03:04:05')",
        "INSERT INTO quarantine (target, entity, ref_id, rule, reason, first_seen, last_seen) VALUES "
        "('portal', 'contacts', 'P3', 'email_valid', 'e-mail invalid', '2026-01-02', '2026-01-02')",
        "INSERT INTO sync_runs VALUES ('r0', 'portal-sync', 'portal', '2026-01-02', NULL, 'COMPLETED', false, NULL)",
        "INSERT INTO protocol (run_id, entity, ref_id, outcome, at) VALUES "
        "('r0', 'contacts', 'P1', 'created', '2026-01-02')",
    ]
    if with_seq:
        statements += [
            "CREATE INDEX ix_sync_state_seq ON sync_state (target, seq)",
            "CREATE TABLE sync_meta (name VARCHAR(40) NOT NULL, value INTEGER NOT NULL, PRIMARY KEY (name))",
            "INSERT INTO sync_meta VALUES ('state_seq', 7)",
        ]
    _ddl(engine, statements)


def _rows_kept(store: StateStore) -> None:
    """The rows :func:`_previous_release` wrote are all still there."""
    assert set(store.load_state("portal", "contacts")) == {"P1"}
    assert [(w.ref_id, w.payload_hash) for w in store.load_pending("portal")] == [("P2", "h2")]
    assert [q["ref_id"] for q in store.open_quarantine("portal")] == ["P3"]
    assert store.protocol_counts("r0") == {("contacts", "created"): 1}


def _model_matches(engine: Engine) -> list[Any]:
    """What autogenerate would put into a new revision (nothing, if the model and the revisions agree)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={"include_name": lambda name, type_, _: type_ != "table" or name in state_metadata.tables},
        )
        return list(compare_metadata(context, state_metadata))


def test_head_names_the_newest_revision() -> None:
    assert head_revision() == HEAD


def test_a_new_database_gets_the_newest_schema_and_it_matches_the_model(
    state_url: str, engine: Engine
) -> None:
    store = StateStore(state_url)
    assert _version(engine) == [HEAD]
    assert set(state_metadata.tables) <= set(inspect(engine).get_table_names())
    assert _model_matches(engine) == []
    assert store.current_seq() == 0
    with engine.connect() as conn:
        assert conn.execute(select(sync_meta.c.name, sync_meta.c.value)).all() == [("state_seq", 0)]


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_databases_are_migrated_on_their_own_connection(url: str) -> None:
    store = StateStore(url)
    assert store.confirm("portal", [Confirmation("contacts", "P1", "upsert", "h")], "r1") == 1
    store.record_credentials("portal", "abcd…", None)
    assert store.credentials("portal") is not None
    assert _version(store.engine) == [HEAD]


def test_a_database_of_the_release_before_the_change_sequence_gains_it_and_keeps_its_rows(
    state_url: str, engine: Engine
) -> None:
    _previous_release(engine, with_seq=False)
    store = StateStore(state_url)
    assert _version(engine) == [HEAD]
    assert "seq" in {c["name"] for c in inspect(engine).get_columns("sync_state")}
    assert "ix_sync_state_seq" in {i["name"] for i in inspect(engine).get_indexes("sync_state")}
    assert _model_matches(engine) == []
    _rows_kept(store)
    assert store.current_seq() == 0
    assert store.confirm("portal", [Confirmation("contacts", "P2", "upsert", "h2")], "r1") == 1
    assert store.changed_since("portal", 0) == ({"contacts": {"P2"}}, {1})  # P1 has no position


def test_a_database_with_the_change_sequence_but_no_alembic_version_is_stamped_and_keeps_its_data(
    state_url: str, engine: Engine
) -> None:
    _previous_release(engine, with_seq=True)
    store = StateStore(state_url)
    assert _version(engine) == [HEAD]
    assert _model_matches(engine) == []
    _rows_kept(store)
    assert store.current_seq() == 7  # the counter goes on where it was
    assert store.changed_since("portal", 6) == ({"contacts": {"P1"}}, {7})
    assert store.confirm("portal", [Confirmation("contacts", "P2", "upsert", "h2")], "r1") == 8
    assert store.credentials("portal") is None  # the new table is there


def test_opening_a_current_database_again_reads_its_version_once_and_migrates_nothing(
    state_url: str, engine: Engine
) -> None:
    StateStore(state_url)
    statements: list[str] = []
    event.listen(
        engine, "before_cursor_execute", lambda _c, _cur, statement, *_: statements.append(statement)
    )
    StateStore(state_url, engine)
    assert statements == ["SELECT version_num FROM alembic_version"]
    StateStore(state_url, engine)
    StateStore(state_url)  # the process's shared engine: known to be current
    assert len(statements) == 1
    assert _version(engine) == [HEAD]


@contextmanager
def _held_up(url: str) -> Iterator[None]:
    """Keep the new database at ``url`` from being written until the block ends.

    An uncommitted ``alembic_version`` holds SQLite's write lock, and on PostgreSQL makes any other
    creation of that table wait: openers started inside the block all find a new database, and all
    reach their first write before any of them can make it.
    """
    engine = make_engine(url)
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN")
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        yield
        conn.rollback()
    engine.dispose()


# A process that opens the store when the test says go (after its imports, which take longest),
# and prints how many CREATE statements it sent and the change position it then read.
_OPENER = """
import pathlib, sys, time
import alembic.command, alembic.runtime.migration, alembic.script
from sqlalchemy import event
from connectors.erp.database import make_engine
from connectors.state_store import StateStore
url, folder, me = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
engine = make_engine(url)
creates = []
@event.listens_for(engine, "before_cursor_execute")
def count(conn, cursor, statement, *args):
    if statement.lstrip().upper().startswith("CREATE"):
        creates.append(statement)
(folder / f"ready-{me}").touch()
while not (folder / "go").exists():
    time.sleep(0.001)
seq = StateStore(url, engine).current_seq()
print(len(creates), seq)
"""


def test_processes_opening_a_new_database_at_the_same_moment_all_succeed_and_one_migrates(
    state_url: str, engine: Engine, tmp_path: Path
) -> None:
    openers = 3
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _OPENER, state_url, str(tmp_path), str(i)],
            cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(openers)
    ]
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("ready-*"))) < openers and time.monotonic() < deadline:
            time.sleep(0.01)
        with _held_up(state_url):
            (tmp_path / "go").touch()
            time.sleep(1.0)  # the openers reach the database
        results = [child.communicate(timeout=120) for child in children]
    finally:
        for child in children:
            child.kill()
    assert [(child.returncode, err) for child, (_out, err) in zip(children, results, strict=True)] == [
        (0, "")
    ] * openers
    creates, seqs = zip(*(out.split() for out, _err in results), strict=True)
    assert seqs == ("0",) * openers
    # the others waited for the one that migrated, and found the work done: no DDL of their own
    assert sorted(int(n) > 0 for n in creates) == [False] * (openers - 1) + [True]
    assert _version(engine) == [HEAD]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """A factory of URLs of new state databases."""
    if request.param == "postgresql":
        make: Callable[[], str] = request.getfixturevalue("pg_database")
        return make
    names = iter(range(1_000))
    return lambda: f"sqlite:///{tmp_path}/state-{next(names)}.sqlite"


def test_threads_opening_new_databases_at_the_same_moment_all_succeed(
    new_database: Callable[[], str],
) -> None:
    urls = [new_database() for _ in range(3)]
    errors: list[BaseException] = []

    def open_store(url: str) -> None:
        try:  # an engine of its own: the shared engines are made one at a time
            StateStore(url, make_engine(url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store, args=(url,), daemon=True) for url in urls]
    with ExitStack() as held:
        for url in urls:
            held.enter_context(_held_up(url))
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # the threads reach their databases
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads) and errors == []
    for url in urls:
        engine = make_engine(url)
        assert _version(engine) == [HEAD]
        engine.dispose()


def test_the_developers_check_finds_model_and_revisions_in_step_beside_the_sepa_ledger(
    state_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    StateStore(state_url)
    SepaLedger(state_url)  # its tables are no part of the state store's model
    state_migrations_cli(["--url", state_url, "check"])
    assert "No new upgrade operations detected" in capsys.readouterr().out


def test_downgrades_step_back_to_each_earlier_schema_and_up_again(state_url: str, engine: Engine) -> None:
    StateStore(state_url, engine)

    def step(revision: str, up: bool = False) -> None:
        with engine.begin() as conn:
            (command.upgrade if up else command.downgrade)(alembic_config(conn), revision)

    step("0002")
    assert "partner_credentials" not in inspect(engine).get_table_names()
    step("0001")
    assert "seq" not in {c["name"] for c in inspect(engine).get_columns("sync_state")}
    assert inspect(engine).get_indexes("sync_state") == []
    with engine.connect() as conn:
        assert conn.execute(select(sync_meta)).all() == []
    step("base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    step("head", up=True)
    assert _version(engine) == [HEAD]
    assert _model_matches(engine) == []


def test_a_database_a_newer_release_migrated_is_refused_with_what_to_do(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.sqlite"
    StateStore(url)
    engine = make_engine(url)
    _ddl(engine, ["UPDATE alembic_version SET version_num = '0099'"])
    with pytest.raises(RuntimeError, match=r"revision 0099, which this hausflow release does not know"):
        StateStore(url, engine)
    assert _version(engine) == ["0099"]


# ---- partner credentials ---------------------------------------------------------------------------
def test_credentials_round_trip_with_aware_times_and_are_replaced(state_url: str) -> None:
    store = StateStore(state_url)
    assert store.credentials("portal") is None
    expires = datetime(2027, 3, 28, 1, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    before = datetime.now(UTC)
    store.record_credentials("portal", credential_hint("pk_live_0123456789abcdef"), expires)
    after = datetime.now(UTC)
    record = store.credentials("portal")
    assert record is not None
    assert (record.target, record.key_hint, record.expires_at) == ("portal", "pk_l…", expires)
    assert record.expires_at is not None and record.expires_at.utcoffset() == timedelta(0)
    assert record.fetched_at.tzinfo is not None and before <= record.fetched_at <= after

    store.record_credentials("portal", "sk_t…", None)  # rotated, no expiry named
    again = store.credentials("portal")
    assert again is not None and (again.key_hint, again.expires_at) == ("sk_t…", None)
    assert again.fetched_at >= record.fetched_at
    assert store.credentials("deposit") is None


def test_credentials_refuse_what_is_no_hint_and_times_without_a_zone(tmp_path: Path) -> None:
    store = StateStore(f"sqlite:///{tmp_path}/state.sqlite")
    with pytest.raises(ValueError, match="never the key or token itself"):
        store.record_credentials("portal", "x" * 41, None)
    with pytest.raises(ValueError, match="no time zone"):
        store.record_credentials("portal", "abcd…", datetime(2027, 1, 1))
    assert store.credentials("portal") is None


@pytest.mark.parametrize(
    ("key", "hint"),
    [("pk_live_0123456789abcdef", "pk_l…"), ("0123456789abcdef", "0123…"), ("short-key", "…")],
)
def test_a_credential_hint_shows_four_characters_of_a_long_key_only(key: str, hint: str) -> None:
    assert credential_hint(key) == hint
