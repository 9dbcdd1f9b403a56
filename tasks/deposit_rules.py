"""The deposit partner's rules as pure functions (seed 000): preconditions, records, booking order,
payout routing. No I/O: the tasks hand in plain rows and settings values, the rules hand back the
records to send and the records held back, each with its rule and a reason a person can act on.

Preconditions, checked before anything is sent (seed 000, "Voraussetzungen"):

- ``owner_on_object``: every transferred object has an owner;
- ``trust_account_on_object``: every transferred object has a trust pooled account
  (Treuhandsammelkonto);
- ``one_deposit_account_per_tenant``: a tenant (lead or joint tenant of an open tenancy) holds
  exactly one open deposit account, and a tenancy has one; a closed account or an ended tenancy
  does not count (a tenant who moved within the group keeps the old, closed account);
- the partner's required fields, checked here rather than refused there: ``tenancy_start_known``,
  ``object_has_name``, ``trust_account_valid`` (a valid IBAN), ``tenant_has_name``; and per booking
  ``booking_type_known``, ``booking_sign`` (money in positive, money out negative, never zero) and
  ``booking_date_known``.

An object's failure holds back that object's deposit accounts and their bookings; a tenant's
failure holds back that tenant's accounts and bookings. The rest of the run goes on.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from schwifty import IBAN
from schwifty.exceptions import SchwiftyException

from connectors.sepa.pain001 import Payout

ACCOUNTS = "deposit_accounts"
BOOKINGS = "bookings"

OWNER_ON_OBJECT = "owner_on_object"
TRUST_ACCOUNT_ON_OBJECT = "trust_account_on_object"
ONE_ACCOUNT_PER_TENANT = "one_deposit_account_per_tenant"
PRECONDITIONS = (OWNER_ON_OBJECT, TRUST_ACCOUNT_ON_OBJECT, ONE_ACCOUNT_PER_TENANT)
TENANT_NAME = "tenant_has_name"
"""Not a precondition of the seed but of the partner's records: a tenant has a last or company name."""
TENANCY_START = "tenancy_start_known"
OBJECT_NAME = "object_has_name"
TRUST_ACCOUNT_VALID = "trust_account_valid"
HOLD_RULES = (*PRECONDITIONS, TENANT_NAME, TENANCY_START, OBJECT_NAME, TRUST_ACCOUNT_VALID)
"""Every rule that holds a deposit account back before anything is sent."""

ACCOUNT_NOT_AT_PARTNER = "account_not_at_partner"
ACCOUNT_HELD = "account_held_back"
EARLIER_BOOKING_WAITS = "earlier_booking_waits"
CHANGED_AFTER_POSTING = "booking_changed_after_posting"
PAYOUT_ACCOUNT_MISSING = "payout_account_missing"
PAYOUT_NOT_POSTED = "payout_booking_not_at_partner"
REFUSED = "deposit_rejected"
"""The engine's quarantine rule for a record the partner refused (``<partner>_rejected``)."""
BOOKING_TYPE_KNOWN = "booking_type_known"
BOOKING_SIGN = "booking_sign"
BOOKING_DATE = "booking_date_known"
BOOKING_RULES = (BOOKING_TYPE_KNOWN, BOOKING_SIGN, BOOKING_DATE)
"""Rules a booking is checked against before it is sent (the partner refuses what breaks them)."""
BOOKING_TYPES = (
    "PAYMENT_IN",
    "INTEREST",
    "WITHHOLDING_TAX",
    "SOLIDARITY_SURCHARGE",
    "COUNTERCLAIM",
    "PAYOUT",
)
TEXT_LIMIT = 140
"""The partner's longest booking text (and SEPA's remittance): longer ones are shortened with a
warning naming the booking, never cut silently."""

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

    def only(self, refs: Collection[str]) -> DepositMaster:
        """The part naming the accounts ``refs`` (a partition's), sent or held back.

        Why the rules ran over every account first: the one-account-per-tenant rule compares a
        tenant's accounts across objects, so a partition holds back what a run over everything
        would hold back, no more and no less.
        """
        wanted = set(refs)
        return DepositMaster(
            records={r: p for r, p in self.records.items() if r in wanted},
            held=[h for h in self.held if h.ref_id in wanted],
            account_refs={a: r for a, r in self.account_refs.items() if r in wanted},
        )


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


