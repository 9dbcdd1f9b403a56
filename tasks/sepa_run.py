"""The SEPA debit run and the statement reconciliation as plain functions (no Prefect import).

Why a module of its own: the ``@task`` wrappers in ``tasks/sepa_tasks.py`` are thin; the steps
here are what they call, usable from a script or a crash test without loading Prefect (2-3 s).
Each step builds its engines and stores from URLs (plain data in), reads with connectors and
decides with the rules of ``tasks/sepa_rules.py``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from schwifty.exceptions import InvalidCountryCode
from schwifty.registry import get_iban_spec

from config.settings import HausflowSettings
from connectors.erp.database import make_engine
from connectors.sepa.camt import (
    MESSAGE_NAMES,
    CamtEntry,
    CamtRejected,
    iter_entries,
    open_camt,
    validate_camt,
)
from connectors.sepa.debit_files import check_published_file, plan_files, produce_file
from connectors.sepa.erp import (
    mark_claims_paid,
    read_candidate_claims,
    read_mandates,
    set_claim_status,
    settle_claim,
)
from connectors.sepa.ledger import SepaLedger
from connectors.sepa.pain008 import Creditor
from connectors.sepa.spool import BlockKey, SpoolWriter, remove_spool, remove_stale_spools
from connectors.sepa.writing import make_private_dir, open_private
from connectors.state_store import QuarantineItem, StateStore
from tasks.sepa_rules import (
    LISTING_FIELDS,
    NOTPROVIDED,
    ClaimRecord,
    Decision,
    Mandate,
    MandateHistory,
    ReleaseBudget,
    RunContext,
    Way,
    check_bic,
    check_creditor_id,
    check_iban,
    choose_recurrent_mandate,
    claim_collection_date,
    classify_entry,
    decide_claim,
    earliest_collection_date,
    effective_collection_date,
    listing_row,
    make_msg_id,
    mask_iban,
    return_reason_text,
    sanitize_id,
    selection_way,
    settle_amount,
    transliterate,
)

BERLIN = ZoneInfo("Europe/Berlin")
QUARANTINE_TARGET = "sepa"
LOCK_NAME = "sepa-debit-run"


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """Prefect's run logger inside a run, a plain logger outside (scripts, crash tests)."""
    if "prefect" in sys.modules:  # only inside a Prefect process can there be a run context
        from prefect import get_run_logger
        from prefect.exceptions import MissingContextError

        try:
            return get_run_logger()  # type: ignore[return-value]
        except MissingContextError:
            pass
    return logging.getLogger("hausflow.sepa")


def current_run_id() -> str:
    """The Prefect flow run id, or a fresh uuid outside Prefect."""
    if "prefect" in sys.modules:
        from prefect.runtime import flow_run

        if flow_run.id:
            return str(flow_run.id)
    return str(uuid.uuid4())


def business_today(settings: HausflowSettings) -> date:
    """Today in Europe/Berlin, or the fixed ``business_date`` of the settings (tests, replays)."""
    return settings.business_date or datetime.now(BERLIN).date()


# ---------------------------------------------------------------------------------------------
# Debit run
# ---------------------------------------------------------------------------------------------


@dataclass
class SepaRun:
    """Everything the debit run's tasks share, as plain data."""

    run_id: str
    erp_url: str
    state_url: str
    sepa: dict[str, Any]
    today: date
    requested_date: date
    collection_date: date
    batch_booking: bool | None
    dry_run: bool
    output_dir: Path
    work_dir: Path
    created_at: datetime
    date_warnings: list[str] = field(default_factory=list)
    recovery: dict[str, list[str]] = field(default_factory=dict)

    @property
    def run_token(self) -> str:
        """Eight characters of the run id used in message ids and file names."""
        return self.run_id.replace("-", "")[:8]


def check_creditor(sepa: dict[str, Any]) -> list[str]:
    """Problems with the creditor side of the settings (empty list: fine). Any problem stops the run."""
    problems = []
    if error := check_creditor_id(sepa["creditor_id"]):
        problems.append(error)
    if (error := check_iban(sepa["creditor_iban"])) or (
        error := check_bic(sepa.get("creditor_bic") or None, sepa["creditor_iban"])
    ):
        problems.append(f"creditor {error}")
    if not transliterate(sepa["creditor_name"]):
        problems.append("creditor name is empty")
    if sepa["max_transactions_per_file"] < 1:
        problems.append("max_transactions_per_file must be at least 1")
    return problems


