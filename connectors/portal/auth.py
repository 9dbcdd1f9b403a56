"""The portal's token flow: ``POST /v2/authenticate`` with key and secret, the ``token`` header.

A token lives about a month and there is no refresh: on 401 the flow logs in again
(:class:`connectors.sync.auth.TokenAuth`).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import httpx

from connectors.sync.auth import TokenAuth, TokenCache

__all__ = ["PortalAuth", "TokenCache"]


def _expiry(value: object) -> float | None:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return None


class PortalAuth(TokenAuth):
    """Key and secret of one portal and the token they earn (kept in :class:`TokenCache`)."""

    partner = "portal"
    settings_hint = (
        "portal.api_key and portal.api_secret (HAUSFLOW_PORTAL__API_KEY / HAUSFLOW_PORTAL__API_SECRET, "
        "or the Secret blocks named in prefect.yaml), and portal.base_url"
    )
    path = "/v2/authenticate"

    def __init__(self, base_url: str, key: str, secret: str) -> None:
        super().__init__(base_url, key)
        self._credentials = {"key": key, "secret": secret}

    def __repr__(self) -> str:  # never the secret
        return f"PortalAuth({self.base_url!r}, key={self.cache_key[1]!r})"

    def login_request(self) -> httpx.Request:
        return httpx.Request("POST", f"{self.base_url}{self.path}", json=self._credentials)

    def read_token(self, data: Any) -> tuple[str, float | None]:
        token = data["token"]
        if not isinstance(token, str) or not token:
            raise ValueError("no token")
        expires = _expiry(data.get("expiresAt"))
        return token, expires if expires is not None else time.time() + 3600

    def apply(self, request: httpx.Request, token: str) -> None:
        request.headers["token"] = token
