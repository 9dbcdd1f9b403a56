"""The SEPA connector's exception tree, written down in one place.

SepaError
├── SepaValidationError   a file does not match its XSD or its own control sums (fatal)
├── SepaLedgerConflict    a claim is already in flight in the ledger (another run, fatal)
└── SepaRunLocked         another debit run holds the run lock (retry later)
"""

from __future__ import annotations


class SepaError(Exception):
    """Base of every error the SEPA connector raises."""


class SepaValidationError(SepaError):
    """A SEPA or camt file breaks its schema or its control sums; the message names file and line."""


class SepaLedgerConflict(SepaError):
    """A claim the run wanted to collect is already recorded in the ledger (never collect twice)."""


class SepaRunLocked(SepaError):
    """Another debit run holds the lock; running both could collect a claim twice."""
