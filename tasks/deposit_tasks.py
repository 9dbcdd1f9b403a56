"""Prefect tasks of the deposit partner's two daily flows: thin wrappers around the connectors and
the pure rules (:mod:`tasks.deposit_rules`). Plain data in, clients built inside, one task per batch
(the engine's :func:`tasks.sync.load.load_partner_batch`)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from config.settings import HausflowSettings
from connectors.deposit import DepositClient
from connectors.deposit.streams import BOOKINGS, DEPOSIT_ACCOUNTS
from connectors.erp.database import make_engine
from connectors.erp.extract import (
    TableRows,
    deposit_account_counts,
    deposit_scope_accounts_query,
    extract_deposit_booking_index,
    extract_deposit_bookings,
    extract_deposit_counterclaim_ids,
    extract_deposit_master_rows,
)
from connectors.sepa.payout_ledger import PayoutLedger
from connectors.state_store import QuarantineItem, StateStore, record_json
from connectors.sync.client import PartnerClient
from connectors.sync.streams import payload_hash
from tasks.deposit_rules import (
    ACCOUNTS,
    BOOKING_RULES,
    EARLIER_BOOKING_WAITS,
    HOLD_RULES,
    PAYOUT_NOT_POSTED,
    REFUSED,
    BookingPlan,
    DepositMaster,
    Held,
    Payout,
    RetentionSettings,
    booking_payload,
    build_master,
    payout_id,
    plan_bookings,
    route_payouts,
)
from tasks.partitions import Partition
from tasks.sync.partner import Partner
from tasks.sync.plan import Plan, PlannedWrite, plan_changes

TARGET = "deposit"
BERLIN = ZoneInfo("Europe/Berlin")


def connect_deposit(settings: HausflowSettings) -> PartnerClient:
    """The deposit partner's client for the run's settings."""
    return DepositClient.from_settings(settings.deposit)


DEPOSIT = Partner(TARGET, (DEPOSIT_ACCOUNTS, BOOKINGS), connect_deposit)
"""The deposit partner as a partner of the sync engine: accounts first, then bookings."""


def rows(table: TableRows) -> list[dict[str, Any]]:
    """A table's rows as dicts (the rules take plain mappings)."""
    return [dict(zip(table.columns, r, strict=True)) for r in table.rows]


def business_date(settings: HausflowSettings) -> date:
    """Today in Europe/Berlin, or the configured business date (replays, tests)."""
    return settings.business_date or datetime.now(BERLIN).date()


def retention_settings(settings: HausflowSettings) -> RetentionSettings:
    """The payout routing's configuration taken from the settings."""
    d = settings.deposit
    return RetentionSettings(
        d.retention_account, d.manager_retention_name, d.manager_retention_iban, d.manager_retention_bic
    )


def refused_unchanged(
    open_entries: Iterable[dict[str, Any]], entity: str, payloads: dict[str, dict[str, Any]]
) -> dict[str, str]:
    """The records the partner refused with exactly the payload they have now: ref id -> the
    refusal. Sending one again would be refused again (and fail every run); a changed payload is
    sent (the portal's ``known_failures``)."""
    out: dict[str, str] = {}
    for entry in open_entries:
        if entry["rule"] != REFUSED or entry["entity"] != entity:
            continue
        payload = payloads.get(str(entry["ref_id"]))
        if payload is not None and entry["record_json"] == record_json(payload):
            out[str(entry["ref_id"])] = str(entry["reason"])
    return out


