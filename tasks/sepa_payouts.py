"""Payouts by SEPA credit transfer (retained deposits, seed 000): rules and steps, no Prefect import.

Why a module of its own: the ``@task`` in ``tasks/payout_tasks.py`` is thin; the rules here are
pure functions (tested with tables) and ``write_payouts`` is the whole run as a plain function,
usable from a script, the benchmark or a crash test without loading Prefect.

Per run: take the payout lock and recover what a crashed run left -> check every payout (rule by
rule, a bad one is skipped with its reason, the rest go on) and drop those already paid ->
write the control listing (CSV, owner-only) -> stop here on a dry run -> record the file and its
payouts as ``prepared`` -> write the pain.001 file as ``.part`` while a child validates it ->
atomic rename -> ``written``. See ``connectors/sepa/payout_ledger.py`` for why this order.
"""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Literal
from zoneinfo import ZoneInfo

from config.settings import HausflowSettings
from connectors.sepa.pain001 import CreditTransfer, Payout, TransferBlock, write_pain001
from connectors.sepa.payout_ledger import PaidPayout, PayoutLedger, PayoutRow
from connectors.sepa.writing import (
    MAX_NAME,
    MAX_REMITTANCE,
    block_figures,
    check_amount,
    check_bic,
    check_iban,
    compact_account,
    fault_point,
    file_matches_ledger,
    fit_text,
    format_cents,
    is_valid_sepa_id,
    make_private_dir,
    open_private,
    to_cents,
    transliterate,
)
from tasks.sepa_rules import add_business_days, make_msg_id, next_business_day

BERLIN = ZoneInfo("Europe/Berlin")
LOCK_NAME = "sepa-payout-run"
MSG_PREFIX = "HP"

# ---------------------------------------------------------------------------------------------
# Rules (pure)
# ---------------------------------------------------------------------------------------------

Outcome = Literal["pay", "skip", "already_paid"]


@dataclass(frozen=True, slots=True)
class PayoutDecision:
    """What happens to one payout: paid in this file (with its transfer), skipped, or paid before.

    ``rule`` and ``reason`` name why a payout is skipped or already paid; ``warnings`` what was
    changed on the way (a shortened remittance, a differing debtor name).
    """

    payout: Payout
    outcome: Outcome
    transfer: CreditTransfer | None = None
    debtor_name: str = ""
    debtor_iban: str = ""
    debtor_bic: str | None = None
    rule: str | None = None
    reason: str | None = None
    warnings: tuple[str, ...] = ()


def _same_or(original: str, value: str) -> str:
    """``original`` itself when equal to ``value`` (a hundred thousand texts need no second copy)."""
    return original if original == value else value


def _name(text: str, role: str, payout: Payout) -> tuple[str | None, str | None]:
    """A party name transliterated, or the reason it cannot go into the file.

    Names are never shortened: the payee's bank compares the name with the account holder, and
    a cut name may not match; a name too long is a payout to fix in the ERP.
    """
    name = _same_or(text, transliterate(text))
    if not name:
        return None, f"{role} name {text!r} is empty once transliterated to the SEPA character set"
    if len(name) > MAX_NAME:
        return None, (
            f"{role} name is {len(name)} characters once transliterated ('{name}'); SEPA allows "
            f"{MAX_NAME} and a shortened name may not match the account holder: shorten it in the ERP"
        )
    return name, None


