"""The exception tree of every partner connector, written down in one place.

PartnerError
├── PartnerTransportError      timeouts, refused or dropped connections (retriable)
├── PartnerProtocolError       a redirect, a link to another address (fatal)
├── PartnerCredentialsError    the partner refused the login (fatal for the run)
└── PartnerApiError            the partner answered with an error status
    ├── PartnerRetriableError  408, 429, 5xx (retriable)
    ├── PartnerAuthError       401 after one re-authentication (fatal)
    ├── PartnerNotFoundError   404 (fatal)
    ├── PartnerConflictError   409 (fatal)
    └── PartnerValidationError 400, 422 and other 4xx (fatal), with the partner's field errors

*Retriable* errors are worth another try after a pause, by the client and by a Prefect task;
*fatal* ones are not: a record's refusal goes to quarantine, refused credentials end the run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

RETRIABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# answers after which the partner may or may not have applied a write: read back before retrying
AMBIGUOUS_STATUSES = frozenset({500, 502, 504})


class PartnerError(Exception):
    """Base of every error a partner connector raises."""

    retriable: bool = False


class PartnerTransportError(PartnerError):
    """The request did not get an HTTP answer (timeout, refused or dropped connection)."""

    retriable = True


class PartnerProtocolError(PartnerError):
    """The partner's answer breaks the contract the client relies on (a redirect, a link to
    another address): no retry can help, and nothing is confirmed because of it."""


class PartnerCredentialsError(PartnerError):
    """The partner refused the login: no record is to blame, and trying again with the same
    credentials can lock the customer's account, so the run ends at once.

    The message never quotes the partner's answer (a login answer may echo the secret).
    """

    def __init__(self, partner: str, status: int, message: str, settings_hint: str) -> None:
        self.partner = partner
        self.status = status
        self.detail = message
        self.settings_hint = settings_hint
        super().__init__(f"the {partner} refused the login ({message})")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable, as Prefect may store a failed state
        return (type(self), (self.partner, self.status, self.detail, self.settings_hint))

    def advice(self) -> str:
        """What a person does about it, for the one log line that says so."""
        return f"{self}; check {self.settings_hint}"


class PartnerApiError(PartnerError):
    """The partner answered with an error status; carries its message and field errors."""

    def __init__(
        self,
        status: int,
        message: str,
        errors: list[dict[str, Any]] | None = None,
        path: str = "",
        partner: str = "partner",
    ) -> None:
        self.status = status
        self.message = message
        self.errors = errors or []
        self.path = path
        self.partner = partner
        super().__init__(self.describe())

    def __reduce__(self) -> tuple[Any, ...]:  # picklable, as Prefect may store a failed state
        return (type(self), (self.status, self.message, self.errors, self.path, self.partner))

    def describe(self) -> str:
        """One line a person can read: status, path, the partner's message and field errors."""
        fields = "; ".join(f"{e.get('fieldName')}: {e.get('errorMessage')}" for e in self.errors)
        text = f"{self.partner} answered {self.status} on {self.path}: {self.message}"
        return f"{text} ({fields})" if fields else text


class PartnerRetriableError(PartnerApiError):
    """408, 429 and 5xx: worth another try after a pause (``retry_after_s`` if the partner said)."""

    retriable = True

    def __init__(
        self,
        status: int,
        message: str,
        errors: list[dict[str, Any]] | None = None,
        path: str = "",
        partner: str = "partner",
        retry_after_s: float | None = None,
    ) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(status, message, errors, path, partner)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.status, self.message, self.errors, self.path, self.partner, self.retry_after_s),
        )


class PartnerAuthError(PartnerApiError):
    """A fresh token refused again (401 after one re-authentication)."""


class PartnerNotFoundError(PartnerApiError):
    """The reference id is unknown to the partner."""


class PartnerConflictError(PartnerApiError):
    """The partner refuses the write in the record's current state (archived, anonymised)."""


class PartnerValidationError(PartnerApiError):
    """The partner refuses the record's content (400, 422, other 4xx)."""


def error_from_response(
    status: int, body: Any, path: str, retry_after: str | None = None, partner: str = "partner"
) -> PartnerApiError:
    """Map an error answer to the typed exception carrying the partner's message."""
    message = ""
    errors: list[dict[str, Any]] = []
    if isinstance(body, dict):
        message = str(body.get("message") or body.get("detail") or "")
        raw = body.get("errors")
        if isinstance(raw, list):
            errors = [e for e in raw if isinstance(e, dict)]
    elif body:
        message = str(body)[:500]
    message = message or f"HTTP {status}"
    if status in RETRIABLE_STATUSES:
        return PartnerRetriableError(status, message, errors, path, partner, retry_after_seconds(retry_after))
    kind: type[PartnerApiError] = {
        401: PartnerAuthError,
        404: PartnerNotFoundError,
        409: PartnerConflictError,
    }.get(status, PartnerValidationError)
    return kind(status, message, errors, path, partner)


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def is_retriable(error: BaseException) -> bool:
    """Whether ``error`` is worth another try (Prefect's ``retry_condition_fn`` asks this too).

    Partner errors say so themselves; a state database that was busy or lost its connection
    (SQLAlchemy's ``OperationalError``) is retriable too. Everything else (a refused record,
    refused credentials, a programming error) is not.
    """
    if isinstance(error, PartnerError):
        return error.retriable
    return type(error).__name__ == "OperationalError" and type(error).__module__.startswith("sqlalchemy")
