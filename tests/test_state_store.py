"""The state store's engines (one per process and database, a new one for a replaced SQLite file)
and its confirmations (in place, with their protocol rows, the log copied back off the commit)."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from connectors.sqlutil import utcnow
from connectors.state_store import (
    WAL_PAGES_BEFORE_INLINE_CHECKPOINT,
    Confirmation,
    PendingWrite,
    ProtocolRow,
    StateStore,
    protocol,
    sync_pending,
    sync_runs,
    sync_state,
)


def _confirm(store: StateStore, ref_id: str) -> None:
    store.confirm("portal", [Confirmation("contacts", ref_id, "upsert", "h", None)], "run-1")


def test_stores_of_one_database_share_the_engine_and_see_each_others_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.sqlite"
    first, second = StateStore(url), StateStore(url)
    assert first.engine is second.engine
    _confirm(first, "P1")
    assert second.count_state("portal") == 1
    other = StateStore(f"sqlite:///{tmp_path}/other.sqlite")
    assert other.engine is not first.engine
    assert other.count_state("portal") == 0


def test_a_replaced_sqlite_file_gets_a_new_engine_and_its_writes_land_in_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    url = f"sqlite:///{path}"
    old = StateStore(url)
    _confirm(old, "P1")
    old_engine = old.engine
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    fresh = StateStore(url)
    assert fresh.engine is not old_engine
    assert fresh.count_state("portal") == 0  # not the deleted file's rows
    _confirm(fresh, "P2")
    with sqlite3.connect(path) as conn:  # what a separate reader of the file sees
        assert conn.execute("select ref_id from sync_state").fetchall() == [("P2",)]


def test_in_memory_databases_are_never_shared() -> None:
    first, second = StateStore("sqlite:///:memory:"), StateStore("sqlite:///:memory:")
    assert first.engine is not second.engine


# ---- confirmations ---------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.sqlite"
    make: Callable[[], str] = request.getfixturevalue("pg_database")
    return make()


def _rows(store: StateStore) -> dict[str, tuple[Any, ...]]:
    with store.engine.connect() as conn:
        return {
            r.ref_id: (r.payload_hash, r.status, r.partner_internal_id, r.run_id, r.seq)
            for r in conn.execute(select(sync_state))
        }


def test_confirm_updates_known_records_in_place_inserts_new_ones_and_writes_the_protocol(
    state_url: str,
) -> None:
    store = StateStore(state_url)
    store.confirm(
        "portal", [Confirmation("contacts", p, "upsert", f"h-{p}", f"i-{p}") for p in ("P1", "P2")], "r1"
    )
    store.mark_pending("portal", [PendingWrite("contacts", p, "upsert", "x", "r2") for p in ("P1", "P3")])
    seq = store.confirm(
        "portal",
        [
            Confirmation("contacts", "P1", "upsert", "stale", "i-P1"),
            Confirmation("contacts", "P3", "upsert", "h-P3", "i-P3"),
            Confirmation("contacts", "P1", "archive", None, "i-P1"),  # the last confirmation of a record wins
        ],
        "r2",
        [ProtocolRow("contacts", "P1", "archived"), ProtocolRow("contacts", "P3", "created")],
    )
    assert seq == 2
    assert _rows(store) == {
        "P1": (None, "archived", "i-P1", "r2", 2),
        "P2": ("h-P2", "active", "i-P2", "r1", 1),
        "P3": ("h-P3", "active", "i-P3", "r2", 2),
    }
    assert store.load_pending("portal") == []
    assert store.protocol_counts("r2") == {("contacts", "archived"): 1, ("contacts", "created"): 1}
    assert store.changed_since("portal", 1) == ({"contacts": {"P1", "P3"}}, {2})
    assert store.positions_since("portal", 0) == {1, 2} and store.positions_since("portal", 2) == set()


def test_bulk_writes_store_times_as_sqlalchemy_does_and_keep_the_last_pending_write_of_a_record(
    state_url: str,
) -> None:
    # pending entries, confirmations and protocol rows go to the driver in one call each, past
    # SQLAlchemy's type processing: their times must still be stored as SQLAlchemy stores them
    store = StateStore(state_url)
    before = utcnow()
    store.start_run("r1", "portal-sync", "portal", False)  # written by SQLAlchemy itself
    store.mark_pending(
        "portal",
        [
            PendingWrite("contacts", "P2", "upsert", "old", "r1"),
            PendingWrite("contacts", "P2", "archive", None, "r1"),
        ],
    )
    store.confirm(
        "portal",
        [Confirmation("contacts", "P1", "upsert", "h")],
        "r1",
        [ProtocolRow("contacts", "P1", "created")],
    )
    after = utcnow()
    assert store.load_pending("portal") == [PendingWrite("contacts", "P2", "archive", None, "r1")]
    columns = [sync_runs.c.started_at, sync_state.c.confirmed_at, sync_pending.c.created_at, protocol.c.at]
    with store.engine.connect() as conn:
        times = [conn.execute(select(column)).scalar_one() for column in columns]
        raw = [conn.exec_driver_sql(f"SELECT {c.name} FROM {c.table.name}").scalar_one() for c in columns]  # type: ignore[attr-defined]
    for value in times:
        assert before <= (value if value.tzinfo else value.replace(tzinfo=before.tzinfo)) <= after
    if state_url.startswith("sqlite"):  # stored as text: one format for all
        assert len({(type(v), len(v)) for v in raw}) == 1, raw


def test_a_confirmation_and_its_protocol_rows_land_together_or_not_at_all(state_url: str) -> None:
    store = StateStore(state_url)
    broken = ProtocolRow("contacts", None, "created")  # type: ignore[arg-type]  # ref_id is NOT NULL
    with pytest.raises(IntegrityError):
        store.confirm("portal", [Confirmation("contacts", "P1", "upsert", "h")], "r1", [broken])
    assert _rows(store) == {} and store.current_seq() == 0
    assert store.protocol_counts("r1") == {}


def test_a_restarted_run_keeps_its_writes_and_leaves_the_rest_to_be_decided_again(state_url: str) -> None:
    """A flow run retried from the Prefect UI runs under its own id again: what its earlier attempt
    wrote stays in its protocol; what that attempt failed, skipped, held or noted without writing
    it, the new attempt decides again (else the protocol would count it twice, or as failed)."""
    store = StateStore(state_url)
    store.start_run("r1", "portal-sync", "portal", False)
    store.add_protocol(
        "r1",
        [
            ProtocolRow("contacts", "P1", "created"),
            ProtocolRow("contacts", "P1", "note", "spaces around the last name removed"),
            ProtocolRow("contacts", "P2", "note", "a tab in the street replaced by a space"),
            ProtocolRow("contacts", "P2", "failed", "503 (gave up after 1 attempts)"),
            ProtocolRow("contacts", "P3", "skipped", "waits for its access date"),
            ProtocolRow("contacts", "P4", "quarantined", "invalid e-mail [email]"),
        ],
    )
    store.add_protocol("r2", [ProtocolRow("contacts", "P2", "failed", "503")])
    store.start_run("r1", "portal-sync", "portal", False)
    assert sorted((r.ref_id, r.outcome) for r in store.protocol_rows("r1")) == [
        ("P1", "created"),
        ("P1", "note"),
    ]
    assert store.protocol_counts("r2") == {("contacts", "failed"): 1}  # another run's stays as it was


def test_sqlite_keeps_commits_short_and_copies_its_log_back_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    store = StateStore(f"sqlite:///{path}")
    with store.engine.connect() as conn:  # commits never copy the log back themselves below this size
        assert (
            conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == WAL_PAGES_BEFORE_INLINE_CHECKPOINT
        )
    store.confirm("portal", [Confirmation("contacts", f"P{i}", "upsert", "h") for i in range(2000)], "r1")
    for thread in threading.enumerate():
        if thread.name == "state-store-checkpoint":
            thread.join(timeout=30)
    copy = tmp_path / "main-file-only.sqlite"
    shutil.copyfile(path, copy)  # the database file alone, without its write-ahead log
    with sqlite3.connect(copy) as conn:
        assert conn.execute("select count(*) from sync_state").fetchone() == (2000,)


def test_a_key_is_made_once_per_database_and_kept(tmp_path: Path) -> None:
    first = StateStore(f"sqlite:///{tmp_path}/a.sqlite")
    key = first.key("portal-memo")
    assert len(key) == 32 and StateStore(f"sqlite:///{tmp_path}/a.sqlite").key("portal-memo") == key
    assert first.key("other") != key
    assert StateStore(f"sqlite:///{tmp_path}/b.sqlite").key("portal-memo") != key
    keys: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: keys.append(StateStore(f"sqlite:///{tmp_path}/c.sqlite").key("k")))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 4 and len(set(keys)) == 1
