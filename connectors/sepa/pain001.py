"""Streaming pain.001.001.09 writer (SEPA credit transfer, DK subset GBIC_5): only what is pain.001's.

Used for payouts of retained rent deposits (seed 000): the money leaves the object's trust pooled
account ("Treuhandsammelkonto") for the owner's account or the manager's retention account. The
document frame, the validation while writing, the atomic ``.part`` + rename and the text and
account checks are shared with the pain.008 writer in ``connectors/sepa/writing.py``. Here: the
``Payout`` the callers hand in, the transfer's payment block (debtor account, execution date)
and its transaction (creditor, amount, remittance).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from operator import attrgetter
from pathlib import Path
from typing import IO, Any, NamedTuple

from lxml import etree

from connectors.sepa.writing import (
    PaymentFileTotals,
    TransactionLeaves,
    scan_payment_file,
    stream_document,
    write_agent,
    write_block_header,
    write_transactions,
)


@dataclass(frozen=True, slots=True)
class Payout:
    """One payout as a caller (the deposit-partner flow) hands it in; texts as the ERP has them.

    ``slots`` because a run may hold a hundred thousand of them.
    """

    payout_id: str  # stable and unique: the ERP's booking id of the payout; the ledger key and the EndToEndId
    amount: Decimal  # EUR, > 0, at most 2 decimals
    creditor_name: str  # who receives the money (the owner, or the manager's retention account)
    creditor_iban: str
    creditor_bic: str | None
    debtor_name: (
        str  # the account the money leaves: the object's trust pooled account ("Treuhandsammelkonto")
    )
    debtor_iban: str
    debtor_bic: str | None
    remittance: str  # unstructured remittance text
    reference: str  # for the control listing: contract reference / object number


class CreditTransfer(NamedTuple):
    """One transfer as it goes into the file; every text is already checked and transliterated."""

    end_to_end_id: str
    amount_cents: int
    creditor_name: str
    creditor_iban: str
    creditor_bic: str | None
    remittance: str | None


@dataclass(frozen=True)
class TransferBlock:
    """One PmtInf block: all transfers from one debtor account on one execution date."""

    pmt_inf_id: str
    execution_date: date
    debtor_name: str
    debtor_iban: str
    debtor_bic: str | None
    nb_of_txs: int
    ctrl_sum_cents: int
    batch_booking: bool | None = False


class _TransferTemplate(TransactionLeaves):
    """A reusable ``CdtTrfTxInf`` element of one shape (see ``writing.TransactionTemplate``)."""

    def __init__(self, has_bic: bool, has_remittance: bool) -> None:
        se = etree.SubElement
        root = etree.Element("CdtTrfTxInf")
        self.root = root
        self.e2e = se(se(root, "PmtId"), "EndToEndId")
        self.amount = se(se(root, "Amt"), "InstdAmt", Ccy="EUR")
        self.bic: etree._Element | None = None
        if has_bic:  # GBIC_5: the creditor agent is a BIC or left out (IBAN-only)
            self.bic = se(se(se(root, "CdtrAgt"), "FinInstnId"), "BICFI")
        self.name = se(se(root, "Cdtr"), "Nm")
        self.iban = se(se(se(root, "CdtrAcct"), "Id"), "IBAN")
        self.remittance: etree._Element | None = None
        if has_remittance:
            self.remittance = se(se(root, "RmtInf"), "Ustrd")

    def fill(self, tx: CreditTransfer) -> etree._Element:
        """Set the texts of ``tx`` and return the element to write (valid until the next fill)."""
        return self.fill_leaves(
            tx.end_to_end_id,
            tx.amount_cents,
            tx.creditor_bic,
            tx.creditor_name,
            tx.creditor_iban,
            tx.remittance,
        )


def write_pain001(
    out: IO[bytes],
    msg_id: str,
    created_at: datetime,
    initiating_party: str,
    blocks: Sequence[TransferBlock],
    transactions: Callable[[TransferBlock], Iterable[CreditTransfer]],
) -> tuple[int, int]:
    """Stream one pain.001.001.09 document to ``out`` (see ``writing.stream_document``).

    ``initiating_party`` is the property manager's name; ``transactions`` gives the transfers of
    one block, in order. Returns (transfers, cents) as counted; raises as ``stream_document``.
    """
    return stream_document(
        out,
        "pain.001",
        "CstmrCdtTrfInitn",
        msg_id,
        created_at,
        initiating_party,
        blocks,
        lambda xf, block: _write_block(xf, block, transactions(block)),
    )


def _write_block(
    xf: etree.xmlfile, block: TransferBlock, transactions: Iterable[CreditTransfer]
) -> tuple[int, int]:
    """Write one PmtInf block; returns what was counted (the caller compares with the announcement)."""
    el = xf.element
    w = xf.write
    with el("PmtInf"):
        write_block_header(
            xf, block.pmt_inf_id, "TRF", block.batch_booking, block.nb_of_txs, block.ctrl_sum_cents
        )
        with el("PmtTpInf"), el("SvcLvl"), el("Cd"):
            w("SEPA")
        with el("ReqdExctnDt"), el("Dt"):
            w(block.execution_date.isoformat())
        with el("Dbtr"), el("Nm"):
            w(block.debtor_name)
        with el("DbtrAcct"), el("Id"), el("IBAN"):
            w(block.debtor_iban)
        with el("DbtrAgt"):
            write_agent(xf, block.debtor_bic)
        with el("ChrgBr"):
            w("SLEV")
        return write_transactions(
            xf, transactions, _shape, lambda shape: _TransferTemplate(*shape), attrgetter("amount_cents")
        )


def _shape(tx: CreditTransfer) -> tuple[bool, ...]:
    """Which optional parts a transfer has: creditor BIC, remittance."""
    return (bool(tx.creditor_bic), bool(tx.remittance))


def scan_pain001(path: Path | IO[bytes], **options: Any) -> PaymentFileTotals:
    """Validate a pain.001 file against ``pain.001.001.09_GBIC_5.xsd`` and re-count its sums.

    ``options``: ``validate``, ``collect_ids``, ``on_transaction`` of ``writing.scan_payment_file``.
    """
    return scan_payment_file(path, "pain.001", **options)