def is_open(account: Mapping[str, Any], today: date | None) -> bool:
    """An open tenancy's deposit account: not closed, and the tenancy not ended before ``today``
    (a move-out date that is no date counts as open: the partner's field errors name it)."""
    if account.get("closed_on"):
        return False
    end = account.get("move_out_date")
    return not (isinstance(end, date) and today is not None and end < today)


def check_preconditions(
    accounts: Sequence[Mapping[str, Any]],
    objects: Mapping[str, Mapping[str, Any]],
    joint_tenants: Mapping[str, Sequence[str]] | None = None,
    today: date | None = None,
) -> list[Held]:
    """The precondition failures of the accounts of the scope, one per account and rule.

    Args:
        accounts: deposit accounts with ``account_no``, ``contract_no``, ``person_no`` (lead
            tenant), ``object_no`` and, for the one-account rule, ``closed_on`` and
            ``move_out_date``.
        objects: the scope's objects by number, with ``name``, ``owner_person_no`` and
            ``trust_account_iban``.
        joint_tenants: contract reference -> joint tenants' person numbers.
        today: the business date; a tenancy that ended before it is not open.

    Returns:
        For each account that fails a rule: a :class:`Held` keyed by its contract reference, with the
        rule and a reason naming the object or tenant and what to do.
    """
    held: list[Held] = []
    joint = joint_tenants or {}
    by_object: dict[str, list[Mapping[str, Any]]] = {}
    by_tenant: dict[str, list[Mapping[str, Any]]] = {}
    by_contract: dict[str, list[Mapping[str, Any]]] = {}
    for account in accounts:
        by_object.setdefault(str(account["object_no"]), []).append(account)
        by_contract.setdefault(str(account["contract_no"]), []).append(account)
        if is_open(account, today):
            tenants = {str(account["person_no"]), *joint.get(str(account["contract_no"]), ())}
            for person_no in tenants:
                by_tenant.setdefault(person_no, []).append(account)
    for object_no, group in sorted(by_object.items()):
        obj = objects.get(object_no) or {}
        label = f"object {object_no}" + (f" ({obj['name']})" if obj.get("name") else "")
        count = f"its {len(group)} deposit account{'s' if len(group) != 1 else ''} and their bookings wait"

        def hold(rule: str, reason: str, group: list[Mapping[str, Any]] = group) -> None:
            held.extend(Held(ACCOUNTS, str(a["contract_no"]), rule, reason) for a in group)

        if not obj.get("owner_person_no"):
            hold(
                OWNER_ON_OBJECT,
                f"{label} has no owner: enter the owner in the object master (Objektstamm); {count}",
            )
        iban = str(obj.get("trust_account_iban") or "").replace(" ", "")
        if not iban:
            hold(
                TRUST_ACCOUNT_ON_OBJECT,
                f"{label} has no trust pooled account (Treuhandsammelkonto): enter it in the object's "
                f"bank parameters; {count}",
            )
        elif (problem := iban_problem(iban)) is not None:
            hold(
                TRUST_ACCOUNT_VALID,
                f"{label}: its trust pooled account {iban} is not a valid IBAN ({problem}): correct it in the "
                f"object's bank parameters; {count}",
            )
        if not str(obj.get("name") or "").strip():
            hold(
                OBJECT_NAME,
                f"object {object_no} has no name, which the deposit partner requires: enter it in the object master; {count}",
            )
    doubled: dict[str, str] = {}
    for person_no, group in sorted(by_tenant.items()):
        if len(group) > 1:
            numbers = ", ".join(sorted(str(a["account_no"]) for a in group))
            for a in group:
                doubled[str(a["contract_no"])] = (
                    f"tenant {person_no} is lead or joint tenant of {len(group)} open tenancies with a deposit "
                    f"account ({numbers}): only one deposit account per tenant is allowed; close or merge the "
                    "others in the ERP"
                )
    for contract_no, group in by_contract.items():
        if len(group) > 1:
            numbers = ", ".join(sorted(str(a["account_no"]) for a in group))
            doubled[contract_no] = (
                f"tenancy {contract_no} has {len(group)} deposit accounts ({numbers}): only one deposit account "
                "per tenancy; close the others in the ERP"
            )
    held += [Held(ACCOUNTS, ref, ONE_ACCOUNT_PER_TENANT, reason) for ref, reason in sorted(doubled.items())]
    for account in accounts:
        if not (account.get("start_date") or account.get("opened_on")):
            held.append(
                Held(
                    ACCOUNTS,
                    str(account["contract_no"]),
                    TENANCY_START,
                    f"deposit account {account['account_no']} (tenancy {account['contract_no']}) has no tenancy "
                    "start, which the deposit partner requires: enter the contract's start date in the ERP",
                )
            )
    return held


