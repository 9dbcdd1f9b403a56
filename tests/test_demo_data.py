"""Demo ERP generator: determinism, proportions, planted edge cases, integrity, dialects, edits."""

from __future__ import annotations

import hashlib
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from schwifty import IBAN
from sqlalchemy import Engine, select, text

from connectors.erp import schema as s
from connectors.erp.__main__ import main as cli_main
from connectors.erp.database import make_engine
from connectors.erp.demo import (
    DEFAULT_BUSINESS_DATE,
    DEPOSIT_EDGE_OBJECTS,
    DEPOSIT_GROUP,
    EDGE_CASE_KEYS,
    INVALID_EMAILS,
    MIN_PERSONS,
    OVERSIZED_DOCUMENT_BYTES,
    DemoSummary,
    anonymise_person,
    generate_erp,
    move_out,
    mutate_erp,
    remove_co_resident,
    table_rows,
)
from connectors.erp.extract import document_path

PERSONS = 300
TODAY = DEFAULT_BUSINESS_DATE
ENABLED = {"MIETER", "EIGENTUEMER", "MITBEWOHNER"}


@dataclass
class Demo:
    """One generated demo database with its summary."""

    engine: Engine
    summary: DemoSummary


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """A 300-person demo ERP on SQLite, generated once for the module."""
    path = tmp_path_factory.mktemp("demo") / "erp.sqlite"
    engine = make_engine(f"sqlite:///{path}")
    return Demo(engine, generate_erp(engine, persons=PERSONS, seed=42))


def _fresh(sqlite_url: Callable[[str], str], name: str, persons: int = PERSONS, seed: int = 42) -> Demo:
    engine = make_engine(sqlite_url(name))
    return Demo(engine, generate_erp(engine, persons=persons, seed=seed))


def _rows(engine: Engine, table: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(table))]


class World:
    """The demo ERP as plain dicts, with the portal's notions (released, active) spelled out."""

    def __init__(self, engine: Engine) -> None:
        self.persons = {r["person_no"]: r for r in _rows(engine, s.persons)}
        self.objects = {r["object_no"]: r for r in _rows(engine, s.objects)}
        self.units = {r["unit_no"]: r for r in _rows(engine, s.units)}
        self.contracts = {r["contract_no"]: r for r in _rows(engine, s.contracts)}
        self.partners = _rows(engine, s.contract_partners)
        self.groups = _rows(engine, s.object_groups)
        self.caretakers = _rows(engine, s.caretaker_assignments)
        self.mandates = _rows(engine, s.sepa_mandates)
        self.claims = {r["claim_no"]: r for r in _rows(engine, s.claims)}
        self.released = {g["object_no"] for g in self.groups if g["group_name"] == "CASAVI"}

    def object_of(self, contract: dict[str, Any]) -> str:
        return str(self.units[contract["unit_no"]]["object_no"])

    @staticmethod
    def state(contract: dict[str, Any]) -> str:
        if contract["start_date"] > TODAY:
            return "future"
        if contract["move_out_date"] is not None and contract["move_out_date"] < TODAY:
            return "ended"
        return "active"

    def lead_contracts(self, person_no: str) -> list[dict[str, Any]]:
        return [c for c in self.contracts.values() if c["person_no"] == person_no]

    def active_released(self, person_no: str) -> list[dict[str, Any]]:
        return [
            c
            for c in self.lead_contracts(person_no)
            if self.state(c) == "active" and self.object_of(c) in self.released
        ]


@pytest.fixture(scope="module")
def world(demo: Demo) -> World:
    """The module's demo database loaded into plain dicts."""
    return World(demo.engine)


def test_same_seed_same_rows_other_seed_other_rows(sqlite_url: Callable[[str], str]) -> None:
    a = _fresh(sqlite_url, "a")
    b = _fresh(sqlite_url, "b")
    c = _fresh(sqlite_url, "c", seed=43)
    rows_a = table_rows(a.engine)
    assert rows_a == table_rows(b.engine)
    assert a.summary == b.summary
    rows_c = table_rows(c.engine)
    assert rows_a["persons"] != rows_c["persons"]
    assert rows_a["claims"] != rows_c["claims"]


