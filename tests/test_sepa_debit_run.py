"""The debit run end to end on a small explicit ERP: listing, file, ledger, ERP status, never twice."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from lxml import etree

from connectors.sepa.errors import SepaLedgerConflict, SepaRunLocked
from connectors.sepa.ledger import SepaLedger
from connectors.sepa.pain008 import scan_pain008
from connectors.sepa.schemas import NAMESPACES
from connectors.state_store import StateStore
from tests.sepa_support import (
    EXPECTED,
    MSG_ID,
    Scenario,
    claim,
    claim_states,
    debit_run,
    make_scenario,
    sepa_env,
)

NS = {"p": NAMESPACES["pain.008"]}
DEBITED = {c for c, (outcome, _) in EXPECTED.items() if outcome == "debit"}


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    s = make_scenario(tmp_path)
    with sepa_env(s.erp_url, s.state_url, str(s.output_dir)):
        yield s


def _listing(path: Path) -> dict[str, dict[str, str]]:
    with open(path, encoding="utf-8") as fh:
        return {row["claim_no"]: row for row in csv.DictReader(fh, delimiter=";")}


def _tx(tree: etree._ElementTree, e2e: str) -> etree._Element:
    found = tree.xpath("//p:DrctDbtTxInf[p:PmtId/p:EndToEndId=$e]", namespaces=NS, e=e2e)
    assert isinstance(found, list) and len(found) == 1
    return found[0]  # type: ignore[return-value]


def _xml_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.xml"))


def test_dry_run_shows_everyone_and_changes_nothing(scenario: Scenario) -> None:
    _run, plan, files = debit_run(dry_run=True)
    assert files == [] and _xml_files(scenario.output_dir) == []
    listing = _listing(plan.listing_path)
    for claim_no, (outcome, detail) in EXPECTED.items():
        assert listing[claim_no]["outcome"] == outcome, claim_no
        if outcome == "debit":
            assert listing[claim_no]["sequence_type"] == detail
        else:
            assert listing[claim_no]["rule"] == detail
    # not selected at all: transfer payer without budget, paid claim, claim not yet due
    assert {"C1101", "C1201", "C1202"}.isdisjoint(listing)
    assert plan.counts == {"debit": 6, "quarantine": 5, "skip": 1}
    assert plan.debit_sum_cents == 191549
    assert SepaLedger(scenario.state_url).files() == []
    assert StateStore(scenario.state_url).open_quarantine("sepa") == []  # a dry run records nothing
    assert all(
        status == "OPEN" for c, (status, _, _) in claim_states(scenario.erp_url).items() if c != "C1201"
    )


def test_listing_carries_amount_mandate_end_to_end_id_and_warnings(scenario: Scenario) -> None:
    _run, plan, _files = debit_run(dry_run=True)
    listing = _listing(plan.listing_path)
    row = listing["C1002"]
    assert (
        row["amount"] == "45.50"
        and row["mandate_id"] == "M-P001"
        and row["end_to_end_id"] == "O200-P001/C1002"
    )
    assert "remittance shortened" in row["warnings"] and "'November'" in row["warnings"]
    assert listing["C1010"]["amendment"] == "SMNDA"
    assert "C5001" in listing["C5001"]["warnings"] and "P005" in listing["C5001"]["warnings"]


def test_run_writes_a_valid_file_records_ledger_and_sets_in_collection(scenario: Scenario) -> None:
    run, _plan, files = debit_run()
    assert [f["msg_id"] for f in files] == [MSG_ID]
    path = Path(files[0]["path"])
    assert _xml_files(scenario.output_dir) == [path]
    assert not list(scenario.output_dir.glob("*.part")) and not run.work_dir.exists()
    totals = scan_pain008(path, collect_ids=True)  # XSD GBIC_5 + re-count
    assert totals.problems() == []
    assert totals.header_nb_of_txs == 6 and totals.header_ctrl_sum == Decimal("1915.49")
    assert len(set(totals.end_to_end_ids)) == 6
    tree = etree.parse(str(path))
    blocks = tree.findall(".//p:PmtInf", NS)
    assert [b.findtext("p:PmtTpInf/p:SeqTp", namespaces=NS) for b in blocks] == ["FRST", "OOFF", "RCUR"]
    assert {b.findtext("p:ReqdColltnDt", namespaces=NS) for b in blocks} == {"2026-03-04"}
    assert {b.findtext("p:BtchBookg", namespaces=NS) for b in blocks} == {"true"}  # stored default
    amended = _tx(tree, "O100-P010/C1010")
    assert amended.findtext(".//p:AmdmntInd", namespaces=NS) == "true"
    assert amended.findtext(".//p:OrgnlDbtrAgt/p:FinInstnId/p:Othr/p:Id", namespaces=NS) == "SMNDA"
    holder = _tx(tree, "O100-P001/C1001")
    assert holder.findtext("p:Dbtr/p:Nm", namespaces=NS) == "Juergen Mueller + Soehne"
    assert holder.findtext("p:RmtInf/p:Ustrd", namespaces=NS) == (
        "HAUSVERWALTUNG MUSTER Mietkonto RECHNUNG 1001 VOM 10.02.26 Miete Maerz 2026"
    )
    states = claim_states(scenario.erp_url)
    for claim_no in DEBITED:
        assert states[claim_no][0] == "IN_COLLECTION"
    for claim_no in ("C3002", "C5001", "C6001", "C7001", "C8001", "C9001"):
        assert states[claim_no][0] == "OPEN"
    ledger = SepaLedger(scenario.state_url)
    rows = ledger.rows_of_claims(sorted(DEBITED))
    assert {r["claim_no"] for r in rows} == DEBITED and {r["status"] for r in rows} == {"written"}
    assert ledger.files()[0]["erp_synced_at"] is not None
    quarantine = {q["ref_id"]: q["rule"] for q in StateStore(scenario.state_url).open_quarantine("sepa")}
    assert quarantine == {c: rule for c, (outcome, rule) in EXPECTED.items() if outcome == "quarantine"}


def test_rerun_collects_nothing_twice(scenario: Scenario) -> None:
    debit_run()
    _run, plan, files = debit_run(run_id="testrun1")
    assert files == [] and plan.counts["debit"] == 0
    assert len(_xml_files(scenario.output_dir)) == 1


def test_ledger_guards_even_when_the_erp_status_is_reset(scenario: Scenario) -> None:
    debit_run()
    from sqlalchemy import update

    from connectors.erp.database import make_engine
    from connectors.erp.schema import claims

    engine = make_engine(scenario.erp_url)
    with engine.begin() as conn:  # somebody sets the claims back to OPEN by hand
        conn.execute(update(claims).where(claims.c.status == "IN_COLLECTION").values(status="OPEN"))
    _run, plan, files = debit_run(run_id="testrun1")
    assert files == []
    listing = _listing(plan.listing_path)
    assert {c for c, r in listing.items() if r["rule"] == "sepa.ledger"} == DEBITED


def test_batch_booking_override_and_too_early_date(scenario: Scenario) -> None:
    run, _plan, files = debit_run(collection=date(2026, 3, 2), batch_booking=False)
    assert run.collection_date == date(2026, 3, 3) and run.date_warnings
    tree = etree.parse(files[0]["path"])
    assert {b.text for b in tree.findall(".//p:PmtInf/p:BtchBookg", NS)} == {"false"}
    assert {b.text for b in tree.findall(".//p:ReqdColltnDt", NS)} == {"2026-03-03"}


def test_files_split_above_the_configured_size(tmp_path: Path) -> None:
    s = make_scenario(tmp_path)
    with sepa_env(s.erp_url, s.state_url, str(s.output_dir), max_transactions_per_file=4):
        _run, _plan, files = debit_run()
    assert [f["nb_of_txs"] for f in files] == [4, 2]
    ids: list[str] = []
    for f in files:
        totals = scan_pain008(Path(f["path"]), collect_ids=True)
        assert totals.problems() == [] and totals.header_nb_of_txs <= 4
        ids += totals.end_to_end_ids
    assert len(ids) == len(set(ids)) == 6
    assert len({f["msg_id"] for f in files}) == 2


def test_claims_due_later_get_their_own_dated_block(tmp_path: Path) -> None:
    extra = [claim("C1301", "P001", "20.00", due_date=date(2026, 3, 7))]  # a Saturday
    s = make_scenario(tmp_path, extra)
    with sepa_env(s.erp_url, s.state_url, str(s.output_dir), collection_horizon_days=5):
        _run, plan, files = debit_run()
    tree = etree.parse(files[0]["path"])
    keys = [
        (b.findtext("p:ReqdColltnDt", namespaces=NS), b.findtext("p:PmtTpInf/p:SeqTp", namespaces=NS))
        for b in tree.findall(".//p:PmtInf", NS)
    ]
    assert keys == [
        ("2026-03-04", "FRST"),
        ("2026-03-04", "OOFF"),
        ("2026-03-04", "RCUR"),
        ("2026-03-09", "RCUR"),
    ]
    assert _listing(plan.listing_path)["C1301"]["collection_date"] == "2026-03-09"


def test_bad_creditor_id_stops_before_anything_happens(tmp_path: Path) -> None:
    s = make_scenario(tmp_path)
    with (
        sepa_env(s.erp_url, s.state_url, str(s.output_dir), creditor_id="DE99ZZZ09999999999"),
        pytest.raises(ValueError, match="creditor identifier"),
    ):
        debit_run()
    assert not s.output_dir.exists() or _xml_files(s.output_dir) == []


def test_second_run_while_one_is_active_is_refused(scenario: Scenario) -> None:
    SepaLedger(scenario.state_url).acquire_lock("sepa-debit-run", "other-run")  # held by this (live) process
    ledger = SepaLedger(scenario.state_url)
    with ledger.engine.begin() as conn:
        from sqlalchemy import update

        from connectors.sepa.ledger import sepa_locks

        conn.execute(update(sepa_locks).values(host="another-host"))
    with pytest.raises(SepaRunLocked):
        debit_run()


def test_claim_taken_by_another_run_between_plan_and_write_publishes_nothing(scenario: Scenario) -> None:
    from config.settings import load_settings
    from connectors.sepa.ledger import LedgerRow
    from tasks.sepa_run import finish_debit_run, plan_debits, start_debit_run, write_debit_files

    run = start_debit_run(load_settings(), date(2026, 3, 4), None, False, run_id="testrun0")
    plan = plan_debits(run)
    ledger = SepaLedger(scenario.state_url)
    ledger.begin_file("OTHER", "other", scenario.output_dir / "OTHER.xml", [], True)
    ledger.add_prepared(
        [
            LedgerRow(
                "C2001",
                1,
                "OTHER",
                "OTHER-001",
                "X",
                "M-P002",
                "DE84100100101234567898",
                "P002",
                "O100",
                Decimal("620.00"),
                "FRST",
                date(2026, 3, 4),
            )
        ]
    )
    with pytest.raises(SepaLedgerConflict):
        write_debit_files(run, plan)
    finish_debit_run(run)
    assert _xml_files(scenario.output_dir) == [] and not list(scenario.output_dir.glob("*.part"))
    assert claim_states(scenario.erp_url)["C1001"][0] == "OPEN"
    assert [f["status"] for f in ledger.files() if f["msg_id"] != "OTHER"] == ["abandoned"]


def test_no_date_means_the_earliest_possible_without_warning(scenario: Scenario) -> None:
    run, _plan, _files = debit_run(collection=None, dry_run=True)
    assert run.collection_date == date(2026, 3, 3) and run.date_warnings == []
