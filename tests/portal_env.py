"""Helpers shared by the portal-sync tests: a configured environment and the sandbox's view."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import Any

from connectors.portal import PortalClient
from connectors.portal.auth import TokenCache
from connectors.portal.streams import STREAMS

BUSINESS_DATE = date(2026, 11, 21)


@contextmanager
def portal_env(sandbox: Any, erp_url: str, state_url: str, **extra: str) -> Iterator[dict[str, str]]:
    """Environment of the test profile with the interface on (e-mails to contacts too) and pointed at
    ``sandbox``."""
    values = {
        "HAUSFLOW_PROFILE": "test",
        "HAUSFLOW_ERP_URL": erp_url,
        "HAUSFLOW_STATE_URL": state_url,
        "HAUSFLOW_BUSINESS_DATE": BUSINESS_DATE.isoformat(),
        "HAUSFLOW_PORTAL__ENABLED": "true",
        "HAUSFLOW_PORTAL__NOTIFY_UNREGISTERED_BY_EMAIL": "true",  # e-mails to contacts: off until switched on
        "HAUSFLOW_PORTAL__BASE_URL": sandbox.base_url,
        "HAUSFLOW_PORTAL__API_KEY": sandbox.key,
        "HAUSFLOW_PORTAL__API_SECRET": sandbox.secret,
        "HAUSFLOW_PORTAL__BACKOFF_BASE_S": "0.05",
        "HAUSFLOW_PORTAL__BACKOFF_MAX_S": "1",
        "HAUSFLOW_PORTAL__BATCH_SIZE": "200",
        # the master-data tests: documents and messages have tests of their own
        "HAUSFLOW_LICENCES__DOCUMENTS_MESSAGES": "false",
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


def portal_view(sandbox: Any, include_archived: bool = True) -> dict[str, dict[str, dict[str, Any]]]:
    """Everything the sandbox holds, read over its API: entity -> id -> record."""
    client = PortalClient(sandbox.base_url, sandbox.key, sandbox.secret)
    return {
        entity: {r["id"]: r for r in client.list_records(entity, include_archived=include_archived)}
        for entity in ("properties", "units", "contacts")
    }


def portal_content(sandbox: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """What the portal holds, as hausflow writes it: each record's written fields and whether it is
    archived, read over the portal's API."""
    view: dict[str, Any] = portal_view(sandbox)
    client = PortalClient(sandbox.base_url, sandbox.key, sandbox.secret)
    view["responsibilities"] = client.read_many("responsibilities", sorted(view["properties"]))
    return {
        entity: {
            ref: {**STREAMS[entity].project(record), "archived": bool(record.get("archived"))}
            for ref, record in records.items()
        }
        for entity, records in view.items()
    }


def run_log(run_id: str, until: str = "Portal sync done", timeout_s: float = 20.0) -> list[str]:
    """The log messages of one flow run, read from the Prefect API once ``until`` has arrived.

    Logs are shipped to the API in batches, a little after the run returns.
    """
    import asyncio
    import time
    from uuid import UUID

    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read() -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(run_id)]))
            )
        return [log.message for log in logs]

    deadline = time.monotonic() + timeout_s
    messages = asyncio.run(read())
    while not any(until in m for m in messages) and time.monotonic() < deadline:
        time.sleep(0.5)
        messages = asyncio.run(read())
    return messages