def start_debit_run(
    settings: HausflowSettings,
    collection_date: date | None,
    batch_booking: bool | None,
    dry_run: bool,
    run_id: str | None = None,
    created_at: datetime | None = None,
) -> SepaRun:
    """Check settings and dates, take the run lock, and recover what an earlier run left behind.

    Args:
        settings: the profile's settings (creditor, template, limits, URLs, business date).
        collection_date: requested date; None means the earliest possible date (no warning).
        batch_booking: overrides the stored default ``sepa.batch_booking`` when not None.
        dry_run: the run stops after the control listing and records nothing.
        run_id: the Prefect flow run id by default; fixed ids make file names reproducible (tests).
        created_at: creation time of the files (UTC now by default); part of the message ids.

    Raises:
        ValueError: creditor settings are wrong or the date is too far ahead (nothing happens).
        SepaRunLocked: another debit run is active.
    """
    log = run_logger()
    sepa = settings.sepa.model_dump()
    problems = check_creditor(sepa)
    if problems:
        raise ValueError(
            "SEPA settings are not usable: "
            + "; ".join(problems)
            + " (fix config/profiles or HAUSFLOW_SEPA__*)"
        )
    today = business_today(settings)
    requested = collection_date or earliest_collection_date(today, sepa["lead_days"])
    chosen = effective_collection_date(requested, today, sepa["lead_days"], sepa["max_days_ahead"])
    for warning in chosen.warnings:
        log.warning(warning)
    run_id = run_id or current_run_id()
    output_dir = Path(sepa["output_dir"])
    run = SepaRun(
        run_id=run_id,
        erp_url=settings.erp_url,
        state_url=settings.state_url,
        sepa=sepa,
        today=today,
        requested_date=requested,
        collection_date=chosen.effective,
        batch_booking=sepa["batch_booking"] if batch_booking is None else batch_booking,
        dry_run=dry_run,
        output_dir=output_dir,
        work_dir=output_dir / f".work-{run_id.replace('-', '')[:8]}",
        created_at=(created_at or datetime.now(UTC)).replace(microsecond=0),
        date_warnings=list(chosen.warnings),
    )
    ledger = SepaLedger(settings.state_url)
    ledger.acquire_lock(LOCK_NAME, run_id)
    try:
        erp = make_engine(settings.erp_url)
        report = ledger.recover(_erp_status_updater(erp), check_published_file(ledger))
        for folder in remove_stale_spools(output_dir, run.work_dir):
            log.warning("Deleted the spool %s that an earlier run left behind (names and IBANs)", folder)
    except BaseException:
        ledger.release_lock(LOCK_NAME, run_id)
        raise
    run.recovery = {
        "completed": report.completed_files,
        "abandoned": report.abandoned_files,
        "erp_resynced": report.resynced_files,
        "unverified": report.unverified_files,
    }
    for msg_id in report.completed_files:
        log.warning("Recovered file %s: it was renamed before a crash and is now recorded as written", msg_id)
    for msg_id in report.abandoned_files:
        log.warning("Dropped unfinished file %s of an earlier run: its claims can be collected again", msg_id)
    for msg_id in report.unverified_files:
        log.error(
            "File %s got its final name before a crash and is no longer there as written (moved, deleted "
            "or changed): its claims stay collected and are not collected again; check with the bank that "
            "it arrived",
            msg_id,
        )
    for msg_id in report.resynced_files:
        log.warning(
            "Set the claims of file %s to IN_COLLECTION in the ERP (an earlier run stopped before)", msg_id
        )
    log.info(
        "SEPA debit run %s: collection date %s (asked %s), batch booking %s%s",
        run_id,
        run.collection_date.strftime("%d.%m.%Y"),
        requested.strftime("%d.%m.%Y"),
        run.batch_booking,
        ", DRY RUN" if dry_run else "",
    )
    return run


def _erp_status_updater(engine: Any) -> Callable[[Sequence[str], str], None]:
    def update(claim_nos: Sequence[str], status: str) -> None:
        set_claim_status(engine, claim_nos, status, only_from=("OPEN",))

    return update


