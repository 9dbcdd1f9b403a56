"""The debit run and the reconciliation with ERP and state database on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from connectors.sepa.ledger import SepaLedger
from connectors.sepa.pain008 import scan_pain008
from tasks.sepa_run import reconcile_statement
from tests.sepa_support import EXPECTED, build_erp, claim_states, debit_run, sepa_env

CAMT = Path(__file__).parent / "data" / "camt"


@pytest.mark.postgres
def test_debit_run_and_reconciliation_on_postgresql(pg_database: Callable[[], str], tmp_path: Path) -> None:
    erp_url, state_url = pg_database(), pg_database()
    build_erp(erp_url)
    out = tmp_path / "out"
    with sepa_env(erp_url, state_url, str(out)):
        _run, plan, files = debit_run()
        again = debit_run(run_id="testrun1")[2]
    assert plan.counts == {"debit": 6, "quarantine": 5, "skip": 1} and again == []
    assert scan_pain008(Path(files[0]["path"])).problems() == []
    debited = sorted(c for c, (o, _) in EXPECTED.items() if o == "debit")
    assert {r["status"] for r in SepaLedger(state_url).rows_of_claims(debited)} == {"written"}
    result = reconcile_statement(CAMT / "camt053_paid.xml", erp_url, state_url, out)
    assert result.counts == {"paid": 2, "unmatched": 1, "pending": 1}
    states = claim_states(erp_url)
    assert states["C1001"][0] == "PAID" and states["C4001"][0] == "IN_COLLECTION"


@pytest.mark.postgres
def test_an_entry_booked_by_another_import_first_changes_nothing_on_postgresql(
    pg_database: Callable[[], str], tmp_path: Path
) -> None:
    """Two imports of the same booking race: the second one's record fails on the key, its
    transaction is rolled back whole (PostgreSQL aborts it at the failed insert) and it says so."""
    erp_url, state_url = pg_database(), pg_database()
    build_erp(erp_url)
    with sepa_env(erp_url, state_url, str(tmp_path / "out")):
        debit_run()
    ledger = SepaLedger(state_url)
    (row,) = ledger.rows_of_claims(["C2001"])
    first = ledger.book_entry(
        "DE02/B-2", tmp_path / "a.xml", "camt.052", "a", [(row["id"], {"status": "paid"})]
    )
    second = ledger.book_entry(
        "DE02/B-2", tmp_path / "b.xml", "camt.053", "b", [(row["id"], {"status": "returned"})]
    )
    assert (first, second) == (True, False)
    assert ledger.rows_of_claims(["C2001"])[0]["status"] == "paid"
    assert ledger.entry_booked("DE02/B-2") == "a"
