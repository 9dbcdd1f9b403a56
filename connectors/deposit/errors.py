"""The deposit connector's errors: the partner-neutral tree of :mod:`connectors.sync.errors` under
the names the deposit code uses (retriable: 408, 429, 5xx, transport; fatal: other 4xx, login)."""

from connectors.sync.errors import PartnerApiError as DepositApiError
from connectors.sync.errors import PartnerCredentialsError as DepositCredentialsError
from connectors.sync.errors import PartnerError as DepositError
from connectors.sync.errors import PartnerRetriableError as DepositRetriableError
from connectors.sync.errors import PartnerValidationError as DepositValidationError

__all__ = [
    "DepositApiError",
    "DepositCredentialsError",
    "DepositError",
    "DepositRetriableError",
    "DepositValidationError",
]
