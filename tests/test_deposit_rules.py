"""Rule tables of the deposit partner (seed 000): preconditions, booking order, payout routing."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from connectors.deposit.streams import BOOKINGS
from connectors.sepa.pain001 import Payout
from connectors.sync.streams import payload_hash
from tasks.deposit_rules import (
    ACCOUNT_HELD,
    ACCOUNT_NOT_AT_PARTNER,
    CHANGED_AFTER_POSTING,
    EARLIER_BOOKING_WAITS,
    ONE_ACCOUNT_PER_TENANT,
    OWNER_ON_OBJECT,
    PAYOUT_ACCOUNT_MISSING,
    TRUST_ACCOUNT_ON_OBJECT,
    RetentionSettings,
    booking_payload,
    build_master,
    check_preconditions,
    plan_bookings,
    route_payouts,
)

OWNER_IBAN = "DE89370400440532013000"
TRUST_IBAN = "DE02200505501015871393"
MANAGER_IBAN = "DE02120300000000202051"
OBJ = {"object_no": "1001", "name": "Haus A", "owner_person_no": "P9", "trust_account_iban": TRUST_IBAN}


def account(no: str, contract: str, person: str, object_no: str = "1001") -> dict[str, Any]:
    return {"account_no": no, "contract_no": contract, "person_no": person, "object_no": object_no,
            "opened_on": date(2024, 1, 1), "closed_on": None, "move_out_date": None}  # fmt: skip


@pytest.mark.parametrize(
    ("case", "accounts", "objects", "expected"),
    [
        ("all fine", [account("K1", "C1", "P1")], {"1001": OBJ}, set()),
        ("object without owner", [account("K1", "C1", "P1")], {"1001": {**OBJ, "owner_person_no": None}},
         {("C1", OWNER_ON_OBJECT)}),
        ("object without trust account", [account("K1", "C1", "P1")], {"1001": {**OBJ, "trust_account_iban": " "}},
         {("C1", TRUST_ACCOUNT_ON_OBJECT)}),
        ("both missing: one entry per rule", [account("K1", "C1", "P1")],
         {"1001": {**OBJ, "owner_person_no": "", "trust_account_iban": None}},
         {("C1", OWNER_ON_OBJECT), ("C1", TRUST_ACCOUNT_ON_OBJECT)}),
        ("one object's failure holds only that object", [account("K1", "C1", "P1"), account("K2", "C2", "P2", "1002")],
         {"1001": OBJ, "1002": {**OBJ, "object_no": "1002", "owner_person_no": None}}, {("C2", OWNER_ON_OBJECT)}),
        ("tenant with two accounts", [account("K1", "C1", "P1"), account("K2", "C2", "P1"), account("K3", "C3", "P3")],
         {"1001": OBJ}, {("C1", ONE_ACCOUNT_PER_TENANT), ("C2", ONE_ACCOUNT_PER_TENANT)}),
        ("tenancy with two accounts (an ERP view)", [account("K1", "C1", "P1"), account("K2", "C1", "P1")],
         {"1001": OBJ}, {("C1", ONE_ACCOUNT_PER_TENANT)}),
    ],
)  # fmt: skip
def test_preconditions(
    case: str,
    accounts: list[dict[str, Any]],
    objects: dict[str, dict[str, Any]],
    expected: set[tuple[str, str]],
) -> None:
    held = check_preconditions(accounts, objects)
    assert {(h.ref_id, h.rule) for h in held} == expected, case
    for h in held:  # the reason names the record and what to do
        assert ("object" in h.reason and "enter" in h.reason) or "tenant" in h.reason or "tenancy" in h.reason


def test_master_records_leave_out_what_is_held_and_name_everything_the_partner_needs() -> None:
    accounts = [
        {**account("K1", "C1", "P1"), "deposit_amount": Decimal("1500"), "start_date": None,
         "move_out_date": None, "closed_on": None, "unit_no": "1001-001"},
        {**account("K2", "C2", "P2"), "deposit_amount": Decimal("900.5"), "start_date": None, "unit_no": "1001-002"},
    ]  # fmt: skip
    persons = [
        {"person_no": "P1", "last_name": "Müller", "first_name": "Eva"},
        {"person_no": "P2", "last_name": None, "company_name": None},
        {"person_no": "P4", "last_name": "Yılmaz"},
        {"person_no": "P9", "company_name": "Eigentum GmbH"},
    ]
    master = build_master(accounts, [OBJ], persons, [{"contract_no": "C1", "person_no": "P4"}])
    assert set(master.records) == {"C1"}
    assert [(h.ref_id, h.rule) for h in master.held] == [("C2", "tenant_has_name")]
    record = master.records["C1"]
    assert record["depositAmount"] == "1500.00" and record["owner"] == {"id": "P9", "name": "Eigentum GmbH"}
    assert [t["id"] for t in record["jointTenants"]] == ["P4"]
    assert record["trustAccount"]["iban"] == TRUST_IBAN and record["object"]["id"] == "1001"
    assert master.account_refs == {"K1": "C1", "K2": "C2"}


def booking(bid: int, contract: str, kind: str = "PAYMENT_IN", amount: str = "100.00") -> dict[str, Any]:
    return {"booking_id": bid, "contract_no": contract, "booking_type": kind, "amount": Decimal(amount),
            "booking_date": date(2025, 1, 1), "text": None, "object_no": "1001"}  # fmt: skip


def digest(payload: dict[str, Any]) -> str:
    return payload_hash(BOOKINGS, payload)


@pytest.mark.parametrize(
    ("case", "rows", "at_partner", "held", "posted", "send", "waiting"),
    [
        ("account at the partner: sent", [booking(1, "C1")], {"C1"}, {}, {}, ["1"], {}),
        ("account not there yet: waits", [booking(1, "C1")], set(), {}, {}, [], {"1": ACCOUNT_NOT_AT_PARTNER}),
        ("account held by a precondition", [booking(1, "C1")], {"C1"}, {"C1": "owner_on_object: ..."}, {}, [],
         {"1": ACCOUNT_HELD}),
        ("a waiting account does not stop another's bookings, which go in booking order",
         [booking(3, "C1"), booking(1, "C2"), booking(2, "C1")], {"C1"}, {}, {}, ["2", "3"],
         {"1": ACCOUNT_NOT_AT_PARTNER}),
        ("booking order: by booking id, the earlier one waits and blocks the later",
         [booking(7, "C2", "INTEREST", "1.00"), booking(5, "C2")], set(), {}, {}, [],
         {"5": ACCOUNT_NOT_AT_PARTNER, "7": EARLIER_BOOKING_WAITS}),
        ("posted before and unchanged: not sent", [booking(1, "C1")], {"C1"}, {},
         {"1": digest(booking_payload(booking(1, "C1")))}, [], {}),
    ],
)  # fmt: skip
def test_booking_order_and_waiting(
    case: str,
    rows: list[dict[str, Any]],
    at_partner: set[str],
    held: dict[str, str],
    posted: dict[str, str],
    send: list[str],
    waiting: dict[str, str],
) -> None:
    plan = plan_bookings(rows, at_partner, held, posted, digest)
    assert list(plan.send) == send, case
    assert {h.ref_id: h.rule for h in plan.waiting} == waiting, case


def test_a_posted_booking_changed_in_the_erp_is_reported_not_sent() -> None:
    posted = {"1": digest(booking_payload(booking(1, "C1", amount="100.00")))}
    plan = plan_bookings([booking(1, "C1", amount="110.00")], {"C1"}, {}, posted, digest)
    assert not plan.send and [h.rule for h in plan.changed] == [CHANGED_AFTER_POSTING]
    assert "correction booking" in plan.changed[0].reason


OWNERS = {"P9": {"iban": OWNER_IBAN, "bic": "COBADEFFXXX", "account_holder": "Eigentum GmbH"}}
MANAGER = RetentionSettings("per_transfer", "Hausverwaltung Muster GmbH", MANAGER_IBAN, "BYLADEM1001")


@pytest.mark.parametrize(
    ("case", "retention", "objects", "owners", "creditor", "problem"),
    [
        ("default: the owner's account", RetentionSettings(), {"1001": OBJ}, OWNERS, ("Eigentum GmbH", OWNER_IBAN), None),
        ("per transfer: the manager's retention account", MANAGER, {"1001": OBJ}, OWNERS,
         ("Hausverwaltung Muster GmbH", MANAGER_IBAN), None),
        ("owner without bank account", RetentionSettings(), {"1001": OBJ}, {}, None, "no bank account"),
        ("per transfer without the manager's account", RetentionSettings("per_transfer"), {"1001": OBJ}, OWNERS, None,
         "retention account"),
        ("object without trust account", RetentionSettings(), {"1001": {**OBJ, "trust_account_iban": None}}, OWNERS,
         None, "trust pooled account"),
    ],
)  # fmt: skip
def test_payout_routing(
    case: str,
    retention: RetentionSettings,
    objects: dict[str, dict[str, Any]],
    owners: dict[str, dict[str, Any]],
    creditor: tuple[str, str] | None,
    problem: str | None,
) -> None:
    claim = {**booking(42, "C1", "COUNTERCLAIM", "-350.00"), "text": "Schönheitsreparaturen"}
    payouts, problems = route_payouts([claim], objects, owners, retention)
    if creditor is None:
        assert not payouts and problems[0].rule == PAYOUT_ACCOUNT_MISSING and problem in problems[0].reason, (
            case
        )
        return
    assert not problems
    (payout,) = payouts
    assert isinstance(payout, Payout)
    assert (payout.creditor_name, payout.creditor_iban) == creditor, case
    assert payout.amount == Decimal("350.00") and payout.debtor_iban == TRUST_IBAN
    assert payout.payout_id == "deposit-42" and len(payout.reference) <= 35
    assert "C1" in payout.remittance and "Schönheitsreparaturen" in payout.remittance