def check_payout(payout: Payout) -> PayoutDecision:
    """Check one payout rule by rule; the first broken rule skips it with a reason naming it.

    Rules: ``payout.id`` (the booking id is the EndToEndId: 1-35 characters of the SEPA id set,
    never altered, or the bank statement could not be matched), ``payout.amount`` (0.01 to
    999,999,999.99 EUR, two decimals), ``payout.creditor_iban``/``payout.debtor_iban`` (schwifty:
    check digits, German account check), ``payout.creditor_bic``/``payout.debtor_bic`` (valid,
    same country and bank as the IBAN; empty is fine), ``payout.same_account``,
    ``payout.creditor_name``/``payout.debtor_name`` (transliterated; refused when empty or
    longer than 70). The remittance is transliterated and, above 140 characters, shortened at a
    word boundary with a warning naming the dropped words (it is information, not an identity).
    """

    def skip(rule: str, reason: str) -> PayoutDecision:
        return PayoutDecision(payout, "skip", rule=rule, reason=f"payout {payout.payout_id!r}: {reason}")

    if not is_valid_sepa_id(payout.payout_id):
        return skip(
            "payout.id",
            "the booking id is the EndToEndId and must be 1-35 characters of A-Z a-z 0-9 space + ? / - : ( ) . , ' "
            "(it is never changed, or the bank statement could not be matched): correct the booking id in the ERP",
        )
    if error := check_amount(payout.amount):
        return skip("payout.amount", f"{error}; correct the booking amount")
    creditor_iban = compact_account(payout.creditor_iban)
    debtor_iban = compact_account(payout.debtor_iban)
    creditor_bic = compact_account(payout.creditor_bic) or None
    debtor_bic = compact_account(payout.debtor_bic) or None
    if error := check_iban(creditor_iban):
        return skip("payout.creditor_iban", f"creditor {error}; correct the recipient's bank details")
    if error := check_bic(creditor_bic, creditor_iban):
        return skip("payout.creditor_bic", f"creditor {error}; correct or remove the recipient's BIC")
    if error := check_iban(debtor_iban):
        return skip("payout.debtor_iban", f"trust account {error}; correct the object's trust pooled account")
    if error := check_bic(debtor_bic, debtor_iban):
        return skip("payout.debtor_bic", f"trust account {error}; correct or remove its BIC")
    if creditor_iban == debtor_iban:
        return skip("payout.same_account", f"creditor and debtor account are the same ({debtor_iban})")
    creditor_name, error = _name(payout.creditor_name, "creditor", payout)
    if error or creditor_name is None:
        return skip("payout.creditor_name", error or "")
    debtor_name, error = _name(payout.debtor_name, "debtor", payout)
    if error or debtor_name is None:
        return skip("payout.debtor_name", error or "")
    remittance, warning = fit_text(
        _same_or(payout.remittance, transliterate(payout.remittance)), MAX_REMITTANCE
    )
    warnings = (f"payout {payout.payout_id} ({payout.reference}): remittance {warning}",) if warning else ()
    transfer = CreditTransfer(
        payout.payout_id,
        to_cents(payout.amount),
        creditor_name,
        _same_or(payout.creditor_iban, creditor_iban),
        creditor_bic,
        remittance or None,
    )
    return PayoutDecision(payout, "pay", transfer, debtor_name, debtor_iban, debtor_bic, warnings=warnings)


@dataclass
class PayoutBlockPlan:
    """The payouts of one debtor account and execution date (one PmtInf block)."""

    debtor_iban: str
    debtor_name: str
    debtor_bic: str | None
    execution_date: date
    transfers: list[CreditTransfer] = field(default_factory=list)
    ctrl_sum_cents: int = 0


@dataclass
class PayoutPlan:
    """Every payout's decision, in input order, and the blocks of the file to write."""

    execution_date: date
    decisions: list[PayoutDecision]
    blocks: list[PayoutBlockPlan]

    @property
    def nb_of_txs(self) -> int:
        """Payouts going into the file."""
        return sum(len(b.transfers) for b in self.blocks)

    @property
    def ctrl_sum_cents(self) -> int:
        """Sum of the file in cents."""
        return sum(b.ctrl_sum_cents for b in self.blocks)

    def count(self, outcome: Outcome) -> int:
        """How many payouts have ``outcome``."""
        return sum(1 for d in self.decisions if d.outcome == outcome)


