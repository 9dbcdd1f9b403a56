"""OAuth2 client credentials (RFC 6749 section 4.4): a token for the mail server's ``AUTH XOAUTH2``.

Seed 002, *Moderne Autorisierung (Microsoft OAuth 2.0)*: an app registration of the tenant has a
client id and a client secret; hausflow posts them with the scope to the tenant's token endpoint
and gets a bearer token that lives ``expires_in`` seconds. The token is cached process-wide until
shortly before it expires (:data:`EXPIRY_MARGIN_S`, or a tenth of its life when that is shorter),
so the many mails of one run cost one token request.

Errors, sorted as the connectors sort them: no answer, a timeout, 429 or 5xx raise
:class:`~connectors.sync.errors.PartnerTransportError` (retriable); a refusal (400/401 with the
OAuth error, e.g. ``invalid_client`` for a wrong or expired secret) raises
:class:`~connectors.sync.errors.PartnerCredentialsError` with the OAuth ``error`` and the start
of its ``error_description`` (which never echoes the secret), never the secret itself.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx

from connectors.sync.errors import PartnerCredentialsError, PartnerProtocolError, PartnerTransportError

__all__ = ["EXPIRY_MARGIN_S", "BearerToken", "ClientCredentials"]

EXPIRY_MARGIN_S = 120.0
SETTINGS_HINT = (
    "[mail] oauth2_tenant, oauth2_client_id, oauth2_client_secret (still valid? oauth2_client_secret_expires), "
    "oauth2_scope and oauth2_token_url (HAUSFLOW_MAIL__OAUTH2_*)"
)


@dataclass(frozen=True)
class BearerToken:
    """An access token and when it stops being used (epoch seconds, before its real expiry)."""

    value: str
    use_until: float
    expires_at: float
    fresh: bool  # fetched by this call, not taken from the cache

    def __repr__(self) -> str:  # never the token
        return f"BearerToken(use_until={self.use_until:.0f}, fresh={self.fresh})"


def _loopback(host: str) -> bool:
    from connectors.mail import is_loopback

    return is_loopback(host)


class ClientCredentials:
    """One app registration's client credentials against one token endpoint.

    Args:
        token_url: the tenant's token endpoint (``https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token``).
        client_id, client_secret: of the app registration.
        scope: what the token is for (``https://outlook.office365.com/.default`` for SMTP).
        timeout_s: for the token request.
        transport: an httpx transport (tests); default the network.

    Raises:
        PartnerProtocolError: the token URL is plain ``http`` to another machine (the secret would
            travel unencrypted).
    """

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _cache: ClassVar[dict[tuple[str, str, str], tuple[str, float, float]]] = {}

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        parts = urlsplit(token_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PartnerProtocolError(
                f"[mail] oauth2_token_url {token_url!r} is not an http(s) address: set it, or oauth2_tenant"
            )
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise PartnerProtocolError(
                f"hausflow does not send the OAuth2 client secret unencrypted to {parts.hostname}: "
                "[mail] oauth2_token_url must be https"
            )
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self.timeout_s = timeout_s
        self._transport = transport
        self.requests = 0

    def __repr__(self) -> str:  # never the secret
        return f"ClientCredentials({self.token_url!r}, client_id={self.client_id!r}, scope={self.scope!r})"

    @property
    def _key(self) -> tuple[str, str, str]:
        return (self.token_url, self.client_id, self.scope)

    def token(self) -> BearerToken:
        """A cached token that is not about to expire, else a new one from the endpoint.

        Raises:
            PartnerTransportError: the endpoint does not answer, or answers 429/5xx.
            PartnerCredentialsError: the endpoint refused the client credentials.
            PartnerProtocolError: a 200 without an access token.
        """
        with self._lock:
            cached = self._cache.get(self._key)
        if cached and cached[1] > time.time():
            return BearerToken(cached[0], cached[1], cached[2], fresh=False)
        return self._fetch()

    def drop(self, token: BearerToken) -> None:
        """Forget ``token`` (the mail server refused it): the next :meth:`token` fetches a new one."""
        with self._lock:
            cached = self._cache.get(self._key)
            if cached and cached[0] == token.value:
                del self._cache[self._key]

    @classmethod
    def clear(cls) -> None:
        """Forget every cached token (tests)."""
        with cls._lock:
            cls._cache.clear()

    def _fetch(self) -> BearerToken:
        where = f"the OAuth2 token endpoint {self.token_url}"
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._secret,
            "scope": self.scope,
        }
        self.requests += 1
        try:
            with httpx.Client(timeout=self.timeout_s, transport=self._transport) as http:
                response = http.post(self.token_url, data=form, headers={"Accept": "application/json"})
        except httpx.TimeoutException as exc:
            raise PartnerTransportError(f"{where} did not answer within {self.timeout_s:g} s") from exc
        except httpx.TransportError as exc:
            raise PartnerTransportError(
                f"{where} cannot be reached ({exc}): check [mail] oauth2_token_url and the proxy (HTTPS_PROXY)"
            ) from exc
        status = response.status_code
        if status == 429 or status >= 500:
            raise PartnerTransportError(f"{where} answered HTTP {status}; try again later")
        data: Any = None
        try:
            data = response.json()
        except ValueError:
            data = None
        if status != 200:
            error = data.get("error") if isinstance(data, dict) else None
            description = data.get("error_description") if isinstance(data, dict) else None
            detail = f"HTTP {status}" + (f" {error}" if error else "")
            if isinstance(description, str) and description.strip():
                detail += f": {' '.join(description.split())[:200]}"
            raise PartnerCredentialsError("OAuth2 token endpoint", status, detail, SETTINGS_HINT)
        token = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise PartnerProtocolError(f"{where} answered 200 without an access_token")
        try:
            lifetime = float(data.get("expires_in", 3600))
        except (TypeError, ValueError):
            lifetime = 3600.0
        now = time.time()
        use_until = now + max(0.0, lifetime - min(EXPIRY_MARGIN_S, lifetime / 10))
        with self._lock:
            self._cache[self._key] = (token, use_until, now + lifetime)
        return BearerToken(token, use_until, now + lifetime, fresh=True)


def xoauth2_response(user: str, token: str) -> str:
    """The client's first ``AUTH XOAUTH2`` message before base64: ``user=...^Aauth=Bearer ...^A^A``."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01"
