"""The rent-deposit partner's two daily flows (seed 000: ``rekmdeposit`` and ``rekmdepositbuchungen``):
master data first, then bookings.

master data: check the partner -> recover pending writes -> extract the object group's deposit
accounts -> preconditions (held back with the rule) -> plan by difference -> load per batch -> protocol
bookings: check the partner -> recover pending writes -> the bookings since the last confirmed one
-> send / wait (account not at the partner yet) -> load per batch -> payouts of kept deposits ->
cursor -> protocol

Both are deployed daily (``prefect.yaml``, ``flows/serve.py``); with ``deposit.daily_schedules =
false`` an outside scheduler triggers them instead and a scheduled run ends at once, saying so.
Licensed: ``licences.deposit``. Asynchronous like the portal sync, for the same reason (a synchronous
flow run waits for its heartbeat thread).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
from collections.abc import Sequence
from typing import Any, TypeVar, cast, get_args

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from config.settings import HausflowSettings, ProfileName, load_settings
from connectors.state_store import StateStore
from tasks.deposit_rules import Held, confirmed_through
from tasks.deposit_tasks import (
    DEPOSIT,
    advance_bookings_cursor,
    apply_deposit_rules,
    extract_deposit_master,
    payouts_as_dicts,
    plan_deposit_accounts,
    plan_deposit_bookings,
    route_deposit_payouts,
)
from tasks.sync.load import BatchOutcome, check_partner, load_partner_batch, recover_pending_writes
from tasks.sync.plan import Plan
from tasks.sync.protocol import record_protocol

T = TypeVar("T")


def whole(value: T) -> T:
    """Hand ``value`` to a task as it is (Prefect otherwise walks every element of a task argument)."""
    return cast(T, quote(value))


PAYOUT_MODULE = "tasks.payout_tasks"
"""Where ``write_payout_file`` lives (the SEPA pain.001 writer with its never-twice ledger)."""


def _gate(settings: HausflowSettings, what: str) -> dict[str, Any] | None:
    """Why this run does nothing (licence, interface off, a scheduled run with the daily schedules
    off), logged in one line; ``None`` when it goes ahead."""
    logger = get_run_logger()
    if not settings.licences.deposit:
        logger.warning(
            "The deposit interface is not licensed in profile %r (licences.deposit = false): nothing is read or sent.",
            settings.profile,
        )
        return {"status": "not licensed", "profile": settings.profile}
    if not settings.deposit.enabled:
        logger.warning(
            "The deposit interface is switched off in profile %r (deposit.enabled = false): nothing is read or sent. "
            "Switch it on in config/profiles/%s.toml or with HAUSFLOW_DEPOSIT__ENABLED=true.",
            settings.profile,
            settings.profile,
        )
        return {"status": "disabled", "profile": settings.profile}
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
) -> None:
    """Send a plan batch by batch (the engine's exactly-once load)."""
    for batch in plan.batches(settings.deposit.batch_size):
        outcomes.append(await load_partner_batch(DEPOSIT, settings, run_id, whole(batch), seq))


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
    return summary


@flow(name="deposit-master-data", log_prints=False)
async def deposit_master_data(
    full_resync: bool = False, dry_run: bool = False, profile: str | None = None
) -> dict[str, Any]:
    """Bring the deposit partner's accounts in line with the ERP (the first daily job).

    Args:
        full_resync: send every account again, even if unchanged since the last confirmation.
        dry_run: compute and show the plan (artifacts deposit-sync-protocol and -details), send nothing.
        profile: settings profile (production, test, demo); default ``HAUSFLOW_PROFILE``.

    Returns:
        A summary: planned, confirmed, failed, held back (skipped), quarantined, unchanged, counts.
    """
    settings = load_settings(profile)
    stop = _gate(settings, "master-data")
    if stop is not None:
        return stop
    run_id = str(flow_run.get_id() or "local")
    store = StateStore(settings.state_url)
    store.start_run(run_id, "deposit-master-data", DEPOSIT.name, dry_run)
    get_run_logger().info(
        "Deposit master data (profile %s, object group %s) to %s.",
        settings.profile,
        settings.deposit.object_group,
        settings.deposit.base_url,
    )
    try:
        await check_partner(DEPOSIT, settings)
        if not dry_run:
            await recover_pending_writes(DEPOSIT, settings, run_id)
        seq = store.current_seq()
        tables = extract_deposit_master(settings)
        master = apply_deposit_rules(settings, whole(tables), run_id)
        del tables
        plan = plan_deposit_accounts(settings, whole(master), full_resync)
        outcomes: list[BatchOutcome] = []
        if not dry_run:
            await _load(settings, run_id, plan, seq, outcomes)
        summary = record_protocol(
            DEPOSIT, settings, run_id, whole(plan), [], whole(master.held), whole(outcomes), dry_run
        )
    except Exception:
        store.finish_run(run_id, "FAILED", {})
        raise
    return _finish(summary, "master-data")


@flow(name="deposit-bookings", log_prints=False)
async def deposit_bookings(
    full_resync: bool = False, dry_run: bool = False, profile: str | None = None
) -> dict[str, Any]:
    """Send every deposit booking since the last confirmed one, exactly once (the second daily job).

    A booking whose account the partner does not hold yet waits, with the reason, and so do the
    later bookings of that account; the master-data run sends the account, the next bookings run
    the booking. Kept deposits (counterclaims) become payouts (:mod:`tasks.deposit_rules`).

    Args:
        full_resync: read every booking of the scope, not only those after the cursor (a changed
            posted booking is reported, never sent again).
        dry_run: decide and show what would be sent, send nothing.
        profile: settings profile; default ``HAUSFLOW_PROFILE``.
    """
    settings = load_settings(profile)
    stop = _gate(settings, "bookings")
    if stop is not None:
        return stop
    logger = get_run_logger()
    run_id = str(flow_run.get_id() or "local")
    store = StateStore(settings.state_url)
    store.start_run(run_id, "deposit-bookings", DEPOSIT.name, dry_run)
    logger.info("Deposit bookings (profile %s) to %s.", settings.profile, settings.deposit.base_url)
    try:
        await check_partner(DEPOSIT, settings)
        if not dry_run:
            await recover_pending_writes(DEPOSIT, settings, run_id)
        seq = store.current_seq()
        run = plan_deposit_bookings(settings, full_resync)
        outcomes: list[BatchOutcome] = []
        skips: list[Held] = [*run.decided.waiting, *run.decided.changed]
        payout_summary: dict[str, Any] = {}
        if dry_run:
            logger.info("Dry run: %d bookings would be sent, nothing sent.", len(run.plan.writes))
        else:
            await _load(settings, run_id, run.plan, seq, outcomes)
            failed = {ref for o in outcomes for (_, ref) in o.failed_keys}
            open_ids = failed | {h.ref_id for h in run.decided.waiting}
            confirmed = [c for c in run.counterclaims if str(c["booking_id"]) not in open_ids]
            payouts, problems = route_deposit_payouts(settings, whole(confirmed))
            skips += problems
            payout_summary = pay_out(settings, payouts_as_dicts(payouts), run_id)
            advance_bookings_cursor(settings, confirmed_through(run.read_ids, open_ids, run.start))
        summary = record_protocol(
            DEPOSIT, settings, run_id, whole(run.plan), whole(skips), [], whole(outcomes), dry_run
        )
        summary["waiting"] = len(run.decided.waiting)
        summary["payouts"] = payout_summary
    except Exception:
        store.finish_run(run_id, "FAILED", {})
        raise
    return _finish(summary, "bookings")


def pay_out(settings: HausflowSettings, payouts: list[dict[str, Any]], run_id: str) -> dict[str, Any]:
    """Hand the kept deposits to the SEPA credit-transfer writer, when it is installed.

    CALL SITE for ``tasks.payout_tasks.write_payout_file(settings, payouts, run_id, dry_run)``: it
    writes the pain.001 file with its never-twice ledger (a payout id is paid once, however often a
    run hands it over). Until that module exists the payouts are only counted and logged.
    """
    if not payouts:
        return {"payouts": 0}
    if importlib.util.find_spec(PAYOUT_MODULE) is None:
        get_run_logger().warning(
            "%d kept deposits are ready to pay out, but the SEPA credit-transfer writer (%s) is not installed: "
            "no payment file written.",
            len(payouts),
            PAYOUT_MODULE,
        )
        return {"payouts": len(payouts), "written": False}
    module = importlib.import_module(PAYOUT_MODULE)
    # the writer takes the Payout shape of connectors/sepa/pain001.py; converted when both branches meet
    result: dict[str, Any] = module.write_payout_file(settings, payouts, run_id, False)
    return result


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
