"""The partner-neutral core of every partner connector: streams, the ``PartnerClient``
interface with its HTTP and in-memory implementations, token flows and the error tree."""

from connectors.sync.client import ClientStats, PartnerClient, WriteOp, WriteResult
from connectors.sync.errors import (
    PartnerApiError,
    PartnerAuthError,
    PartnerConflictError,
    PartnerCredentialsError,
    PartnerError,
    PartnerNotFoundError,
    PartnerRetriableError,
    PartnerTransportError,
    PartnerValidationError,
    is_retriable,
)
from connectors.sync.streams import Stream, payload_hash, write_applied

__all__ = [
    "ClientStats",
    "PartnerApiError",
    "PartnerAuthError",
    "PartnerClient",
    "PartnerConflictError",
    "PartnerCredentialsError",
    "PartnerError",
    "PartnerNotFoundError",
    "PartnerRetriableError",
    "PartnerTransportError",
    "PartnerValidationError",
    "Stream",
    "WriteOp",
    "WriteResult",
    "is_retriable",
    "payload_hash",
    "write_applied",
]
