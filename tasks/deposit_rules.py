"""The deposit partner's rules as pure functions (seed 000): preconditions, records, booking order,
payout routing. No I/O: the tasks hand in plain rows and settings values, the rules hand back the
records to send and the records held back, each with its rule and a reason a person can act on.

Preconditions, checked before anything is sent (seed 000, "Voraussetzungen"):

- ``owner_on_object``: every transferred object has an owner;
- ``trust_account_on_object``: every transferred object has a trust pooled account
  (Treuhandsammelkonto);
- ``one_deposit_account_per_tenant``: a tenant (lead tenant of a tenancy) holds exactly one deposit
  account, and a tenancy has one.

An object's failure holds back that object's deposit accounts and their bookings; a tenant's
failure holds back that tenant's accounts and bookings. The rest of the run goes on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from schwifty import IBAN
from schwifty.exceptions import SchwiftyException

ACCOUNTS = "deposit_accounts"
BOOKINGS = "bookings"

OWNER_ON_OBJECT = "owner_on_object"
TRUST_ACCOUNT_ON_OBJECT = "trust_account_on_object"
ONE_ACCOUNT_PER_TENANT = "one_deposit_account_per_tenant"
PRECONDITIONS = (OWNER_ON_OBJECT, TRUST_ACCOUNT_ON_OBJECT, ONE_ACCOUNT_PER_TENANT)
TENANT_NAME = "tenant_has_name"
"""Not a precondition of the seed but of the partner's records: a tenant has a last or company name."""
HOLD_RULES = (*PRECONDITIONS, TENANT_NAME)
"""Every rule that holds a deposit account back before anything is sent."""

ACCOUNT_NOT_AT_PARTNER = "account_not_at_partner"
ACCOUNT_HELD = "account_held_back"
EARLIER_BOOKING_WAITS = "earlier_booking_waits"
CHANGED_AFTER_POSTING = "booking_changed_after_posting"
PAYOUT_ACCOUNT_MISSING = "payout_account_missing"

MONEY_IN = frozenset({"PAYMENT_IN", "INTEREST"})
"""Booking types that bring money into the deposit account (positive amounts); the others take it out."""


@dataclass(frozen=True)
class Held:
    """A record held back (not sent), with the rule and the reason: for the protocol, the log and
    the quarantine table."""

    entity: str
    ref_id: str
    rule: str
    reason: str


@dataclass
class DepositMaster:
    """The desired deposit accounts and what the preconditions hold back.

    ``records``: contract reference -> payload; ``held``: one entry per account and failed rule;
    ``account_refs``: the ERP's account number -> contract reference, for the bookings.
    """

    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    held: list[Held] = field(default_factory=list)
    account_refs: dict[str, str] = field(default_factory=dict)

    @property
    def held_refs(self) -> set[str]:
        """Contract references of the accounts held back."""
        return {h.ref_id for h in self.held}


def money(value: Any) -> str:
    """An amount as the partner takes it: a decimal with two places (``1500.00``)."""
    return f"{Decimal(str(value)).quantize(Decimal('0.01')):.2f}"


def iso(value: Any) -> str | None:
    """A date as ``YYYY-MM-DD`` (``None`` stays ``None``; text that is no date is passed on as it is,
    for the partner's field errors to name)."""
    if value is None:
        return None
    return value.isoformat() if isinstance(value, date) else str(value)


def person_name(person: Mapping[str, Any] | None) -> str:
    """A person's or company's name for messages and payments."""
    if not person:
        return ""
    if person.get("company_name"):
        return str(person["company_name"])
    return " ".join(str(person[k]) for k in ("first_name", "last_name") if person.get(k))


