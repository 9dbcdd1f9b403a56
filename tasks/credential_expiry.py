"""Credential-expiry warnings (seed 002: *Client Secret (Gültig bis)*, warned 30, 7 and 1 days before).

What expires: a partner secret with a configured end date (``portal.api_secret_expires``,
``deposit.password_expires``), the OAuth2 client secret of the mail login
(``mail.oauth2_client_secret_expires``), the licence (its ``valid_until``), and the portal's
token, read by logging in (it is warned about only when a fresh token lives shorter than
``portal.token_life_days``: the portal then ends it with the key's validity).

The rule (:func:`due_warnings`, pure): on the business date, a credential ``d`` days from its end
is in the warning range when ``d <= 30``; its threshold is the smallest of 30, 7, 1 that is still
``>= d`` (0 once it has expired). Each (credential, threshold) goes out once: the state store
remembers it (``sync_cursors``, target ``expiry``, name ``<credential>:<threshold>``, value the
end date it was sent for), so a renewed credential with a new end date is warned about again,
and a credential back out of the range (renewed) has its marks cleared. A missed day is caught
up by the next run with the threshold then due (never a burst of the older ones).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from prefect import get_run_logger, task

from config.settings import HausflowSettings
from connectors.licence import LicenceError, licence_from_settings
from connectors.mail import MailClient
from connectors.portal.auth import PortalAuth
from connectors.state_store import StateStore
from connectors.sync.errors import is_retriable

__all__ = [
    "THRESHOLDS",
    "Expiry",
    "ExpiryWarning",
    "collect_expiries",
    "due_warnings",
    "plan_expiry_warnings",
    "send_expiry_warnings",
    "warning_mail",
]

BERLIN = ZoneInfo("Europe/Berlin")
THRESHOLDS = (30, 7, 1, 0)
"""Days before the end at which a warning goes out; 0: once on or after the end (it has expired)."""
MARKS = "expiry"
"""The ``sync_cursors`` target of the sent warnings."""
SELF_RENEWING = "renews-itself"


@dataclass(frozen=True)
class Expiry:
    """One credential's end: ``key`` names it in the state store (at most 20 characters)."""

    key: str
    what: str
    expires: date
    renew: str  # what the admin does, naming the setting
    renews_itself: bool = False  # a token: its end date moves with each login

    @property
    def mark(self) -> str:
        """What the state store keeps for a sent warning of this end."""
        return SELF_RENEWING if self.renews_itself else self.expires.isoformat()


@dataclass(frozen=True)
class ExpiryWarning:
    """A warning due on the business date."""

    expiry: Expiry
    threshold: int
    days_left: int

    @property
    def cursor_name(self) -> str:
        """``<credential>:<threshold>``, the mark's name in ``sync_cursors``."""
        return f"{self.expiry.key}:{self.threshold}"


def business_today(settings: HausflowSettings) -> date:
    """Today in Europe/Berlin, or the configured business date."""
    return settings.business_date or datetime.now(BERLIN).date()


# ---- the rule (pure) ----------------------------------------------------------------------------
def due_warnings(
    expiries: Iterable[Expiry], today: date, sent: Mapping[str, str]
) -> tuple[list[ExpiryWarning], list[str]]:
    """The warnings due on ``today``, and the marks to clear.

    Args:
        expiries: the credentials' ends.
        today: the business date.
        sent: the marks of warnings sent, ``<credential>:<threshold>`` -> the end's mark.

    Returns:
        The warnings to send (at most one per credential: the threshold due now) and the names of
        marks of credentials out of the warning range again (renewed), to clear.
    """
    warnings: list[ExpiryWarning] = []
    clear: list[str] = []
    for expiry in expiries:
        days_left = (expiry.expires - today).days
        if days_left > THRESHOLDS[0]:
            clear += [f"{expiry.key}:{t}" for t in THRESHOLDS if sent.get(f"{expiry.key}:{t}")]
            continue
        threshold = min(t for t in THRESHOLDS if t >= days_left) if days_left > 0 else 0
        warning = ExpiryWarning(expiry, threshold, days_left)
        if sent.get(warning.cursor_name) != expiry.mark:
            warnings.append(warning)
    return warnings, clear


