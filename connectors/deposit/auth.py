"""The deposit partner's login: ``POST /v1/login`` with the client user name and the web-service
password (seed 000: "Client Username", "Client Passwort"); the ``token`` header on every other call.

A token's life is the partner's to say (``expiresAt``); on 401 the flow logs in again, once
(:class:`connectors.sync.auth.TokenAuth`).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import httpx

from connectors.sync.auth import TokenAuth


class DepositAuth(TokenAuth):
    """Client user name and web-service password of one partner address, and the token they earn."""

    partner = "deposit partner"
    settings_hint = (
        "deposit.client_username and deposit.password (HAUSFLOW_DEPOSIT__CLIENT_USERNAME / "
        "HAUSFLOW_DEPOSIT__PASSWORD, or the Secret block named in prefect.yaml), and deposit.base_url"
    )
    path = "/v1/login"

    def __init__(self, base_url: str, username: str, password: str) -> None:
        super().__init__(base_url, username)
        self._credentials = {"clientUsername": username, "password": password}

    def __repr__(self) -> str:  # never the password
        return f"DepositAuth({self.base_url!r}, username={self.cache_key[1]!r})"

    def login_request(self) -> httpx.Request:
        """``POST {base_url}/v1/login`` with the credentials as JSON."""
        return httpx.Request("POST", f"{self.base_url}{self.path}", json=self._credentials)

    def read_token(self, data: Any) -> tuple[str, float | None]:
        """The token and its expiry (``expiresAt``, ISO 8601) of a login answer."""
        token = data["token"]
        if not isinstance(token, str) or not token:
            raise ValueError("no token")
        expires: float | None = None
        raw = data.get("expiresAt")
        if isinstance(raw, str):
            try:
                expires = datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
            except ValueError:
                expires = None
        return token, expires if expires is not None else time.time() + 3600

    def apply(self, request: httpx.Request, token: str) -> None:
        """The token travels in the ``token`` header, as with the portal."""
        request.headers["token"] = token
