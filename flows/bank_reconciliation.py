"""Bank-statement reconciliation (issue 3; seed 004 "Kontenabgleich"; issue 18: statements as
banks really send them).

Pipeline: for each camt.053 statement, camt.052 intraday report or camt.054 notification (versions
.001.02, .001.04, .001.08): validate it against its own ISO schema, match collected sums (by
EndToEndId or payment block) and return debits (by EndToEndId) against the SEPA ledger, mark
claims paid only for money that arrived, reopen returned claims with their reason code -> report
returns and everything that did not match. A refused file is reported (name, line, reason, what
to ask the bank for) while the others are imported; the run then ends Failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from prefect import flow

from config.settings import load_settings
from tasks.licensing import licensed
from tasks.sepa_run import DryRunCarry, ReconciliationResult, StatementFilesRejected, describe_file
from tasks.sepa_tasks import publish_reconciliation_report, reconcile_bank_statement
from tasks.systems import claim_system, switched_off


@flow(name="import-bank-statement")
def import_bank_statement(paths: list[str] | str, dry_run: bool = False) -> dict[str, Any]:
    """Import camt files (in the order given: statements before later notifications).

    Args:
        paths: one path or a list of paths of camt.052/.053/.054 files, versions .001.02, .001.04
            (not camt.052) and .001.08.
        dry_run: only read, validate and match against the ledger as it is, plus what the earlier
            files of the same run would have booked; nothing is booked (ledger, ERP and the record
            of imported files stay as they are, no table is created) and nothing is written into
            the output folder: each file's report goes to an owner-only temporary file it names.

    Returns:
        Per file: accepted, the line for people, kind, version, message id, counts per outcome
        (paid, partly_paid, returned, unmatched, mismatch, pending, duplicate, other), report
        path, and for a refused file the reason, line and advice; and totals.

    Raises:
        StatementFilesRejected: at the end, after every other file was imported, when any file
            was refused (the run ends Failed); its ``summary`` is this return value.
    """
    settings, stop = licensed(load_settings(), "sepa")
    stop = stop or switched_off(settings, "sepa")
    if stop is not None:
        return stop
    if not dry_run:  # a dry run writes neither the state nor the output folder
        claim_system(settings, [settings.sepa.output_dir])
    files = [paths] if isinstance(paths, str) else list(paths)
    results: list[ReconciliationResult] = []
    carry = DryRunCarry() if dry_run else None  # a dry run carries what earlier files would book
    for path in files:
        result = reconcile_bank_statement(
            path, settings.erp_url, settings.state_url, settings.sepa.output_dir, dry_run=dry_run, carry=carry
        )
        carry = result.carry if dry_run else None
        results.append(result)
    publish_reconciliation_report(results)
    summary = summarise(results, dry_run)
    rejected = [r for r in results if not r.accepted]
    if rejected:
        raise StatementFilesRejected(summary, rejected)
    return summary


def summarise(results: Sequence[ReconciliationResult], dry_run: bool) -> dict[str, Any]:
    """The run's summary: one record per file and the totals over the accepted ones."""
    totals: dict[str, int] = {}
    for res in results:
        for kind, n in res.counts.items():
            totals[kind] = totals.get(kind, 0) + n
    return {
        "dry_run": dry_run,
        "files": [
            {
                "path": r.path,
                "accepted": r.accepted,
                "line": describe_file(r),
                "kind": r.kind,
                "version": r.version,
                "msg_id": r.msg_id,
                "skipped": r.skipped,
                "counts": r.counts,
                "report": r.report_path,
                "rejected": r.rejected,
                "error_line": r.line,
                "advice": r.advice,
            }
            for r in results
        ],
        "totals": totals,
    }


def command_line(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The flow's parameters from the command line ``python -m flows.bank_reconciliation FILE ... [--dry-run]``.

    No file, or an unknown argument, ends the process with exit code 2 and the usage (argparse).
    """
    parser = argparse.ArgumentParser(
        prog="python -m flows.bank_reconciliation",
        description="Import camt bank statements, intraday reports and notifications in this process and "
        "reconcile them with the direct-debit ledger. Prints one line per file (accepted, or rejected "
        "with the reason and what to ask the bank for), then the summary as one JSON line. Exit code 0 "
        "when every file was accepted, 1 when any was rejected (the others are imported all the same).",
        epilog="Versions read: camt.053 and camt.054 .001.02, .001.04, .001.08; camt.052 .001.02 and "
        ".001.08. The settings profile is HAUSFLOW_PROFILE (else test); the run reports to the Prefect API "
        "of PREFECT_API_URL.",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="FILE",
        help="camt files, in the order given (statements before later notifications)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="only read, validate and report what would be matched (what an earlier file would book is carried "
        "to the next); nothing is written to the ledger, the ERP or the output folder: each report goes to a "
        "temporary file named in the output",
    )
    args = parser.parse_args(argv)
    return {"paths": args.paths, "dry_run": args.dry_run}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the flow once from the command line; returns the exit code (0 all accepted, 1 any rejected)."""
    import json

    params = command_line(argv)
    try:
        summary = import_bank_statement(**params)
        code = 0
    except StatementFilesRejected as exc:
        summary, code = exc.summary, 1
    for record in summary.get("files", []):
        print(record["line"])
    print(json.dumps(summary, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