def warning_mail(warning: ExpiryWarning, profile: str) -> tuple[str, str]:
    """Subject and text of one warning, for a person who has to act on it."""
    expiry, days = warning.expiry, warning.days_left
    when = f"{expiry.expires:%d.%m.%Y}"
    if days < 0:
        state = f"expired on {when}, {-days} days ago"
    elif days == 0:
        state = f"expires today ({when})"
    else:
        state = f"expires in {days} day{'s' if days != 1 else ''}, on {when}"
    subject = f"hausflow ({profile}): {expiry.what} {state}"
    lines = [
        f"{expiry.what[:1].upper()}{expiry.what[1:]} {state}.",
        "",
        f"What to do: {expiry.renew}.",
        "",
        f"System (settings profile): {profile}",
        "hausflow warns 30, 7 and 1 days before a credential expires, each warning once, and once more "
        "when it has expired. See docs/operations.md, Credential expiry.",
    ]
    return subject, "\n".join(lines) + "\n"


# ---- the tasks -----------------------------------------------------------------------------------
def _portal_token_days(settings: HausflowSettings) -> int:
    """Log in at the portal and return in how many days (rounded) the fresh token expires (real clock).

    Raises:
        RuntimeError: the portal refused the login or did not answer (the message says what to check).
    """
    portal = settings.portal
    auth = PortalAuth(
        portal.base_url, portal.api_key.get_secret_value(), portal.api_secret.get_secret_value()
    )
    try:
        with httpx.Client(timeout=httpx.Timeout(portal.timeout_s, connect=portal.connect_timeout_s)) as http:
            response = http.send(auth.login_request())
    except httpx.HTTPError as exc:
        raise RuntimeError(
            f"the portal at {portal.base_url} did not answer the login ({type(exc).__name__}): its token's end "
            "is unknown today; check portal.base_url"
        ) from exc
    if response.status_code != 200:
        raise RuntimeError(
            f"the portal at {portal.base_url} refused the login (HTTP {response.status_code}): check "
            f"{PortalAuth.settings_hint}"
        )
    try:
        _token, expires = auth.read_token(response.json())
    except (KeyError, TypeError, ValueError) as exc:
        raise RuntimeError(f"the portal at {portal.base_url} answered the login without a token") from exc
    return round(((expires or time.time()) - time.time()) / 86400)  # whole days, as the portal grants them


@task(name="collect-expiries")
def collect_expiries(settings: HausflowSettings, today: date) -> tuple[list[Expiry], list[str]]:
    """Every credential end the settings know, and what could not be read (named for the admin).

    The portal's token is read by one login when the portal interface is on; its end counts from
    ``today`` with the days the fresh token really lives.
    """
    expiries: list[Expiry] = []
    problems: list[str] = []
    if settings.portal.api_secret_expires:
        expiries.append(
            Expiry(
                "portal-secret",
                "the portal API secret",
                settings.portal.api_secret_expires,
                "ask the portal provider for a new API secret, set portal.api_secret (the Secret block "
                "casavi-api-secret) and portal.api_secret_expires",
            )
        )
    if settings.deposit.password_expires:
        expiries.append(
            Expiry(
                "deposit-password",
                "the deposit partner's web-service password",
                settings.deposit.password_expires,
                "ask the deposit partner for a new web-service password, set deposit.password (the Secret "
                "block kautionspartner-password) and deposit.password_expires",
            )
        )
    mail = settings.mail
    if mail.auth == "oauth2" and mail.oauth2_client_secret_expires:
        expiries.append(
            Expiry(
                "mail-oauth2-secret",
                "the OAuth2 client secret of the mail login",
                mail.oauth2_client_secret_expires,
                "create a new client secret in the tenant's app registration (Certificates & secrets), set "
                "mail.oauth2_client_secret and mail.oauth2_client_secret_expires, then ./hausflow mail-test",
            )
        )
    if settings.licences.file:
        try:
            licence = licence_from_settings(settings.licences)
            if licence.valid_until:
                expiries.append(
                    Expiry(
                        "licence",
                        f"the hausflow licence {licence.number}",
                        licence.valid_until,
                        "ask the vendor for the renewed licence file and install it at licences.file",
                    )
                )
        except LicenceError as exc:
            problems.append(f"the licence cannot be read: {exc}")
    if settings.portal.enabled:
        try:
            days = _portal_token_days(settings)
            if days < settings.portal.token_life_days:
                expiries.append(
                    Expiry(
                        "portal-token",
                        "the portal's access token (fresh from a login)",
                        today + timedelta(days=days),
                        f"a fresh token lives only {days} days where it lives {settings.portal.token_life_days}: "
                        "the API key probably ends then; ask the portal provider, then set portal.api_key and "
                        "portal.api_secret",
                        renews_itself=True,
                    )
                )
        except RuntimeError as exc:
            problems.append(str(exc))
    return expiries, problems


