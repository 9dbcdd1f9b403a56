"""Prefect task of the payouts by SEPA credit transfer (retained deposits, seed 000).

Thin wrapper: the rules and the crash-safe steps are plain functions in ``tasks/sepa_payouts.py``;
here they get a task name, no caching (writing a payment file is a side effect), and the UI
artifacts: the first rows of the control listing (IBANs masked) and what was not paid and why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from config.settings import HausflowSettings
from connectors.sepa.pain001 import Payout
from tasks.sepa_payout_rules import as_payout
from tasks.sepa_payouts import write_payouts
from tasks.sepa_rules import mask_iban
from tasks.sepa_run import mask_ibans

__all__ = ["Payout", "payout_summary_markdown", "write_payout_file"]


@task(name="write-payout-file", cache_policy=NO_CACHE)
def write_payout_file(
    settings: HausflowSettings,
    payouts: Sequence[Payout | Mapping[str, Any]],
    run_id: str,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Pay ``payouts`` by one pain.001.001.09 file (GBIC_5), each payout at most once ever.

    Control listing first (``sepa.payouts.output_dir``, owner-only), then the file, written
    atomically and recorded in the payout ledger; a bad payout is skipped with the rule and the
    reason, one already in a published file is reported as already paid. See ``write_payouts``.

    ``payouts`` are ``Payout`` records or plain mappings with the same fields (``as_payout``).

    Returns:
        ``file``, ``msg_id``, ``number``, ``ctrl_sum``, ``execution_date``, ``blocks``,
        ``control_listing``, ``skipped``, ``already_paid``, ``warnings``, ``recovered``.
    """
    summary = write_payouts(settings, [as_payout(p) for p in payouts], run_id, dry_run)
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        key="sepa-payout-summary",
        markdown=payout_summary_markdown(summary, settings.sepa.payouts.listing_preview_rows),
        description="Payout file, then the payouts not paid (skipped, already paid) with rule and reason.",
    )
    return summary


def payout_summary_markdown(summary: dict[str, Any], preview_rows: int = 200) -> str:
    """The run's summary for the UI: figures, blocks, then what was not paid and why (every IBAN masked)."""
    lines = [
        f"# Payouts {summary['execution_date']}{' (dry run)' if summary['dry_run'] else ''}",
        "",
        f"- file: {summary['file'] or 'none'}",
        f"- payouts in the file: {summary['number']}, sum {summary['ctrl_sum']} EUR",
        f"- skipped: {len(summary['skipped'])}, already paid: {len(summary['already_paid'])}, "
        f"warnings: {len(summary['warnings'])}",
        f"- control listing (every payout, full IBANs): {summary['control_listing']}",
    ]
    if summary["blocks"]:
        lines += ["", "| block | trust account | payouts | sum |", "|---|---|---|---|"]
        lines += [
            f"| {b['pmt_inf_id']} | {mask_iban(str(b['debtor_iban']))} | {b['nb_of_txs']} | {b['ctrl_sum']} |"
            for b in summary["blocks"]
        ]
    for title, notes in (("Skipped", summary["skipped"]), ("Already paid", summary["already_paid"])):
        if not notes:
            continue
        lines += [
            "",
            f"## {title}: {len(notes)}",
            "",
            "| payout | reference | rule | reason |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {n['payout_id']} | {n['reference']} | {n['rule']} | {mask_ibans(n['reason']).replace('|', '/')} |"
            for n in notes[:preview_rows]
        ]
        if len(notes) > preview_rows:
            lines += ["", f"The first {preview_rows} above; all in the control listing."]
    if summary["warnings"]:
        lines += ["", f"## Warnings: {len(summary['warnings'])}", ""]
        lines += [f"- {mask_ibans(w)}" for w in summary["warnings"][:preview_rows]]
    return "\n".join(lines)
