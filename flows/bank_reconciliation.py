"""Bank-statement reconciliation (issue 3; seed 004 "Kontenabgleich").

Pipeline: for each camt.053 statement or camt.054 notification: validate it against the ISO
schema, match collected sums (by EndToEndId or payment block) and return debits (by EndToEndId)
against the SEPA ledger, mark claims paid only for money that arrived, reopen returned claims
with their reason code -> report returns and everything that did not match.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from prefect import flow

from config.settings import load_settings
from tasks.sepa_tasks import publish_reconciliation_report, reconcile_bank_statement


@flow(name="import-bank-statement")
def import_bank_statement(paths: list[str] | str) -> dict[str, Any]:
    """Import camt files (in the order given: statements before later notifications).

    Args:
        paths: one path or a list of paths of camt.053.001.08 / camt.054.001.08 files.

    Returns:
        Per file: kind, message id, counts per outcome (paid, partly_paid, returned, unmatched,
        mismatch, pending, duplicate, other), report path; and totals.
    """
    settings = load_settings()
    files = [paths] if isinstance(paths, str) else list(paths)
    results = [
        reconcile_bank_statement(path, settings.erp_url, settings.state_url, settings.sepa.output_dir)
        for path in files
    ]
    publish_reconciliation_report(results)
    totals: dict[str, int] = {}
    for res in results:
        for kind, n in res.counts.items():
            totals[kind] = totals.get(kind, 0) + n
    return {
        "files": [
            {
                "path": r.path,
                "kind": r.kind,
                "msg_id": r.msg_id,
                "skipped": r.skipped,
                "counts": r.counts,
                "report": r.report_path,
            }
            for r in results
        ],
        "totals": totals,
    }


def command_line(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The flow's parameters from the command line ``python -m flows.bank_reconciliation FILE ...``.

    No file, or an unknown argument, ends the process with exit code 2 and the usage (argparse).
    """
    parser = argparse.ArgumentParser(
        prog="python -m flows.bank_reconciliation",
        description="Import camt bank statements and notifications in this process and reconcile them "
        "with the direct-debit ledger; the summary printed as one JSON line last.",
        epilog="The settings profile is HAUSFLOW_PROFILE (else test); the run reports to the Prefect API "
        "of PREFECT_API_URL.",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="FILE",
        help="camt.053.001.08 / camt.054.001.08 files, in the order given (statements before later "
        "notifications)",
    )
    return {"paths": parser.parse_args(argv).paths}


if __name__ == "__main__":
    import json

    print(json.dumps(import_bank_statement(**command_line()), default=str))
