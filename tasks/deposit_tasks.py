"""Prefect tasks of the deposit partner's two daily flows: thin wrappers around the connectors and
the pure rules (:mod:`tasks.deposit_rules`). Plain data in, clients built inside, one task per batch
(the engine's :func:`tasks.sync.load.load_partner_batch`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from config.settings import HausflowSettings
from connectors.deposit import DepositClient
from connectors.deposit.streams import BOOKINGS, DEPOSIT_ACCOUNTS
from connectors.erp.database import make_engine
from connectors.erp.extract import TableRows, extract_deposit_bookings, extract_deposit_master_rows
from connectors.state_store import QuarantineItem, StateStore
from connectors.sync.client import PartnerClient
from connectors.sync.streams import payload_hash
from tasks.deposit_rules import (
    ACCOUNTS,
    HOLD_RULES,
    BookingPlan,
    DepositMaster,
    Held,
    Payout,
    RetentionSettings,
    build_master,
    plan_bookings,
    route_payouts,
)
from tasks.sync.partner import Partner
from tasks.sync.plan import Plan, plan_changes

TARGET = "deposit"
CURSOR = "bookings_confirmed_through"
"""The state store's cursor: the last booking id up to which the partner confirmed every booking."""


def connect_deposit(settings: HausflowSettings) -> PartnerClient:
    """The deposit partner's client for the run's settings."""
    return DepositClient.from_settings(settings.deposit)


DEPOSIT = Partner(TARGET, (DEPOSIT_ACCOUNTS, BOOKINGS), connect_deposit)
"""The deposit partner as a partner of the sync engine: accounts first, then bookings."""


def rows(table: TableRows) -> list[dict[str, Any]]:
    """A table's rows as dicts (the rules take plain mappings)."""
    return [dict(zip(table.columns, r, strict=True)) for r in table.rows]


def retention_settings(settings: HausflowSettings) -> RetentionSettings:
    """The payout routing's configuration taken from the settings."""
    d = settings.deposit
    return RetentionSettings(
        d.retention_account, d.manager_retention_name, d.manager_retention_iban, d.manager_retention_bic
    )


@task(name="extract-deposit-master-data", cache_policy=NO_CACHE)
def extract_deposit_master(settings: HausflowSettings) -> dict[str, TableRows]:
    """Read the objects of ``deposit.object_group`` with their deposit accounts, tenants and owners."""
    engine = make_engine(settings.erp_url)
    try:
        tables = extract_deposit_master_rows(engine, settings.deposit.object_group)
    finally:
        engine.dispose()
    get_run_logger().info(
        "Read the ERP (object group %s): %s.",
        settings.deposit.object_group,
        ", ".join(f"{len(t.rows):,} {name}" for name, t in tables.items()),
    )
    return tables


@task(name="check-deposit-preconditions", cache_policy=NO_CACHE)
def apply_deposit_rules(
    settings: HausflowSettings, tables: dict[str, TableRows], run_id: str
) -> DepositMaster:
    """Build the desired accounts; quarantine what a precondition holds back (and release what was
    fixed), with one log line per failure (the first 20) and a count."""
    logger = get_run_logger()
    master = build_master(
        rows(tables["accounts"]),
        rows(tables["objects"]),
        rows(tables["persons"]),
        rows(tables["joint_tenants"]),
    )
    store = StateStore(settings.state_url)
    store.quarantine(
        TARGET, [QuarantineItem(h.entity, h.ref_id, h.rule, h.reason, None) for h in master.held], run_id
    )
    _release_fixed(store, {(h.entity, h.ref_id) for h in master.held})
    for held in master.held[:20]:
        logger.warning("Held back: deposit account %s [%s]: %s.", held.ref_id, held.rule, held.reason)
    if len(master.held) > 20:
        logger.warning(
            "... and %d more precondition failures (listed in deposit-sync-details).", len(master.held) - 20
        )
    logger.info(
        "Preconditions: %d deposit accounts go to the partner, %d are held back (%s).",
        len(master.records),
        len(master.held_refs),
        ", ".join(f"{sum(1 for h in master.held if h.rule == r)} {r}" for r in HOLD_RULES),
    )
    return master


def _release_fixed(store: StateStore, failing: set[tuple[str, str]]) -> None:
    """Resolve the precondition entries no longer failing; other rules' entries stay as they are."""
    keep = set(failing)
    for entry in store.open_quarantine(TARGET):
        if entry["rule"] not in HOLD_RULES:
            keep.add((entry["entity"], entry["ref_id"]))
    store.resolve_quarantine(TARGET, keep)


@task(name="plan-deposit-accounts", cache_policy=NO_CACHE)
def plan_deposit_accounts(settings: HausflowSettings, master: DepositMaster, full_resync: bool) -> Plan:
    """Plan by difference against what the partner confirmed: creates, updates, and archives of
    accounts no longer in the scope (an account held back is neither written nor archived)."""
    store = StateStore(settings.state_url)
    state = {ACCOUNTS: store.load_state(TARGET, ACCOUNTS)}
    plan = plan_changes(
        [DEPOSIT_ACCOUNTS],
        {ACCOUNTS: master.records},
        state,
        held={(h.entity, h.ref_id) for h in master.held},
        full_resync=full_resync,
    )
    counts = ", ".join(f"{n} {o}" for (_, o), n in sorted(plan.counts().items())) or "nothing to send"
    get_run_logger().info("Plan: %s; %d deposit accounts unchanged.", counts, plan.unchanged.get(ACCOUNTS, 0))
    return plan