@dataclass
class DebitPlan:
    """Result of the planning pass: the control listing and the spooled blocks.

    ``quarantined``, ``skipped`` and ``warned`` are the first ``listing_preview_rows`` claims in
    quarantine, skipped claims and warning lines (claim, person, mandate, rule, reason or
    warning; IBANs masked) for the UI; ``counts`` and ``warnings`` count all of them, and the
    control listing (CSV) holds every one.
    """

    listing_path: Path
    preview: list[dict[str, str]]
    counts: dict[str, int]
    debit_sum_cents: int
    blocks: list[tuple[BlockKey, int, int]]
    warnings: int
    quarantined: list[dict[str, str]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    warned: list[dict[str, str]] = field(default_factory=list)


IBAN_IN_TEXT = re.compile(r"\b[A-Z]{2}\d{2}[A-Z0-9]{11,30}\b")


def _mask_if_iban(match: re.Match[str]) -> str:
    """The match masked when it starts with an IBAN country code; a message id such as
    ``HP20260302090000`` has the same shape and stays readable."""
    candidate = match.group(0)
    try:
        get_iban_spec(candidate[:2])
    except InvalidCountryCode:
        return candidate
    return mask_iban(candidate)


def mask_ibans(text: str) -> str:
    """``text`` with every IBAN in it masked (an amendment's original IBAN, a skipped payout's
    account, a schema error quoting one), for logs and the UI; valid or not, it is masked."""
    return IBAN_IN_TEXT.sub(_mask_if_iban, text)


def claim_note(decision: Decision, text: str) -> dict[str, str]:
    """One line of the control summary: the claim, its person and mandate, the rule and a reason
    or warning (IBANs masked)."""
    return {
        "claim_no": decision.claim.claim_no,
        "person_no": decision.claim.person_no,
        "mandate_id": decision.mandate.mandate_id if decision.mandate else "",
        "rule": decision.rule or "",
        "text": mask_ibans(text),
    }


def _mandate(row: dict[str, Any]) -> Mandate:
    return Mandate(
        mandate_id=row["mandate_id"],
        person_no=row["person_no"],
        mandate_type=row["mandate_type"] or "RECURRENT",
        iban=row["iban"] or "",
        bic=row["bic"],
        account_holder=row["account_holder"] or "",
        signed_on=row["signed_on"],
        first_collection_on=row["first_collection_on"],
        last_collection_on=row["last_collection_on"],
        original_iban=row["original_iban"],
        revoked_on=row["revoked_on"],
    )


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _none(value: Any) -> Any:
    """pandas gives NaN/NaT/None for SQL NULL; rules want None."""
    try:
        if value is None or value != value:  # NaN
            return None
    except (TypeError, ValueError):
        return value
    return value


def plan_debits(run: SepaRun, chunk_rows: int = 5_000) -> DebitPlan:
    """Select, check and spool every claim; write the control listing (CSV) as it goes.

    Streams the ERP in chunks; per chunk one query each for mandates, ledger states and mandate
    history. Quarantined claims go to the state store (not in a dry run). Memory holds one chunk.
    """
    log = run_logger()
    sepa = run.sepa
    erp = make_engine(run.erp_url)
    ledger = SepaLedger(run.state_url)
    store = None if run.dry_run else StateStore(run.state_url)
    ctx = RunContext(
        end_to_end_template=sepa["end_to_end_template"], lapse_months=sepa["mandate_lapse_months"]
    )
    horizon = run.collection_date.toordinal() + sepa["collection_horizon_days"]
    due_until = date.fromordinal(horizon)
    make_private_dir(run.output_dir)
    listing_path = run.output_dir / f"control-listing-{run.collection_date.isoformat()}-{run.run_token}.csv"
    spool = None if run.dry_run else SpoolWriter(run.work_dir, sepa["max_transactions_per_file"])
    budget = ReleaseBudget()
    counts = {"debit": 0, "quarantine": 0, "skip": 0}
    preview: list[dict[str, str]] = []
    quarantined: list[dict[str, str]] = []
    skipped: list[dict[str, str]] = []
    warned: list[dict[str, str]] = []
    failing: set[tuple[str, str]] = set()
    debit_sum = 0
    warnings = 0
    preview_rows = sepa["listing_preview_rows"]
    with open_private(listing_path, "w", newline="", encoding="utf-8") as fh:
        listing = csv.DictWriter(fh, fieldnames=LISTING_FIELDS, delimiter=";")
        listing.writeheader()

        def emit(decision: Decision, day: date | None) -> None:
            nonlocal warnings
            row = listing_row(decision, day)
            listing.writerow(row)
            counts[decision.outcome] += 1
            warnings += len(decision.warnings)
            if len(preview) < preview_rows:
                preview.append(
                    {
                        **row,
                        "iban": mask_iban(row["iban"]),
                        "amendment": mask_ibans(row["amendment"]),
                        "warnings": mask_ibans(row["warnings"]),
                    }
                )
            if decision.outcome == "skip" and len(skipped) < preview_rows:
                skipped.append(claim_note(decision, decision.reason or ""))
            for warning in decision.warnings[: max(preview_rows - len(warned), 0)]:
                warned.append(claim_note(decision, warning))

        for frame in read_candidate_claims(erp, due_until, chunk_rows):
            records = frame.to_dict("records")
            person_nos = [r["person_no"] for r in records]
            single_ids = [r["single_mandate_id"] for r in records if _none(r["single_mandate_id"])]
            mandate_rows = [
                _mandate(m) for m in read_mandates(erp, person_nos=person_nos, mandate_ids=single_ids)
            ]
            by_id = {m.mandate_id: m for m in mandate_rows}
            by_person: dict[str, list[Mandate]] = {}
            for m in mandate_rows:
                by_person.setdefault(m.person_no, []).append(m)
            states = ledger.claim_states([r["claim_no"] for r in records])
            budget_people = [
                r["person_no"] for r in records if not r["auto_debit"] and _none(r["elv_release_amount"])
            ]
            in_flight = ledger.in_flight_by_person(budget_people) if budget_people else {}
            chosen: dict[str, Mandate | None] = {}
            for person_no in set(person_nos):
                chosen[person_no] = choose_recurrent_mandate(
                    by_person.get(person_no, []), run.collection_date
                )
            used_ids = {m.mandate_id for m in chosen.values() if m} | set(single_ids)
            history_rows = ledger.mandate_history(sorted(used_ids))
            quarantine_items: list[QuarantineItem] = []
            for rec in records:
                claim = ClaimRecord(
                    claim_no=rec["claim_no"],
                    person_no=rec["person_no"],
                    object_no=rec["object_no"],
                    invoice_no=str(rec["invoice_no"]),
                    invoice_date=_as_date(rec["invoice_date"]),
                    due_date=_as_date(rec["due_date"]),
                    open_amount=Decimal(str(rec["open_amount"])),
                    booking_text=_none(rec["booking_text"]),
                    single_mandate_id=_none(rec["single_mandate_id"]),
                    auto_debit=bool(rec["auto_debit"]),
                    release_amount=_none(rec["elv_release_amount"]),
                    remittance_lines=tuple(_none(rec[f"remittance_line{i}"]) for i in (1, 2, 3)),
                )
                way = selection_way(claim.single_mandate_id, claim.auto_debit, claim.release_amount)
                if way is None:  # the query already filters; kept for safety
                    continue
                state = states.get(claim.claim_no)
                if state is not None and state.blocking_status is not None:
                    emit(
                        Decision(
                            "skip",
                            claim,
                            way,
                            rule="sepa.ledger",
                            reason=f"already {state.blocking_status} in file {state.blocking_msg_id}; "
                            "not collected again (the ERP status is behind: run the reconciliation)",
                        ),
                        None,
                    )
                    continue
                day = claim_collection_date(
                    claim.due_date, run.collection_date, run.today, sepa["max_days_ahead"]
                )
                if day is None:
                    emit(
                        Decision(
                            "skip", claim, way, rule="sepa.date", reason="due too far ahead for this run"
                        ),
                        None,
                    )
                    continue
                if way == Way.SINGLE_MANDATE:
                    mandate = by_id.get(claim.single_mandate_id or "")
                else:
                    mandate = chosen.get(claim.person_no)
                last, ibans = (
                    history_rows.get(mandate.mandate_id, (None, frozenset()))
                    if mandate
                    else (None, frozenset())
                )
                history = MandateHistory(last, ibans)
                decision = decide_claim(
                    claim,
                    way,
                    mandate,
                    history,
                    ctx,
                    day,
                    single_mandate_used=bool(mandate and (last or mandate.first_collection_on)),
                )
                if (
                    decision.outcome == "debit"
                    and way == Way.RELEASE_BUDGET
                    and not budget.take(
                        claim.person_no,
                        Decimal(str(claim.release_amount)),
                        decision.amount_cents,
                        in_flight.get(claim.person_no, 0),
                    )
                ):
                    decision = Decision(
                        "skip",
                        claim,
                        way,
                        rule="sepa.budget",
                        reason=f"released budget {Decimal(str(claim.release_amount)):.2f} EUR of person "
                        f"{claim.person_no} is used up by older claims",
                        mandate=decision.mandate,
                    )
                emit(decision, day if decision.outcome == "debit" else None)
                if decision.outcome == "quarantine":
                    failing.add(("claim", claim.claim_no))
                    quarantine_items.append(
                        QuarantineItem(
                            "claim", claim.claim_no, decision.rule or "sepa", decision.reason or ""
                        )
                    )
                    if len(quarantined) < preview_rows:
                        quarantined.append(claim_note(decision, decision.reason or ""))
                    log.warning("Quarantine: %s [%s]", decision.reason, decision.rule)
                elif decision.outcome == "debit":
                    debit_sum += decision.amount_cents
                    if spool is not None:
                        _spool(spool, decision, day, state.next_attempt if state else 1)
            if store is not None and quarantine_items:
                store.quarantine(QUARANTINE_TARGET, quarantine_items, run.run_id)
    if spool is not None:
        spool.close()
    if store is not None:
        resolved = store.resolve_quarantine(QUARANTINE_TARGET, failing)
        if resolved:
            log.info("%d SEPA quarantine entries of earlier runs are resolved", resolved)
    blocks = [(k, s.nb_of_txs, s.ctrl_sum_cents) for k, s in (spool.stats.items() if spool else [])]
    log.info(
        "Control listing %s: %d to debit (%s EUR), %d in quarantine, %d skipped, %d warnings",
        listing_path,
        counts["debit"],
        f"{Decimal(debit_sum) / 100:.2f}",
        counts["quarantine"],
        counts["skip"],
        warnings,
    )
    return DebitPlan(listing_path, preview, counts, debit_sum, blocks, warnings, quarantined, skipped, warned)


def _spool(spool: SpoolWriter, decision: Decision, day: date, attempt: int) -> None:
    mandate = decision.mandate
    assert mandate is not None and decision.sequence_type is not None
    amend = decision.amendment
    spool.add(
        day,
        decision.sequence_type,
        {
            "claim_no": decision.claim.claim_no,
            "attempt": attempt,
            "person_no": decision.claim.person_no,
            "object_no": decision.claim.object_no,
            "end_to_end_id": decision.end_to_end_id,
            "amount_cents": decision.amount_cents,
            "mandate_id": mandate.mandate_id,
            "mandate_signed_on": mandate.signed_on.isoformat(),
            "debtor_name": decision.debtor_name,
            "debtor_iban": mandate.iban,
            "debtor_bic": mandate.bic,
            "remittance": decision.remittance,
            "original_debtor_iban": amend.original_iban if amend else None,
            "original_agent_smnda": "1" if amend and amend.smnda else "",
        },
    )


def write_debit_files(run: SepaRun, plan: DebitPlan) -> list[dict[str, Any]]:
    """Write every planned file crash-safely (see ``connectors/sepa/debit_files.py``)."""
    log = run_logger()
    if not plan.blocks:
        log.info("Nothing to collect: no file written")
        return []
    sepa = run.sepa
    creditor = Creditor(
        name=transliterate(sepa["creditor_name"])[:70],
        iban=sepa["creditor_iban"].replace(" ", "").upper(),
        bic=(sepa.get("creditor_bic") or "").replace(" ", "").upper() or None,
        creditor_id=sepa["creditor_id"].replace(" ", "").upper(),
    )
    ledger = SepaLedger(run.state_url)
    erp = make_engine(run.erp_url)
    plans = plan_files(
        plan.blocks,
        lambda index: make_msg_id(run.created_at, run.run_token, index),
        run.output_dir,
        run.batch_booking,
    )
    out = []
    for file_plan in plans:
        log.info(
            "Writing %s: %d direct debits, %s EUR, %d payment blocks",
            file_plan.path.name,
            file_plan.nb_of_txs,
            f"{Decimal(file_plan.ctrl_sum_cents) / 100:.2f}",
            len(file_plan.blocks),
        )
        written = produce_file(
            file_plan,
            run.work_dir,
            creditor,
            ledger,
            run.run_id,
            run.created_at,
            run.batch_booking,
            _erp_status_updater(erp),
            on_progress=_progress_logger(log, file_plan.path.name),
        )
        log.info("File %s is complete, valid (GBIC_5) and recorded: hand it to the bank", written.path)
        out.append(
            {
                "msg_id": written.msg_id,
                "path": str(written.path),
                "nb_of_txs": written.nb_of_txs,
                "ctrl_sum": written.ctrl_sum,
                "blocks": written.blocks,
            }
        )
    return out


def _progress_logger(log: Any, name: str) -> Callable[[int], None]:
    def progress(count: int) -> None:
        log.info("%s: %d transactions written", name, count)

    return progress


def finish_debit_run(run: SepaRun) -> None:
    """Remove the run's spool and give the lock back."""
    remove_spool(run.work_dir)
    SepaLedger(run.state_url).release_lock(LOCK_NAME, run.run_id)


# ---------------------------------------------------------------------------------------------
# Reconciliation of bank statements
# ---------------------------------------------------------------------------------------------

REPORT_FIELDS = (
    "kind",
    "statement",
    "entry",
    "booking_date",
    "amount",
    "expected",
    "claim_no",
    "person_no",
    "end_to_end_id",
    "pmt_inf_id",
    "reason_code",
    "reason",
    "debtor",
    "remittance",
    "message",
)


@dataclass
class ReconciliationResult:
    """What one camt file did: counts per kind, the report file, returns and what did not match.

    ``rejected`` holds why the file was refused as a whole (then nothing of it was booked) and
    ``advice`` what to do; ``dry_run`` says the counts are what an import would do.
    """

    path: str
    kind: str
    msg_id: str
    skipped: bool
    counts: dict[str, int]
    report_path: str | None
    returns: list[dict[str, str]]
    unmatched: list[dict[str, str]]
    version: str = ""
    rejected: str | None = None
    advice: str | None = None
    line: int | None = None
    dry_run: bool = False
    entries: int = 0
    #: A dry run: what this and the earlier files of the run would have booked (for the next file).
    carry: DryRunCarry | None = None

    @property
    def accepted(self) -> bool:
        """True unless the file was refused."""
        return self.rejected is None


class StatementFilesRejected(Exception):
    """Some camt files of a run were refused (the others were imported); the run ends Failed.

    Attributes:
        summary: the run's summary (every file, accepted or rejected, and the totals).
    """

    def __init__(self, summary: dict[str, Any], rejected: Sequence[ReconciliationResult]) -> None:
        self.summary = summary
        self.rejected = list(rejected)
        names = "; ".join(f"{Path(r.path).name}: {r.rejected} ({r.advice})" for r in rejected)
        super().__init__(f"{len(rejected)} of {len(summary['files'])} bank files rejected: {names}")


def describe_file(result: ReconciliationResult) -> str:
    """One line per file for people: accepted or rejected, with the reason (command line, log)."""
    name = Path(result.path).name
    if result.rejected is not None:
        where = f" line {result.line}:" if result.line else ":"
        return f"rejected  {name}{where} {result.rejected}; {result.advice}"
    label = f"{result.kind}.{result.version}" if result.version else result.kind
    what = f"{label} ({MESSAGE_NAMES.get(result.kind, 'camt')}) {result.msg_id}"
    if result.skipped:
        return f"accepted  {name}: {what}: imported before, nothing to do"
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items())) or "nothing to match"
    if result.dry_run:  # the report of a dry run is a temporary file: say where
        return f"accepted  {name}: {what}, {result.entries} entries; would book: {counts}; report {result.report_path}"
    return f"accepted  {name}: {what}, {result.entries} entries; booked: {counts}"


