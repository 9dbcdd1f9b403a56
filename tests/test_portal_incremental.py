"""Incremental portal runs: a run that rebuilds only what changed must reach exactly the state a
full run reaches, and fall back to a full run whenever its memo cannot vouch for the rest.

The first half works on the rules alone (no Prefect): after each kind of ERP change, the records
an incremental run rebuilds equal the full run's, and every record it carries over is unchanged
in the full run. The second half runs the flow against the sandbox.
"""

from __future__ import annotations

import os
import pickle
import stat
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, insert, select, text, update

from config.settings import load_settings
from connectors.erp import demo, schema
from connectors.erp.database import make_engine
from connectors.erp.extract import TableRows, extract_portal_rows
from connectors.state_store import Confirmation, QuarantineItem, StateStore
from flows.portal_sync import run_portal_sync
from sandbox.portal.server import SandboxServer
from tasks.portal_memo import (
    BUILT_ENTITIES,
    MEMO_FILE,
    Memo,
    MemoStore,
    MemoUnusable,
    TableLinks,
    TableVersion,
    changed_positions,
    memo_after_run,
    memo_folder,
    scope_from_memo,
    table_digest,
    table_file,
    touched_links,
)
from tasks.portal_rules import DesiredState
from tasks.portal_tasks import desired_state_from_rows
from tests.portal_env import BUSINESS_DATE, portal_env, portal_view, run_log

TODAY = BUSINESS_DATE

KEY = b"k" * 32  # a digest key, as StateStore.key makes one


# ---- rules level -----------------------------------------------------------------------------------
def _versions(tables: dict[str, TableRows]) -> dict[str, TableVersion]:
    return {
        name: TableVersion(
            table_digest(t.rows, key=KEY), table_file(name, TableLinks.of(name, t, key=KEY).to_json(name))
        )
        for name, t in tables.items()
    }


def _memo(tables: dict[str, TableRows], desired: DesiredState) -> Memo:
    return memo_after_run(
        fingerprint="f", last_seq=0, state_count=0, tables=_versions(tables), desired=desired, unsynced={}
    )


def _one_row(engine: Engine, table: Any, *where: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(select(table).where(*where).limit(1)).one()._mapping)


