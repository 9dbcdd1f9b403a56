"""Helpers shared by the deposit-partner tests: the sandbox, a configured environment, its view."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from connectors.deposit import DepositClient
from connectors.erp import schema
from connectors.sync.auth import TokenCache
from tests.portal_env import BUSINESS_DATE

__all__ = ["BUSINESS_DATE", "deposit_env", "deposit_view", "erp_bookings", "missing_at_partner"]


@contextmanager
def deposit_env(sandbox: Any, erp_url: str, state_url: str, **extra: str) -> Iterator[dict[str, str]]:
    """Environment of the test profile with the deposit interface on and pointed at ``sandbox``."""
    values = {
        "HAUSFLOW_PROFILE": "test",
        "HAUSFLOW_ERP_URL": erp_url,
        "HAUSFLOW_STATE_URL": state_url,
        "HAUSFLOW_BUSINESS_DATE": BUSINESS_DATE.isoformat(),
        "HAUSFLOW_LICENCES__DEPOSIT": "true",
        "HAUSFLOW_DEPOSIT__ENABLED": "true",
        "HAUSFLOW_DEPOSIT__BASE_URL": sandbox.base_url,
        "HAUSFLOW_DEPOSIT__CLIENT_USERNAME": sandbox.key,
        "HAUSFLOW_DEPOSIT__PASSWORD": sandbox.secret,
        "HAUSFLOW_DEPOSIT__BACKOFF_BASE_S": "0.05",
        "HAUSFLOW_DEPOSIT__BACKOFF_MAX_S": "1",
        "HAUSFLOW_DEPOSIT__BATCH_SIZE": "200",
        "HAUSFLOW_SEPA__ENABLED": "true",  # the payout files; off on the test system until switched on
    }
    if state_url.startswith("sqlite:///"):  # payout files beside the state database, never in the work tree
        values["HAUSFLOW_SEPA__PAYOUTS__OUTPUT_DIR"] = str(
            Path(state_url.removeprefix("sqlite:///")).parent / "payouts"
        )
    values.update(extra)
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    TokenCache.clear()
    try:
        yield values
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def deposit_view(sandbox: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """Everything the deposit sandbox holds, read over its API: entity -> id -> record."""
    client = DepositClient(sandbox.base_url, sandbox.key, sandbox.secret)
    return {
        "deposit_accounts": {
            r["id"]: r for r in client.list_records("deposit_accounts", include_archived=True)
        },
        "bookings": {r["id"]: r for r in client.list_records("bookings")},
    }


def erp_bookings(engine: Engine) -> dict[str, dict[str, Any]]:
    """Every deposit booking of the ERP with its account's contract reference: booking id -> row."""
    b, a = schema.deposit_bookings, schema.deposit_accounts
    query = select(b, a.c.contract_no).join(a, a.c.account_no == b.c.account_no)
    with engine.connect() as conn:
        return {str(r.booking_id): dict(r._mapping) for r in conn.execute(query)}


def missing_at_partner(engine: Engine, sandbox: Any) -> dict[str, str]:
    """The ERP's bookings of accounts the partner holds (active) that the partner lacks or holds
    with another amount: booking id -> what is wrong. Compared with the ERP, not with hausflow's
    own state: a booking hausflow never read is found too."""
    from decimal import Decimal

    view = deposit_view(sandbox)
    active = {ref for ref, acc in view["deposit_accounts"].items() if not acc.get("archived")}
    out: dict[str, str] = {}
    for booking_id, row in erp_bookings(engine).items():
        if row["contract_no"] not in active:
            continue
        posted = view["bookings"].get(booking_id)
        if posted is None:
            out[booking_id] = f"missing (account {row['contract_no']})"
        elif Decimal(posted["amount"]) != Decimal(str(row["amount"])):
            out[booking_id] = f"amount {posted['amount']} at the partner, {row['amount']} in the ERP"
    return out