def test_counts_and_proportions(demo: Demo, world: World) -> None:
    counts = demo.summary.counts
    assert counts["persons"] == PERSONS == len(world.persons)
    assert set(counts) == {t.name for t in s.metadata.sorted_tables}
    assert all(n > 0 for n in counts.values()), counts
    # the deposit precondition objects are small and outside the portal group: not counted here
    ordinary = {no: o for no, o in world.objects.items() if no not in DEPOSIT_EDGE_OBJECTS}
    n_objects = len(ordinary)
    assert 0.5 <= len(world.released) / n_objects < 1.0
    assert any(g["group_name"] == DEPOSIT_GROUP for g in world.groups)
    per_object = Counter(u["object_no"] for u in world.units.values() if u["object_no"] in ordinary)
    assert all(10 <= n <= 60 for n in per_object.values()), per_object
    types = Counter(u["unit_type"] for u in world.units.values())
    assert types["WOHNUNG"] / len(world.units) > 0.6
    assert types["GARAGE"] + types["STELLPLATZ"] > 0
    active_units = {c["unit_no"] for c in world.contracts.values() if world.state(c) == "active"}
    assert len(active_units) / len(world.units) > 0.75
    assert 0.08 <= len({p["contract_no"] for p in world.partners}) / len(world.contracts) <= 0.25
    assert {r["role"] for r in world.partners} == {"MITBEWOHNER", "VERTRAGSPARTNER"}
    owner_counts = Counter(o["owner_person_no"] for o in ordinary.values())
    assert all(world.persons[o]["person_type"] == "EIGENTUEMER" for o in owner_counts)
    care_objects = {c["object_no"] for c in world.caretakers}
    assert 0.2 <= len(care_objects) / n_objects <= 0.9
    assert {world.persons[c["person_no"]]["person_type"] for c in world.caretakers} == {"HAUSMEISTER"}
    assert counts["teams"] == 5


def test_catalogs_documents_messages_deposits(demo: Demo) -> None:
    e = demo.engine
    doc_types = {r["code"]: r for r in _rows(e, s.document_types)}
    assert {"MIETVERTRAG", "NKABR", "HAUSORDNUNG", "RECHNUNG"} <= set(doc_types)
    assert set(doc_types["MIETVERTRAG"]) == {"code", "name"}  # released: a setting, no column
    docs = _rows(e, s.documents)
    assert 0.8 <= len(docs) / demo.summary.counts["contracts"] <= 1.6
    assert any(d["size_bytes"] > 100 * 1024 * 1024 for d in docs)
    assert {b["booking_type"] for b in _rows(e, s.deposit_bookings)} == set(s.DEPOSIT_BOOKING_TYPES)
    accounts = _rows(e, s.deposit_accounts)
    deposit_objects = {g["object_no"] for g in _rows(e, s.object_groups) if g["group_name"] == DEPOSIT_GROUP}
    units = {u["unit_no"]: u["object_no"] for u in _rows(e, s.units)}
    contracts = {c["contract_no"]: c for c in _rows(e, s.contracts)}
    assert all(units[contracts[a["contract_no"]]["unit_no"]] in deposit_objects for a in accounts)


def test_message_types_messages_notes_orders(demo: Demo) -> None:
    e = demo.engine
    types = {r["code"]: r["portal_mode"] for r in _rows(e, s.message_types)}
    assert set(types.values()) == set(s.PORTAL_MODES)
    assert types["SCHADEN"] == types["HEIZUNG"] == "EINZELMELDUNG" and types["INTERN"] == "SPERRE"
    assert types["HAUSMITTEILUNG"] == "PINNWAND" and types["OBJEKT"] == "OBJEKTMELDUNG"
    messages = _rows(e, s.messages)
    combos = {(m["message_type"], m["status"]) for m in messages}
    assert combos == {(t, st) for t in types for st in s.MESSAGE_STATUSES}  # every type in every status
    assert any(m["team_id"] is None for m in messages) and any(m["team_id"] is not None for m in messages)
    cut_off = datetime(TODAY.year - 1, 1, 1, tzinfo=UTC)  # message_years_back = 1
    created = [m["created_at"].replace(tzinfo=UTC) for m in messages]
    assert any(c < cut_off for c in created) and any(c >= cut_off for c in created)
    for m in messages:
        assert m["portal_ticket_id"] is None and m["portal_status"] is None  # hausflow writes those
        assert m["entered_by"] and len(m["entered_by"]) == 3 and m["entered_by"].isdigit()
        if types[m["message_type"]] == "EINZELMELDUNG":
            assert m["person_no"] is not None, m
    notes = _rows(e, s.notes)
    assert {n["internal"] for n in notes} == {True, False}
    assert all(n["portal_comment_id"] is None and n["text"] for n in notes)
    orders = _rows(e, s.orders)
    by_id = {m["message_id"]: m for m in messages}
    assert orders and all(o["creditor_name"] for o in orders)
    for o in orders:
        message = by_id[o["message_id"]]
        assert types[message["message_type"]] in ("EINZELMELDUNG", "OBJEKTMELDUNG")
        assert message["status"] != "STORNIERT" and o["order_date"] <= TODAY


