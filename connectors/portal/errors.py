"""The portal connector's exception tree, written down in one place.

PortalError
├── PortalTransportError      timeouts, refused or dropped connections (retriable)
└── PortalApiError            the partner answered with an error status
    ├── PortalRetriableError  408, 429, 5xx (retriable)
    ├── PortalAuthError       401 after one re-authentication, or bad credentials (fatal)
    ├── PortalNotFoundError   404 (fatal)
    ├── PortalConflictError   409 (fatal)
    └── PortalValidationError 400, 422 and other 4xx (fatal), with the partner's field errors
"""

from __future__ import annotations

from typing import Any

RETRIABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class PortalError(Exception):
    """Base of every error the portal connector raises."""

    retriable: bool = False


class PortalTransportError(PortalError):
    """The request did not get an HTTP answer (timeout, refused or dropped connection)."""

    retriable = True


class PortalApiError(PortalError):
    """The partner answered with an error status; carries its message and field errors."""

    def __init__(
        self, status: int, message: str, errors: list[dict[str, Any]] | None = None, path: str = ""
    ) -> None:
        self.status = status
        self.message = message
        self.errors = errors or []
        self.path = path
        super().__init__(self.describe())

    def describe(self) -> str:
        """One line a person can read: status, path, the partner's message and field errors."""
        fields = "; ".join(f"{e.get('fieldName')}: {e.get('errorMessage')}" for e in self.errors)
        text = f"portal answered {self.status} on {self.path}: {self.message}"
        return f"{text} ({fields})" if fields else text


class PortalRetriableError(PortalApiError):
    """408, 429 and 5xx: worth another try after a pause."""

    retriable = True

    def __init__(self, *args: Any, retry_after_s: float | None = None, **kwargs: Any) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(*args, **kwargs)


class PortalAuthError(PortalApiError):
    """Credentials refused, or a fresh token refused again."""


class PortalNotFoundError(PortalApiError):
    """The reference id is unknown to the partner."""


class PortalConflictError(PortalApiError):
    """The partner refuses the write in the record's current state (archived, anonymised)."""


class PortalValidationError(PortalApiError):
    """The partner refuses the record's content (400, 422, other 4xx)."""


def error_from_response(status: int, body: Any, path: str, retry_after: str | None = None) -> PortalApiError:
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
        seconds: float | None = None
        if retry_after:
            try:
                seconds = float(retry_after)
            except ValueError:
                seconds = None
        return PortalRetriableError(status, message, errors, path, retry_after_s=seconds)
    if status == 401:
        return PortalAuthError(status, message, errors, path)
    if status == 404:
        return PortalNotFoundError(status, message, errors, path)
    if status == 409:
        return PortalConflictError(status, message, errors, path)
    return PortalValidationError(status, message, errors, path)