def check_preconditions(
    accounts: Sequence[Mapping[str, Any]], objects: Mapping[str, Mapping[str, Any]]
) -> list[Held]:
    """The precondition failures of the accounts of the scope, one per account and rule.

    Args:
        accounts: deposit accounts with ``account_no``, ``contract_no``, ``person_no`` (lead
            tenant) and ``object_no``.
        objects: the scope's objects by number, with ``name``, ``owner_person_no`` and
            ``trust_account_iban``.

    Returns:
        For each account that fails a rule: a :class:`Held` keyed by its contract reference, with the
        rule and a reason naming the object or tenant and what to do.
    """
    held: list[Held] = []
    by_object: dict[str, list[Mapping[str, Any]]] = {}
    by_tenant: dict[str, list[Mapping[str, Any]]] = {}
    by_contract: dict[str, list[Mapping[str, Any]]] = {}
    for account in accounts:
        by_object.setdefault(str(account["object_no"]), []).append(account)
        by_tenant.setdefault(str(account["person_no"]), []).append(account)
        by_contract.setdefault(str(account["contract_no"]), []).append(account)
    for object_no, group in sorted(by_object.items()):
        obj = objects.get(object_no) or {}
        label = f"object {object_no}" + (f" ({obj['name']})" if obj.get("name") else "")
        count = f"its {len(group)} deposit account{'s' if len(group) != 1 else ''} and their bookings wait"
        if not obj.get("owner_person_no"):
            reason = f"{label} has no owner: enter the owner in the object master (Objektstamm); {count}"
            held += [Held(ACCOUNTS, str(a["contract_no"]), OWNER_ON_OBJECT, reason) for a in group]
        if not str(obj.get("trust_account_iban") or "").strip():
            reason = (
                f"{label} has no trust pooled account (Treuhandsammelkonto): enter it in the object's "
                f"bank parameters; {count}"
            )
            held += [Held(ACCOUNTS, str(a["contract_no"]), TRUST_ACCOUNT_ON_OBJECT, reason) for a in group]
    doubled: dict[str, str] = {}
    for person_no, group in by_tenant.items():
        if len(group) > 1:
            numbers = ", ".join(sorted(str(a["account_no"]) for a in group))
            for a in group:
                doubled[str(a["contract_no"])] = (
                    f"tenant {person_no} holds {len(group)} deposit accounts ({numbers}): only one deposit "
                    "account per tenant is allowed; close or merge the others in the ERP"
                )
    for contract_no, group in by_contract.items():
        if len(group) > 1:
            numbers = ", ".join(sorted(str(a["account_no"]) for a in group))
            doubled[contract_no] = (
                f"tenancy {contract_no} has {len(group)} deposit accounts ({numbers}): only one deposit account "
                "per tenancy; close the others in the ERP"
            )
    held += [Held(ACCOUNTS, ref, ONE_ACCOUNT_PER_TENANT, reason) for ref, reason in sorted(doubled.items())]
    return held


def _person(person: Mapping[str, Any] | None, person_no: str) -> dict[str, Any]:
    p = person or {}
    return {
        "id": person_no,
        "salutation": p.get("salutation"),
        "title": p.get("title"),
        "firstName": p.get("first_name"),
        "lastName": p.get("last_name"),
        "companyName": p.get("company_name"),
        "street": p.get("street"),
        "postalCode": p.get("postal_code"),
        "city": p.get("city"),
        "country": p.get("country"),
        "email": p.get("email"),
    }


def deposit_account_payload(
    account: Mapping[str, Any],
    obj: Mapping[str, Any],
    persons: Mapping[str, Mapping[str, Any]],
    joint_tenants: Sequence[str],
) -> dict[str, Any]:
    """The partner's record of one deposit account (docs/deposit-api.md), keyed by contract reference.

    The tenancy ends on the move-out date, or when the deposit account was closed.
    """
    owner_no = str(obj.get("owner_person_no") or "")
    iban = str(obj.get("trust_account_iban") or "").replace(" ", "")
    return {
        "id": str(account["contract_no"]),
        "accountNo": str(account["account_no"]),
        "depositAmount": money(account["deposit_amount"]),
        "currency": "EUR",
        "tenancyStart": iso(account.get("start_date") or account.get("opened_on")),
        "tenancyEnd": iso(account.get("move_out_date") or account.get("closed_on")),
        "unitId": account.get("unit_no"),
        "leadTenant": _person(persons.get(str(account["person_no"])), str(account["person_no"])),
        "jointTenants": [_person(persons.get(p), p) for p in joint_tenants],
        "object": {
            "id": str(obj["object_no"]),
            "name": obj.get("name"),
            "street": obj.get("street"),
            "postalCode": obj.get("postal_code"),
            "city": obj.get("city"),
            "country": obj.get("country"),
        },
        "owner": {"id": owner_no, "name": person_name(persons.get(owner_no)) or owner_no},
        "trustAccount": {"iban": iban, "bic": bic_of(iban)},
    }


def bic_of(iban: str) -> str | None:
    """The BIC of a German IBAN's bank (schwifty's bank registry), ``None`` when unknown or invalid."""
    try:
        bic = IBAN(iban).bic
    except SchwiftyException:
        return None
    return str(bic) if bic is not None else None


