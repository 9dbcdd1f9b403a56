"""Helpers shared by the deposit-partner tests: the sandbox, a configured environment, its view."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from connectors.deposit import DepositClient
from connectors.sync.auth import TokenCache
from tests.portal_env import BUSINESS_DATE

__all__ = ["BUSINESS_DATE", "deposit_env", "deposit_view"]


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
    }
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
