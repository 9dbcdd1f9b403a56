"""``DepositClient``: the rent-deposit partner as a partner of the sync engine.

Everything HTTP (retries, rate limit, read-back of ambiguous writes, paging) is the engine's
:class:`~connectors.sync.http.HttpPartnerClient`; the deposit partner adds its address, its
streams (:mod:`connectors.deposit.streams`) and its login (:class:`~connectors.deposit.auth.DepositAuth`).
A real implementation of the partner's own protocol replaces this class behind the same interface.
"""

from __future__ import annotations

from typing import Any

import httpx

from connectors.deposit.auth import DepositAuth
from connectors.deposit.streams import STREAMS
from connectors.sync.http import HttpPartnerClient


class DepositClient(HttpPartnerClient):
    """The deposit partner's API client. Build it inside the task that uses it, from plain settings.

    Args:
        base_url: the server address, e.g. ``https://api.kautionspartner.de/ws`` or the sandbox's
            ``http://127.0.0.1:8766/ws``; the protocol's paths (``/v1/...``) go below it.
        username, password: client user name and web-service password.
        options: see :class:`~connectors.sync.http.HttpPartnerClient`.
    """

    def __init__(self, base_url: str, username: str, password: str, **options: Any) -> None:
        super().__init__(
            "deposit partner",
            base_url,
            STREAMS,
            DepositAuth(base_url, username, password),
            check_path="/v1/deposit-accounts",
            **options,
        )

    @classmethod
    def from_settings(cls, deposit: Any, transport: httpx.AsyncBaseTransport | None = None) -> DepositClient:
        """Build a client from ``config.settings.DepositSettings``."""
        return cls(
            deposit.base_url,
            deposit.client_username,
            deposit.password.get_secret_value(),
            timeout_s=deposit.timeout_s,
            connect_timeout_s=deposit.connect_timeout_s,
            concurrency=deposit.concurrency,
            rate_limit_per_s=deposit.rate_limit_per_s,
            max_retries=deposit.max_retries,
            backoff_base_s=deposit.backoff_base_s,
            backoff_max_s=deposit.backoff_max_s,
            transport=transport,
        )