def build_master(
    accounts: Iterable[Mapping[str, Any]],
    objects: Iterable[Mapping[str, Any]],
    persons: Iterable[Mapping[str, Any]],
    joint_tenants: Iterable[Mapping[str, Any]],
) -> DepositMaster:
    """The desired deposit accounts of the scope, and the accounts the preconditions hold back.

    Args: plain rows of the extract (``connectors.erp.extract.deposit_master_queries``).
    """
    account_rows = list(accounts)
    object_map = {str(o["object_no"]): o for o in objects}
    person_map = {str(p["person_no"]): p for p in persons}
    joint: dict[str, list[str]] = {}
    for row in joint_tenants:
        joint.setdefault(str(row["contract_no"]), []).append(str(row["person_no"]))
    out = DepositMaster(held=check_preconditions(account_rows, object_map))
    for account in account_rows:
        tenants = [str(account["person_no"]), *joint.get(str(account["contract_no"]), [])]
        nameless = [
            p
            for p in tenants
            if not (person_map.get(p) or {}).get("last_name")
            and not (person_map.get(p) or {}).get("company_name")
        ]
        if nameless:
            out.held.append(
                Held(
                    ACCOUNTS,
                    str(account["contract_no"]),
                    TENANT_NAME,
                    f"tenant {', '.join(nameless)} of deposit account {account['account_no']} has neither last name "
                    "nor company name, which the deposit partner requires: enter it in the ERP",
                )
            )
    held = out.held_refs
    for account in account_rows:
        ref = str(account["contract_no"])
        out.account_refs[str(account["account_no"])] = ref
        if ref in held:
            continue
        obj = object_map[str(account["object_no"])]
        out.records[ref] = deposit_account_payload(account, obj, person_map, joint.get(ref, []))
    return out


# ---- bookings -------------------------------------------------------------------------------
def booking_payload(row: Mapping[str, Any]) -> dict[str, Any]:
    """The partner's record of one booking, keyed by the ERP's booking id, naming its account by
    contract reference."""
    return {
        "id": str(row["booking_id"]),
        "accountId": str(row["contract_no"]),
        "type": str(row["booking_type"]),
        "amount": money(row["amount"]),
        "currency": "EUR",
        "bookingDate": iso(row["booking_date"]),
        "text": (str(row["text"])[:140] if row.get("text") else None),
    }


def booking_order(row: Mapping[str, Any]) -> tuple[int, str]:
    """Bookings go in the order the ERP entered them: by booking id (numeric where it is a number)."""
    raw = row["booking_id"]
    try:
        return int(raw), ""
    except (TypeError, ValueError):
        return 0, str(raw)


@dataclass
class BookingPlan:
    """What the bookings run does with the bookings it read: ``send`` (booking id -> payload, in
    booking order), ``waiting`` (held until their account is at the partner or an earlier booking
    went), ``changed`` (posted, then changed in the ERP: reported, never sent again), ``posted``
    (confirmed earlier, unchanged)."""

    send: dict[str, dict[str, Any]] = field(default_factory=dict)
    waiting: list[Held] = field(default_factory=list)
    changed: list[Held] = field(default_factory=list)
    posted: list[str] = field(default_factory=list)


def plan_bookings(
    rows: Iterable[Mapping[str, Any]],
    at_partner: set[str],
    held_accounts: Mapping[str, str],
    posted: Mapping[str, str],
    digest: Any,
) -> BookingPlan:
    """Decide for every booking read: send, wait (with the reason), or report as changed.

    Args:
        rows: bookings with ``booking_id``, ``contract_no`` and the booking's fields.
        at_partner: contract references of the accounts the partner confirmed (active).
        held_accounts: contract reference -> why the account is held back (a precondition).
        posted: booking id -> payload hash the partner confirmed for it.
        digest: payload -> hash (the stream's ``payload_hash``), to tell a changed booking.

    The order: bookings go in booking order (:func:`booking_order`); a booking never runs ahead of
    its account (the master data) nor of an earlier booking of the same account that waits.
    """
    plan = BookingPlan()
    blocked: dict[str, str] = {}
    for row in sorted(rows, key=booking_order):
        payload = booking_payload(row)
        ref, booking = payload["accountId"], payload["id"]
        confirmed = posted.get(booking)
        if confirmed is not None:
            if confirmed == digest(payload):
                plan.posted.append(booking)
            else:
                plan.changed.append(
                    Held(
                        BOOKINGS,
                        booking,
                        CHANGED_AFTER_POSTING,
                        f"booking {booking} of account {ref} was changed in the ERP after the deposit partner "
                        "posted it: a booking is posted once; enter a correction booking instead",
                    )
                )
            continue
        if ref in blocked:
            reason = (
                f"waits for booking {blocked[ref]} of the same deposit account {ref}, which has not gone yet"
            )
            plan.waiting.append(Held(BOOKINGS, booking, EARLIER_BOOKING_WAITS, reason))
            continue
        if ref in held_accounts:
            reason = f"waits: its deposit account {ref} is held back ({held_accounts[ref]})"
            plan.waiting.append(Held(BOOKINGS, booking, ACCOUNT_HELD, reason))
        elif ref not in at_partner:
            reason = (
                f"waits: its deposit account {ref} is not at the deposit partner yet; the master-data run "
                "sends it first, then this booking goes"
            )
            plan.waiting.append(Held(BOOKINGS, booking, ACCOUNT_NOT_AT_PARTNER, reason))
        else:
            plan.send[booking] = payload
            continue
        blocked[ref] = booking
    return plan


