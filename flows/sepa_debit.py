"""SEPA direct-debit run (issue 3; seeds 003 and 004): control listing first, then the pain.008 files.

Pipeline: check settings and date, take the lock and recover an earlier crash -> select and check
every claim, write the control listing (CSV + UI table) -> stop here on a dry run -> write the
files crash-safely and record them in the ledger -> release the lock.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import flow

from config.settings import load_settings
from tasks.sepa_tasks import (
    finish_sepa_debit_run,
    plan_sepa_debits,
    publish_control_listing,
    start_sepa_debit_run,
    write_sepa_files,
)


@flow(name="sepa-debit-run", log_prints=False)
def sepa_debit_run(
    collection_date: date | None = None, batch_booking: bool | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """Collect the open claims of seed 004's three ways by SEPA direct debit.

    Args:
        collection_date: requested collection date; None or too early means the earliest possible
            TARGET2 business day (moved with a warning).
        batch_booking: one booking per block (True) or per debit (False); None uses the stored
            default ``sepa.batch_booking``.
        dry_run: only produce the control listing; no file, no ledger entry, no ERP change.

    Returns:
        A small summary: dates, counts, sum, listing path, files written.
    """
    settings = load_settings()
    run = start_sepa_debit_run(settings, collection_date, batch_booking, dry_run)
    try:
        plan = plan_sepa_debits(run)
        publish_control_listing(run, plan)
        files = [] if dry_run else write_sepa_files(run, plan)
    finally:
        finish_sepa_debit_run(run)
    return {
        "run_id": run.run_id,
        "dry_run": dry_run,
        "requested_date": run.requested_date.isoformat(),
        "collection_date": run.collection_date.isoformat(),
        "batch_booking": run.batch_booking,
        "counts": plan.counts,
        "debit_sum": f"{plan.debit_sum_cents / 100:.2f}",
        "warnings": plan.warnings,
        "control_listing": str(plan.listing_path),
        "files": files,
        "recovered": run.recovery,
    }
