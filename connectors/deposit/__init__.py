"""Rent-deposit partner (Deutsche Kautionspartner, KM deposit interface) connector: a client, its
streams, its login. The protocol is hausflow's own (``docs/deposit-api.md``): the partner does not
publish one, so a real implementation replaces :class:`DepositClient` behind the engine's
:class:`~connectors.sync.client.PartnerClient` interface."""

from connectors.deposit.client import DepositClient
from connectors.deposit.errors import (
    DepositApiError,
    DepositCredentialsError,
    DepositError,
    DepositRetriableError,
    DepositValidationError,
)
from connectors.deposit.streams import BOOKINGS, DEPOSIT_ACCOUNTS, STREAMS

__all__ = [
    "BOOKINGS",
    "DEPOSIT_ACCOUNTS",
    "STREAMS",
    "DepositApiError",
    "DepositClient",
    "DepositCredentialsError",
    "DepositError",
    "DepositRetriableError",
    "DepositValidationError",
]