def resolve_refusals(
    settings: HausflowSettings,
    entity: str,
    still_held: Iterable[str],
    failed: Iterable[str],
    among: Collection[str] | None = None,
) -> int:
    """Resolve the partner's refusals (``deposit_rejected``) of ``entity`` that no longer hold:
    every open one except the records still held with the refused payload and those that failed
    again in this run (a confirmed write, a changed record, a record no longer to be sent).

    ``among``: only these records (a partition run's: the others are another partition's to
    decide, or the closing run's); ``None``: every record (a run over the whole scope).
    """
    store = StateStore(settings.state_url)
    keep = set(still_held) | set(failed)
    done = {
        (q["entity"], q["ref_id"], q["rule"])
        for q in store.open_quarantine(TARGET)
        if q["rule"] == REFUSED
        and q["entity"] == entity
        and q["ref_id"] not in keep
        and (among is None or q["ref_id"] in among)
    }
    return store.resolve_quarantine_entries(TARGET, done)


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
    settings: HausflowSettings,
    tables: dict[str, TableRows],
    run_id: str,
    partition: Partition | None = None,
) -> DepositMaster:
    """Build the desired accounts; quarantine what a precondition holds back (and release what was
    fixed), with one log line per failure (the first 20) and a count.

    A partition run (``partition``) checks every account of the scope (a tenant's accounts may lie
    in several ranges) and keeps, quarantines and releases only the accounts of its objects.
    """
    logger = get_run_logger()
    accounts = rows(tables["accounts"])
    master = build_master(
        accounts,
        rows(tables["objects"]),
        rows(tables["persons"]),
        rows(tables["joint_tenants"]),
        business_date(settings),
    )
    among: set[str] | None = None
    if partition is not None:
        among = {str(a["contract_no"]) for a in accounts if partition.holds_object(str(a["object_no"]))}
        master = master.only(among)
    del accounts
    store = StateStore(settings.state_url)
    store.quarantine(
        TARGET, [QuarantineItem(h.entity, h.ref_id, h.rule, h.reason, None) for h in master.held], run_id
    )
    _release_fixed(store, {(h.entity, h.ref_id, h.rule) for h in master.held}, HOLD_RULES, among)
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


def _release_fixed(
    store: StateStore,
    failing: set[tuple[str, str, str]],
    rules: Sequence[str],
    among: Collection[str] | None = None,
) -> int:
    """Resolve the entries of ``rules`` no longer failing, each (record, rule) on its own: another
    rule's entry on the same record (a refusal by the partner) neither keeps a fixed one open nor
    is touched. ``among``: only entries of these records (a partition run's)."""
    fixed = {
        (q["entity"], q["ref_id"], q["rule"])
        for q in store.open_quarantine(TARGET)
        if q["rule"] in rules
        and (q["entity"], q["ref_id"], q["rule"]) not in failing
        and (among is None or q["ref_id"] in among)
    }
    return store.resolve_quarantine_entries(TARGET, fixed)


@task(name="find-deposit-records", cache_policy=NO_CACHE)
def deposit_records_named(settings: HausflowSettings) -> dict[str, set[str]]:
    """The deposit accounts and bookings the ERP names for the partner (the object group's).

    A repair (:mod:`tasks.sync.repair`) records a record the partner holds and the state store
    does not know only if the ERP names it.
    """
    engine = make_engine(settings.erp_url)
    try:
        with engine.connect() as conn:
            accounts = {
                str(r.contract_no)
                for r in conn.execute(deposit_scope_accounts_query(settings.deposit.object_group))
            }
        index = extract_deposit_booking_index(engine, settings.deposit.object_group)
    finally:
        engine.dispose()
    return {ACCOUNTS: accounts, BOOKINGS.name: {str(b) for ids in index.values() for b in ids}}


@dataclass
class AccountPlan:
    """The master-data run's plan and the accounts held with a refused payload (with the reason)."""

    plan: Plan
    refused: list[Held] = field(default_factory=list)


@task(name="plan-deposit-accounts", cache_policy=NO_CACHE)
def plan_deposit_accounts(
    settings: HausflowSettings, master: DepositMaster, full_resync: bool, archive: bool = True
) -> AccountPlan:
    """Plan by difference against what the partner confirmed: creates, updates, and archives of
    accounts no longer in the scope (an account held back is neither written nor archived; one the
    partner refused is held while its payload is the one refused). ``archive=False`` (a partition
    run, which sees only its accounts): nothing is archived; the closing run over everything does it."""
    store = StateStore(settings.state_url)
    state = {ACCOUNTS: store.load_state(TARGET, ACCOUNTS)}
    refused = refused_unchanged(store.open_quarantine(TARGET), ACCOUNTS, master.records)
    held = [
        Held(
            ACCOUNTS,
            ref,
            REFUSED,
            f"the deposit partner refused deposit account {ref} as it is ({reason}); it is not sent again "
            "until it is corrected in the ERP",
        )
        for ref, reason in sorted(refused.items())
    ]
    plan = plan_changes(
        [DEPOSIT_ACCOUNTS],
        {ACCOUNTS: master.records},
        state,
        held={(h.entity, h.ref_id) for h in master.held} | {(ACCOUNTS, ref) for ref in refused},
        full_resync=full_resync,
        allow_archive=archive,
    )
    counts = ", ".join(f"{n} {o}" for (_, o), n in sorted(plan.counts().items())) or "nothing to send"
    get_run_logger().info(
        "Plan: %s; %d deposit accounts unchanged; %d held as the partner refused them.",
        counts,
        plan.unchanged.get(ACCOUNTS, 0),
        len(held),
    )
    return AccountPlan(plan, held)