def plan_payouts(
    payouts: Sequence[Payout], already: dict[str, PaidPayout], execution_date: date
) -> PayoutPlan:
    """Decide every payout and group those to pay into one block per debtor account and date.

    A payout the ledger already holds (``already``) is ``already_paid`` and not written again; a
    payout id that occurs a second time in ``payouts`` is skipped (``payout.duplicate``). Blocks
    come in order of first appearance; within a block, payouts keep their input order. The
    debtor name and BIC of a block are its first payout's; a later payout of the same account
    with another name or BIC is paid with a warning saying so.
    """
    decisions: list[PayoutDecision] = []
    blocks: dict[str, PayoutBlockPlan] = {}
    seen: set[str] = set()
    for payout in payouts:
        paid = already.get(payout.payout_id)
        if paid is not None:
            decisions.append(
                PayoutDecision(
                    payout,
                    "already_paid",
                    rule="payout.ledger",
                    reason=f"payout {payout.payout_id!r} is already in file {paid.msg_id} ({paid.status}, "
                    f"execution date {paid.execution_date:%d.%m.%Y}): not written again",
                )
            )
            continue
        if payout.payout_id in seen:
            decisions.append(
                PayoutDecision(
                    payout,
                    "skip",
                    rule="payout.duplicate",
                    reason=f"payout {payout.payout_id!r} occurs more than once in this run: only the first "
                    "is paid; check the bookings in the ERP",
                )
            )
            continue
        seen.add(payout.payout_id)
        decision = check_payout(payout)
        transfer = decision.transfer
        if transfer is not None:
            block = blocks.get(decision.debtor_iban)
            if block is None:
                block = blocks[decision.debtor_iban] = PayoutBlockPlan(
                    decision.debtor_iban, decision.debtor_name, decision.debtor_bic, execution_date
                )
            elif (block.debtor_name, block.debtor_bic) != (decision.debtor_name, decision.debtor_bic):
                warning = (
                    f"payout {payout.payout_id} ({payout.reference}): trust account {decision.debtor_iban} "
                    f"is named '{decision.debtor_name}' (BIC {decision.debtor_bic}) here but "
                    f"'{block.debtor_name}' (BIC {block.debtor_bic}) in an earlier payout; the file uses the latter"
                )
                decision = PayoutDecision(
                    payout,
                    "pay",
                    transfer,
                    block.debtor_name,
                    block.debtor_iban,
                    block.debtor_bic,
                    warnings=(*decision.warnings, warning),
                )
            block.transfers.append(transfer)
            block.ctrl_sum_cents += transfer.amount_cents
        decisions.append(decision)
    return PayoutPlan(execution_date, decisions, list(blocks.values()))


def transfer_blocks(plan: PayoutPlan, msg_id: str, batch_booking: bool | None) -> list[TransferBlock]:
    """The file's PmtInf blocks (``<MsgId>-001``, ...) with their announced counts and sums."""
    return [
        TransferBlock(
            pmt_inf_id=f"{msg_id}-{number:03d}",
            execution_date=b.execution_date,
            debtor_name=b.debtor_name,
            debtor_iban=b.debtor_iban,
            debtor_bic=b.debtor_bic,
            nb_of_txs=len(b.transfers),
            ctrl_sum_cents=b.ctrl_sum_cents,
            batch_booking=batch_booking,
        )
        for number, b in enumerate(plan.blocks, start=1)
    ]


def execution_date_for(today: date, lead_days: int = 0) -> date:
    """The requested execution date of a payout file handed in ``today``.

    The next TARGET2 business day (``today`` itself when it is one), plus ``lead_days`` business
    days. Bank cut-off times are not modelled: a file handed in after the cut-off executes a day
    later, which a credit transfer allows.
    """
    return add_business_days(next_business_day(today), lead_days)


LISTING_FIELDS = (
    "outcome",
    "payout_id",
    "reference",
    "amount",
    "execution_date",
    "creditor_name",
    "creditor_iban",
    "creditor_bic",
    "debtor_name",
    "debtor_iban",
    "debtor_bic",
    "remittance",
    "end_to_end_id",
    "msg_id",
    "pmt_inf_id",
    "rule",
    "notes",
)


def listing_rows(plan: PayoutPlan, msg_id: str, pmt_inf_ids: dict[str, str]) -> Iterator[dict[str, str]]:
    """Rows of the control listing: every payout with its outcome, the texts as they go into the
    file (or as given, when skipped), the rule and every reason or warning."""
    for d in plan.decisions:
        p = d.payout
        tx = d.transfer
        notes = [d.reason] if d.reason else []
        notes.extend(d.warnings)
        yield {
            "outcome": d.outcome,
            "payout_id": p.payout_id,
            "reference": p.reference,
            "amount": f"{p.amount:.2f}" if check_amount(p.amount) is None else str(p.amount),
            "execution_date": plan.execution_date.isoformat() if d.outcome == "pay" else "",
            "creditor_name": tx.creditor_name if tx else p.creditor_name,
            "creditor_iban": tx.creditor_iban if tx else p.creditor_iban,
            "creditor_bic": (tx.creditor_bic if tx else p.creditor_bic) or "",
            "debtor_name": d.debtor_name or p.debtor_name,
            "debtor_iban": d.debtor_iban or p.debtor_iban,
            "debtor_bic": (d.debtor_bic if tx else p.debtor_bic) or "",
            "remittance": (tx.remittance or "") if tx else p.remittance,
            "end_to_end_id": tx.end_to_end_id if tx else "",
            "msg_id": msg_id if tx else "",
            "pmt_inf_id": pmt_inf_ids.get(d.debtor_iban, "") if tx else "",
            "rule": d.rule or "",
            "notes": " | ".join(notes),
        }


