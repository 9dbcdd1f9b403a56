"""Reconciliation against hand-made camt files: paid, partly paid, returned (AC04/AM04/MD06), unknown."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from connectors.sepa.camt import iter_entries, open_camt
from connectors.sepa.errors import SepaValidationError
from connectors.sepa.ledger import SepaLedger
from tasks.sepa_rules import classify_entry, return_reason_text, settle_amount
from tasks.sepa_run import reconcile_statement
from tests.sepa_support import Scenario, claim_states, debit_run, make_scenario, sepa_env

CAMT = Path(__file__).parent / "data" / "camt"
BLOCK_RCUR = {"C1001", "C1002", "C3001", "C1010"}


@pytest.fixture
def collected(tmp_path: Path) -> Iterator[Scenario]:
    """The standard scenario after one debit run (file HF20260302090000-testrun0-001)."""
    s = make_scenario(tmp_path)
    with sepa_env(s.erp_url, s.state_url, str(s.output_dir)):
        debit_run()
        yield s


def _import(s: Scenario, name: str) -> dict[str, int]:
    result = reconcile_statement(CAMT / name, s.erp_url, s.state_url, s.output_dir)
    return result.counts


def _ledger_status(s: Scenario, claim_no: str) -> str:
    rows = SepaLedger(s.state_url).rows_of_claims([claim_no])
    assert len(rows) == 1
    return str(rows[0]["status"])


# ---- rules --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "cd", "reversal", "code", "has_return", "expected"),
    [
        ("BOOK", "CRDT", False, "PMNT/IDDT/ESDD", False, "collection"),
        ("PDNG", "CRDT", False, "PMNT/IDDT/ESDD", False, "pending"),
        ("BOOK", "DBIT", False, "PMNT/IDDT/UPDD", False, "return"),  # return sub-family
        ("BOOK", "DBIT", False, "PMNT/IDDT/ESDD", True, "return"),  # return info
        ("BOOK", "DBIT", True, "PMNT/IDDT/ESDD", False, "return"),  # reversal
        ("BOOK", "DBIT", False, "PMNT/ICDT/ESCT", False, "other"),  # a transfer we made
    ],
)
def test_classify_entry(
    status: str, cd: str, reversal: bool, code: str, has_return: bool, expected: str
) -> None:
    assert classify_entry(status, cd, reversal, code, has_return) == expected


@pytest.mark.parametrize(
    ("expected", "paid", "received", "outcome", "total"),
    [
        ("100.00", "0", "100.00", "paid", "100.00"),
        ("100.00", "0", "40.00", "partly_paid", "40.00"),
        ("100.00", "40.00", "60.00", "paid", "100.00"),
        ("100.00", "0", "100.01", "overpaid", "0"),
    ],
)
def test_settle_amount(expected: str, paid: str, received: str, outcome: str, total: str) -> None:
    assert settle_amount(Decimal(expected), Decimal(paid), Decimal(received)) == (outcome, Decimal(total))


@pytest.mark.parametrize(
    ("code", "words"), [("AC04", "closed"), ("AM04", "insufficient"), ("MD06", "refund"), ("ZZ99", "ZZ99")]
)
def test_return_reason_text(code: str, words: str) -> None:
    assert words in return_reason_text(code)


# ---- reader --------------------------------------------------------------------------------
def test_camt_reader_extracts_batch_and_transaction_references() -> None:
    entries = list(iter_entries(open_camt(CAMT / "camt053_paid.xml")))
    assert [e.status for e in entries] == ["BOOK", "BOOK", "BOOK", "PDNG"]
    batch, single = entries[0], entries[1]
    assert batch.batch_pmt_inf_id == "HF20260302090000-testrun0-001-003" and batch.amount == Decimal(
        "1195.50"
    )
    assert batch.bank_code == "PMNT/IDDT/ESDD" and batch.account_iban == "DE02120300000000202051"
    assert single.transactions[0].end_to_end_id == "O100-P002/C2001"
    returns = list(iter_entries(open_camt(CAMT / "camt053_returns.xml")))
    assert [e.transactions[0].return_reason for e in returns] == ["AC04", "AM04", "MD06", "MD01"]


def test_invalid_camt_is_rejected_before_anything_is_booked(collected: Scenario, tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    text = (CAMT / "camt053_paid.xml").read_text(encoding="utf-8")
    bad.write_text(text.replace("<Sts><Cd>PDNG</Cd></Sts>", ""), encoding="utf-8")  # last entry loses Sts
    with pytest.raises(SepaValidationError, match=r"camt\.053\.001\.08\.xsd"):
        reconcile_statement(bad, collected.erp_url, collected.state_url, collected.output_dir)
    assert claim_states(collected.erp_url)["C1001"][0] == "IN_COLLECTION"  # first entries were not booked


# ---- matching ------------------------------------------------------------------------------
def test_paid_block_single_debit_unknown_and_pending(collected: Scenario) -> None:
    counts = _import(collected, "camt053_paid.xml")
    assert counts == {"paid": 2, "unmatched": 1, "pending": 1}
    states = claim_states(collected.erp_url)
    for claim_no in BLOCK_RCUR | {"C2001"}:
        assert states[claim_no][:2] == ("PAID", Decimal("0")), claim_no
        assert _ledger_status(collected, claim_no) == "paid"
    assert states["C4001"][0] == "IN_COLLECTION"  # pending entry: money not arrived yet
    # the same statement again changes nothing
    again = reconcile_statement(
        CAMT / "camt053_paid.xml", collected.erp_url, collected.state_url, collected.output_dir
    )
    assert again.skipped and again.counts == {}


def test_copy_of_a_statement_under_another_name_is_recognised(collected: Scenario, tmp_path: Path) -> None:
    _import(collected, "camt053_paid.xml")
    copy = tmp_path / "copy.xml"
    shutil.copy(CAMT / "camt053_paid.xml", copy)
    assert reconcile_statement(copy, collected.erp_url, collected.state_url, collected.output_dir).skipped


def test_short_block_marks_nothing_until_the_camt054_details_arrive(collected: Scenario) -> None:
    counts = _import(collected, "camt053_partly_paid.xml")
    assert counts == {"partly_paid": 2}
    states = claim_states(collected.erp_url)
    assert all(states[c][0] == "IN_COLLECTION" for c in BLOCK_RCUR)  # the sum alone says not who paid
    assert states["C2001"] == ("IN_COLLECTION", Decimal("20.00"), None)  # 600 of 620 arrived
    assert _ledger_status(collected, "C2001") == "partly_paid"

    counts = _import(collected, "camt054_block_details.xml")
    assert counts == {"paid": 3}
    states = claim_states(collected.erp_url)
    assert {c for c in BLOCK_RCUR if states[c][0] == "PAID"} == {"C1001", "C3001", "C1010"}
    assert states["C1002"][0] == "IN_COLLECTION" and _ledger_status(collected, "C1002") == "written"


def test_returns_reopen_claims_with_reason_and_report_the_unknown(collected: Scenario) -> None:
    _import(collected, "camt053_paid.xml")
    result = reconcile_statement(
        CAMT / "camt053_returns.xml", collected.erp_url, collected.state_url, collected.output_dir
    )
    assert result.counts == {"returned": 3, "unmatched": 1}
    states = claim_states(collected.erp_url)
    assert states["C1001"] == ("RETURNED", Decimal("750.00"), "AC04")
    assert states["C1010"] == ("RETURNED", Decimal("300.00"), "AM04")
    assert states["C4001"] == ("RETURNED", Decimal("99.99"), "MD06")  # returned before it was marked paid
    assert {r["reason_code"] for r in result.returns} == {"AC04", "AM04", "MD06"}
    assert all("reopened" in r["message"] for r in result.returns)
    assert result.unmatched[0]["end_to_end_id"] == "O999-P999/C9999"
    report = Path(result.report_path or "").read_text(encoding="utf-8")
    assert "insufficient funds" in report and "account closed" in report
    assert _ledger_status(collected, "C1001") == "returned"


def test_returned_claim_is_not_collected_again_until_reopened_by_a_person(collected: Scenario) -> None:
    _import(collected, "camt053_paid.xml")
    _import(collected, "camt053_returns.xml")
    _run, _plan, files = debit_run(run_id="testrun1")
    # RETURNED claims wait for a person; only the budget claim whose older claim is paid now goes
    new = [
        r["claim_no"]
        for r in SepaLedger(collected.state_url).rows_of_claims(["C1001", "C1010", "C4001", "C3002"])
        if r["msg_id"] == files[0]["msg_id"]
    ]
    assert new == ["C3002"]
    from sqlalchemy import update

    from connectors.erp.database import make_engine
    from connectors.erp.schema import claims

    engine = make_engine(collected.erp_url)
    with engine.begin() as conn:
        conn.execute(update(claims).where(claims.c.claim_no == "C1010").values(status="OPEN"))
    _run, _plan, files = debit_run(run_id="testrun2")
    assert [f["nb_of_txs"] for f in files] == [1]
    attempts = sorted(
        (r["attempt"], r["status"]) for r in SepaLedger(collected.state_url).rows_of_claims(["C1010"])
    )
    assert attempts == [(1, "returned"), (2, "written")]