def _assert_pdf_structure(data: bytes) -> None:
    """Every cross-reference entry points at its object, ``startxref`` at the table, one page."""
    xref_at = int(data[data.rindex(b"startxref") + 9 :].split()[0])
    assert data[xref_at:].startswith(b"xref")
    lines = data[xref_at:].split(b"\n")
    first, count = map(int, lines[1].split())
    for number, line in enumerate(lines[2 + 1 : 2 + count], start=first + 1):
        offset = int(line.split()[0])
        assert data[offset:].startswith(b"%d 0 obj" % number), (number, offset)
    assert data.count(b"/Type /Page ") == 1 and data.rstrip().endswith(b"%%EOF")


def _magic(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(8)


def test_documents_are_real_files_beside_the_erp(demo: Demo) -> None:
    root = demo.summary.document_root
    assert root is not None and root == Path(str(demo.engine.url.database)).parent
    docs = _rows(demo.engine, s.documents)
    extensions = Counter(d["content_path"].rsplit(".", 1)[1] for d in docs)
    assert set(extensions) == {"pdf", "docx", "odt"} and extensions["pdf"] > extensions["docx"]
    hashes = set()
    for d in docs:
        path = document_path(root, d["content_path"])
        assert d["content_path"].startswith("documents/") and d["file_name"].endswith(path.suffix)
        assert path.stat().st_size == d["size_bytes"], d
        head = _magic(path)
        if path.suffix == ".pdf":
            assert head.startswith(b"%PDF-")
            data = path.read_bytes()[:4096]
            assert b"Nr. %07d" % d["document_id"] in data  # each PDF its own bytes
            if d["size_bytes"] < 4096:
                _assert_pdf_structure(data)
            hashes.add(hashlib.sha256(data).hexdigest())
        else:  # Word and OpenDocument files are ZIP containers of their kind
            assert head.startswith(b"PK\x03\x04")
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
                if path.suffix == ".docx":
                    assert "word/document.xml" in names
                else:
                    assert z.read("mimetype") == b"application/vnd.oasis.opendocument.text"
    assert len(hashes) == extensions["pdf"]
    (big,) = [d for d in docs if d["size_bytes"] > 100 * 1024 * 1024]
    assert big["size_bytes"] == OVERSIZED_DOCUMENT_BYTES
    big_path = document_path(root, big["content_path"])
    assert big_path.stat().st_size == OVERSIZED_DOCUMENT_BYTES and _magic(big_path).startswith(b"%PDF-")
    assert big_path.stat().st_blocks * 512 < 1024 * 1024  # sparse: the size without the disk


def test_dms_documents_with_and_without_their_recipient(demo: Demo, world: World) -> None:
    docs = _rows(demo.engine, s.documents)
    assert {d["source"] for d in docs} == {"ERP", "DMS"}
    dms = [d for d in docs if d["source"] == "DMS"]
    complete = [d for d in dms if d["recipient_type"] and d["recipient_id"] and d["object_no"]]
    assert {d["recipient_type"] for d in complete} == {"P", "K"}
    assert all(d["recipient_id"] in world.persons for d in complete if d["recipient_type"] == "P")
    assert any(d["recipient_type"] is None and d["recipient_id"] for d in dms)
    assert any(d["recipient_id"] is None and d["recipient_type"] for d in dms)
    assert any(d["object_no"] is None for d in dms)
    assert all(
        d["recipient_type"] is None and d["recipient_id"] is None for d in docs if d["source"] == "ERP"
    )


def test_payment_types_mandates_claims(demo: Demo, world: World) -> None:
    payment = {r["code"]: r for r in _rows(demo.engine, s.payment_types)}
    assert payment["LS"]["auto_debit"] and payment["LS"]["remittance_line1"] == "Hausverwaltung Muster"
    assert not payment["UEB"]["auto_debit"]
    assert {m["mandate_type"] for m in world.mandates} == {"RECURRENT", "SINGLE"}
    assert any(m["first_collection_on"] is None for m in world.mandates if m["mandate_type"] == "RECURRENT")
    statuses = Counter(c["status"] for c in world.claims.values())
    assert statuses["OPEN"] > 0 and statuses["PAID"] > 0
    for claim in world.claims.values():
        lines = claim["booking_text"].split("\n")
        assert 1 <= len(lines) <= 3
        assert any(ch in claim["booking_text"] for ch in "äöüÄÖÜß"), claim["booking_text"]
        assert claim["amount"] > 0 and claim["amount"].as_tuple().exponent == -2
    budget = [p for p in world.persons.values() if (p["elv_release_amount"] or 0) > 0]
    assert budget and all(p["payment_type_code"] != "LS" for p in budget)


def test_german_realistic_master_data(world: World) -> None:
    people = [p for p in world.persons.values() if not p["anonymised"]]
    assert {p["salutation"] for p in people} >= {"Herr", "Frau", "Firma"}
    assert all(p["postal_code"] and len(p["postal_code"]) == 5 and p["postal_code"].isdigit() for p in people)
    assert all(o["name"].split()[-1].isdigit() for o in world.objects.values())
    assert any("ß" in o["name"] or "ü" in o["name"] or "ö" in o["name"] for o in world.objects.values())
    for p in people:
        assert p["country"] == "DE"
        assert p["modified_at"] is not None and p["modified_at"].replace(tzinfo=UTC) <= datetime(
            TODAY.year, TODAY.month, TODAY.day, tzinfo=UTC
        )


def test_every_edge_case_is_present(demo: Demo) -> None:
    assert set(demo.summary.edge_cases) == set(EDGE_CASE_KEYS)
    empty = [k for k, v in demo.summary.edge_cases.items() if not v]
    assert not empty, f"edge cases without examples: {empty}"


def test_edge_cases_have_their_property(demo: Demo, world: World) -> None:
    edge = demo.summary.edge_cases
    w = world
    for no in edge["no_last_name"]:
        p = w.persons[no]
        assert not p["last_name"] and not p["company_name"] and w.active_released(no)
    for no in edge["invalid_email"]:
        assert w.persons[no]["email"] in INVALID_EMAILS and w.active_released(no)
    for no in edge["not_enabled_type"]:
        assert w.persons[no]["person_type"] not in ENABLED and w.active_released(no)
    for no in edge["anonymised"]:
        assert w.persons[no]["anonymised"] and w.persons[no]["email"] is None
        assert any(w.state(c) == "ended" and w.object_of(c) in w.released for c in w.lead_contracts(no))
    for no in edge["two_contracts"]:
        assert len(w.active_released(no)) >= 2
    for key, low, high in (
        ("future_start_within_access", 1, 14),
        ("future_start_beyond_access", 15, 10_000),
    ):
        for no in edge[key]:
            (c,) = w.lead_contracts(no)
            assert w.object_of(c) in w.released and low <= (c["start_date"] - TODAY).days <= high
    for key, low, high in (("moved_out_within_grace", 1, 29), ("moved_out_beyond_grace", 31, 10_000)):
        for no in edge[key]:
            (c,) = w.lead_contracts(no)
            assert w.object_of(c) in w.released and low <= (TODAY - c["move_out_date"]).days <= high
    for no in edge["co_residents"]:
        assert not w.lead_contracts(no)
        on = [w.contracts[p["contract_no"]] for p in w.partners if p["person_no"] == no]
        assert any(w.state(c) == "active" and w.object_of(c) in w.released for c in on)
    for no in edge["unreleased_object_tenants"]:
        contracts = w.lead_contracts(no)
        assert any(w.state(c) == "active" for c in contracts)
        assert all(w.object_of(c) not in w.released for c in contracts)
    released_owners = {w.objects[o]["owner_person_no"] for o in w.released}
    assert set(edge["owners"]) == released_owners
    assert all(w.persons[no]["person_type"] == "EIGENTUEMER" for no in edge["owners"])
    assert set(edge["caretakers"]) == {c["person_no"] for c in w.caretakers if c["object_no"] in w.released}
    for no in edge["company_tenant"]:
        p = w.persons[no]
        assert p["company_name"] and not p["first_name"] and not p["last_name"] and w.active_released(no)


def test_sepa_edge_cases_have_their_property(demo: Demo, world: World) -> None:
    edge = demo.summary.edge_cases
    recurrent = {m["person_no"]: m for m in world.mandates if m["mandate_type"] == "RECURRENT"}
    for no in edge["invalid_iban"]:
        assert not IBAN(recurrent[no]["iban"], allow_invalid=True).is_valid
    for no in edge["lapsed_mandate"]:
        m = recurrent[no]
        assert m["revoked_on"] is None and m["last_collection_on"] < TODAY - timedelta(days=36 * 31)
    for no in edge["revoked_mandate"]:
        assert recurrent[no]["revoked_on"] is not None and recurrent[no]["revoked_on"] <= TODAY
    for no in edge["changed_account_mandate"]:
        m = recurrent[no]
        assert m["original_iban"] and m["original_iban"] != m["iban"]
    single = {m["mandate_id"]: m for m in world.mandates if m["mandate_type"] == "SINGLE"}
    for claim_no in edge["single_mandate_claims"]:
        claim = world.claims[claim_no]
        assert claim["single_mandate_id"] in single
        assert single[claim["single_mandate_id"]]["person_no"] == claim["person_no"]
    for no in edge["budget_persons"]:
        p = world.persons[no]
        assert p["elv_release_amount"] > 0 and p["payment_type_code"] in ("UEB", "DA")


def test_ibans_valid_except_the_planted_ones(demo: Demo, world: World) -> None:
    invalid = set(demo.summary.edge_cases["invalid_iban"])
    for m in world.mandates:
        valid = IBAN(m["iban"], allow_invalid=True).is_valid
        assert valid == (m["person_no"] not in invalid or m["mandate_type"] == "SINGLE"), m
        assert m["bic"] and len(m["bic"]) in (8, 11)
        if m["original_iban"]:
            assert IBAN(m["original_iban"]).is_valid
    trust = [o["trust_account_iban"] for o in world.objects.values() if o["trust_account_iban"]]
    assert trust and all(IBAN(i).is_valid for i in trust)


def test_referential_integrity(demo: Demo, world: World) -> None:
    with demo.engine.connect() as conn:
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA foreign_key_check")).fetchall() == []
    assert all(c["unit_no"] in world.units for c in world.contracts.values())
    assert all(c["person_no"] in world.persons for c in world.contracts.values())
    assert all(u["object_no"] in world.objects for u in world.units.values())
    for c in world.contracts.values():
        assert c["move_out_date"] is None or c["move_out_date"] >= c["start_date"]


def test_mutate_is_deterministic(sqlite_url: Callable[[str], str]) -> None:
    a = _fresh(sqlite_url, "ma")
    b = _fresh(sqlite_url, "mb")
    before = {r["person_no"]: r for r in _rows(a.engine, s.persons)}
    changed_a = mutate_erp(a.engine, seed=7, fraction=0.02)
    changed_b = mutate_erp(b.engine, seed=7, fraction=0.02)
    assert changed_a == changed_b == sorted(changed_a)
    assert len(changed_a) == round(PERSONS * 0.02)
    assert table_rows(a.engine, [s.persons]) == table_rows(b.engine, [s.persons])
    after = {r["person_no"]: r for r in _rows(a.engine, s.persons)}
    newest_before = max(r["modified_at"] for r in before.values())
    for no in changed_a:
        assert after[no]["modified_at"] > newest_before
        fields = ("phone", "email", "city")
        assert any(after[no][f] != before[no][f] for f in fields)
    assert all(after[no] == before[no] for no in before if no not in changed_a)
    assert mutate_erp(a.engine, seed=8, fraction=0.02) != changed_a


def test_edit_helpers(sqlite_url: Callable[[str], str]) -> None:
    d = _fresh(sqlite_url, "edit")
    w = World(d.engine)
    tenant = d.summary.edge_cases["invalid_email"][0]
    (contract,) = w.active_released(tenant)
    move_out(d.engine, contract["contract_no"], TODAY - timedelta(days=3))
    partner = w.partners[0]
    remove_co_resident(d.engine, partner["contract_no"], partner["person_no"])
    anonymise_person(d.engine, tenant)
    w2 = World(d.engine)
    assert w2.contracts[contract["contract_no"]]["move_out_date"] == TODAY - timedelta(days=3)
    assert w2.contracts[contract["contract_no"]]["modified_at"] > contract["modified_at"]
    assert partner not in w2.partners
    assert w2.persons[tenant]["anonymised"] and w2.persons[tenant]["email"] is None
    with pytest.raises(LookupError):
        move_out(d.engine, "nope", TODAY)
    with pytest.raises(LookupError):
        remove_co_resident(d.engine, partner["contract_no"], partner["person_no"])
    with pytest.raises(LookupError):
        anonymise_person(d.engine, "nope")


def test_refuses_filled_database_unless_reset(demo: Demo, sqlite_url: Callable[[str], str]) -> None:
    d = _fresh(sqlite_url, "again", persons=120)
    with pytest.raises(ValueError, match="reset=True"):
        generate_erp(d.engine, persons=120)
    summary = generate_erp(d.engine, persons=120, seed=42, reset=True)
    assert summary == d.summary
    with pytest.raises(ValueError, match="at least"):
        generate_erp(d.engine, persons=MIN_PERSONS - 1, reset=True)


@pytest.mark.parametrize(("persons", "seed"), [(100, 1), (100, 2), (200, 3), (200, 4)])
def test_small_sizes_keep_every_edge_case(sqlite_url: Callable[[str], str], persons: int, seed: int) -> None:
    d = _fresh(sqlite_url, f"small{persons}_{seed}", persons=persons, seed=seed)
    assert persons <= d.summary.counts["persons"] <= persons * 1.1
    assert all(d.summary.edge_cases[k] for k in EDGE_CASE_KEYS), d.summary.edge_cases


def test_cli_seed(sqlite_url: Callable[[str], str], capsys: pytest.CaptureFixture[str]) -> None:
    url = sqlite_url("cli")
    assert cli_main(["seed", "--url", url, "--persons", "100", "--seed", "3"]) == 0
    assert cli_main(["seed", "--url", url, "--persons", "100"]) == 2
    assert cli_main(["seed", "--url", url, "--persons", "100", "--reset"]) == 0
    assert cli_main(["mutate", "--url", url, "--fraction", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "persons" in out and "changed 5 persons" in out


@pytest.mark.postgres
def test_postgres_gets_the_same_data(pg_database: Callable[[], str], demo: Demo, tmp_path: Path) -> None:
    engine = make_engine(pg_database())
    try:
        summary = generate_erp(engine, persons=PERSONS, seed=42, document_dir=tmp_path)
        assert summary.document_root == tmp_path
        assert len(list(tmp_path.rglob("*.*"))) == summary.counts["documents"]
        assert summary == demo.summary
        pg_rows = table_rows(engine)
        lite_rows = table_rows(demo.engine)

        def norm(value: Any) -> Any:
            if isinstance(value, datetime) and value.tzinfo is None:
                return value.replace(tzinfo=UTC)
            if isinstance(value, datetime):
                return value.astimezone(UTC)
            return value

        for name, rows in lite_rows.items():
            assert [tuple(map(norm, r)) for r in pg_rows[name]] == [tuple(map(norm, r)) for r in rows], name
        changed = mutate_erp(engine, seed=1)
        assert len(changed) == 3
    finally:
        engine.dispose()


def test_business_date_drives_all_dates(sqlite_url: Callable[[str], str]) -> None:
    engine = make_engine(sqlite_url("date"))
    day = date(2031, 2, 3)
    summary = generate_erp(engine, persons=120, seed=5, business_date=day)
    assert summary.business_date == day
    newest = max(r["modified_at"] for r in _rows(engine, s.persons))
    assert newest.replace(tzinfo=UTC) <= datetime(2031, 2, 3, tzinfo=UTC)
    assert newest.replace(tzinfo=UTC) > datetime(2029, 1, 1, tzinfo=UTC)