def iban_problem(iban: str) -> str | None:
    """Why ``iban`` is not a valid IBAN (schwifty: length, check digits, German account check),
    ``None`` when it is."""
    try:
        IBAN(iban)
    except SchwiftyException as exc:
        return str(exc) or type(exc).__name__
    return None


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


@functools.lru_cache(maxsize=4096)
def bic_of(iban: str) -> str | None:
    """The BIC of a German IBAN's bank (schwifty's bank registry), ``None`` when unknown or invalid.

    Cached: it is the trust account of an object, asked once per deposit account (50 per object).
    """
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
    today: date | None = None,
) -> DepositMaster:
    """The desired deposit accounts of the scope, and the accounts the preconditions hold back.

    Args: plain rows of the extract (``connectors.erp.extract.deposit_master_queries``), and the
    business date (a tenancy that ended before it is not open).
    """
    account_rows = list(accounts)
    object_map = {str(o["object_no"]): o for o in objects}
    person_map = {str(p["person_no"]): p for p in persons}
    joint: dict[str, list[str]] = {}
    for row in joint_tenants:
        joint.setdefault(str(row["contract_no"]), []).append(str(row["person_no"]))
    out = DepositMaster(held=check_preconditions(account_rows, object_map, joint, today))
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
def shorten(text: str, limit: int = TEXT_LIMIT) -> tuple[str, str | None]:
    """``text`` within ``limit`` characters, cut at a word boundary, and what was dropped (``None``
    when nothing was): the caller warns with the record's name, never cuts silently."""
    if len(text) <= limit:
        return text, None
    head = text[: limit + 1]
    cut = head.rfind(" ")
    kept = (head[:cut] if cut > limit // 2 else text[:limit]).rstrip()
    return kept, text[len(kept) :].strip()


def booking_payload(row: Mapping[str, Any]) -> dict[str, Any]:
    """The partner's record of one booking, keyed by the ERP's booking id, naming its account by
    contract reference (a text over :data:`TEXT_LIMIT` is shortened: :func:`booking_text_note`)."""
    text = str(row["text"]) if row.get("text") else None
    return {
        "id": str(row["booking_id"]),
        "accountId": str(row["contract_no"]),
        "type": str(row["booking_type"]),
        "amount": money(row["amount"]),
        "currency": "EUR",
        "bookingDate": iso(row["booking_date"]),
        "text": shorten(text)[0] if text else None,
    }


def booking_text_note(row: Mapping[str, Any]) -> str | None:
    """The warning for a booking whose text is shortened for the partner (``None`` if it is not)."""
    text = str(row["text"]) if row.get("text") else ""
    _, dropped = shorten(text)
    if dropped is None:
        return None
    return (
        f"booking {row['booking_id']} of deposit account {row['contract_no']}: its text has {len(text)} "
        f"characters, the deposit partner takes {TEXT_LIMIT}; sent shortened at a word boundary, dropped: "
        f"{dropped!r} (shorten it in the ERP to choose the words yourself)"
    )


def check_booking(row: Mapping[str, Any]) -> Held | None:
    """The first rule a booking breaks before it could be sent (the partner would refuse it), or
    ``None``: ``booking_type_known``, ``booking_sign`` (PAYMENT_IN and INTEREST positive, the
    others negative, never zero), ``booking_date_known``."""
    booking, ref, kind = str(row["booking_id"]), str(row["contract_no"]), str(row["booking_type"])
    label = f"booking {booking} of deposit account {ref}"
    if kind not in BOOKING_TYPES:
        return Held(
            BOOKINGS,
            booking,
            BOOKING_TYPE_KNOWN,
            f"{label} has the type {kind!r}, which the deposit partner does not know ({', '.join(BOOKING_TYPES)}): "
            "correct the booking type in the ERP",
        )
    try:
        amount = Decimal(str(row["amount"]))
    except (ArithmeticError, ValueError):
        amount = Decimal(0)
    positive = kind in MONEY_IN
    if amount == 0 or (amount > 0) != positive:
        need = "positive" if positive else "negative"
        hint = (
            " (a reversal of a payment is booked as PAYOUT or COUNTERCLAIM, not as a negative PAYMENT_IN)"
            if kind == "PAYMENT_IN" and amount < 0
            else ""
        )
        return Held(
            BOOKINGS,
            booking,
            BOOKING_SIGN,
            f"{label} is a {kind} of {money(amount)}: a {kind} booking is {need} and never zero{hint}; "
            "correct the amount or the type in the ERP",
        )
    if not row.get("booking_date"):
        return Held(BOOKINGS, booking, BOOKING_DATE, f"{label} has no booking date: enter it in the ERP")
    return None


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
    went), ``invalid`` (breaking a booking rule: quarantined until fixed in the ERP), ``refused``
    (refused by the partner with this very payload: held until it changes in the ERP),
    ``changed`` (posted, then changed in the ERP: reported, never sent again), ``posted``
    (confirmed earlier, unchanged), ``notes`` (warnings, e.g. a shortened text)."""

    send: dict[str, dict[str, Any]] = field(default_factory=dict)
    waiting: list[Held] = field(default_factory=list)
    invalid: list[Held] = field(default_factory=list)
    refused: list[Held] = field(default_factory=list)
    changed: list[Held] = field(default_factory=list)
    posted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def plan_bookings(
    rows: Iterable[Mapping[str, Any]],
    at_partner: set[str],
    held_accounts: Mapping[str, str],
    posted: Mapping[str, str],
    digest: Any,
    refused: Mapping[str, str] | None = None,
) -> BookingPlan:
    """Decide for every booking read: send, wait (with the reason), hold, or report as changed.

    Args:
        rows: bookings with ``booking_id``, ``contract_no`` and the booking's fields.
        at_partner: contract references of the accounts the partner confirmed (active).
        held_accounts: contract reference -> why the account is held back (a precondition).
        posted: booking id -> payload hash the partner confirmed for it.
        digest: payload -> hash (the stream's ``payload_hash``), to tell a changed booking.
        refused: booking id -> the partner's refusal, for the bookings whose payload is exactly
            the one refused (sending it again would be refused again).

    The order: bookings go in booking order (:func:`booking_order`); a booking never runs ahead of
    its account (the master data) nor of an earlier booking of the same account that waits, breaks
    a rule or was refused.
    """
    plan = BookingPlan()
    refused = refused or {}
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
        if (note := booking_text_note(row)) is not None:
            plan.notes.append(note)
        problem = check_booking(row)
        if problem is not None:
            plan.invalid.append(problem)
        elif ref in blocked:
            reason = (
                f"waits for booking {blocked[ref]} of the same deposit account {ref}, which has not gone yet"
            )
            plan.waiting.append(Held(BOOKINGS, booking, EARLIER_BOOKING_WAITS, reason))
            continue
        elif booking in refused:
            plan.refused.append(
                Held(
                    BOOKINGS,
                    booking,
                    REFUSED,
                    f"the deposit partner refused booking {booking} of account {ref} as it is ({refused[booking]}); "
                    "it is not sent again until it is corrected in the ERP",
                )
            )
        elif ref in held_accounts:
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
        blocked.setdefault(ref, booking)
    return plan


# ---- payouts of kept deposits ------------------------------------------------------------------
RetentionAccount = Literal["owner", "per_transfer"]


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
    """The payouts of kept deposits: each counterclaim's amount as the partner posted it, from the
    object's trust pooled account to the owner's account (default) or the manager's retention account.

    Args:
        counterclaims: ``COUNTERCLAIM`` bookings (``booking_id``, ``contract_no``, ``object_no``,
            ``amount`` negative, ``text``), with amount and text as the partner posted them.
        objects: objects by number (``name``, ``owner_person_no``, ``trust_account_iban``).
        owner_accounts: owners' bank accounts by person number (``iban``, ``bic``, ``account_holder``).
        retention: the setting and the manager's account.

    Returns:
        The payouts (``connectors.sepa.pain001.Payout``; the remittance in full: the SEPA writer
        shortens it at a word boundary, with a warning), and the counterclaims that cannot be paid
        yet (no account to pay to, or none to pay from), each with the reason: they stay due and
        are paid by the run after the data is fixed.
    """
    payouts: list[Payout] = []
    problems: list[Held] = []
    for row in sorted(counterclaims, key=booking_order):
        booking = str(row["booking_id"])
        obj = objects.get(str(row["object_no"])) or {}
        debtor_iban = str(obj.get("trust_account_iban") or "").replace(" ", "")
        if retention.mode == "per_transfer":
            name, iban, bic = retention.manager_name, retention.manager_iban, retention.manager_bic
            missing = (
                "the manager's retention account is not set: set deposit.manager_retention_name and "
                "deposit.manager_retention_iban"
            )
        else:
            owner_no = str(obj.get("owner_person_no") or "")
            account = owner_accounts.get(owner_no) or {}
            name, iban, bic = (
                account.get("account_holder") or "",
                account.get("iban") or "",
                account.get("bic"),
            )
            missing = (
                f"owner {owner_no or '(none)'} of object {row['object_no']} has no bank account: enter it in the "
                "owner master (Eigentümerstamm)"
            )
        label = f"kept deposit of booking {booking} (deposit account {row['contract_no']}) not paid out yet"
        if not (name and iban):
            problems.append(Held(BOOKINGS, booking, PAYOUT_ACCOUNT_MISSING, f"{label}: {missing}"))
            continue
        if not debtor_iban:
            problems.append(
                Held(
                    BOOKINGS,
                    booking,
                    PAYOUT_ACCOUNT_MISSING,
                    f"{label}: object {row['object_no']} has no trust pooled account: enter it in the object's "
                    "bank parameters",
                )
            )
            continue
        text = f"Kautionseinbehalt {row['contract_no']}" + (f" {row['text']}" if row.get("text") else "")
        payouts.append(
            Payout(
                payout_id=payout_id(booking),
                amount=-Decimal(str(row["amount"])),
                creditor_name=str(name),
                creditor_iban=str(iban).replace(" ", ""),
                creditor_bic=str(bic) if bic else None,
                debtor_name=f"Treuhandsammelkonto {obj.get('name') or row['object_no']}",
                debtor_iban=debtor_iban,
                debtor_bic=bic_of(debtor_iban),
                remittance=text,
                reference=f"KAUTION-{booking}",
            )
        )
    return payouts, problems


def payout_id(booking_id: str | int) -> str:
    """The payout of a kept deposit: its ledger key and EndToEndId, from the counterclaim's id."""
    return f"deposit-{booking_id}"