#: Ledger statuses the reconciliation reads and writes (``prepared`` rows are never touched).
_RECONCILED = ("written", "partly_paid", "paid", "returned")


@dataclass
class DryRunCarry:
    """What the earlier files of one dry run would have booked, carried to the next file.

    Why: a dry run over a camt.052 and the camt.053 of the same day must report what the real
    run would do: the statement's copy of a booking the report would have booked is a duplicate.
    Plain data (no connection), so it passes from one file's task to the next.

    Attributes:
        rows: ledger row id -> the columns a booking would have set (status, paid amount, ...).
        entries: entry identity -> the file it would have been booked from.
        statements: keys of the files that would have been recorded as imported.
    """

    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    entries: dict[str, str] = field(default_factory=dict)
    statements: list[str] = field(default_factory=list)


class _Bookings:
    """The reconciliation's view of the ledger, and its writes to the ledger and the ERP.

    Every change an entry makes is held back (``pending``) and applied by ``commit`` at the end
    of the entry: the ERP writes first (idempotent: absolute values computed from the ledger
    state before the entry), then the ledger rows and the entry's record in one state
    transaction. A crash between the two is repaired by importing the file again: the entry is
    not recorded, so it is matched again from the same ledger state and writes the same values.

    Reads see the changes held back (``pending``), so an entry that touches a row twice sees its
    own first change. A dry run never commits: its changes stay in the ``carry`` and are seen by
    the later entries and files of the same run, as the real run would see them in the ledger.
    ``ledger`` is None when the state has no SEPA ledger yet (a dry run creates none).
    """

    def __init__(
        self, ledger: SepaLedger | None, erp_url: str, dry_run: bool, carry: DryRunCarry | None = None
    ) -> None:
        self.ledger = ledger
        self.erp_url = erp_url
        self.dry_run = dry_run
        self.carry = carry if carry is not None else DryRunCarry()
        self.pending: dict[int, dict[str, Any]] = self.carry.rows if dry_run else {}
        self.updates: list[tuple[int, dict[str, Any]]] = []
        #: ERP writes in order: ``(claim_nos, None)`` marks paid, ``(claim_no, (status, open, reason))`` settles
        self.erp_writes: list[tuple[Any, tuple[str, Decimal, str | None] | None]] = []
        self.acted = False
        self._erp: Any = None

    # ---- reads, as the ledger would be with the changes held back ------------------------------
    def _view(self, rows: list[dict[str, Any]], statuses: Sequence[str]) -> list[dict[str, Any]]:
        seen = [{**row, **self.pending.get(row["id"], {})} for row in rows]
        return [row for row in seen if row["status"] in statuses]

    def find_by_end_to_end(
        self, e2e_ids: Sequence[str], statuses: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """Latest ledger row per EndToEndId among rows in ``statuses`` (see ``SepaLedger``)."""
        if self.ledger is None:
            return {}
        if not self.pending:
            return self.ledger.find_by_end_to_end(e2e_ids, statuses)
        rows = self.ledger.rows_by_end_to_end(e2e_ids, _RECONCILED)
        return {row["end_to_end_id"]: row for row in self._view(rows, statuses)}

    def find_by_mandate_amount(
        self, mandate_id: str, amount: Decimal, statuses: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Ledger rows of one mandate and amount in ``statuses``."""
        if self.ledger is None:
            return []
        return self._view(self.ledger.find_by_mandate_amount(mandate_id, amount, _RECONCILED), statuses)

    def block_rows(self, pmt_inf_id: str, statuses: Sequence[str]) -> list[dict[str, Any]]:
        """Ledger rows of one payment block in ``statuses``."""
        if self.ledger is None:
            return []
        return self._view(self.ledger.block_rows(pmt_inf_id, _RECONCILED), statuses)

    def block(self, pmt_inf_id: str) -> dict[str, Any] | None:
        """A payment block with the count and sum of its rows still waiting for money."""
        if self.ledger is None:
            return None
        block = self.ledger.block(pmt_inf_id)
        if block is None or not self.pending:
            return block
        waiting = self.block_rows(pmt_inf_id, ("written",))
        total = sum((Decimal(str(r["amount"])) for r in waiting), Decimal("0"))
        return {**block, "open_n": len(waiting), "open_sum": total.quantize(Decimal("0.01"))}

    def entry_booked(self, identity: str) -> str | None:
        """Where a bank booking was (or, in a dry run, would have been) booked from, or None."""
        if identity in self.carry.entries:
            return self.carry.entries[identity]
        return self.ledger.entry_booked(identity) if self.ledger is not None else None

    def statement_seen(self, key: str) -> bool:
        """True when the file was imported before (or earlier in this dry run)."""
        if key in self.carry.statements:
            return True
        return self.ledger.statement_seen(key) if self.ledger is not None else False

    # ---- changes, held back until the entry is complete ----------------------------------------
    def set_row(self, row_id: int, **values: Any) -> None:
        self.acted = True
        self.pending.setdefault(row_id, {}).update(values)
        self.updates.append((row_id, values))

    def mark_paid(self, claim_nos: Sequence[str]) -> None:
        self.acted = True
        self.erp_writes.append((list(claim_nos), None))

    def settle_claim(self, claim_no: str, status: str, amount: Decimal, reason: str | None = None) -> None:
        self.acted = True
        self.erp_writes.append((claim_no, (status, amount, reason)))

    def settle_block_paid(self, pmt_inf_id: str, ref: str) -> list[str]:
        """Every row of the block still waiting for money is paid in full; returns their claims."""
        now = datetime.now(UTC)
        rows = self.block_rows(pmt_inf_id, ("written",))
        for row in rows:
            self.set_row(
                row["id"], status="paid", paid_amount=row["amount"], statement_ref=ref[:120], settled_at=now
            )
        self.acted = True
        return [str(r["claim_no"]) for r in rows]

    def begin_entry(self) -> None:
        """Start an entry: nothing acted yet, nothing held back (a dry run keeps its carry)."""
        self.acted = False
        self.updates = []
        self.erp_writes = []
        if not self.dry_run:
            self.pending = {}

    def commit(self, identity: str, path: Path, kind: str, booked_from: str) -> bool:
        """Apply the entry's changes (see the class); a dry run only remembers them.

        Returns:
            False when another import recorded the same booking meanwhile (the ERP writes, equal
            to that import's, stand; the ledger is left as that import left it).
        """
        if self.dry_run:
            self.carry.entries[identity] = booked_from
            return True
        if self._erp is None:
            self._erp = make_engine(self.erp_url)
        for claims, settlement in self.erp_writes:
            if settlement is None:
                mark_claims_paid(self._erp, claims)
            else:
                settle_claim(self._erp, claims, *settlement)
        assert self.ledger is not None  # a real run has created the ledger
        return self.ledger.book_entry(identity, path, kind, booked_from, self.updates)


def _parties(entry: CamtEntry) -> dict[str, str]:
    """Debtor and remittance text of an entry's first transaction (for the report)."""
    tx = entry.transactions[0] if entry.transactions else None
    if tx is None:
        return {"debtor": "", "remittance": entry.info or ""}
    return {"debtor": tx.debtor_name or "", "remittance": tx.remittance or entry.info or ""}


def _report_row(kind: str, entry: CamtEntry, **values: Any) -> dict[str, str]:
    row = {f: "" for f in REPORT_FIELDS}
    row.update(
        kind=kind,
        statement=entry.statement_id,
        entry=entry.reference,
        booking_date=entry.booking_date.isoformat() if entry.booking_date else "",
        amount=f"{entry.amount:.2f}",
    )
    if kind == "unmatched":
        row.update(_parties(entry))
    row.update({k: "" if v is None else str(v) for k, v in values.items()})
    return row


def _collection_rows(entry: CamtEntry, books: _Bookings, ref: str) -> list[dict[str, str]]:
    """Money in: match by EndToEndId, else by payment block; mark claims paid only for money that arrived."""
    out: list[dict[str, str]] = []
    by_e2e = [t for t in entry.transactions if t.end_to_end_id and t.end_to_end_id != NOTPROVIDED]
    if by_e2e:
        rows = books.find_by_end_to_end(
            [t.end_to_end_id or "" for t in by_e2e], ("written", "partly_paid", "paid")
        )
        for tx in by_e2e:
            e2e = tx.end_to_end_id or ""
            received = (
                tx.amount
                if tx.amount is not None
                else (entry.amount if len(entry.transactions) == 1 else None)
            )
            row = rows.get(e2e)
            if row is None or received is None:
                msg = (
                    "no collection with this EndToEndId is waiting for money" if row is None else "no amount"
                )
                out.append(
                    _report_row("unmatched", entry, end_to_end_id=e2e, pmt_inf_id=tx.pmt_inf_id, message=msg)
                )
                continue
            common = {
                "claim_no": row["claim_no"],
                "person_no": row["person_no"],
                "end_to_end_id": e2e,
                "pmt_inf_id": row["pmt_inf_id"],
                "expected": f"{row['amount']:.2f}",
            }
            if row["status"] == "paid":
                out.append(
                    _report_row(
                        "duplicate", entry, **common, message="already paid (statement imported before?)"
                    )
                )
                continue
            expected = Decimal(str(row["amount"]))
            outcome, total = settle_amount(expected, Decimal(str(row["paid_amount"] or 0)), received)
            if outcome == "overpaid":
                out.append(
                    _report_row(
                        "mismatch", entry, **common, message=f"received {received:.2f}, more than collected"
                    )
                )
                continue
            books.set_row(
                row["id"],
                status=outcome,
                paid_amount=total,
                statement_ref=ref[:120],
                settled_at=datetime.now(UTC),
            )
            if outcome == "paid":
                books.mark_paid([row["claim_no"]])
                out.append(_report_row("paid", entry, **common, message=f"received {received:.2f}"))
            else:
                books.settle_claim(row["claim_no"], "IN_COLLECTION", expected - total)
                out.append(
                    _report_row(
                        "partly_paid",
                        entry,
                        **common,
                        message=f"received {total:.2f} of {expected:.2f}; {expected - total:.2f} still open",
                    )
                )
        return out
    pmt_inf_id = entry.batch_pmt_inf_id or next(
        (t.pmt_inf_id for t in entry.transactions if t.pmt_inf_id), None
    )
    if not pmt_inf_id:
        return [
            _report_row("unmatched", entry, message="money in without EndToEndId or payment block reference")
        ]
    block = books.block(pmt_inf_id)
    if block is None:
        return [
            _report_row(
                "unmatched", entry, pmt_inf_id=pmt_inf_id, message="payment block unknown to the ledger"
            )
        ]
    expected_sum = block["open_sum"]
    if block["open_n"] == 0:
        return [
            _report_row(
                "duplicate",
                entry,
                pmt_inf_id=pmt_inf_id,
                message="every debit of this block is settled already",
            )
        ]
    if entry.amount == expected_sum:
        claim_nos = books.settle_block_paid(pmt_inf_id, ref)
        books.mark_paid(claim_nos)
        return [
            _report_row(
                "paid",
                entry,
                pmt_inf_id=pmt_inf_id,
                expected=f"{expected_sum:.2f}",
                message=f"collective booking of {len(claim_nos)} direct debits: all marked paid",
            )
        ]
    kind = "partly_paid" if entry.amount < expected_sum else "mismatch"
    return [
        _report_row(
            kind,
            entry,
            pmt_inf_id=pmt_inf_id,
            expected=f"{expected_sum:.2f}",
            message=f"collective booking {entry.amount:.2f} but {block['open_n']} open debits sum {expected_sum:.2f}; "
            "nothing marked: import the bank's camt.054 with the single debits",
        )
    ]


def _return_rows(entry: CamtEntry, books: _Bookings, ref: str) -> list[dict[str, str]]:
    """Money taken back: find the collection by EndToEndId (or mandate and amount), reopen the claim."""
    out: list[dict[str, str]] = []
    transactions = entry.transactions or []
    if not transactions:
        return [_report_row("unmatched", entry, message="return debit without transaction details")]
    for tx in transactions:
        amount = tx.amount if tx.amount is not None else entry.amount
        code = tx.return_reason
        e2e = tx.end_to_end_id
        row = None
        if e2e and e2e != NOTPROVIDED:
            row = books.find_by_end_to_end([e2e], ("written", "paid", "partly_paid")).get(e2e)
            if row is None and books.find_by_end_to_end([e2e], ("returned",)):
                out.append(
                    _report_row(
                        "duplicate",
                        entry,
                        end_to_end_id=e2e,
                        reason_code=code,
                        message="return booked before",
                    )
                )
                continue
        elif tx.mandate_id:
            candidates = books.find_by_mandate_amount(
                tx.mandate_id, amount, ("written", "paid", "partly_paid")
            )
            row = candidates[0] if len(candidates) == 1 else None
        if row is None:
            out.append(
                _report_row(
                    "unmatched",
                    entry,
                    end_to_end_id=e2e,
                    pmt_inf_id=tx.pmt_inf_id,
                    reason_code=code,
                    reason=return_reason_text(code),
                    message="return debit matches no collection in the ledger",
                )
            )
            continue
        expected = Decimal(str(row["amount"]))
        books.set_row(
            row["id"],
            status="returned",
            return_reason=(code or "")[:4] or None,
            statement_ref=ref[:120],
            settled_at=datetime.now(UTC),
        )
        books.settle_claim(row["claim_no"], "RETURNED", expected, (code or "")[:4] or None)
        out.append(
            _report_row(
                "returned",
                entry,
                claim_no=row["claim_no"],
                person_no=row["person_no"],
                end_to_end_id=row["end_to_end_id"],
                pmt_inf_id=row["pmt_inf_id"],
                expected=f"{expected:.2f}",
                reason_code=code,
                reason=return_reason_text(code),
                message=f"claim {row['claim_no']} of person {row['person_no']} reopened ({expected:.2f} EUR open again); "
                "contact the debtor before collecting again",
            )
        )
    return out


def reconcile_statement(
    path: Path,
    erp_url: str,
    state_url: str,
    output_dir: Path,
    preview_rows: int = 200,
    dry_run: bool = False,
    carry: DryRunCarry | None = None,
) -> ReconciliationResult:
    """Import one camt.052/.053/.054 file: check it whole, then match every entry against the ledger.

    All or nothing per file: the file is validated against its schema and every entry converted
    before the first is booked; a file that fails is refused with nothing booked. Each entry is
    then booked on its own (see ``_Bookings``): its ERP writes, then its ledger rows and its
    record in one state transaction. The record (the entry's identity: account and the bank's
    reference, else ``NtryRef``, else a digest, see ``connectors.sepa.camt.entry_identity``) makes
    the same booking in another file (a camt.052 intraday report, then the camt.053 of the day)
    count once, as ``duplicate``; after a crash, importing the file again books only the entries
    not recorded yet. Importing the same file again changes nothing (recognised by message id and
    content hash).

    The report (CSV: debtor names and remittance texts) is written owner-only (0600) into
    ``output_dir``. A dry run reads, validates and matches against the ledger as it is plus what
    the earlier files of the same dry run would have booked (``carry``, updated in place and
    returned in the result); it writes nothing into ``output_dir`` or the state (no tables are
    created): its report goes to a new owner-only temporary file the result names.

    Raises:
        CamtRejected: the file is no camt file of a supported version, breaks its schema or has a
            value that does not convert (nothing booked); the message names file, line, reason
            and what to ask the bank for.
    """
    log = run_logger()
    camt = open_camt(path)
    carry = carry if carry is not None else DryRunCarry()
    ledger = SepaLedger.existing(state_url) if dry_run else SepaLedger(state_url)
    books = _Bookings(ledger, erp_url, dry_run, carry)
    if books.statement_seen(camt.key):
        log.warning("%s (%s %s) was imported before: skipped", path.name, camt.name, camt.msg_id)
        return ReconciliationResult(
            str(path),
            camt.kind,
            camt.msg_id,
            True,
            {},
            None,
            [],
            [],
            camt.version,
            dry_run=dry_run,
            carry=carry,
        )
    entries = validate_camt(camt)
    label = sanitize_id(camt.msg_id).replace(" ", "") or "camt"
    if dry_run:
        handle, name = tempfile.mkstemp(prefix=f"reconciliation-dryrun-{label}-", suffix=".csv")
        os.close(handle)  # mkstemp creates it 0600
        report_path = Path(name)
    else:
        make_private_dir(output_dir)
        report_path = output_dir / f"reconciliation-{label}-{camt.sha256[:8]}.csv"
    booked_from = f"{camt.name} {camt.msg_id} ({path.name})"
    counts: dict[str, int] = {}
    returns: list[dict[str, str]] = []
    unmatched: list[dict[str, str]] = []
    with open_private(report_path, "w", newline="", encoding="utf-8") as fh:
        report = csv.DictWriter(fh, fieldnames=REPORT_FIELDS, delimiter=";")
        report.writeheader()
        for entry in iter_entries(camt, validate=False):
            rows = _entry_rows(entry, camt.kind, camt.msg_id, books)
            if books.acted and not books.commit(entry.identity, path, camt.kind, booked_from):
                rows = [
                    _report_row(
                        "duplicate", entry, message="booked meanwhile by another import: counted once"
                    )
                ]
            for row in rows:
                report.writerow(row)
                counts[row["kind"]] = counts.get(row["kind"], 0) + 1
                if row["kind"] == "returned" and len(returns) < preview_rows:
                    returns.append(row)
                    log.warning("Return debit: %s [%s %s]", row["message"], row["reason_code"], row["reason"])
                elif (
                    row["kind"] in ("unmatched", "mismatch", "partly_paid") and len(unmatched) < preview_rows
                ):
                    unmatched.append(row)
                    log.warning(
                        "%s: entry %s, %s EUR: %s", row["kind"], row["entry"], row["amount"], row["message"]
                    )
    if dry_run:
        carry.statements.append(camt.key)
    else:
        assert ledger is not None
        ledger.record_statement(camt.key, path, camt.kind, json.dumps({"entries": entries, **counts}))
    log.info(
        "%s (%s): %d entries; %s%s; report %s",
        path.name,
        camt.name,
        entries,
        "dry run, would book: " if dry_run else "",
        ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
        report_path,
    )
    return ReconciliationResult(
        str(path),
        camt.kind,
        camt.msg_id,
        False,
        counts,
        str(report_path),
        returns,
        unmatched,
        camt.version,
        dry_run=dry_run,
        entries=entries,
        carry=carry,
    )


def _entry_rows(entry: CamtEntry, kind_of_file: str, msg_id: str, books: _Bookings) -> list[dict[str, str]]:
    """Match one entry: what it is, and the report rows of what it books (held back in ``books``)."""
    books.begin_entry()
    ref = f"{kind_of_file} {msg_id} {entry.statement_id} {entry.reference}"
    kind = classify_entry(
        entry.status,
        entry.credit_debit,
        entry.reversal,
        entry.bank_code,
        any(t.return_reason for t in entry.transactions),
    )
    booked_from = books.entry_booked(entry.identity) if kind in ("collection", "return") else None
    if booked_from is not None:
        return [
            _report_row(
                "duplicate",
                entry,
                message=f"booking {entry.reference} was booked before from {booked_from}: counted once",
            )
        ]
    if kind == "pending":
        return [
            _report_row("pending", entry, message=f"status {entry.status}: not booked yet, nothing marked")
        ]
    if kind == "collection":
        return _collection_rows(entry, books, ref)
    if kind == "return":
        return _return_rows(entry, books, ref)
    return [_report_row("other", entry, message=f"debit {entry.bank_code}: not a direct-debit return")]


def import_statement(
    path: Path,
    erp_url: str,
    state_url: str,
    output_dir: Path,
    preview_rows: int = 200,
    dry_run: bool = False,
    carry: DryRunCarry | None = None,
) -> ReconciliationResult:
    """``reconcile_statement`` for one file of a run of several: a refused file is a result, not an error.

    Why: one bad or unsupported file must not stop the others of the same run. A refused file
    (``CamtRejected``: not a camt file, a version not read, a schema or XML error, not readable)
    comes back with ``rejected`` (reason, line) and ``advice`` (what to ask the bank for), and is
    logged as an error; nothing of it was booked. Other errors (the state or ERP database does not
    answer) still raise: they concern every file.
    """
    try:
        return reconcile_statement(path, erp_url, state_url, output_dir, preview_rows, dry_run, carry)
    except CamtRejected as exc:
        result = ReconciliationResult(
            str(path),
            "",
            "",
            False,
            {},
            None,
            [],
            [],
            rejected=exc.reason,
            advice=exc.advice,
            line=exc.line,
            dry_run=dry_run,
            carry=carry,
        )
        run_logger().error("Bank file %s", describe_file(result))
        return result