@dataclass
class BookingRun:
    """What the bookings run read and decided: the plan, the rows read (booking order), the cursor."""

    plan: Plan
    decided: BookingPlan
    read_ids: list[str] = field(default_factory=list)
    counterclaims: list[dict[str, Any]] = field(default_factory=list)
    start: int | None = None


@task(name="plan-deposit-bookings", cache_policy=NO_CACHE)
def plan_deposit_bookings(settings: HausflowSettings, full_resync: bool) -> BookingRun:
    """Read the bookings since the last confirmed one and decide for each: send, wait, or report.

    A run reads the bookings after the cursor (every booking with ``full_resync``); a booking waits
    while its account is not at the partner or held back by a precondition, and so do the later
    bookings of that account.
    """
    logger = get_run_logger()
    store = StateStore(settings.state_url)
    raw = store.cursor(TARGET, CURSOR)
    start = None if full_resync or raw is None else int(raw)
    engine = make_engine(settings.erp_url)
    try:
        table = extract_deposit_bookings(engine, settings.deposit.object_group, start)
    finally:
        engine.dispose()
    booking_rows = rows(table)
    refs = {str(r["contract_no"]) for r in booking_rows}
    accounts = store.load_state_for(TARGET, ACCOUNTS, refs)
    at_partner = {ref for ref, entry in accounts.items() if entry.status == "active"}
    held_accounts = {
        str(q["ref_id"]): f"{q['rule']}: {q['reason']}"
        for q in store.open_quarantine(TARGET)
        if q["entity"] == ACCOUNTS and q["rule"] in HOLD_RULES and q["ref_id"] in refs
    }
    posted = {
        ref: entry.payload_hash or ""
        for ref, entry in store.load_state_for(
            TARGET, BOOKINGS.name, [str(r["booking_id"]) for r in booking_rows]
        ).items()
    }
    decided = plan_bookings(
        booking_rows, at_partner, held_accounts, posted, lambda p: payload_hash(BOOKINGS, p)
    )
    plan = plan_changes([BOOKINGS], {BOOKINGS.name: decided.send}, {BOOKINGS.name: {}})
    logger.info(
        "Bookings since %s: %d read, %d to send, %d wait for their account or an earlier booking, "
        "%d posted before, %d changed after posting (not sent).",
        f"booking {start}" if start is not None else "the first",
        len(booking_rows),
        len(decided.send),
        len(decided.waiting),
        len(decided.posted),
        len(decided.changed),
    )
    for held in decided.waiting[:20]:
        logger.info("Waits: booking %s [%s]: %s.", held.ref_id, held.rule, held.reason)
    ids = [str(r["booking_id"]) for r in sorted(booking_rows, key=lambda r: int(r["booking_id"]))]
    claims = [r for r in booking_rows if r["booking_type"] == "COUNTERCLAIM"]
    return BookingRun(plan, decided, ids, claims, start)


@task(name="route-deposit-payouts", cache_policy=NO_CACHE)
def route_deposit_payouts(
    settings: HausflowSettings, counterclaims: Sequence[dict[str, Any]]
) -> tuple[list[Payout], list[Held]]:
    """The payouts of the kept deposits (counterclaims the partner confirmed): to the owner's account
    or the manager's retention account (``deposit.retention_account``)."""
    if not counterclaims:
        return [], []
    engine = make_engine(settings.erp_url)
    try:
        tables = extract_deposit_master_rows(engine, settings.deposit.object_group)
    finally:
        engine.dispose()
    objects = {str(o["object_no"]): o for o in rows(tables["objects"])}
    owners = {str(a["person_no"]): a for a in rows(tables["owner_accounts"])}
    payouts, problems = route_payouts(counterclaims, objects, owners, retention_settings(settings))
    logger = get_run_logger()
    logger.info(
        "Kept deposits: %d payouts to %s, %d not payable.",
        len(payouts),
        "the owners' accounts"
        if settings.deposit.retention_account == "owner"
        else "the manager's retention account",
        len(problems),
    )
    for held in problems[:20]:
        logger.warning("Not paid out: booking %s: %s.", held.ref_id, held.reason)
    return payouts, problems


def payouts_as_dicts(payouts: Sequence[Payout]) -> list[dict[str, Any]]:
    """The payouts as plain dicts with exactly the fields of ``connectors.sepa.pain001.Payout``."""
    return [asdict(p) for p in payouts]


@task(name="advance-bookings-cursor", cache_policy=NO_CACHE)
def advance_bookings_cursor(settings: HausflowSettings, through: int | None) -> None:
    """Remember the last booking id up to which everything is confirmed (after the payouts)."""
    if through is not None:
        StateStore(settings.state_url).set_cursor(TARGET, CURSOR, str(through))
