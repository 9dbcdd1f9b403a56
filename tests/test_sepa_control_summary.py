"""The SEPA control summary a person reads before the files go to the bank: counts, then the
claims in quarantine, skipped and warned about, each with its claim, mandate and reason.
Read back through the Prefect API from the flow's run."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path
from uuid import UUID

import pytest

from tests.sepa_support import COLLECTION, make_scenario, sepa_env

pytestmark = pytest.mark.usefixtures("prefect_harness")


def summary_of(run_id: str) -> str:
    """The ``sepa-control-summary`` markdown of one flow run."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    async def read() -> list[object]:
        async with get_client() as client:
            return list(
                await client.read_artifacts(
                    artifact_filter=ArtifactFilter(
                        flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)]),
                        key=ArtifactFilterKey(any_=["sepa-control-summary"]),
                    )
                )
            )

    found = asyncio.run(read())
    assert len(found) == 1
    return str(found[0].data)  # type: ignore[attr-defined]


def rows_of(markdown: str, title: str) -> tuple[list[str], list[list[str]]]:
    """The text lines and table rows of one section (``## title: n``)."""
    part = markdown.split(f"\n## {title}: ", 1)[1].split("\n## ", 1)[0]
    lines = part.splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
    return lines, rows[1:]  # without the header


def test_the_summary_shows_quarantine_skips_and_warnings_with_claim_mandate_and_reason(
    tmp_path: Path,
) -> None:
    from flows.sepa_debit import sepa_debit_run

    s = make_scenario(tmp_path)
    with sepa_env(s.erp_url, s.state_url, str(s.output_dir), batch_booking=False):
        result = sepa_debit_run(collection_date=COLLECTION, dry_run=True)
    summary = summary_of(result["run_id"])

    lines, quarantine = rows_of(summary, "Quarantine")
    assert lines[0] == "5" and len(quarantine) == 5
    by_claim = {r[0]: r for r in quarantine}
    assert by_claim["C6001"][1:4] == ["P006", "M-P006", "sepa.mandate.revoked"]
    assert "ask the debtor for a new mandate" in by_claim["C6001"][4]

    lines, skipped = rows_of(summary, "Skipped")
    assert lines[0] == "1"
    assert skipped == [
        [
            "C3002",
            "P003",
            "M-P003",
            "sepa.budget",
            "released budget 150.00 EUR of person P003 is used up by older claims",
        ]
    ]

    lines, warned = rows_of(summary, "Warnings")
    assert lines[0] == str(result["warnings"]) == "2"
    assert [r[:3] for r in warned] == [["C1002", "P001", "M-P001"], ["C1010", "P010", "M-P010"]]
    assert "remittance shortened to 140 characters, dropped: 'November'" in warned[0][4]
    assert "debtor account changed: amendment with SMNDA" in warned[1][4]
    # the invalid IBAN a quarantine reason quotes is masked, as every IBAN in the UI
    assert "DE45120300001234567891" not in summary and "DE45**************7891" in by_claim["C5001"][4]


def test_a_cut_section_says_how_many_and_where_all_of_them_are(tmp_path: Path) -> None:
    from flows.sepa_debit import sepa_debit_run

    s = make_scenario(tmp_path)
    with sepa_env(s.erp_url, s.state_url, str(s.output_dir), batch_booking=False, listing_preview_rows=1):
        result = sepa_debit_run(collection_date=COLLECTION, dry_run=True)
    summary = summary_of(result["run_id"])
    listing = result["control_listing"]
    for title, total in (("Quarantine", 5), ("Warnings", 2)):
        lines, rows = rows_of(summary, title)
        assert lines[0] == str(total) and len(rows) == 1
        assert f"The first 1 below; all in the control listing {listing}." in lines
    lines, rows = rows_of(summary, "Skipped")  # one skip: nothing is cut
    assert len(rows) == 1 and not any("The first" in line for line in lines)
    with open(listing, encoding="utf-8") as fh:
        outcomes = [row["outcome"] for row in csv.DictReader(fh, delimiter=";")]
    assert outcomes.count("quarantine") == 5