# ---------------------------------------------------------------------------------------------
# The run (I/O)
# ---------------------------------------------------------------------------------------------


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """Prefect's run logger inside a run, a plain logger outside (scripts, crash tests)."""
    if "prefect" in sys.modules:
        from prefect import get_run_logger
        from prefect.exceptions import MissingContextError

        try:
            return get_run_logger()  # type: ignore[return-value]
        except MissingContextError:
            pass
    return logging.getLogger("hausflow.sepa.payouts")


def write_payout_xml(
    out: IO[bytes],
    plan: PayoutPlan,
    blocks: Sequence[TransferBlock],
    msg_id: str,
    created_at: datetime,
    initiating: str,
) -> tuple[int, int]:
    """Stream the plan's pain.001 document (blocks from ``transfer_blocks``); fault point per transfer."""
    by_id = {block.pmt_inf_id: planned for block, planned in zip(blocks, plan.blocks, strict=True)}

    def transfers(block: TransferBlock) -> Iterator[CreditTransfer]:
        for tx in by_id[block.pmt_inf_id].transfers:
            yield tx
            fault_point("after_tx")

    return write_pain001(out, msg_id, created_at, initiating, blocks, transfers)


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
    try:
        completed, abandoned = ledger.recover_files(
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
        plan = plan_payouts(
            payouts,
            ledger.known_payouts([p.payout_id for p in payouts]),
            execution_date_for(today, cfg.lead_days),
        )
        msg_id = make_msg_id(
            created, run_id.replace("-", "")[:8], ledger.files_of_run(run_id), prefix=MSG_PREFIX
        )
        blocks = transfer_blocks(plan, msg_id, cfg.batch_booking)
        make_private_dir(output_dir)
        listing_path = output_dir / f"payout-listing-{msg_id}.csv"
        pmt_inf_ids = {b.debtor_iban: b.pmt_inf_id for b in blocks}
        with open_private(listing_path, "w", newline="", encoding="utf-8") as fh:
            listing = csv.DictWriter(fh, fieldnames=LISTING_FIELDS, delimiter=";")
            listing.writeheader()
            listing.writerows(listing_rows(plan, msg_id, pmt_inf_ids))
        summary = _summary(
            plan, run_id, dry_run, listing_path, {"completed": completed, "abandoned": abandoned}
        )
        for note in (*summary["skipped"], *summary["already_paid"]):
            log.warning("%s [%s] (reference %s)", note["reason"], note["rule"], note["reference"])
        for note in summary["warnings"]:
            log.warning("%s", note)
        log.info(
            "Payout control listing %s: %d to pay (%s EUR), %d skipped, %d already paid",
            listing_path,
            plan.nb_of_txs,
            format_cents(plan.ctrl_sum_cents),
            plan.count("skip"),
            plan.count("already_paid"),
        )
        if dry_run or not blocks:
            if not blocks:
                log.info("No payout to pay: no file written")
            return summary
        path = output_dir / f"{msg_id}.xml"
        rows = [
            PayoutRow(
                payout_id=d.payout.payout_id,
                msg_id=msg_id,
                pmt_inf_id=pmt_inf_ids[d.debtor_iban],
                end_to_end_id=d.transfer.end_to_end_id,
                reference=d.payout.reference[:70],
                creditor_iban=d.transfer.creditor_iban,
                debtor_iban=d.debtor_iban,
                amount=Decimal(format_cents(d.transfer.amount_cents)),
                execution_date=plan.execution_date,
            )
            for d in plan.decisions
            if d.transfer is not None
        ]
        ledger.begin_file(msg_id, run_id, path, listing_path, plan.execution_date, rows)
        del rows
        fault_point("after_begin")
        totals = ledger.write_and_publish(
            msg_id,
            path,
            "pain.001",
            lambda fh: write_payout_xml(fh, plan, blocks, msg_id, created, initiating),
        )
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
        ledger.release_lock(LOCK_NAME, run_id)


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
        "skipped": [note(d) for d in plan.decisions if d.outcome == "skip"],
        "already_paid": [note(d) for d in plan.decisions if d.outcome == "already_paid"],
        "warnings": [w for d in plan.decisions for w in d.warnings],
        "recovered": recovered,
    }