@dataclass
class BookingRun:
    """What the bookings run read and decided: the plan, and the decisions with their reasons.

    ``decides``: in a partition run, the bookings with an open quarantine entry (when the run
    began) that are of the partition's accounts, the only entries the run may resolve; ``None``
    in a run over the whole scope.
    """

    plan: Plan
    decided: BookingPlan
    read: int = 0
    decides: set[str] | None = None


BOOKINGS_PER_SLICE = 50_000
"""The bookings a run reads and decides at a time (whole accounts): the rows of one slice are
dropped before the next is read, so memory holds what is sent, not what is read."""


def _slices(wanted: dict[str, list[int]], size: int) -> Iterator[list[str]]:
    """The accounts (contract references) with bookings to read, in slices of about ``size``
    bookings; an account's bookings are never split (their order is decided together)."""
    chunk: list[str] = []
    count = 0
    for contract in sorted(wanted):
        if not wanted[contract]:
            continue
        chunk.append(contract)
        count += len(wanted[contract])
        if count >= size:
            yield chunk
            chunk, count = [], 0
    if chunk:
        yield chunk


def _decide_bookings(
    store: StateStore,
    booking_rows: list[dict[str, Any]],
    open_entries: list[dict[str, Any]],
    full_resync: bool,
    run_id: str,
) -> BookingPlan:
    """Decide the bookings of one slice of accounts (:func:`plan_deposit_bookings`); the ones that
    break a booking rule are quarantined with their payload."""
    refs = {str(r["contract_no"]) for r in booking_rows}
    accounts = store.load_state_for(TARGET, ACCOUNTS, refs)
    at_partner = {ref for ref, entry in accounts.items() if entry.status == "active"}
    held_accounts: dict[str, str] = {}
    for q in open_entries:
        if q["entity"] == ACCOUNTS and q["rule"] in HOLD_RULES and q["ref_id"] in refs:
            held_accounts.setdefault(str(q["ref_id"]), f"{q['rule']}: {q['reason']}")
    posted: dict[str, str] = {}
    if full_resync:
        posted = {
            ref: entry.payload_hash or ""
            for ref, entry in store.load_state_for(
                TARGET, BOOKINGS.name, [str(r["booking_id"]) for r in booking_rows]
            ).items()
            if entry.status == "active"
        }
    refused_ids = {
        str(q["ref_id"]) for q in open_entries if q["rule"] == REFUSED and q["entity"] == BOOKINGS.name
    }
    refused = refused_unchanged(
        open_entries,
        BOOKINGS.name,
        {
            str(r["booking_id"]): booking_payload(r)
            for r in booking_rows
            if str(r["booking_id"]) in refused_ids
        },
    )
    decided = plan_bookings(
        booking_rows, at_partner, held_accounts, posted, lambda p: payload_hash(BOOKINGS, p), refused
    )
    if decided.invalid:
        payloads = {str(r["booking_id"]): r for r in booking_rows}
        store.quarantine(
            TARGET,
            [
                QuarantineItem(h.entity, h.ref_id, h.rule, h.reason, _booking_record(payloads.get(h.ref_id)))
                for h in decided.invalid
            ],
            run_id,
        )
    return decided


def _merge(into: BookingPlan, part: BookingPlan) -> None:
    """Add one slice's decisions to the run's."""
    into.send.update(part.send)
    for name in ("waiting", "invalid", "refused", "changed", "posted", "notes"):
        getattr(into, name).extend(getattr(part, name))


