"""Token flow of the portal: authenticate with key and secret, send ``token``, re-authenticate on 401."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import ClassVar

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


class PortalCredentials:
    """Key and secret of one portal and the token they earn (kept in :class:`TokenCache`).

    The channel of :mod:`connectors.portal.client` sends every request with the cached token. With
    none cached, or on a 401, it asks :meth:`renewed`, which authenticates with :attr:`body` at
    :attr:`path` once for all the requests that wait, and sends again.
    """

    path = "/v2/authenticate"

    def __init__(self, base_url: str, key: str, secret: str) -> None:
        self._cache_key = (base_url.rstrip("/"), key)
        self._body = json.dumps({"key": key, "secret": secret}).encode()
        self._lock: tuple[asyncio.Lock, asyncio.AbstractEventLoop] | None = None

    def __repr__(self) -> str:  # never the secret
        return f"PortalCredentials({self._cache_key[0]!r}, key={self._cache_key[1]!r})"

    @property
    def body(self) -> bytes:
        """The JSON body of the authentication request."""
        return self._body

    def token(self) -> str | None:
        """The cached token, if any is still valid."""
        return TokenCache.get(self._cache_key)

    async def renewed(
        self, refused: str | None, authenticate: Callable[[], Awaitable[str]]
    ) -> tuple[str, bool]:
        """A token to send: ``refused`` (if any) is dropped; then the cached token if another
        request fetched one meanwhile, else a new one from ``authenticate``. Returns the token
        and whether it was fetched here.

        Why one at a time: the requests of a batch run concurrently. Without the lock, every
        request the portal refused with the same old token (up to one per worker), and every
        worker starting without a token, would authenticate on its own.
        """
        async with self._loop_lock():
            if refused is not None:
                TokenCache.drop(self._cache_key, refused)
            current = self.token()
            if current is not None and current != refused:
                return current, False
            return await authenticate(), True

    def _loop_lock(self) -> asyncio.Lock:
        """The lock for the running event loop (a client runs one loop per synchronous call).

        Lock and loop are kept as one pair, read and replaced in one step: a lock is never
        handed to a loop it was not made for.
        """
        loop = asyncio.get_running_loop()
        pair = self._lock
        if pair is None or pair[1] is not loop:
            pair = (asyncio.Lock(), loop)
            self._lock = pair
        return pair[0]

    def accept(self, status: int, content: bytes, retry_after: str | None) -> str:
        """The token of an authentication answer, now cached; a typed error for any other answer."""
        try:
            data = json.loads(content) if content else None
        except ValueError:
            data = content.decode("utf-8", "replace")
        if status != 200:
            if status == 401:
                raise PortalAuthError(
                    401, "the portal refused key and secret: check the credentials", path=self.path
                )
            raise error_from_response(status, data, self.path, retry_after)
        if not isinstance(data, dict) or "token" not in data:
            raise PortalAuthError(status, "the authentication answer holds no token", path=self.path)
        token = str(data["token"])
        TokenCache.put(self._cache_key, token, _expiry(data.get("expiresAt")))
        return token
