"""Prefect tasks of the SEPA debit run and the bank-statement reconciliation (one task per batch).

Thin wrappers: the steps themselves are plain functions in ``tasks/sepa_run.py``; here they get a
task name, no caching (every step has side effects), and the UI artifacts.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from config.settings import HausflowSettings
from tasks.sepa_run import (
    DebitPlan,
    DryRunCarry,
    ReconciliationResult,
    SepaRun,
    finish_debit_run,
    import_statement,
    plan_debits,
    start_debit_run,
    write_debit_files,
)


@task(name="start-sepa-debit-run", cache_policy=NO_CACHE)
def start_sepa_debit_run(
    settings: HausflowSettings, collection_date: date | None, batch_booking: bool | None, dry_run: bool
) -> SepaRun:
    """Task wrapper of ``start_debit_run``."""
    return start_debit_run(settings, collection_date, batch_booking, dry_run)


@task(name="plan-sepa-debits", cache_policy=NO_CACHE)
def plan_sepa_debits(run: SepaRun) -> DebitPlan:
    """Task wrapper of ``plan_debits`` (one task for all claims, streamed in chunks)."""
    return plan_debits(run)


@task(name="publish-control-listing", cache_policy=NO_CACHE)
def publish_control_listing(run: SepaRun, plan: DebitPlan) -> None:
    """Show the control listing in the UI: the first rows (masked IBANs), and a summary with the
    counts and the first claims in quarantine, skipped and warned about (:func:`control_summary`)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_table_artifact(
        key="sepa-control-listing",
        table=plan.preview,
        description=(
            f"Control listing for {run.collection_date:%d.%m.%Y}: {plan.counts['debit']} to debit "
            f"({Decimal(plan.debit_sum_cents) / 100:.2f} EUR), {plan.counts['quarantine']} in quarantine, "
            f"{plan.counts['skip']} skipped, {plan.warnings} warnings. First {len(plan.preview)} rows; "
            f"all rows in {plan.listing_path}"
        ),
    )
    create_markdown_artifact(
        key="sepa-control-summary",
        markdown=control_summary(run, plan),
        description="Counts, then the claims in quarantine, skipped and warned about, each with its reason.",
    )


def control_summary(run: SepaRun, plan: DebitPlan) -> str:
    """The control summary: counts, the date warnings, then three sections (quarantine, skipped,
    warnings), each with its count and its first lines (claim, person, mandate, rule, reason or
    warning); a cut section says where the rest is (the control listing, CSV)."""
    lines = [
        f"# SEPA control listing {run.collection_date:%d.%m.%Y}{' (dry run)' if run.dry_run else ''}",
        "",
        "| | count |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in plan.counts.items()),
        f"| sum to debit (EUR) | {Decimal(plan.debit_sum_cents) / 100:.2f} |",
        f"| warnings | {plan.warnings} |",
        "",
        *(f"- {w}" for w in run.date_warnings),
    ]
    sections = (
        ("Quarantine", plan.counts["quarantine"], plan.quarantined, "reason"),
        ("Skipped", plan.counts["skip"], plan.skipped, "reason"),
        ("Warnings", plan.warnings, plan.warned, "warning"),
    )
    for title, total, notes, what in sections:
        if not total:
            continue
        lines += ["", f"## {title}: {total}", ""]
        if total > len(notes):
            lines += [f"The first {len(notes)} below; all in the control listing {plan.listing_path}.", ""]
        lines += [f"| claim | person | mandate | rule | {what} |", "|---|---|---|---|---|"]
        lines += [
            f"| {n['claim_no']} | {n['person_no']} | {n['mandate_id']} | {n['rule']} | {_cell(n['text'])} |"
            for n in notes
        ]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


@task(name="write-sepa-files", cache_policy=NO_CACHE)
def write_sepa_files(run: SepaRun, plan: DebitPlan) -> list[dict[str, Any]]:
    """Task wrapper of ``write_debit_files`` (one task for all files of the run)."""
    return write_debit_files(run, plan)


@task(name="finish-sepa-debit-run", cache_policy=NO_CACHE)
def finish_sepa_debit_run(run: SepaRun) -> None:
    """Task wrapper of ``finish_debit_run``."""
    finish_debit_run(run)


@task(name="reconcile-bank-statement", cache_policy=NO_CACHE)
def reconcile_bank_statement(
    path: str,
    erp_url: str,
    state_url: str,
    output_dir: str,
    dry_run: bool = False,
    carry: DryRunCarry | None = None,
) -> ReconciliationResult:
    """Task wrapper of ``import_statement`` (one task per camt file; a refused file is a result).

    A dry run over several files passes ``carry`` from each file's result to the next file.
    """
    return import_statement(Path(path), erp_url, state_url, Path(output_dir), dry_run=dry_run, carry=carry)


@task(name="publish-reconciliation-report", cache_policy=NO_CACHE)
def publish_reconciliation_report(results: list[ReconciliationResult]) -> None:
    """Show returns (with reason codes) and everything that did not match in the UI."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    returns = [r for res in results for r in res.returns]
    unmatched = [r for res in results for r in res.unmatched]
    create_table_artifact(
        key="sepa-return-debits",
        table=returns or [{"message": "no return debits"}],
        description=f"{len(returns)} return debits: the claims are reopened (status RETURNED) with the reason code",
    )
    dry = " (dry run: nothing booked)" if any(r.dry_run for r in results) else ""
    lines = [f"# Bank statement import{dry}", "", "| file | kind | result |", "|---|---|---|"]
    for res in results:
        if res.rejected is not None:
            where = f" at line {res.line}" if res.line else ""
            result = f"**rejected**{where}: " + _cell(f"{res.rejected}; {res.advice}")
        elif res.skipped:
            result = "imported before: skipped"
        else:
            result = ", ".join(f"{k} {v}" for k, v in sorted(res.counts.items()))
        kind = f"{res.kind}.{res.version}" if res.version else res.kind
        lines.append(f"| {Path(res.path).name} | {kind} | {result} |")
    if unmatched:
        lines += [
            "",
            "## Not matched / to check",
            "",
            "| kind | entry | amount | expected | message |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {u['kind']} | {u['entry']} | {u['amount']} | {u['expected']} | {u['message']} |"
            for u in unmatched
        ]
    create_markdown_artifact(key="sepa-reconciliation", markdown="\n".join(lines))