@task(name="plan-expiry-warnings")
def plan_expiry_warnings(
    settings: HausflowSettings, expiries: Sequence[Expiry], today: date
) -> list[ExpiryWarning]:
    """The warnings due today after the state store's marks; clears the marks of renewed credentials."""
    store = StateStore(settings.state_url)
    names = [f"{e.key}:{t}" for e in expiries for t in THRESHOLDS]
    sent = {name: value for name in names if (value := store.cursor(MARKS, name))}
    warnings, clear = due_warnings(expiries, today, sent)
    for name in clear:
        store.set_cursor(MARKS, name, "")
    return warnings


def _retry_mail(_task: Any, _run: Any, state: Any) -> bool:
    """Retry only what may pass later (the mail server did not answer, 4xx)."""
    try:
        state.result()
    except Exception as exc:
        return is_retriable(exc)
    return False


@task(name="send-expiry-warnings", retries=2, retry_delay_seconds=30, retry_condition_fn=_retry_mail)
def send_expiry_warnings(settings: HausflowSettings, warnings: Sequence[ExpiryWarning]) -> dict[str, Any]:
    """Send each warning to ``alerts.recipients``; mark it sent once the server accepted it for a
    recipient (a refused recipient is logged with the server's answer).

    Returns:
        ``sent`` (the warnings' names), ``refused`` (recipient: answer).

    Raises:
        ValueError: warnings are due but ``alerts.recipients`` is empty.
        PartnerError: the mail server cannot be reached or refused the login (nothing marked).
    """
    logger = get_run_logger()
    if not warnings:
        return {"sent": [], "refused": {}}
    recipients = settings.alerts.recipients
    if not recipients:
        raise ValueError(
            f"{len(warnings)} credential-expiry warnings are due but alerts.recipients is empty: set the two "
            "admins' addresses (HAUSFLOW_ALERTS__RECIPIENTS)"
        )
    client = MailClient.from_settings(settings.mail)
    store = StateStore(settings.state_url)
    sent: list[str] = []
    refused: dict[str, str] = {}
    for warning in warnings:
        subject, text = warning_mail(warning, settings.profile)
        ref = f"expiry-{warning.cursor_name}-{warning.expiry.mark}"
        results = client.send(ref, recipients, subject, text)
        for result in results:
            if not result.ok:
                refused[str((result.op.payload or {}).get("to"))] = result.error or "refused"
        if any(r.ok for r in results):
            store.set_cursor(MARKS, warning.cursor_name, warning.expiry.mark)
            sent.append(warning.cursor_name)
            logger.info("Warning sent to %s: %s.", ", ".join(recipients), subject)
    for address, error in refused.items():
        logger.error(
            "The expiry warning to %s was not delivered: %s; check alerts.recipients.", address, error
        )
    return {"sent": sent, "refused": refused}
