"""SEPA direct-debit run (issue 3; seeds 003 and 004): control listing first, then the pain.008 files.

Pipeline: check settings and date, take the lock and recover an earlier crash -> select and check
every claim, write the control listing (CSV + UI table) -> stop here on a dry run -> write the
files crash-safely and record them in the ledger -> release the lock.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import date
from typing import Any

from prefect import flow

from config.settings import load_settings
from tasks.licensing import licensed
from tasks.sepa_tasks import (
    finish_sepa_debit_run,
    plan_sepa_debits,
    publish_control_listing,
    start_sepa_debit_run,
    write_sepa_files,
)
from tasks.systems import claim_system, switched_off


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
    settings, stop = licensed(load_settings(), "sepa")
    stop = stop or switched_off(settings, "sepa")
    if stop is not None:
        return stop
    claim_system(settings, [settings.sepa.output_dir])  # a dry run too: its listing goes there
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


def command_line(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The flow's parameters from the command line ``python -m flows.sepa_debit [...]``.

    Unknown arguments or a date that is not YYYY-MM-DD end the process with exit code 2 and
    the usage (argparse); only the parameters given are passed.
    """
    parser = argparse.ArgumentParser(
        prog="python -m flows.sepa_debit",
        description="SEPA direct-debit run in this process: the control listing first, then the pain.008 "
        "files (a dry run stops after the listing); its summary printed as one JSON line last.",
        epilog="The settings profile is HAUSFLOW_PROFILE (else test); the run reports to the Prefect API "
        "of PREFECT_API_URL.",
    )
    parser.add_argument(
        "--collection-date",
        type=date.fromisoformat,
        metavar="YYYY-MM-DD",
        help="requested collection date; left out or too early: the earliest possible TARGET2 business "
        "day (moved with a warning)",
    )
    parser.add_argument(
        "--batch-booking",
        action=argparse.BooleanOptionalAction,
        help="one booking per payment block, or per debit (--no-batch-booking); left out: the stored "
        "default sepa.batch_booking",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="only produce the control listing; no file, no ledger entry, no ERP change",
    )
    args = parser.parse_args(argv)
    parameters: dict[str, Any] = {"dry_run": args.dry_run}
    if args.collection_date is not None:
        parameters["collection_date"] = args.collection_date
    if args.batch_booking is not None:
        parameters["batch_booking"] = args.batch_booking
    return parameters


if __name__ == "__main__":
    import json

    print(json.dumps(sepa_debit_run(**command_line()), default=str))
