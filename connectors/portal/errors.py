"""The portal connector's errors: the partner-neutral tree of :mod:`connectors.sync.errors`
under the names the portal code and its users know."""

from connectors.sync.errors import (
    PartnerApiError as PortalApiError,
)
from connectors.sync.errors import (
    PartnerAuthError as PortalAuthError,
)
from connectors.sync.errors import (
    PartnerConflictError as PortalConflictError,
)
from connectors.sync.errors import (
    PartnerCredentialsError as PortalCredentialsError,
)
from connectors.sync.errors import (
    PartnerError as PortalError,
)
from connectors.sync.errors import (
    PartnerNotFoundError as PortalNotFoundError,
)
from connectors.sync.errors import (
    PartnerProtocolError as PortalProtocolError,
)
from connectors.sync.errors import (
    PartnerRetriableError as PortalRetriableError,
)
from connectors.sync.errors import (
    PartnerTransportError as PortalTransportError,
)
from connectors.sync.errors import (
    PartnerValidationError as PortalValidationError,
)

__all__ = [
    "PortalApiError",
    "PortalAuthError",
    "PortalConflictError",
    "PortalCredentialsError",
    "PortalError",
    "PortalNotFoundError",
    "PortalProtocolError",
    "PortalRetriableError",
    "PortalTransportError",
    "PortalValidationError",
]