class Ledger:
    """Runs the full and the incremental rules side by side across a chain of ERP changes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.settings = load_settings("test")
        self.tables = extract_portal_rows(engine)
        self.full, _, _ = desired_state_from_rows(self.settings, self.tables, TODAY)
        self.memo = _memo(self.tables, self.full)

    def step(self, today: date = TODAY) -> dict[str, int]:
        """Compare incremental and full after a change; returns how many records were rebuilt."""
        tables = extract_portal_rows(self.engine)
        versions = _versions(tables)
        touched = {
            n: touched_links(TableLinks.of(n, self.tables[n], key=KEY), TableLinks.of(n, tables[n], key=KEY))
            for n in tables
            if versions[n] != self.memo.tables[n]
        }
        scope = scope_from_memo(self.memo, tables, touched, {})
        inc, _, _ = desired_state_from_rows(self.settings, tables, today, scope=scope)
        full, _, _ = desired_state_from_rows(self.settings, tables, today)
        for entity in BUILT_ENTITIES:
            assert set(inc.present(entity)) == set(full.records[entity]), entity
            for rid, payload in inc.records[entity].items():
                assert payload == full.records[entity][rid], (entity, rid)
            for rid, payload in full.records[entity].items():
                if rid not in scope.of(entity):  # carried over: must really be unchanged
                    assert self.full.records[entity].get(rid) == payload, (entity, rid)
        assert sorted(inc.skipped, key=repr) == sorted(full.skipped, key=repr)
        assert sorted(inc.quarantine, key=repr) == sorted(full.quarantine, key=repr)
        assert inc.notes == {k: v for k, v in full.notes.items() if k[1] in scope.of(k[0])}
        assert inc.withdraw_reasons == full.withdraw_reasons
        assert inc.anonymise == full.anonymise
        assert inc.caretakers == full.caretakers
        self.tables, self.full, self.memo = tables, full, _memo(tables, inc)
        return {e: len(scope.of(e)) for e in BUILT_ENTITIES}


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    engine = make_engine(f"sqlite:///{tmp_path}/erp.sqlite")
    demo.generate_erp(engine, persons=400, seed=11, business_date=BUSINESS_DATE)
    return Ledger(engine)


def test_no_change_rebuilds_nothing(ledger: Ledger) -> None:
    assert ledger.step() == {"properties": 0, "units": 0, "contacts": 0}


def test_person_changes_rebuild_those_persons_only(ledger: Ledger) -> None:
    changed = demo.mutate_erp(ledger.engine, seed=3, fraction=0.05, business_date=BUSINESS_DATE)
    rebuilt = ledger.step()
    assert rebuilt == {"properties": 0, "units": 0, "contacts": len(changed)}


def test_contract_partner_and_person_changes_match_a_full_run(ledger: Ledger) -> None:
    e = ledger.engine
    c, cp = schema.contracts, schema.contract_partners
    partner = _one_row(e, cp)
    demo.remove_co_resident(e, partner["contract_no"], partner["person_no"])
    ledger.step()
    lead = _one_row(e, c, c.c.move_out_date.is_(None), c.c.contract_type != "OWNER")
    demo.move_out(e, lead["contract_no"], TODAY - timedelta(days=90))  # beyond the grace period
    ledger.step()
    tenant = _one_row(e, c, c.c.move_out_date.is_(None), c.c.contract_type != "OWNER")
    demo.anonymise_person(e, tenant["person_no"])
    ledger.step()
    # a new contract for an existing person in another unit, and a contract deleted
    other = _one_row(e, c, c.c.person_no != tenant["person_no"], c.c.move_out_date.is_(None))
    with e.begin() as conn:
        conn.execute(insert(c).values({**other, "contract_no": "V-NEW-1", "person_no": lead["person_no"]}))
        free = select(c.c.contract_no).where(
            c.c.contract_no.not_in(select(cp.c.contract_no)),
            c.c.contract_no.not_in(select(schema.deposit_accounts.c.contract_no)),
            c.c.contract_no.not_in(
                select(schema.claims.c.contract_no).where(schema.claims.c.contract_no.is_not(None))
            ),
        )
        gone = conn.execute(free.limit(1)).scalar_one()
        conn.execute(delete(c).where(c.c.contract_no == gone))
    ledger.step()


def test_object_release_owner_unit_and_caretaker_changes_match_a_full_run(ledger: Ledger) -> None:
    e = ledger.engine
    o, g, u, ca = schema.objects, schema.object_groups, schema.units, schema.caretaker_assignments
    cared = sorted(ledger.full.caretakers)  # objects with caretakers: withdrawing one touches them too
    released = [cared[0], *sorted(set(ledger.full.records["properties"]) - {cared[0]})]
    with e.begin() as conn:  # withdraw an object from the portal group
        conn.execute(delete(g).where(g.c.object_no == released[0], g.c.group_name == "CASAVI"))
    rebuilt = ledger.step()
    assert rebuilt["properties"] >= 1 and rebuilt["units"] >= 1
    with e.begin() as conn:  # release an object that was not released
        outside = conn.execute(
            select(o.c.object_no).where(
                o.c.object_no.not_in(select(g.c.object_no).where(g.c.group_name == "CASAVI"))
            )
        ).first()
        assert outside is not None
        conn.execute(insert(g).values(group_name="CASAVI", object_no=outside[0]))
    ledger.step()
    owners = [r for r in ledger.tables["persons"].rows if r[1] == "EIGENTUEMER"]
    with e.begin() as conn:  # a new owner and a new name
        conn.execute(
            update(o)
            .where(o.c.object_no == released[1])
            .values(owner_person_no=owners[-1][0], name="Neuer Name")
        )
    ledger.step()
    with e.begin() as conn:  # a unit moves to another object
        unit = conn.execute(select(u.c.unit_no).where(u.c.object_no == released[2]).limit(1)).scalar_one()
        conn.execute(update(u).where(u.c.unit_no == unit).values(object_no=released[3]))
    ledger.step()
    with e.begin() as conn:  # caretakers: one gone, one renamed
        rows = conn.execute(select(ca).limit(2)).all()
        conn.execute(
            delete(ca).where(ca.c.object_no == rows[0].object_no, ca.c.person_no == rows[0].person_no)
        )
        conn.execute(
            update(ca)
            .where(ca.c.object_no == rows[1].object_no, ca.c.person_no == rows[1].person_no)
            .values(role_name="Hauswart")
        )
    ledger.step()


def test_a_property_lists_its_units_as_they_are_added_and_removed(ledger: Ledger) -> None:
    """A property names its units: a new unit or one removed rebuilds that property, not others."""
    e = ledger.engine
    u, c = schema.units, schema.contracts
    obj = sorted(ledger.full.records["properties"])[0]
    with e.begin() as conn:
        conn.execute(insert(u).values(unit_no=f"{obj}-NEU", object_no=obj, name="Neu", unit_type="GARAGE"))
    rebuilt = ledger.step()
    assert rebuilt["properties"] == 1 and rebuilt["units"] == 1 and rebuilt["contacts"] == 0
    assert f"{obj}-NEU" in ledger.full.records["properties"][obj]["addresses"][0]["units"]
    with e.begin() as conn:  # a unit without contracts leaves the ERP
        gone = conn.execute(
            select(u.c.unit_no, u.c.object_no)
            .where(
                u.c.object_no.in_(ledger.full.records["properties"]), u.c.unit_no.not_in(select(c.c.unit_no))
            )
            .order_by(u.c.unit_no.desc())
            .limit(1)
        ).one()
        conn.execute(delete(u).where(u.c.unit_no == gone.unit_no))
    rebuilt = ledger.step()
    assert rebuilt["properties"] == 1 and rebuilt["units"] == 1
    assert gone.unit_no not in ledger.full.records["properties"][gone.object_no]["addresses"][0]["units"]


def test_a_caretaker_follows_its_object_and_its_assignment(ledger: Ledger) -> None:
    """A caretaker with no other relation: in the portal only while the object is released and
    the assignment exists."""
    e = ledger.engine
    g, ca, p = schema.object_groups, schema.caretaker_assignments, schema.persons
    obj = sorted(ledger.full.records["properties"])[0]
    with e.begin() as conn:
        conn.execute(
            insert(p).values(
                person_no="HM-1",
                person_type="HAUSMEISTER",
                first_name="Kai",
                last_name="Wendt",
                anonymised=False,
            )
        )
        conn.execute(
            insert(ca).values(object_no=obj, person_no="HM-1", role_name="Hausmeister", role_type="external")
        )
    ledger.step()
    assert "HM-1" in ledger.full.records["contacts"]
    with e.begin() as conn:  # the object leaves the portal: so does its caretaker
        conn.execute(delete(g).where(g.c.object_no == obj, g.c.group_name == "CASAVI"))
    ledger.step()
    assert "HM-1" not in ledger.full.records["contacts"]
    with e.begin() as conn:
        conn.execute(insert(g).values(group_name="CASAVI", object_no=obj))
    ledger.step()
    assert "HM-1" in ledger.full.records["contacts"]
    with e.begin() as conn:  # the assignment ends
        conn.execute(delete(ca).where(ca.c.person_no == "HM-1"))
    ledger.step()
    assert "HM-1" not in ledger.full.records["contacts"]


PERSONS = ("person_no", "last_name")
CONTRACTS = ("contract_no", "unit_no", "person_no", "contract_type", "start_date", "move_out_date")


def _links(rows: list[tuple[Any, ...]]) -> TableLinks:
    return TableLinks.of("persons", TableRows(PERSONS, rows), key=KEY)


def test_touched_links_see_additions_removals_and_changes() -> None:
    old = [("1", "a"), ("2", "b"), ("3", "c")]
    new = [("1", "a"), ("2", "B"), ("4", "d")]
    assert sorted(map(tuple, touched_links(_links(old), _links(new)))) == [("2",), ("2",), ("3",), ("4",)]
    assert touched_links(_links(old), _links(list(old))) == []
    same_keys = [("1", "a"), ("2", "B"), ("3", "c")]  # lined up: compared by position
    assert changed_positions(old, same_keys) == [1]
    assert _links(old).patched("persons", TableRows(PERSONS, same_keys), [1], key=KEY) == _links(same_keys)
    assert changed_positions(old, old[1:]) is None  # rows added or removed: no comparison by position
    assert changed_positions(old, [("9", "x"), *old[1:]]) is None


def test_row_digests_are_keyed_so_a_guess_of_a_row_cannot_be_checked_without_the_key() -> None:
    import hashlib

    import orjson

    contract = ("C1", "U1", "P1", "MIETE", "2026-01-01", None)  # few possible values: guessable
    keyed = TableLinks.of("contracts", TableRows(CONTRACTS, [contract]), key=KEY).digests[0]
    unkeyed = hashlib.blake2b(orjson.dumps(contract), digest_size=16).hexdigest()
    other_key = TableLinks.of("contracts", TableRows(CONTRACTS, [contract]), key=b"x" * 32).digests[0]
    assert keyed not in (unkeyed, other_key)
    assert table_digest([contract], key=KEY) != table_digest([contract], key=b"x" * 32)


def test_digests_follow_the_values_and_a_table_file_holds_links_and_digests_only() -> None:
    rows = [("P1", "Müller", None, 1, 2.5, True), ("P2", date(2026, 1, 31), Decimal("1.50"))]
    assert table_digest(rows, key=KEY) != table_digest(rows[:1], key=KEY)
    assert _links([("P1", "a")]).digests != _links([("P1", "b")]).digests
    # a date as PostgreSQL's driver returns it and as SQLite returns it: the same digest
    assert _links([("P1", date(2026, 1, 31))]) == _links([("P1", "2026-01-31")])
    links = _links([("P1", "Müller"), ("P2", None)])
    data = links.to_json("persons")
    assert "Müller".encode() not in data
    back = TableLinks.from_json("persons", data)
    assert [tuple(x) for x in back.links] == links.links and back.digests == links.digests
    for bad in (b"", b"garbage", b"[]", data.replace(b"person_no", b"last_name"), data[:-2]):
        with pytest.raises(ValueError):
            TableLinks.from_json("persons", bad)


def _bare_memo(tables: dict[str, TableVersion]) -> Memo:
    return Memo("f", 0, 0, tables, {"contacts": {"P01"}}, {"P02"}, {})


def _saved(folder: Path, rows: list[tuple[Any, ...]]) -> tuple[Memo, TableRows]:
    table = TableRows(PERSONS, rows)
    data = TableLinks.of("persons", table, key=KEY).to_json("persons")
    memo = _bare_memo({"persons": TableVersion(table_digest(rows, key=KEY), table_file("persons", data))})
    assert MemoStore(folder).save(memo, {memo.tables["persons"].file: data})
    return memo, table


def test_a_table_file_is_checked_and_a_missing_one_is_written_again(tmp_path: Path) -> None:
    folder = tmp_path / "memo"
    memo, table = _saved(folder, [(f"P{i:02}", "a") for i in range(20)])
    version = memo.tables["persons"]
    assert MemoStore(folder).load() == memo
    assert MemoStore(folder).links("persons", version) == TableLinks.from_json(
        "persons", TableLinks.of("persons", table, key=KEY).to_json("persons")
    )
    data = (folder / version.file).read_bytes()
    (folder / version.file).write_bytes(data.replace(b'"P03"', b'"P93"'))  # damaged: its name is its digest
    with pytest.raises(MemoUnusable, match="file of persons is damaged"):
        MemoStore(folder).links("persons", version)
    (folder / version.file).unlink()  # gone between the runs
    with pytest.raises(MemoUnusable, match="file of persons is missing"):
        MemoStore(folder).links("persons", version)
    assert not MemoStore(folder).save(memo, {})  # without the rows: no memo at all
    assert MemoStore(folder).load() is None
    assert not MemoStore(folder).save(memo, {}, {"persons": table})  # nor without the key
    assert MemoStore(folder).save(memo, {}, {"persons": table}, key=KEY)
    assert (
        MemoStore(folder).links("persons", version).digests
        == TableLinks.of("persons", table, key=KEY).digests
    )
    assert sorted(p.name for p in folder.iterdir()) == sorted([MEMO_FILE, version.file])


def test_a_memo_that_another_user_could_have_written_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "memo"
    memo, _ = _saved(folder, [("P01", "a")])
    table_path = folder / memo.tables["persons"].file
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o600}
    for path, mode in ((folder / MEMO_FILE, 0o620), (folder / MEMO_FILE, 0o602), (folder, 0o770)):
        os.chmod(path, mode)
        with pytest.raises(MemoUnusable, match="can be written by group or others"):
            MemoStore(folder).load()
        os.chmod(path, 0o700 if path == folder else 0o600)
    os.chmod(table_path, 0o660)
    with pytest.raises(MemoUnusable, match="can be written by group or others"):
        MemoStore(folder).links("persons", memo.tables["persons"])
    assert MemoStore(folder).save(memo, {}, {"persons": TableRows(PERSONS, [("P01", "a")])}, key=KEY)
    assert stat.S_IMODE(table_path.stat().st_mode) == 0o600  # written anew, private
    # a link planted where the memo should be is not followed
    (tmp_path / "elsewhere.json").write_bytes((folder / MEMO_FILE).read_bytes())
    (folder / MEMO_FILE).unlink()
    (folder / MEMO_FILE).symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(MemoUnusable, match="cannot be read"):
        MemoStore(folder).load()
    # nothing is written into a folder others can write to
    os.chmod(folder, 0o777)
    assert not MemoStore(folder).save(memo, {}, {"persons": TableRows(PERSONS, [("P01", "a")])})
    assert (folder / MEMO_FILE).is_symlink()


def test_a_memo_of_another_owner_is_refused(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("giving a file to another user needs root")
    folder = tmp_path / "memo"
    memo, _ = _saved(folder, [("P01", "a")])
    for path in (folder / MEMO_FILE, folder):
        os.chown(path, 4242, -1)
        with pytest.raises(MemoUnusable, match=r"belongs to another user \(uid 4242\)"):
            MemoStore(folder).load()
        os.chown(path, 0, -1)
    os.chown(folder / memo.tables["persons"].file, 4242, -1)
    with pytest.raises(MemoUnusable, match="belongs to another user"):
        MemoStore(folder).links("persons", memo.tables["persons"])


class _Planted:
    """Unpickling this creates a folder: proof that a payload was deserialised."""

    def __init__(self, proof: Path) -> None:
        self.proof = proof

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.proof),))


def test_garbage_or_a_pickle_in_the_memo_is_never_deserialised(tmp_path: Path) -> None:
    folder, proof = tmp_path / "memo", tmp_path / "unpickled"
    memo, _ = _saved(folder, [("P01", "a")])
    version = memo.tables["persons"]
    for payload in (pickle.dumps(_Planted(proof)), b"\x80\x04garbage", b'{"version": 3}'):
        for name in (MEMO_FILE, version.file):
            (folder / name).write_bytes(payload)
        with pytest.raises(MemoUnusable, match="damaged"):
            MemoStore(folder).load()
        with pytest.raises(MemoUnusable, match="damaged"):
            MemoStore(folder).links("persons", version)
        # a file named by the payload's digest passes the name check; its content is still refused
        named = TableVersion(version.digest, table_file("persons", payload))
        (folder / named.file).write_bytes(payload)
        with pytest.raises(MemoUnusable, match="damaged"):
            MemoStore(folder).links("persons", named)
    assert not proof.exists()
    # a memo naming files outside its folder is damaged
    (folder / MEMO_FILE).write_bytes(memo.to_json().replace(version.file.encode(), b"../../outside.json"))
    with pytest.raises(MemoUnusable, match="not table files"):
        MemoStore(folder).load()


# ---- state store -----------------------------------------------------------------------------------
def test_state_store_numbers_confirmations_and_upgrades_an_old_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.sqlite"
    engine = make_engine(url)
    with engine.begin() as conn:  # the table as an earlier release created it (no seq column)
        conn.execute(
            text(
                "CREATE TABLE sync_state (target VARCHAR(20), entity VARCHAR(30), ref_id VARCHAR(60), "
                "payload_hash VARCHAR(64), status VARCHAR(12) NOT NULL, partner_internal_id VARCHAR(40), "
                "confirmed_at DATETIME NOT NULL, run_id VARCHAR(40), PRIMARY KEY (target, entity, ref_id))"
            )
        )
        conn.execute(
            text(
                "INSERT INTO sync_state VALUES ('portal','contacts','P1','h0','active',NULL,'2026-01-01',NULL)"
            )
        )
    store = StateStore(url, engine)
    assert store.current_seq() == 0 and store.count_state("portal") == 1
    first = store.confirm("portal", [Confirmation("contacts", "P2", "upsert", "h2")], "r1")
    second = store.confirm("portal", [Confirmation("units", "U1", "archive", None)], "r2")
    assert first == 1 and second == 2 and store.current_seq() == 2
    changed, seqs = store.changed_since("portal", 1)
    assert changed == {"units": {"U1"}} and seqs == {2}
    assert set(store.load_state_for("portal", "contacts", ["P1", "P2", "P9"])) == {"P1", "P2"}
    StateStore(url, engine)  # opening again changes nothing
    assert store.current_seq() == 2


def test_quarantine_refreshes_records_seen_again_in_one_statement(tmp_path: Path) -> None:
    store = StateStore(f"sqlite:///{tmp_path}/state.sqlite")
    items = [QuarantineItem("contacts", f"P{i}", "email_valid", "e-mail 'x' is invalid") for i in range(3)]
    assert store.quarantine("portal", items, "r1") == items  # all new
    store.resolve_quarantine("portal", [("contacts", "P0"), ("contacts", "P1")])  # P2 resolved
    again = [
        QuarantineItem("contacts", f"P{i}", "email_valid", f"e-mail 'y{i}' is invalid") for i in range(3)
    ]
    assert store.quarantine("portal", again, "r2") == [again[2]]  # only P2 was not open any more
    open_q = {q["ref_id"]: q for q in store.open_quarantine("portal")}
    assert sorted(open_q) == ["P0", "P1", "P2"]  # P2 is back in quarantine, no duplicate rows
    assert all(
        q["run_id"] == "r2" and q["reason"] == f"e-mail 'y{q['ref_id'][1]}' is invalid"
        for q in open_q.values()
    )
    assert all(q["last_seen"] >= q["first_seen"] for q in open_q.values())
    assert store.quarantine("portal", again, "r3") == []  # all still open


# ---- the flow --------------------------------------------------------------------------------------
@pytest.fixture
def world(sandbox: SandboxServer, tmp_path: Path) -> dict[str, Any]:
    erp_url, state_url = f"sqlite:///{tmp_path}/erp.sqlite", f"sqlite:///{tmp_path}/state.sqlite"
    engine = make_engine(erp_url)
    summary = demo.generate_erp(engine, persons=300, seed=21, business_date=BUSINESS_DATE)
    sandbox.reset()
    return {"engine": engine, "erp_url": erp_url, "state_url": state_url, "edge": summary.edge_cases}


def _sync(world: dict[str, Any], sandbox: SandboxServer, **env: str) -> dict[str, Any]:
    with portal_env(sandbox, world["erp_url"], world["state_url"], **env):
        return run_portal_sync(profile="test")


def _full_check(world: dict[str, Any], sandbox: SandboxServer, **env: str) -> dict[str, Any]:
    """A run with incremental runs switched off: it must find nothing left to do."""
    summary = _sync(world, sandbox, HAUSFLOW_PORTAL__INCREMENTAL="false", **env)
    assert summary["mode"] == "full"
    return summary


@pytest.mark.usefixtures("prefect_harness")
def test_incremental_runs_reach_exactly_the_full_runs_state(
    world: dict[str, Any], sandbox: SandboxServer
) -> None:
    first = _sync(world, sandbox)
    assert first["mode"] == "full" and first["confirmed"] > 0
    second = _sync(world, sandbox)
    assert second["mode"] == "incremental" and second["planned_writes"] == 0
    assert second["unchanged"] == first["confirmed"]  # every record created, now carried over unchanged
    assert second["quarantined"] == first["quarantined"] > 0  # held records stay held, with their reasons
    assert second["skipped"] == first["skipped"]

    changed = demo.mutate_erp(world["engine"], seed=5, fraction=0.05, business_date=BUSINESS_DATE)
    third = _sync(world, sandbox)
    assert third["mode"] == "incremental"
    assert 0 < third["confirmed"] <= len(changed) and third["failed"] == 0
    assert third["rebuilt"]["contacts"] < 60  # the changed persons and the quarantined ones, not 300
    assert _full_check(world, sandbox)["planned_writes"] == 0

    # the next business date: time-driven rules make it a full run
    later = (BUSINESS_DATE + timedelta(days=40)).isoformat()
    fourth = _sync(world, sandbox, HAUSFLOW_BUSINESS_DATE=later)
    assert fourth["mode"] == "full" and fourth["counts"].get("contacts.archived", 0) > 0
    fifth = _sync(world, sandbox, HAUSFLOW_BUSINESS_DATE=later)
    assert fifth["mode"] == "incremental" and fifth["planned_writes"] == 0


@pytest.mark.usefixtures("prefect_harness")
def test_changes_to_the_state_store_from_elsewhere_are_caught(
    world: dict[str, Any], sandbox: SandboxServer
) -> None:
    _sync(world, sandbox)
    store = StateStore(world["state_url"])
    contacts = sorted(store.load_state("portal", "contacts"))
    # another process confirms a different version of one contact: rebuilt and sent again
    store.confirm("portal", [Confirmation("contacts", contacts[0], "upsert", "0" * 64)], "elsewhere")
    run = _sync(world, sandbox)
    assert run["mode"] == "incremental" and run["confirmed"] == 1
    writes = {k: n for k, n in run["counts"].items() if not k.endswith((".skipped", ".quarantined"))}
    assert writes == {"contacts.updated": 1}
    # a record deleted from the store: the memo cannot follow, a full run re-creates it
    with store.engine.begin() as conn:
        conn.execute(
            text("DELETE FROM sync_state WHERE entity = 'contacts' AND ref_id = :r"), {"r": contacts[1]}
        )
    run = _sync(world, sandbox)
    assert run["mode"] == "full" and run["counts"].get("contacts.created") == 1
    # a lost or damaged memo costs one full run, nothing else; a pickle in its place is not unpickled
    folder = memo_folder(
        load_settings("test", erp_url=world["erp_url"], state_url=world["state_url"]), "portal"
    )
    proof = folder.parent / "unpickled"
    for payload in (b"damaged", pickle.dumps(_Planted(proof))):
        (folder / MEMO_FILE).write_bytes(payload)
        run = _sync(world, sandbox)
        assert run["mode"] == "full" and run["planned_writes"] == 0
        assert run["full_reason"].startswith(f"the memo in {folder} is damaged")
    assert not proof.exists()
    assert MemoStore(folder).load() is not None
    assert {f.stat().st_mode & 0o777 for f in folder.iterdir()} == {0o600}
    # a memo others could have written is refused, with the reason in the log, and written anew
    os.chmod(folder / MEMO_FILE, 0o664)
    run = _sync(world, sandbox)
    assert run["mode"] == "full" and run["planned_writes"] == 0
    assert any(
        "Full run: the memo file" in m and "can be written by group or others" in m
        for m in run_log(run["run_id"])
    )
    assert _sync(world, sandbox)["mode"] == "incremental"
    assert _full_check(world, sandbox)["planned_writes"] == 0


@pytest.mark.usefixtures("prefect_harness")
def test_quarantine_fixed_in_the_erp_is_sent_by_an_incremental_run(
    world: dict[str, Any], sandbox: SandboxServer
) -> None:
    _sync(world, sandbox)
    person_no = world["edge"]["no_last_name"][0]
    with world["engine"].begin() as conn:
        conn.execute(
            update(schema.persons).where(schema.persons.c.person_no == person_no).values(last_name="Neumann")
        )
    run = _sync(world, sandbox)
    assert run["mode"] == "incremental"
    assert run["counts"].get("contacts.created", 0) >= 1
    assert person_no in portal_view(sandbox)["contacts"]
    open_q = {q["ref_id"] for q in StateStore(world["state_url"]).open_quarantine("portal")}
    assert person_no not in open_q


@pytest.mark.usefixtures("prefect_harness")
def test_a_warm_process_compares_with_the_rows_it_kept(world: dict[str, Any], sandbox: SandboxServer) -> None:
    folder = memo_folder(
        load_settings("test", erp_url=world["erp_url"], state_url=world["state_url"]), "portal"
    )
    _sync(world, sandbox)
    assert _sync(world, sandbox)["mode"] == "incremental"  # keeps the rows it read in this process
    for path in folder.glob("*-*.json"):
        path.unlink()
    # unchanged tables are recognised by the kept rows (not digested again); the memo's missing
    # table files are written from them, so a process without kept rows can still follow
    assert _sync(world, sandbox)["mode"] == "incremental"
    MemoStore(folder).drop_warm()
    memos = MemoStore(folder)
    memo = memos.load()
    assert memo is not None and len(list(folder.glob("*-*.json"))) == len(memo.tables) == 7
    assert all(memos.links(table, version) for table, version in memo.tables.items())
    assert _sync(world, sandbox)["mode"] == "incremental"
    for path in folder.glob("persons-*.json"):
        path.unlink()  # the table file is not needed while the process holds the same rows
    changed = demo.mutate_erp(world["engine"], seed=7, fraction=0.05, business_date=BUSINESS_DATE)
    run = _sync(world, sandbox)
    assert run["mode"] == "incremental" and 0 < run["confirmed"] <= len(changed)
    assert _full_check(world, sandbox)["planned_writes"] == 0  # a full run drops the kept rows

    assert _sync(world, sandbox)["mode"] == "incremental"
    MemoStore(folder).drop_warm()  # as in a new process: the file is the only source
    for path in folder.glob("persons-*.json"):
        path.unlink()
    _after_a_change_the_run_is_full_for_want_of_person_links(world, sandbox, 8, "is missing")


def _after_a_change_the_run_is_full_for_want_of_person_links(
    world: dict[str, Any], sandbox: SandboxServer, seed: int, why: str
) -> None:
    demo.mutate_erp(world["engine"], seed=seed, fraction=0.05, business_date=BUSINESS_DATE)
    run = _sync(world, sandbox)
    assert run["mode"] == "full" and run["full_reason"].startswith(f"the memo's file of persons {why}")
    assert _full_check(world, sandbox)["planned_writes"] == 0


@pytest.mark.usefixtures("prefect_harness")
def test_a_changed_table_gets_a_new_file_that_a_new_process_can_read(
    world: dict[str, Any], sandbox: SandboxServer
) -> None:
    folder = memo_folder(
        load_settings("test", erp_url=world["erp_url"], state_url=world["state_url"]), "portal"
    )
    _sync(world, sandbox)
    _sync(world, sandbox)  # incremental: keeps the rows in this process
    files = {p.name for p in folder.glob("*-*.json")}
    changed = demo.mutate_erp(world["engine"], seed=31, fraction=0.03, business_date=BUSINESS_DATE)
    run = _sync(world, sandbox)  # compares with the kept rows, by position
    assert run["mode"] == "incremental" and 0 < run["confirmed"] <= len(changed)
    memo = MemoStore(folder).load()
    assert memo is not None
    persons = memo.tables["persons"].file
    assert {p.name for p in folder.glob("*-*.json")} == files - {
        p for p in files if p.startswith("persons-")
    } | {persons}  # only the persons' file is new

    MemoStore(folder).drop_warm()  # a new process: compares digests with the file
    changed = demo.mutate_erp(world["engine"], seed=32, fraction=0.03, business_date=BUSINESS_DATE)
    run = _sync(world, sandbox)
    assert run["mode"] == "incremental" and 0 < run["confirmed"] <= len(changed)
    assert run["rebuilt"]["contacts"] < 60
    assert _full_check(world, sandbox)["planned_writes"] == 0

    # a damaged table file, and no rows kept in the process: the memo cannot vouch, a full run follows
    assert _sync(world, sandbox)["mode"] == "incremental"
    (persons_file,) = folder.glob("persons-*.json")
    persons_file.write_bytes(persons_file.read_bytes()[:-3])
    MemoStore(folder).drop_warm()
    _after_a_change_the_run_is_full_for_want_of_person_links(world, sandbox, 38, "is damaged")


@pytest.mark.usefixtures("prefect_harness")
def test_the_memo_keeps_no_personal_data(world: dict[str, Any], sandbox: SandboxServer) -> None:
    """No last name, e-mail or skip reason, nor those of a person anonymised since, in any file of
    ``cache_dir`` after full and incremental runs."""
    p = schema.persons
    engine = world["engine"]

    def personal_values() -> set[str]:
        with engine.connect() as conn:
            found = conn.execute(select(p.c.last_name, p.c.email, p.c.first_name)).all()
        return {v for row in found for v in row if v and len(v) >= 3}

    folder = memo_folder(
        load_settings("test", erp_url=world["erp_url"], state_url=world["state_url"]), "portal"
    )
    seen = personal_values()
    first = _sync(world, sandbox)
    second = _sync(world, sandbox)
    assert (first["mode"], second["mode"]) == ("full", "incremental")
    store = StateStore(world["state_url"])
    skips = store.protocol_rows(first["run_id"], ["skipped"], limit=10_000)
    assert skips and store.protocol_rows(second["run_id"], ["skipped"], limit=10_000) == skips
    person_no = sorted(set(portal_view(sandbox)["contacts"]) - set(world["edge"]["anonymised"]))[0]
    person = _one_row(engine, p, p.c.person_no == person_no)
    assert person["last_name"] and person["email"]
    demo.anonymise_person(engine, person_no)
    demo.mutate_erp(engine, seed=41, fraction=0.05, business_date=BUSINESS_DATE)
    third = _sync(world, sandbox)
    assert third["mode"] == "incremental" and third["counts"].get("contacts.anonymised") == 1
    assert person["last_name"] not in personal_values()
    seen |= personal_values()
    blobs = [f.read_bytes() for f in folder.parent.rglob("*") if f.is_file()]
    assert any(f.parent == folder for f in folder.parent.rglob("*"))
    for value in sorted(
        seen | {person["last_name"], person["email"]} | {s.reason for s in skips if s.reason}
    ):
        assert not any(value.encode() in blob for blob in blobs), value


@pytest.mark.usefixtures("prefect_harness")
def test_the_log_names_newly_quarantined_records_and_counts_the_ones_still_held(
    world: dict[str, Any], sandbox: SandboxServer
) -> None:
    def warned(run: dict[str, Any]) -> tuple[set[str], list[str]]:
        log = run_log(run["run_id"])
        named = {m.split()[2].rstrip(":") for m in log if m.startswith("Quarantined ")}
        return named, [m for m in log if "stay in quarantine from earlier runs" in m]

    first = _sync(world, sandbox)
    named, still = warned(first)
    assert first["quarantined"] > 0 and len(named) == min(first["quarantined"], 20) and not still
    second = _sync(world, sandbox)
    named, still = warned(second)
    assert not named and len(still) == 1 and still[0].startswith(f"{second['quarantined']} records stay")
    person_no = sorted(set(portal_view(sandbox)["contacts"]) - set(world["edge"]["anonymised"]))[0]
    with world["engine"].begin() as conn:
        conn.execute(
            update(schema.persons).where(schema.persons.c.person_no == person_no).values(email="no-at-sign")
        )
    held_before = _held_records(world)
    nameless = world["edge"]["no_last_name"][0]  # held already; breaking another rule makes it news
    assert ("contacts", nameless) in held_before
    with world["engine"].begin() as conn:
        conn.execute(
            update(schema.persons).where(schema.persons.c.person_no == nameless).values(email="no-at-sign")
        )
    third = _sync(world, sandbox)
    named, still = warned(third)
    assert named == {person_no, nameless}
    assert still[0].startswith(f"{len(held_before - {('contacts', nameless)})} records stay")


def _held_records(world: dict[str, Any]) -> set[tuple[str, str]]:
    return {(q["entity"], q["ref_id"]) for q in StateStore(world["state_url"]).open_quarantine("portal")}


@pytest.mark.usefixtures("prefect_harness")
def test_unfixed_quarantine_is_not_checked_again_but_a_changed_record_is(
    world: dict[str, Any], sandbox: SandboxServer
) -> None:
    import json
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    first = _sync(world, sandbox)
    assert first["quarantined"] > 0
    script = (
        "import json, sys\n"
        "from flows.portal_sync import run_portal_sync\n"
        "r = run_portal_sync(profile='test')\n"
        "print('RESULT', json.dumps({'gx': 'great_expectations' in sys.modules, 'mode': r['mode'],"
        " 'quarantined': r['quarantined'], 'writes': r['planned_writes']}))\n"
    )
    with portal_env(sandbox, world["erp_url"], world["state_url"]):
        child = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=Path(__file__).resolve().parent.parent,
            env=child,
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    # a new process keeps the records nobody fixed in quarantine without loading the suites
    assert json.loads(line.removeprefix("RESULT ")) == {
        "gx": False,
        "mode": "incremental",
        "quarantined": first["quarantined"],
        "writes": 0,
    }
    # a quarantined record that changed is checked again: still invalid, with the new value
    person_no = world["edge"]["invalid_email"][0]
    with world["engine"].begin() as conn:
        conn.execute(
            update(schema.persons).where(schema.persons.c.person_no == person_no).values(email="neu@kaputt")
        )
    run = _sync(world, sandbox)
    assert run["mode"] == "incremental" and run["quarantined"] == first["quarantined"]
    reasons = [
        q["reason"]
        for q in StateStore(world["state_url"]).open_quarantine("portal")
        if q["ref_id"] == person_no
    ]
    assert reasons and all("neu@kaputt" in r for r in reasons)
    assert _full_check(world, sandbox)["quarantined"] == first["quarantined"]