@task(name="plan-deposit-bookings", cache_policy=NO_CACHE)
def plan_deposit_bookings(
    settings: HausflowSettings, full_resync: bool, run_id: str, partition: Partition | None = None
) -> BookingRun:
    """Decide for every booking of the scope the partner has not confirmed: send, wait, or hold.

    By difference, not by a cursor: every booking id of the scope's accounts (ERP) minus the
    bookings the partner confirmed (state store); only those are read in full. So a booking of an
    account that joined the group later, or one committed late with a lower id, is sent like any
    other, and a held account pins nothing. A booking waits while its account is not at the
    partner or is held back, and so do the later bookings of that account; one that breaks a
    booking rule is quarantined (released when fixed); one the partner refused is held while its
    payload is the one refused. ``full_resync`` reads every booking and reports the posted ones
    changed in the ERP since. A partition run (``partition``) decides the bookings of the accounts
    of its objects only: an account's bookings all lie in one partition and go in order there.
    """
    logger = get_run_logger()
    store = StateStore(settings.state_url)
    engine = make_engine(settings.erp_url)
    open_entries = store.open_quarantine(TARGET)
    decided = BookingPlan()
    read = 0
    decides: set[str] | None = None
    try:
        index = extract_deposit_booking_index(
            engine, settings.deposit.object_group, partition.holds_object if partition else None
        )
        if partition is not None:
            entries = {str(q["ref_id"]) for q in open_entries if q["entity"] == BOOKINGS.name}
            numbers = {int(ref) for ref in entries if ref.isdigit()}
            decides = {str(b) for ids in index.values() for b in ids if b in numbers}
        confirmed = store.confirmed_ids(TARGET, BOOKINGS.name)
        wanted = {
            contract: ids if full_resync else [b for b in ids if str(b) not in confirmed]
            for contract, ids in index.items()
        }
        total = sum(len(ids) for ids in index.values())
        del confirmed, index
        for contracts in _slices(wanted, BOOKINGS_PER_SLICE):
            table = extract_deposit_bookings(
                engine, settings.deposit.object_group, [b for c in contracts for b in wanted[c]]
            )
            booking_rows = rows(table)
            del table
            read += len(booking_rows)
            part = _decide_bookings(store, booking_rows, open_entries, full_resync, run_id)
            del booking_rows
            _merge(decided, part)
    finally:
        engine.dispose()
    _release_fixed(store, {(h.entity, h.ref_id, h.rule) for h in decided.invalid}, BOOKING_RULES, decides)
    plan = plan_changes([BOOKINGS], {BOOKINGS.name: decided.send}, {BOOKINGS.name: {}})
    plan.notes.extend(decided.notes)
    logger.info(
        "Bookings of the scope: %d of %d not confirmed by the partner, %d to send, %d wait for their account or "
        "an earlier booking, %d break a booking rule, %d held as refused, %d changed after posting (not sent).",
        read - len(decided.posted) - len(decided.changed),
        total,
        len(decided.send),
        len(decided.waiting),
        len(decided.invalid),
        len(decided.refused),
        len(decided.changed),
    )
    for held in [*decided.invalid, *decided.refused][:20]:
        logger.warning("Held: booking %s [%s]: %s.", held.ref_id, held.rule, held.reason)
    for held in decided.waiting[:20]:
        logger.info("Waits: booking %s [%s]: %s.", held.ref_id, held.rule, held.reason)
    for note in decided.notes[:20]:
        logger.warning("Shortened: %s.", note)
    return BookingRun(plan, decided, read, decides)


def deposit_object_weights(settings: HausflowSettings) -> dict[str, int]:
    """The objects of ``deposit.object_group``, each with its number of deposit accounts: what a
    partitioned deposit sync splits into ranges of about equal work."""
    engine = make_engine(settings.erp_url)
    try:
        return deposit_account_counts(engine, settings.deposit.object_group)
    finally:
        engine.dispose()