def confirmed_through(read_ids: Sequence[str], open_ids: set[str], start: int | None) -> int | None:
    """The new position of the bookings cursor: the last booking id with every booking up to it
    confirmed (or settled); the first open one (waiting or failed) stops it.

    Args:
        read_ids: the ids of the bookings read this run, in booking order.
        open_ids: the ones neither confirmed nor settled.
        start: the cursor the run started from.
    """
    through = start
    for booking in read_ids:
        if booking in open_ids:
            break
        try:
            through = int(booking)
        except ValueError:
            break
    return through


# ---- payouts of kept deposits ------------------------------------------------------------------
RetentionAccount = Literal["owner", "per_transfer"]


@dataclass(frozen=True)
class Payout:
    """One credit transfer of a kept deposit, in the shape ``connectors/sepa/pain001.py`` writes."""

    payout_id: str
    amount: Decimal
    creditor_name: str
    creditor_iban: str
    creditor_bic: str | None
    debtor_name: str
    debtor_iban: str
    debtor_bic: str | None
    remittance: str
    reference: str


@dataclass(frozen=True)
class RetentionSettings:
    """Where kept deposits go (seed 000, "Einbehaltskonto"): ``owner`` (0 - Eigentümer, the default)
    or ``per_transfer`` (1 - Per Überweisung: the manager's retention account)."""

    mode: RetentionAccount = "owner"
    manager_name: str = ""
    manager_iban: str = ""
    manager_bic: str | None = None


def route_payouts(
    counterclaims: Iterable[Mapping[str, Any]],
    objects: Mapping[str, Mapping[str, Any]],
    owner_accounts: Mapping[str, Mapping[str, Any]],
    retention: RetentionSettings,
) -> tuple[list[Payout], list[Held]]:
    """The payouts of kept deposits: each counterclaim booking's amount, from the object's trust
    pooled account to the owner's account (default) or the manager's retention account.

    Args:
        counterclaims: ``COUNTERCLAIM`` bookings (``booking_id``, ``contract_no``, ``object_no``,
            ``amount`` negative, ``text``).
        objects: objects by number (``name``, ``owner_person_no``, ``trust_account_iban``).
        owner_accounts: owners' bank accounts by person number (``iban``, ``bic``, ``account_holder``).
        retention: the setting and the manager's account.

    Returns:
        The payouts, and the counterclaims that cannot be paid (no account to pay to, or none to pay
        from), each with the reason.
    """
    payouts: list[Payout] = []
    problems: list[Held] = []
    for row in sorted(counterclaims, key=booking_order):
        booking = str(row["booking_id"])
        obj = objects.get(str(row["object_no"])) or {}
        debtor_iban = str(obj.get("trust_account_iban") or "").replace(" ", "")
        if retention.mode == "per_transfer":
            name, iban, bic = retention.manager_name, retention.manager_iban, retention.manager_bic
            missing = "the manager's retention account (deposit.manager_retention_name / _iban) is not set"
        else:
            owner_no = str(obj.get("owner_person_no") or "")
            account = owner_accounts.get(owner_no) or {}
            name, iban, bic = (
                account.get("account_holder") or "",
                account.get("iban") or "",
                account.get("bic"),
            )
            missing = f"owner {owner_no or '(none)'} of object {row['object_no']} has no bank account in the owner master"
        if not (name and iban):
            problems.append(
                Held(BOOKINGS, booking, PAYOUT_ACCOUNT_MISSING, f"kept deposit not paid out: {missing}")
            )
            continue
        if not debtor_iban:
            problems.append(
                Held(
                    BOOKINGS,
                    booking,
                    PAYOUT_ACCOUNT_MISSING,
                    f"kept deposit not paid out: object {row['object_no']} has no trust pooled account",
                )
            )
            continue
        text = f"Kautionseinbehalt {row['contract_no']}" + (f" {row['text']}" if row.get("text") else "")
        payouts.append(
            Payout(
                payout_id=f"deposit-{booking}",
                amount=-Decimal(str(row["amount"])),
                creditor_name=str(name),
                creditor_iban=str(iban).replace(" ", ""),
                creditor_bic=str(bic) if bic else None,
                debtor_name=f"Treuhandsammelkonto {obj.get('name') or row['object_no']}",
                debtor_iban=debtor_iban,
                debtor_bic=bic_of(debtor_iban),
                remittance=text[:140],
                reference=f"KAUTION-{booking}"[:35],
            )
        )
    return payouts, problems
