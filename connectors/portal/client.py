"""``PortalClient``: the tenant portal (casavi manager API v2) as a partner of the sync engine.

Everything HTTP (retries, rate limit, read-back of ambiguous writes, paging) is the engine's
:class:`~connectors.sync.http.HttpPartnerClient`; the portal adds its address, its streams
(:mod:`connectors.portal.streams`) and its token flow (:class:`~connectors.portal.auth.PortalAuth`).
"""

from __future__ import annotations

from typing import Any

import httpx

from connectors.portal.auth import PortalAuth
from connectors.portal.streams import STREAMS
from connectors.sync.client import PartnerClient, WriteOp, WriteResult
from connectors.sync.http import HttpPartnerClient

__all__ = ["PortalApi", "PortalClient", "WriteOp", "WriteResult"]

PortalApi = PartnerClient


class PortalClient(HttpPartnerClient):
    """The portal API client. Build it inside the task that uses it, from plain settings.

    Args:
        base_url: e.g. ``https://api.mycasavi.com`` or the sandbox's loopback URL.
        key, secret: API credentials (plain strings here; they come from ``SecretStr`` settings).
        options: see :class:`~connectors.sync.http.HttpPartnerClient` (timeouts, concurrency,
            rate limit, retries, TLS verification, a transport for tests).
    """

    def __init__(self, base_url: str, key: str, secret: str, **options: Any) -> None:
        super().__init__(
            "portal",
            base_url,
            STREAMS,
            PortalAuth(base_url, key, secret),
            check_path="/v2/properties",
            **options,
        )

    @classmethod
    def from_settings(cls, portal: Any, transport: httpx.AsyncBaseTransport | None = None) -> PortalClient:
        """Build a client from ``config.settings.PortalSettings``."""
        return cls(
            portal.base_url,
            portal.api_key.get_secret_value(),
            portal.api_secret.get_secret_value(),
            timeout_s=portal.timeout_s,
            connect_timeout_s=portal.connect_timeout_s,
            concurrency=portal.concurrency,
            rate_limit_per_s=portal.rate_limit_per_s,
            shared_rate_limit=portal.shared_rate_limit,
            max_retries=portal.max_retries,
            backoff_base_s=portal.backoff_base_s,
            backoff_max_s=portal.backoff_max_s,
            transport=transport,
        )
