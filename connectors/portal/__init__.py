"""Tenant-portal (casavi manager API v2) connector: a client, its streams, its token flow."""

from connectors.portal.client import PortalApi, PortalClient, WriteOp, WriteResult
from connectors.portal.errors import (
    PortalApiError,
    PortalAuthError,
    PortalConflictError,
    PortalCredentialsError,
    PortalError,
    PortalNotFoundError,
    PortalProtocolError,
    PortalRetriableError,
    PortalTransportError,
    PortalValidationError,
)
from connectors.portal.streams import STREAMS, PortalStream, payload_hash

__all__ = [
    "STREAMS",
    "PortalApi",
    "PortalApiError",
    "PortalAuthError",
    "PortalClient",
    "PortalConflictError",
    "PortalCredentialsError",
    "PortalError",
    "PortalNotFoundError",
    "PortalProtocolError",
    "PortalRetriableError",
    "PortalStream",
    "PortalTransportError",
    "PortalValidationError",
    "WriteOp",
    "WriteResult",
    "payload_hash",
]