def _booking_record(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """The payload a quarantined booking is held with (``None`` when the row is unknown)."""
    return booking_payload(row) if row is not None else None


def hold_after_failures(
    writes: Sequence[PlannedWrite], failed_accounts: dict[str, str]
) -> tuple[list[PlannedWrite], list[Held]]:
    """The writes of a batch to send, and the bookings held because an earlier booking of the same
    account failed in this run (a payout must not reach the partner before its payment in)."""
    send: list[PlannedWrite] = []
    held: list[Held] = []
    for write in writes:
        account = str((write.payload or {}).get("accountId") or "")
        if write.entity == BOOKINGS.name and account in failed_accounts:
            held.append(
                Held(
                    BOOKINGS.name,
                    write.ref_id,
                    EARLIER_BOOKING_WAITS,
                    f"waits for booking {failed_accounts[account]} of the same deposit account {account}, which "
                    "failed in this run; it goes after that one",
                )
            )
        else:
            send.append(write)
    return send, held


@dataclass
class DuePayouts:
    """The payouts to hand to the SEPA writer, and the kept deposits that cannot be paid yet."""

    payouts: list[Payout] = field(default_factory=list)
    problems: list[Held] = field(default_factory=list)
    due: int = 0


@task(name="find-due-deposit-payouts", cache_policy=NO_CACHE)
async def due_deposit_payouts(settings: HausflowSettings) -> DuePayouts:
    """The kept deposits to pay: every counterclaim of the scope the partner confirmed whose payout
    the payout ledger does not hold as written, whatever run posted it.

    Why not the counterclaims of this run only: a payout that could not be written (no owner
    account, no retention account, the writer failed, a crash) stays due and is reported with the
    reason each run, until it is paid; the ledger refuses a second payment of the same payout id.
    The amount and text are those the partner posted (read back from it), not the ERP's current
    ones; the accounts are the ERP's (owner, trust pooled account) or the manager's retention account.
    """
    store = StateStore(settings.state_url)
    engine = make_engine(settings.erp_url)
    try:
        claims = [str(i) for i in extract_deposit_counterclaim_ids(engine)]
        posted = store.load_state_for(TARGET, BOOKINGS.name, claims)
        posted_ids = [b for b in claims if b in posted and posted[b].status == "active"]
        if not posted_ids:
            return DuePayouts()
        known = PayoutLedger(settings.state_url).known_payouts([payout_id(b) for b in posted_ids])
        due = [b for b in posted_ids if (k := known.get(payout_id(b))) is None or k.status != "written"]
        if not due:
            return DuePayouts()
        erp_rows = {
            str(r["booking_id"]): r
            for r in rows(
                extract_deposit_bookings(engine, settings.deposit.object_group, [int(b) for b in due])
            )
        }
        tables = extract_deposit_master_rows(engine, settings.deposit.object_group)
    finally:
        engine.dispose()
    client = connect_deposit(settings)
    at_partner = await client.aread_many(BOOKINGS.name, sorted(erp_rows))
    claims_posted: list[dict[str, Any]] = []
    problems: list[Held] = []
    for booking, row in sorted(erp_rows.items(), key=lambda kv: int(kv[0])):
        record = at_partner.get(booking)
        if record is None:
            problems.append(
                Held(
                    BOOKINGS.name,
                    booking,
                    PAYOUT_NOT_POSTED,
                    f"kept deposit of booking {booking} (deposit account {row['contract_no']}) not paid out: the "
                    "deposit partner does not show the counterclaim it confirmed; ask the partner",
                )
            )
            continue
        claims_posted.append({**row, "amount": record["amount"], "text": record.get("text")})
    objects = {str(o["object_no"]): o for o in rows(tables["objects"])}
    owners = {str(a["person_no"]): a for a in rows(tables["owner_accounts"])}
    payouts, unpayable = route_payouts(claims_posted, objects, owners, retention_settings(settings))
    problems += unpayable
    logger = get_run_logger()
    logger.info(
        "Kept deposits due: %d, %d payable to %s, %d not payable yet.",
        len(due),
        len(payouts),
        "the owners' accounts"
        if settings.deposit.retention_account == "owner"
        else "the manager's retention account",
        len(problems),
    )
    for held in problems[:20]:
        logger.warning("Not paid out: booking %s [%s]: %s.", held.ref_id, held.rule, held.reason)
    return DuePayouts(payouts, problems, len(due))
