"""Payouts by SEPA credit transfer (retained deposits, seed 000): the run's steps, no Prefect import.

Why a module of its own: the ``@task`` in ``tasks/payout_tasks.py`` is thin; the rules are pure
functions in ``tasks/sepa_payout_rules.py`` and ``write_payouts`` is the whole run as a plain
function, usable from a script, the benchmark or a crash test without loading Prefect.

Per run: take the payout lock and recover what a crashed run left -> check every payout (rule by
rule, a bad one is skipped with its reason, the rest go on; the validating child starts
before them) and drop those already paid ->
write the control listing (CSV, owner-only) -> stop here on a dry run -> record the file and its
payouts as ``prepared`` -> write the pain.001 file as ``.part`` while a child validates it ->
atomic rename -> ``written``. See ``connectors/sepa/payout_ledger.py`` for why this order.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from config.settings import HausflowSettings
from connectors.sepa.errors import SepaValidationError
from connectors.sepa.pain001 import Payout
from connectors.sepa.payout_ledger import PayoutLedger, PayoutRow
from connectors.sepa.writing import (
    MAX_NAME,
    ParallelScan,
    block_figures,
    fault_point,
    file_matches_ledger,
    format_cents,
    make_private_dir,
    open_private,
    start_scan,
    transliterate,
)
from tasks.sepa_payout_rules import (
    LISTING_FIELDS,
    PayoutDecision,
    PayoutPlan,
    execution_date_for,
    listing_row,
    plan_payouts,
    pmt_inf_id,
    transfer_blocks,
    write_payout_xml,
)
from tasks.sepa_rules import make_msg_id
from tasks.sepa_run import mask_ibans, run_logger

BERLIN = ZoneInfo("Europe/Berlin")
LOCK_NAME = "sepa-payout-run"
MSG_PREFIX = "HP"

# ---------------------------------------------------------------------------------------------
# The run (I/O)
# ---------------------------------------------------------------------------------------------


def _initiating_party(settings: HausflowSettings) -> str:
    """The manager's name for ``InitgPty`` (``sepa.creditor_name``), checked like every name.

    Raises:
        ValueError: empty or longer than 70 characters once transliterated (fix the settings).
    """
    name = transliterate(settings.sepa.creditor_name)
    if not name or len(name) > MAX_NAME:
        raise ValueError(
            f"sepa.creditor_name {settings.sepa.creditor_name!r} is the initiating party of payout files and "
            f"must be 1-{MAX_NAME} characters once transliterated; fix config/profiles or HAUSFLOW_SEPA__CREDITOR_NAME"
        )
    return name


def write_payouts(
    settings: HausflowSettings,
    payouts: Sequence[Payout],
    run_id: str,
    dry_run: bool = False,
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """Pay ``payouts`` by one pain.001.001.09 file, each payout at most once ever.

    Args:
        settings: the profile's settings (``sepa.creditor_name`` as initiating party,
            ``sepa.payouts``: output folder, batch booking, lead days; ``state_url``; business date).
        payouts: what to pay; order is kept within each debtor account's block.
        run_id: the caller's run id (its first 8 id characters go into the message id).
        dry_run: stop after the control listing; nothing recorded, no file.
        created_at: creation time of the file (UTC now by default); part of the message id.

    Returns:
        Summary: ``file`` (path or None), ``msg_id``, ``number``, ``ctrl_sum``, ``execution_date``,
        ``blocks``, ``control_listing``, ``skipped`` and ``already_paid`` (payout id, reference,
        rule, reason), ``warnings``, ``recovered``.

    Raises:
        ValueError: the initiating party's name is not usable (nothing happens).
        SepaRunLocked: another payout run holds the lock.
        SepaValidationError: the written file failed the schema or its sums (nothing published,
            the payouts are released for the next run).
        SepaLedgerConflict: a payout was recorded by another run meanwhile (nothing written).
    """
    log = run_logger()
    initiating = _initiating_party(settings)
    cfg = settings.sepa.payouts
    today = settings.business_date or datetime.now(BERLIN).date()
    created = (created_at or datetime.now(UTC)).replace(microsecond=0)
    output_dir = Path(cfg.output_dir)
    ledger = PayoutLedger(settings.state_url)
    ledger.acquire_lock(LOCK_NAME, run_id)
    scan: ParallelScan | None = None
    try:
        completed, abandoned, unverified = ledger.recover_files(
            lambda path, msg_id: file_matches_ledger(path, "pain.001", msg_id, ledger.ledger_totals(msg_id))
        )
        for msg_id in completed:
            log.warning(
                "Recovered payout file %s: it was renamed before a crash and is now recorded as written",
                msg_id,
            )
        for msg_id in abandoned:
            log.warning(
                "Dropped unfinished payout file %s of an earlier run: its payouts are paid by this run",
                msg_id,
            )
        for msg_id in unverified:
            log.error(
                "Payout file %s got its final name before a crash and is no longer there as written (moved, "
                "deleted or changed): its payouts count as paid and are not paid again; check with the bank "
                "that it arrived",
                msg_id,
            )
        msg_id = make_msg_id(
            created, run_id.replace("-", "")[:8], ledger.files_of_run(run_id), prefix=MSG_PREFIX
        )
        make_private_dir(output_dir)
        # the validating child starts now and is ready when the checks are done and writing begins
        scan = None if dry_run else start_scan("pain.001")
        listing_path = output_dir / f"payout-listing-{msg_id}.csv"
        with open_private(listing_path, "w", newline="", encoding="utf-8") as fh:  # the listing comes first
            listing = csv.DictWriter(fh, fieldnames=LISTING_FIELDS, delimiter=";")
            listing.writeheader()
            plan = plan_payouts(
                payouts,
                ledger.known_payouts([p.payout_id for p in payouts]),
                execution_date_for(today, cfg.lead_days),
                lambda decision, block: listing.writerow(listing_row(decision, block, msg_id)),
            )
        summary = _summary(
            plan,
            run_id,
            dry_run,
            listing_path,
            {"completed": completed, "abandoned": abandoned, "unverified": unverified},
        )
        # the log is read more widely than the owner-only listing: no full IBAN in it
        for note in (*summary["skipped"], *summary["already_paid"]):
            log.warning("%s [%s] (reference %s)", mask_ibans(note["reason"]), note["rule"], note["reference"])
        for warning in plan.warnings:
            log.warning("%s", mask_ibans(warning))
        log.info(
            "Payout control listing %s: %d to pay (%s EUR), %d skipped, %d already paid",
            listing_path,
            plan.nb_of_txs,
            format_cents(plan.ctrl_sum_cents),
            plan.count("skip"),
            plan.count("already_paid"),
        )
        if dry_run or not plan.blocks:
            if not plan.blocks:
                log.info("No payout to pay: no file written")
            return summary
        path = output_dir / f"{msg_id}.xml"
        blocks = transfer_blocks(plan, msg_id, cfg.batch_booking)
        ledger.begin_file(
            msg_id,
            run_id,
            path,
            listing_path,
            plan.execution_date,
            plan.nb_of_txs,
            Decimal(format_cents(plan.ctrl_sum_cents)),
            _ledger_rows(plan, msg_id),
        )
        fault_point("after_begin")
        try:
            totals = ledger.write_and_publish(
                msg_id,
                path,
                "pain.001",
                lambda fh: write_payout_xml(fh, plan, blocks, msg_id, created, initiating),
                scan,
            )
        except SepaValidationError as exc:
            # a schema error quotes the offending value, an IBAN say: it reaches the log masked
            masked = mask_ibans(str(exc))
            log.error(
                "Payout file %s was not published: %s; its payouts are released for the next run, "
                "see the control listing %s",
                msg_id,
                masked,
                listing_path,
            )
            raise SepaValidationError(masked) from None
        log.info(
            "Payout file %s is complete, valid (GBIC_5) and recorded: %d payouts, %s EUR; hand it to the bank",
            path,
            totals.counted_nb_of_txs,
            totals.counted_ctrl_sum,
        )
        summary.update(
            file=str(path),
            msg_id=msg_id,
            number=totals.counted_nb_of_txs,
            ctrl_sum=str(totals.counted_ctrl_sum),
            blocks=[
                {
                    **figures,
                    "debtor_iban": block.debtor_iban,
                    "execution_date": block.execution_date.isoformat(),
                }
                for figures, block in zip(block_figures(totals), blocks, strict=True)
            ],
        )
        return summary
    finally:
        if scan is not None:
            scan.abort()  # not used (dry run, nothing to pay, an error); a finished child: nothing to do
        ledger.release_lock(LOCK_NAME, run_id)


def _ledger_rows(plan: PayoutPlan, msg_id: str) -> Iterator[PayoutRow]:
    """The ledger rows of the file's payouts, generated block by block (never all at once)."""
    for block in plan.blocks:
        block_id = pmt_inf_id(msg_id, block)
        for tx, reference in zip(block.transfers, block.references, strict=True):
            yield PayoutRow(
                payout_id=tx.end_to_end_id,
                msg_id=msg_id,
                pmt_inf_id=block_id,
                end_to_end_id=tx.end_to_end_id,
                reference=reference[:70],
                creditor_iban=tx.creditor_iban,
                debtor_iban=block.debtor_iban,
                amount=Decimal(format_cents(tx.amount_cents)),
                execution_date=block.execution_date,
            )


def _summary(
    plan: PayoutPlan, run_id: str, dry_run: bool, listing_path: Path, recovered: dict[str, list[str]]
) -> dict[str, Any]:
    """The run's summary before the file: what would be paid, what not and why."""

    def note(d: PayoutDecision) -> dict[str, str]:
        return {
            "payout_id": d.payout.payout_id,
            "reference": d.payout.reference,
            "amount": str(d.payout.amount),
            "rule": d.rule or "",
            "reason": d.reason or "",
        }

    return {
        "run_id": run_id,
        "dry_run": dry_run,
        "execution_date": plan.execution_date.isoformat(),
        "file": None,
        "msg_id": None,
        "number": plan.nb_of_txs,
        "ctrl_sum": format_cents(plan.ctrl_sum_cents),
        "blocks": [],
        "control_listing": str(listing_path),
        "skipped": [note(d) for d in plan.not_paid if d.outcome == "skip"],
        "already_paid": [note(d) for d in plan.not_paid if d.outcome == "already_paid"],
        "warnings": list(plan.warnings),
        "recovered": recovered,
    }
