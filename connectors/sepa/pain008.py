"""Streaming pain.008.001.08 writer (SEPA direct debit, DK subset GBIC_5): only what is pain.008's.

The document frame, the validation while writing, the atomic ``.part`` + rename and the text
checks are shared with the pain.001 writer in ``connectors/sepa/writing.py``. Here: the direct
debit's payment block (creditor, creditor identifier, sequence type, collection date) and its
transaction (mandate, amendment, debtor).

The control sums of group and payment blocks come first in the file, so the caller announces them
(``PaymentBlock.nb_of_txs``/``ctrl_sum_cents``, known from the planning pass) and the writer
re-counts while writing and refuses a file that does not add up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from operator import attrgetter
from pathlib import Path
from typing import IO, Any, NamedTuple

from lxml import etree

from connectors.sepa.schemas import NAMESPACES
from connectors.sepa.writing import (
    PaymentFileTotals,
    TransactionLeaves,
    scan_payment_file,
    stream_document,
    write_agent,
    write_block_header,
    write_transactions,
)

PAIN008_NS = NAMESPACES["pain.008"]


class DebitTransaction(NamedTuple):
    """One direct debit as it goes into the file; every text is already checked and transliterated.

    A NamedTuple (not a dataclass) because a million of them pass through the writer.
    """

    end_to_end_id: str
    amount_cents: int
    mandate_id: str
    mandate_signed_on: date
    debtor_name: str
    debtor_iban: str
    debtor_bic: str | None
    remittance: str | None
    original_debtor_iban: str | None = None  # amendment: account changed within the same bank
    original_agent_smnda: bool = False  # amendment: account moved to another bank (SMNDA)


@dataclass(frozen=True)
class Creditor:
    """The collecting party: name, account, and SEPA creditor identifier (Glaeubiger-ID)."""

    name: str
    iban: str
    bic: str | None
    creditor_id: str


@dataclass(frozen=True)
class PaymentBlock:
    """One PmtInf block: all transactions of one collection date and sequence type."""

    pmt_inf_id: str
    collection_date: date
    sequence_type: str  # FRST, RCUR, OOFF, FNAL
    nb_of_txs: int
    ctrl_sum_cents: int
    batch_booking: bool | None = True
    local_instrument: str = "CORE"


class _TxTemplate(TransactionLeaves):
    """A reusable ``DrctDbtTxInf`` element of one shape (see ``writing.TransactionTemplate``)."""

    def __init__(self, has_bic: bool, has_remittance: bool, has_orig_iban: bool, has_smnda: bool) -> None:
        se = etree.SubElement
        root = etree.Element("DrctDbtTxInf")
        self.root = root
        self.e2e = se(se(root, "PmtId"), "EndToEndId")
        self.amount = se(root, "InstdAmt", Ccy="EUR")
        mandate = se(se(root, "DrctDbtTx"), "MndtRltdInf")
        self.mandate_id = se(mandate, "MndtId")
        self.signed_on = se(mandate, "DtOfSgntr")
        self.orig_iban: etree._Element | None = None
        if has_orig_iban or has_smnda:
            se(mandate, "AmdmntInd").text = "true"
            details = se(mandate, "AmdmntInfDtls")
            if has_orig_iban:
                self.orig_iban = se(se(se(details, "OrgnlDbtrAcct"), "Id"), "IBAN")
            if has_smnda:
                se(se(se(se(details, "OrgnlDbtrAgt"), "FinInstnId"), "Othr"), "Id").text = "SMNDA"
        agent = se(se(root, "DbtrAgt"), "FinInstnId")
        self.bic: etree._Element | None = None
        if has_bic:
            self.bic = se(agent, "BICFI")
        else:
            se(se(agent, "Othr"), "Id").text = "NOTPROVIDED"
        self.name = se(se(root, "Dbtr"), "Nm")
        self.iban = se(se(se(root, "DbtrAcct"), "Id"), "IBAN")
        self.remittance: etree._Element | None = None
        if has_remittance:
            self.remittance = se(se(root, "RmtInf"), "Ustrd")

    def fill(self, tx: DebitTransaction) -> etree._Element:
        """Set the texts of ``tx`` and return the element to write (valid until the next fill)."""
        self.mandate_id.text = tx.mandate_id
        self.signed_on.text = tx.mandate_signed_on.isoformat()
        if self.orig_iban is not None:
            self.orig_iban.text = tx.original_debtor_iban
        return self.fill_leaves(
            tx.end_to_end_id, tx.amount_cents, tx.debtor_bic, tx.debtor_name, tx.debtor_iban, tx.remittance
        )


def write_pain008(
    out: IO[bytes],
    msg_id: str,
    created_at: datetime,
    creditor: Creditor,
    blocks: Sequence[PaymentBlock],
    transactions: Callable[[PaymentBlock], Iterable[DebitTransaction]],
) -> tuple[int, int]:
    """Stream one pain.008.001.08 document to ``out`` (see ``writing.stream_document``).

    ``creditor`` is the collecting party (also the initiating party); ``transactions`` gives the
    debits of one block, in order (streamed, e.g. from a spool). Returns (transactions, cents) as
    counted; raises as ``stream_document`` (a block that does not add up, a naive time, no block).
    """
    return stream_document(
        out,
        "pain.008",
        "CstmrDrctDbtInitn",
        msg_id,
        created_at,
        creditor.name,
        blocks,
        lambda xf, block: _write_block(xf, creditor, block, transactions(block)),
    )


def _write_block(
    xf: etree.xmlfile, creditor: Creditor, block: PaymentBlock, transactions: Iterable[DebitTransaction]
) -> tuple[int, int]:
    """Write one PmtInf block; returns what was counted (the caller compares with the announcement)."""
    el = xf.element
    w = xf.write
    with el("PmtInf"):
        write_block_header(
            xf, block.pmt_inf_id, "DD", block.batch_booking, block.nb_of_txs, block.ctrl_sum_cents
        )
        with el("PmtTpInf"):
            with el("SvcLvl"), el("Cd"):
                w("SEPA")
            with el("LclInstrm"), el("Cd"):
                w(block.local_instrument)
            with el("SeqTp"):
                w(block.sequence_type)
        with el("ReqdColltnDt"):
            w(block.collection_date.isoformat())
        with el("Cdtr"), el("Nm"):
            w(creditor.name)
        with el("CdtrAcct"), el("Id"), el("IBAN"):
            w(creditor.iban)
        with el("CdtrAgt"):
            write_agent(xf, creditor.bic)
        with el("ChrgBr"):
            w("SLEV")
        with el("CdtrSchmeId"), el("Id"), el("PrvtId"), el("Othr"):
            with el("Id"):
                w(creditor.creditor_id)
            with el("SchmeNm"), el("Prtry"):
                w("SEPA")
        return write_transactions(
            xf, transactions, _shape, lambda shape: _TxTemplate(*shape), attrgetter("amount_cents")
        )


def _shape(tx: DebitTransaction) -> tuple[bool, ...]:
    """Which optional parts a debit has: BIC, remittance, original IBAN, SMNDA."""
    return (bool(tx.debtor_bic), bool(tx.remittance), bool(tx.original_debtor_iban), tx.original_agent_smnda)


def scan_pain008(path: Path | IO[bytes], **options: Any) -> PaymentFileTotals:
    """Validate a pain.008 file against ``pain.008.001.08_GBIC_5.xsd`` and re-count its sums.

    ``options``: ``validate``, ``collect_ids``, ``on_transaction`` of ``writing.scan_payment_file``.
    """
    return scan_payment_file(path, "pain.008", **options)
