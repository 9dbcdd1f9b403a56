"""The deposit partner's streams: deposit accounts (one per tenancy, keyed by the ERP's contract
reference) and bookings (keyed by the ERP's booking id, each naming its deposit account).

Accounts go first (write order 1), bookings after them (2): the partner refuses a booking of an
account it does not hold. A booking is posted once and never archived: the partner keeps a ledger,
and a correction is a booking of its own.
"""

from __future__ import annotations

from typing import Any

from connectors.sync.streams import Stream

BOOKING_TYPES = (
    "PAYMENT_IN",
    "INTEREST",
    "WITHHOLDING_TAX",
    "SOLIDARITY_SURCHARGE",
    "COUNTERCLAIM",
    "PAYOUT",
)
"""Booking types of the protocol; the ERP's ``deposit_bookings.booking_type`` uses the same names."""


def _booking_parents(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [("deposit_accounts", str(record["accountId"]))] if record.get("accountId") else []


DEPOSIT_ACCOUNTS = Stream(
    "deposit_accounts",
    "/v1/deposit-accounts",
    (
        "id",
        "accountNo",
        "depositAmount",
        "currency",
        "tenancyStart",
        "tenancyEnd",
        "unitId",
        "leadTenant",
        "jointTenants",
        "object",
        "owner",
        "trustAccount",
    ),
    write_order=1,
    archivable=True,
)
BOOKINGS = Stream(
    "bookings",
    "/v1/bookings",
    ("id", "accountId", "type", "amount", "currency", "bookingDate", "text"),
    write_order=2,
    archivable=False,
    parents=_booking_parents,
)

STREAMS: dict[str, Stream] = {s.name: s for s in (DEPOSIT_ACCOUNTS, BOOKINGS)}
