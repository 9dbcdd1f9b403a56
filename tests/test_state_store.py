"""The state store's engines: one per process and database, a new one for a replaced SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from connectors.state_store import Confirmation, StateStore


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
