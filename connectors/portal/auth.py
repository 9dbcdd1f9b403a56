"""Token flow of the portal: authenticate with key and secret, send ``token``, re-authenticate on 401."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from datetime import datetime
from typing import ClassVar

import httpx

from connectors.portal.errors import PortalAuthError, error_from_response


class TokenCache:
    """Process-wide cache of portal tokens, keyed by base URL and API key.

    Why: a token lives about a month and there is no refresh; every batch task builds its own
    client, and re-authenticating per batch would double the request count of small batches.
    """

    _lock = threading.Lock()
    _tokens: ClassVar[dict[tuple[str, str], tuple[str, float]]] = {}

    @classmethod
    def get(cls, key: tuple[str, str]) -> str | None:
        """A cached token that is not about to expire, else ``None``."""
        with cls._lock:
            entry = cls._tokens.get(key)
        if entry and entry[1] - 60 > time.time():
            return entry[0]
        return None

    @classmethod
    def put(cls, key: tuple[str, str], token: str, expires_at: float) -> None:
        """Remember a token until shortly before ``expires_at`` (epoch seconds)."""
        with cls._lock:
            cls._tokens[key] = (token, expires_at)

    @classmethod
    def drop(cls, key: tuple[str, str], token: str) -> None:
        """Forget ``token`` if it is still the cached one (another request may have renewed it)."""
        with cls._lock:
            entry = cls._tokens.get(key)
            if entry and entry[0] == token:
                del cls._tokens[key]

    @classmethod
    def clear(cls) -> None:
        """Forget every token (tests)."""
        with cls._lock:
            cls._tokens.clear()


def _expiry(value: object) -> float:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time() + 3600


class PortalTokenAuth(httpx.Auth):
    """``httpx.Auth`` for the portal's ``token`` header, with one re-authentication on 401."""

    requires_response_body = True

    def __init__(self, base_url: str, key: str, secret: str) -> None:
        self._url = base_url.rstrip("/") + "/v2/authenticate"
        self._key = key
        self._secret = secret
        self._cache_key = (base_url.rstrip("/"), key)

    def _authenticate(self) -> Generator[httpx.Request, httpx.Response, str]:
        response = yield httpx.Request("POST", self._url, json={"key": self._key, "secret": self._secret})
        if response.status_code != 200:
            try:
                body = response.json()
            except ValueError:
                body = response.text
            error = error_from_response(
                response.status_code, body, "/v2/authenticate", response.headers.get("Retry-After")
            )
            if response.status_code == 401:
                raise PortalAuthError(
                    401, "the portal refused key and secret: check the credentials", path="/v2/authenticate"
                )
            raise error
        data = response.json()
        token = str(data["token"])
        TokenCache.put(self._cache_key, token, _expiry(data.get("expiresAt")))
        return token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Send with the cached token; on 401 drop it, authenticate once and resend."""
        token = TokenCache.get(self._cache_key)
        if token is None:
            token = yield from self._authenticate()
        request.headers["token"] = token
        response = yield request
        if response.status_code == 401:
            TokenCache.drop(self._cache_key, token)
            fresh = TokenCache.get(self._cache_key)
            if fresh is None or fresh == token:
                fresh = yield from self._authenticate()
            request.headers["token"] = fresh
            yield request
