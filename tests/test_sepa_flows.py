"""The two Prefect flows end to end (one shared test harness per session)."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path

import pytest

from tests.sepa_support import COLLECTION, claim_states, debit_run, make_scenario, sepa_env

CAMT = Path(__file__).parent / "data" / "camt"


async def _artifact(key: str) -> object:
    """The newest artifact ``key`` of the session (other tests' runs publish it too)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC
        )
    return found[0].data if found else None


def test_debit_flow_dry_run_then_run(prefect_harness: None, tmp_path: Path) -> None:
    from flows.sepa_debit import sepa_debit_run

    s = make_scenario(tmp_path)
    with sepa_env(s.erp_url, s.state_url, str(s.output_dir), batch_booking=False):
        dry = sepa_debit_run(collection_date=COLLECTION, dry_run=True)
        assert dry["counts"] == {"debit": 6, "quarantine": 5, "skip": 1} and dry["files"] == []
        assert dry["batch_booking"] is False  # stored default from the settings
        assert Path(dry["control_listing"]).exists() and not list(s.output_dir.glob("*.xml"))
        table = asyncio.run(_artifact("sepa-control-listing"))
        assert isinstance(table, str) and "C1001" in table and "DE50120300001234567897" not in table  # masked

        real = sepa_debit_run(collection_date=date(2026, 3, 2), batch_booking=True)
    assert real["collection_date"] == "2026-03-03"  # too early: moved to the next possible day
    assert real["batch_booking"] is True  # run override
    assert [f["nb_of_txs"] for f in real["files"]] == [6] and real["debit_sum"] == "1915.49"
    assert claim_states(s.erp_url)["C1001"][0] == "IN_COLLECTION"


def test_import_bank_statement_flow(prefect_harness: None, tmp_path: Path) -> None:
    from flows.bank_reconciliation import import_bank_statement

    s = make_scenario(tmp_path)
    with sepa_env(s.erp_url, s.state_url, str(s.output_dir)):
        debit_run()
        result = import_bank_statement([str(CAMT / "camt053_paid.xml"), str(CAMT / "camt053_returns.xml")])
    assert result["totals"] == {"paid": 2, "unmatched": 2, "pending": 1, "returned": 3}
    states = claim_states(s.erp_url)
    assert states["C1001"][0] == "RETURNED" and states["C1001"][2] == "AC04"
    assert states["C3001"][0] == "PAID"
    returns = asyncio.run(_artifact("sepa-return-debits"))
    assert isinstance(returns, str) and "AM04" in returns and "MD06" in returns


@pytest.mark.parametrize("name", ["camt053_paid.xml"])
def test_import_flow_accepts_a_single_path(prefect_harness: None, tmp_path: Path, name: str) -> None:
    from flows.bank_reconciliation import import_bank_statement

    s = make_scenario(tmp_path)
    with sepa_env(s.erp_url, s.state_url, str(s.output_dir)):
        result = import_bank_statement(str(CAMT / name))  # nothing was collected: nothing matches
    assert result["totals"] == {"unmatched": 3, "pending": 1}
