"""The rent-deposit partner's two daily flows (seed 000: ``rekmdeposit`` and ``rekmdepositbuchungen``):
master data first, then bookings.

master data: check the partner -> recover pending writes -> extract the object group's deposit
accounts -> preconditions (held back with the rule) -> plan by difference (what the partner refused
stays held while unchanged) -> load per batch -> refusals that no longer hold resolved -> protocol
bookings: check the partner -> recover pending writes -> the scope's bookings the partner has not
confirmed (by difference, no cursor) -> send / wait / hold -> load per batch, an account's bookings
in order and none after its first failure -> payouts of every kept deposit not yet in the payout
ledger -> protocol

A partition run (``partition``: one object range of a partitioned deposit sync, flows/scale_out.py)
applies the rules to the whole scope and writes only the accounts, and bookings, of its objects
(an account's bookings all lie in one partition and go in order there). It leaves to the parent
and its closing runs whatever needs the whole picture: the writes earlier runs left pending,
archives, the refusals and quarantine entries of other accounts, the payouts (one pain.001 file
over everything), and the quiet check and mark.

Both are deployed daily (``prefect.yaml``, ``flows/serve.py``); with ``deposit.daily_schedules =
false`` an outside scheduler triggers them instead and a scheduled run ends at once, saying so.
Licensed: ``licences.deposit``. Asynchronous like the portal sync, for the same reason (a synchronous
flow run waits for its heartbeat thread).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar, cast, get_args

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from config.settings import HausflowSettings, ProfileName, load_settings
from connectors.state_store import StateStore
from tasks.deposit_quiet import (
    confirmed_state,
    fingerprint,
    held_before,
    quiet_since,
    read_bookings_inputs,
    remember_quiet,
    tables_digest,
)
from tasks.deposit_rules import ACCOUNTS, BOOKINGS, Held
from tasks.deposit_tasks import (
    DEPOSIT,
    apply_deposit_rules,
    business_date,
    due_deposit_payouts,
    extract_deposit_master,
    hold_after_failures,
    plan_deposit_accounts,
    plan_deposit_bookings,
    resolve_refusals,
)
from tasks.licensing import licensed
from tasks.partitions import Partition
from tasks.payout_tasks import Payout, write_payout_file
from tasks.sync.load import BatchOutcome, check_partner, load_partner_batch, recover_pending_writes
from tasks.sync.plan import Plan
from tasks.sync.protocol import record_protocol
from tasks.systems import claim_system, switched_off

T = TypeVar("T")


def whole(value: T) -> T:
    """Hand ``value`` to a task as it is (Prefect otherwise walks every element of a task argument)."""
    return cast(T, quote(value))


def deposit_gate(settings: HausflowSettings, what: str) -> dict[str, Any] | None:
    """Why this run does nothing (licence, interface off, a scheduled run with the daily schedules
    off), logged in one line; ``None`` when it goes ahead."""
    logger = get_run_logger()
    if not settings.licences.deposit:
        logger.warning(
            "The deposit interface is not licensed in profile %r (licences.deposit = false): nothing is read or sent.",
            settings.profile,
        )
        return {"status": "not licensed", "profile": settings.profile}
    off = switched_off(settings, "deposit")
    if off is not None:
        return off
    context = FlowRunContext.get()
    scheduled = bool(context and context.flow_run and context.flow_run.auto_scheduled)
    if scheduled and not settings.deposit.daily_schedules:
        logger.info(
            "The daily deposit %s run is switched off (deposit.daily_schedules = false: an outside scheduler "
            "triggers this flow); this scheduled run does nothing.",
            what,
        )
        return {"status": "schedule off", "profile": settings.profile}
    return None


async def _load(
    settings: HausflowSettings, run_id: str, plan: Plan, seq: int, outcomes: list[BatchOutcome]
) -> list[Held]:
    """Send a plan batch by batch (the engine's exactly-once load); returns the bookings held back.

    Batches go one after another, and within a batch the client sends an account's bookings in
    order (:meth:`connectors.deposit.DepositClient.awrite_many`); a booking of an account whose
    earlier booking failed in an earlier batch of this run is held back here, with the reason.
    """
    failed_accounts: dict[str, str] = {}
    account_of = {
        w.ref_id: str(w.payload.get("accountId")) for w in plan.writes if w.entity == BOOKINGS and w.payload
    }
    held: list[Held] = []
    for batch in plan.batches(settings.deposit.batch_size):
        send, waiting = hold_after_failures(batch, failed_accounts)
        held += waiting
        if not send:
            continue
        outcome = await load_partner_batch(DEPOSIT, settings, run_id, whole(send), seq)
        outcomes.append(outcome)
        for entity, ref in outcome.failed_keys:
            if entity == BOOKINGS and ref in account_of:
                failed_accounts.setdefault(account_of[ref], ref)
    return held


def _quiet_check(
    settings: HausflowSettings,
    what: str,
    erp: Callable[[], list[str]],
    run_id: str,
    compare: bool,
    part: Partition | None,
) -> tuple[str, str, dict[str, Any] | None]:
    """The run's state and fingerprint (:mod:`tasks.deposit_quiet`; ``erp`` reads its ERP side),
    and the summary of a quiet run when its inputs are as a complete, clean run of today left
    them (``None`` otherwise, and always when ``compare``: a dry run or a full resync). A run that
    compares drops the mark first, so one that stops halfway leaves none. A partition run
    (``part``) neither reads, checks nor marks (empty state and fingerprint): it sees a part of
    the scope; the closing run over everything does."""
    if part is not None:
        return "", "", None
    state = confirmed_state(settings, what)
    digest = fingerprint(settings, what, business_date(settings).isoformat(), erp(), state)
    if compare:
        return state, digest, None
    earlier = quiet_since(settings, what, digest, run_id)
    if earlier is not None:
        return state, digest, _finish(_quiet(settings, run_id, what, earlier), what)
    remember_quiet(settings, what, None, run_id)
    return state, digest, None


def _quiet(settings: HausflowSettings, run_id: str, what: str, earlier: str) -> dict[str, Any]:
    """A run whose inputs are as the complete, clean run ``earlier`` of today left them
    (:mod:`tasks.deposit_quiet`): nothing is read or sent; that run's held-back records are
    reported again, as a run that compared everything would report them."""
    skipped, quarantined = held_before(settings, earlier)
    before = StateStore(settings.state_url).run_summary(earlier) or {}
    plan = Plan()
    entity = ACCOUNTS if what == "master-data" else BOOKINGS
    compared = int(before.get("unchanged") or 0) + (
        int(before.get("confirmed") or 0) if entity == ACCOUNTS else 0
    )
    plan.unchanged[entity] = compared
    get_run_logger().info(
        "Nothing changed since the complete run %s of today (the ERP's deposit tables, the confirmed state, the "
        "settings): nothing to read or send; its %d records held back are reported again.",
        earlier,
        len(skipped) + len(quarantined),
    )
    extra: dict[str, Any] = {"quiet_since": earlier}
    if what == "bookings":
        extra |= {"waiting": int(before.get("waiting") or 0), "payouts": {"due": 0, "paid": 0, "file": None}}
    return record_protocol(
        DEPOSIT, settings, run_id, whole(plan), whole(skipped), whole(quarantined), [], False, extra
    )


def _finish(summary: dict[str, Any], what: str) -> dict[str, Any]:
    get_run_logger().info(
        "Deposit %s done: %d writes confirmed, %d failed, %d unchanged, %d held back with a reason, %d quarantined.",
        what,
        summary["confirmed"],
        summary["failed"],
        summary["unchanged"],
        summary["skipped"],
        summary["quarantined"],
    )
    if summary["failed"]:
        raise RuntimeError(
            f"{summary['failed']} deposit {what} writes failed (listed with the reason in deposit-sync-details); "
            "the next run sends them again."
        )
    error = (summary.get("payouts") or {}).get("error")
    if error:
        raise RuntimeError(
            f"the payout file of the kept deposits could not be written ({error}); every payout stays due and "
            "the next bookings run writes it."
        )
    return summary


@flow(name="deposit-master-data", log_prints=False)
async def deposit_master_data(
    full_resync: bool = False,
    dry_run: bool = False,
    profile: str | None = None,
    partition: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Bring the deposit partner's accounts in line with the ERP (the first daily job).

    Args:
        full_resync: send every account again, even if unchanged since the last confirmation.
        dry_run: compute and show the plan (artifacts deposit-sync-protocol and -details), send nothing.
        profile: settings profile (production, test, demo); default ``HAUSFLOW_PROFILE``.
        partition: this run is one partition of a partitioned deposit sync (flows/scale_out.py):
            ``{"index", "count", "first", "last"}``; it writes the accounts of its objects only,
            archives nothing and leaves pending writes, other accounts' refusals and the quiet
            mark to the parent and its closing run.

    Returns:
        A summary: planned, confirmed, failed, held back (skipped), quarantined, unchanged, counts.
    """
    part = Partition.of(partition) if partition else None
    settings, stop = licensed(load_settings(profile), "deposit")
    stop = stop or deposit_gate(settings, "master-data")
    if stop is not None:
        return stop
    run_id = str(flow_run.get_id() or "local")
    claim_system(settings)
    store = StateStore(settings.state_url)
    store.start_run(run_id, "deposit-master-data", DEPOSIT.name, dry_run)
    get_run_logger().info(
        "Deposit master data (profile %s, object group %s%s) to %s.",
        settings.profile,
        settings.deposit.object_group,
        _range(part),
        settings.deposit.base_url,
    )
    try:
        await check_partner(DEPOSIT, settings)
        if not dry_run and part is None:  # a partition's parent settled them before it started
            await recover_pending_writes(DEPOSIT, settings, run_id)
        seq = store.current_seq()
        tables = extract_deposit_master(settings)
        state, digest, quiet = _quiet_check(
            settings, "master-data", partial(tables_digest, tables), run_id, dry_run or full_resync, part
        )
        if quiet is not None:
            return quiet
        master = apply_deposit_rules(settings, whole(tables), run_id, part)
        del tables
        planned = plan_deposit_accounts(settings, whole(master), full_resync, archive=part is None)
        plan = planned.plan
        outcomes: list[BatchOutcome] = []
        if not dry_run:
            await _load(settings, run_id, plan, seq, outcomes)
            failed = [ref for o in outcomes for (e, ref) in o.failed_keys if e == ACCOUNTS]
            among = set(master.account_refs.values()) if part is not None else None
            resolve_refusals(settings, ACCOUNTS, [h.ref_id for h in planned.refused], failed, among)
        summary = record_protocol(
            DEPOSIT,
            settings,
            run_id,
            whole(plan),
            whole(planned.refused),
            whole(master.held),
            whole(outcomes),
            dry_run,
            _partition_extra(part),
        )
        clean = bool(digest) and not (dry_run or summary["failed"])  # a partition run leaves no mark
        if clean and confirmed_state(settings, "master-data") == state:
            remember_quiet(settings, "master-data", digest, run_id)  # nothing changed while it ran
    except Exception:
        store.finish_run(run_id, "FAILED", {})
        raise
    return _finish(summary, "master-data")


@flow(name="deposit-bookings", log_prints=False)
async def deposit_bookings(
    full_resync: bool = False,
    dry_run: bool = False,
    profile: str | None = None,
    partition: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Send every deposit booking of the scope the partner has not confirmed, exactly once (the
    second daily job).

    A booking whose account the partner does not hold yet waits, with the reason, and so do the
    later bookings of that account; the master-data run sends the account, the next bookings run
    the booking. Kept deposits (counterclaims) become payouts (:mod:`tasks.deposit_rules`), paid
    once each by a pain.001 file; one that cannot be paid yet is reported each run until it is.

    Args:
        full_resync: read every booking of the scope in full, not only those the partner has not
            confirmed (a changed posted booking is reported, never sent again).
        dry_run: decide and show what would be sent, send nothing.
        profile: settings profile; default ``HAUSFLOW_PROFILE``.
        partition: this run is one partition of a partitioned deposit sync (flows/scale_out.py):
            it sends the bookings of its objects' accounts only and pays nothing out (the closing
            bookings run over everything writes the one payout file).
    """
    part = Partition.of(partition) if partition else None
    settings, stop = licensed(load_settings(profile), "deposit")
    stop = stop or deposit_gate(settings, "bookings")
    if stop is not None:
        return stop
    logger = get_run_logger()
    run_id = str(flow_run.get_id() or "local")
    claim_system(settings)
    store = StateStore(settings.state_url)
    store.start_run(run_id, "deposit-bookings", DEPOSIT.name, dry_run)
    logger.info(
        "Deposit bookings (profile %s%s) to %s.", settings.profile, _range(part), settings.deposit.base_url
    )
    try:
        await check_partner(DEPOSIT, settings)
        if not dry_run and part is None:  # a partition's parent settled them before it started
            await recover_pending_writes(DEPOSIT, settings, run_id)
        seq = store.current_seq()
        state, digest, quiet = _quiet_check(
            settings,
            "bookings",
            partial(read_bookings_inputs, settings),
            run_id,
            dry_run or full_resync,
            part,
        )
        if quiet is not None:
            return quiet
        run = plan_deposit_bookings(settings, full_resync, run_id, part)
        decided = run.decided
        outcomes: list[BatchOutcome] = []
        skips: list[Held] = [*decided.waiting, *decided.refused, *decided.changed]
        payout_summary: dict[str, Any] = {}
        due_problems = 0
        if dry_run:
            logger.info(
                "Dry run: %d bookings would be sent, nothing sent, no payout written.", len(run.plan.writes)
            )
        else:
            skips += await _load(settings, run_id, run.plan, seq, outcomes)
            failed = [ref for o in outcomes for (e, ref) in o.failed_keys if e == BOOKINGS]
            resolve_refusals(settings, BOOKINGS, [h.ref_id for h in decided.refused], failed, run.decides)
            if part is None:  # one payout file over everything: the closing run's
                due = await due_deposit_payouts(settings)
                due_problems = len(due.problems)
                skips += due.problems
                payout_summary = pay_out(settings, due.payouts, run_id, due.due)
        summary = record_protocol(
            DEPOSIT,
            settings,
            run_id,
            whole(run.plan),
            whole(skips),
            whole(decided.invalid),
            whole(outcomes),
            dry_run,
            {"waiting": len(decided.waiting), "payouts": payout_summary, **_partition_extra(part)},
        )
        clean = bool(digest) and not (
            dry_run or summary["failed"] or due_problems or payout_summary.get("error")
        )
        paid = not payout_summary.get("skipped") and payout_summary.get("paid", 0) == payout_summary.get(
            "due", 0
        )
        if clean and paid and confirmed_state(settings, "bookings") == state:
            remember_quiet(settings, "bookings", digest, run_id)  # nothing changed while it ran
    except Exception:
        store.finish_run(run_id, "FAILED", {})
        raise
    return _finish(summary, "bookings")


def _range(part: Partition | None) -> str:
    """The partition in the run's first log line ("" for a run over the whole scope)."""
    return f", partition {part.index + 1} of {part.count}: objects {part.first}..{part.last}" if part else ""


def _partition_extra(part: Partition | None) -> dict[str, Any]:
    """The partition in the run's summary (nothing for a run over the whole scope)."""
    return {"partition": part.parameter()} if part else {}


def pay_out(settings: HausflowSettings, payouts: list[Payout], run_id: str, due: int) -> dict[str, Any]:
    """Hand the due payouts of kept deposits to the SEPA credit-transfer writer.

    ``tasks.payout_tasks.write_payout_file`` writes the pain.001 file with its never-twice ledger:
    a payout id is paid at most once, however often it is handed over; one it skips (a bad
    account) is reported with its reason and stays due. A failure of the writer does not undo the
    bookings sent: it is returned as ``error`` (the run then ends Failed) and every payout stays due.
    """
    if not payouts:
        return {"due": due, "paid": 0, "file": None}
    logger = get_run_logger()
    if not settings.sepa.enabled:
        logger.warning(
            "%d kept deposits are due for payout, but the SEPA interface is switched off in profile %r "
            "(sepa.enabled = false): no payout file is written; they stay due.",
            len(payouts),
            settings.profile,
        )
        return {"due": due, "paid": 0, "file": None, "status": "disabled"}
    try:
        claim_system(settings, [settings.sepa.payouts.output_dir], state_store=False)
        result = write_payout_file(settings, payouts, run_id, False)
    except Exception as exc:  # the file is all or nothing; the ledger releases what it held
        logger.error(
            "The payout file of %d kept deposits could not be written: %s. They stay due; the next bookings "
            "run writes them.",
            len(payouts),
            exc,
        )
        return {"due": due, "paid": 0, "file": None, "error": str(exc)}
    for note in result.get("skipped", []):
        logger.warning("Payout not paid yet: %s [%s].", note["reason"], note["rule"])
    return {
        "due": due,
        "paid": int(result.get("number") or 0),
        "file": result.get("file"),
        "skipped": [n["payout_id"] for n in result.get("skipped", [])],
        "already_paid": [n["payout_id"] for n in result.get("already_paid", [])],
        "warnings": list(result.get("warnings", [])),
    }


def run_deposit_master_data(**parameters: Any) -> dict[str, Any]:
    """Run the master-data flow from synchronous code and return its summary."""
    return asyncio.run(deposit_master_data(**parameters))


def run_deposit_bookings(**parameters: Any) -> dict[str, Any]:
    """Run the bookings flow from synchronous code and return its summary."""
    return asyncio.run(deposit_bookings(**parameters))


def command_line(argv: Sequence[str] | None = None) -> tuple[str, dict[str, Any]]:
    """``python -m flows.deposit_sync {master-data,bookings,both} [--dry-run] [--full-resync] [--profile P]``."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.deposit_sync",
        description="The deposit partner's daily jobs in this process: master data, bookings, or both in "
        "that order; each summary printed as one JSON line.",
    )
    parser.add_argument("job", choices=("master-data", "bookings", "both"))
    parser.add_argument("--dry-run", action="store_true", help="show the plan, send nothing")
    parser.add_argument("--full-resync", action="store_true", help="send every account / read every booking")
    parser.add_argument("--profile", choices=get_args(ProfileName))
    args = parser.parse_args(argv)
    parameters: dict[str, Any] = {"dry_run": args.dry_run, "full_resync": args.full_resync}
    if args.profile:
        parameters["profile"] = args.profile
    return args.job, parameters


if __name__ == "__main__":
    import json

    job, params = command_line()
    if job in ("master-data", "both"):
        print(json.dumps(run_deposit_master_data(**params), default=str))
    if job in ("bookings", "both"):
        print(json.dumps(run_deposit_bookings(**params), default=str))
