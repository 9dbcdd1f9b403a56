"""Token flows as ``httpx.Auth``: log in once, send the token, log in again once on 401.

A partner's token flow subclasses :class:`TokenAuth` with three things: the login request, how
to read the token and its expiry from the answer, and how a request carries the token.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Generator
from typing import Any, ClassVar

import httpx

from connectors.state_store import credential_hint
from connectors.sync.client import ClientStats
from connectors.sync.errors import (
    RETRIABLE_STATUSES,
    PartnerCredentialsError,
    PartnerRetriableError,
    retry_after_seconds,
)


class TokenCache:
    """Process-wide cache of tokens, keyed by partner address and API key.

    Why: a token lives long (the portal's about a month) and there is no refresh; every batch
    task builds its own client, and logging in per batch would double the request count of small
    batches and crowd the partner's login counter.
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
    def expiry(cls, key: tuple[str, str]) -> float | None:
        """When the cached token expires (epoch seconds), if one is cached."""
        with cls._lock:
            entry = cls._tokens.get(key)
        return entry[1] if entry else None

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


class TokenAuth(httpx.Auth):
    """A login-token flow for ``httpx.AsyncClient``, shared by the concurrent requests of a client.

    With no valid token cached, the first request logs in and the others wait for its token;
    after a 401, the first refused request logs in again (once) and the others take the new
    token. A refused login (any answer but a token, 408, 429 or 5xx) raises
    :class:`PartnerCredentialsError` and is remembered: the client's other requests raise it too,
    without another login, so wrong credentials cost one login per client, never one per record.
    A 408, 429 or 5xx answer to the login raises the partner's retriable error: the client
    retries the request, login included. The login gets the timeouts of the request it serves.

    Subclasses give :meth:`login_request`, :meth:`read_token` and :meth:`apply`.
    """

    partner = "partner"
    settings_hint = "the partner's credentials"

    def __init__(self, base_url: str, key: str, stats: ClientStats | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.cache_key = (self.base_url, key)
        self.stats = stats if stats is not None else ClientStats()
        self._refused: PartnerCredentialsError | None = None
        self._lock: tuple[asyncio.Lock, asyncio.AbstractEventLoop] | None = None

    # ---- what a partner's flow defines -------------------------------------------------------
    def login_request(self) -> httpx.Request:
        """The request that exchanges the credentials for a token."""
        raise NotImplementedError

    def read_token(self, data: Any) -> tuple[str, float | None]:
        """The token and its expiry (epoch seconds, ``None`` if unknown) of a login answer."""
        raise NotImplementedError

    def apply(self, request: httpx.Request, token: str) -> None:
        """Put ``token`` on ``request``."""
        raise NotImplementedError

    # ---- the flow ----------------------------------------------------------------------------
    def token(self) -> str | None:
        """The cached token, if any is still valid."""
        return TokenCache.get(self.cache_key)

    def expires_at(self) -> float | None:
        """When the cached token expires (epoch seconds), if one is cached."""
        return TokenCache.expiry(self.cache_key)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError(f"{type(self).__name__} works with httpx.AsyncClient only")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = self.token()
        if token is None:
            async with self._loop_lock():
                token = self.token()
                if token is None:
                    login = yield self._login(request)
                    await login.aread()
                    token = self._accept(login, fresh=False)
        self.apply(request, token)
        response = yield request
        if response.status_code != 401:
            return
        # the token expired or was revoked: one new one for every request that waits, one more try
        async with self._loop_lock():
            TokenCache.drop(self.cache_key, token)
            fresh = self.token()
            if fresh is None:
                login = yield self._login(request)
                await login.aread()
                fresh = self._accept(login, fresh=True)
        self.apply(request, fresh)
        yield request

    def _login(self, request: httpx.Request) -> httpx.Request:
        """The login request, with the timeouts of the request that needs it (a login the
        partner never answers ends as that request would)."""
        if self._refused is not None:
            refused = self._refused
            raise PartnerCredentialsError(
                refused.partner, refused.status, refused.detail, refused.settings_hint
            )
        self.stats.authentications += 1
        login = self.login_request()
        if "timeout" in request.extensions:
            login.extensions["timeout"] = request.extensions["timeout"]
        return login

    def _accept(self, response: httpx.Response, fresh: bool) -> str:
        """The token of a login answer, now cached; a typed error for any other answer.

        Only the status goes into an error, never the answer's body: a login answer may echo
        the credentials. 408, 429 and 5xx are retriable; any other answer, and a 200 without a
        token, is a refusal, remembered for the client's other requests.
        """
        status = response.status_code
        where = f"HTTP {status} {response.reason_phrase} at {response.request.url.path}".rstrip()
        if status in RETRIABLE_STATUSES:
            raise PartnerRetriableError(
                status,
                "the login was not answered",
                path=response.request.url.path,
                partner=self.partner,
                retry_after_s=retry_after_seconds(response.headers.get("Retry-After")),
            )
        token: tuple[str, float | None] | None = None
        if status == 200:
            try:
                token = self.read_token(response.json())
            except (KeyError, TypeError, ValueError):
                where = f"{where}, but the answer holds no token"
        if token is None:
            self._refused = PartnerCredentialsError(self.partner, status, where, self.settings_hint)
            raise PartnerCredentialsError(self.partner, status, where, self.settings_hint)
        TokenCache.put(self.cache_key, token[0], token[1] if token[1] is not None else time.time() + 3600)
        self.stats.reauthentications += int(fresh)
        return token[0]

    def key_hint(self) -> str:
        """Which key this flow logs in with, as a hint (first 4 characters of a long key), never the key."""
        return credential_hint(self.cache_key[1])

    def _loop_lock(self) -> asyncio.Lock:
        """The lock for the running event loop (a client may run one loop per synchronous call).

        Lock and loop are kept as one pair, read and replaced in one step: a lock is never
        handed to a loop it was not made for.
        """
        loop = asyncio.get_running_loop()
        pair = self._lock
        if pair is None or pair[1] is not loop:
            pair = (asyncio.Lock(), loop)
            self._lock = pair
        return pair[0]
