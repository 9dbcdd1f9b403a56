"""Reader of bank statements (camt.053.001.08) and debit/credit notifications (camt.054.001.08).

Streams entry by entry with ``iterparse`` while validating against the ISO schema, so a year of
statements reads in constant memory. Only what the reconciliation needs is extracted: amount,
direction, status, dates, bank transaction code, batch data, and per transaction the references
(EndToEndId, PmtInfId, MndtId) and the return reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path

from lxml import etree

from connectors.sepa.errors import SepaValidationError
from connectors.sepa.schemas import NAMESPACES, detect_kind, iter_validated


@dataclass(frozen=True)
class CamtTransaction:
    """One transaction inside an entry (TxDtls)."""

    end_to_end_id: str | None
    pmt_inf_id: str | None
    msg_id: str | None
    mandate_id: str | None
    amount: Decimal | None
    credit_debit: str | None
    return_reason: str | None
    return_info: str | None


@dataclass(frozen=True)
class CamtEntry:
    """One booking (Ntry) of a statement or notification."""

    statement_id: str
    account_iban: str | None
    index: int
    reference: str
    amount: Decimal
    credit_debit: str  # CRDT or DBIT
    reversal: bool
    status: str  # BOOK, PDNG, INFO
    booking_date: date | None
    value_date: date | None
    bank_code: str  # Domain/Family/SubFamily, e.g. PMNT/IDDT/ESDD
    batch_msg_id: str | None
    batch_pmt_inf_id: str | None
    batch_nb_of_txs: int | None
    transactions: list[CamtTransaction] = field(default_factory=list)
    info: str | None = None


@dataclass(frozen=True)
class CamtFile:
    """Header data of a camt file: kind, message id, and a content hash (import only once)."""

    path: Path
    kind: str
    msg_id: str
    sha256: str

    @property
    def key(self) -> str:
        """Identity of the file for "imported already" checks."""
        return f"{self.kind}:{self.msg_id}:{self.sha256[:16]}"


def _date(elem: etree._Element | None, q: str) -> date | None:
    if elem is None:
        return None
    text = elem.findtext(q + "Dt") or (elem.findtext(q + "DtTm") or "")[:10]
    return date.fromisoformat(text) if text else None


def _decimal(text: str | None) -> Decimal | None:
    return Decimal(text) if text else None


def open_camt(path: Path) -> CamtFile:
    """Identify a camt file (kind from the namespace, GrpHdr/MsgId, SHA-256 of the bytes).

    Raises:
        SepaValidationError: not a camt.053/.054 file.
    """
    kind = detect_kind(path)
    if not kind.startswith("camt"):
        raise SepaValidationError(f"{path.name} is a {kind} file, not a bank statement (camt.053/054)")
    q = f"{{{NAMESPACES[kind]}}}"
    msg_id = ""
    for _event, elem in etree.iterparse(str(path), events=("end",), tag=q + "GrpHdr"):
        msg_id = elem.findtext(q + "MsgId") or ""
        break
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return CamtFile(path, kind, msg_id, digest.hexdigest())


def iter_entries(camt: CamtFile, validate: bool = True) -> Iterator[CamtEntry]:
    """Stream the entries of a camt file, validating the whole file against its schema.

    Raises:
        SepaValidationError: the file breaks the camt schema (raised when the bad part is read;
            callers that must not act on a bad file read it fully first, see ``read_entries``).
    """
    q = f"{{{NAMESPACES[camt.kind]}}}"
    for index, elem in enumerate(iter_validated(camt.path, camt.kind, ("Ntry",), validate), start=1):
        parent = elem.getparent()
        statement_id = parent.findtext(q + "Id") if parent is not None else ""
        iban = parent.findtext(f"{q}Acct/{q}Id/{q}IBAN") if parent is not None else None
        domain = elem.find(f"{q}BkTxCd/{q}Domn")
        if domain is not None:
            bank_code = "/".join(
                [
                    domain.findtext(q + "Cd") or "",
                    domain.findtext(f"{q}Fmly/{q}Cd") or "",
                    domain.findtext(f"{q}Fmly/{q}SubFmlyCd") or "",
                ]
            )
        else:
            bank_code = elem.findtext(f"{q}BkTxCd/{q}Prtry/{q}Cd") or ""
        batch = elem.find(f"{q}NtryDtls/{q}Btch")
        transactions = [
            CamtTransaction(
                end_to_end_id=tx.findtext(f"{q}Refs/{q}EndToEndId"),
                pmt_inf_id=tx.findtext(f"{q}Refs/{q}PmtInfId"),
                msg_id=tx.findtext(f"{q}Refs/{q}MsgId"),
                mandate_id=tx.findtext(f"{q}Refs/{q}MndtId"),
                amount=_decimal(tx.findtext(q + "Amt")),
                credit_debit=tx.findtext(q + "CdtDbtInd"),
                return_reason=tx.findtext(f"{q}RtrInf/{q}Rsn/{q}Cd")
                or tx.findtext(f"{q}RtrInf/{q}Rsn/{q}Prtry"),
                return_info=" ".join(t.text or "" for t in tx.findall(f"{q}RtrInf/{q}AddtlInf")) or None,
            )
            for tx in elem.findall(f"{q}NtryDtls/{q}TxDtls")
        ]
        nb = batch.findtext(q + "NbOfTxs") if batch is not None else None
        yield CamtEntry(
            statement_id=statement_id or "",
            account_iban=iban,
            index=index,
            reference=elem.findtext(q + "AcctSvcrRef") or elem.findtext(q + "NtryRef") or f"#{index}",
            amount=Decimal(elem.findtext(q + "Amt") or "0"),
            credit_debit=elem.findtext(q + "CdtDbtInd") or "",
            reversal=(elem.findtext(q + "RvslInd") or "").lower() == "true",
            status=elem.findtext(f"{q}Sts/{q}Cd") or elem.findtext(f"{q}Sts/{q}Prtry") or "",
            booking_date=_date(elem.find(q + "BookgDt"), q),
            value_date=_date(elem.find(q + "ValDt"), q),
            bank_code=bank_code,
            batch_msg_id=batch.findtext(q + "MsgId") if batch is not None else None,
            batch_pmt_inf_id=batch.findtext(q + "PmtInfId") if batch is not None else None,
            batch_nb_of_txs=int(nb) if nb else None,
            transactions=transactions,
            info=elem.findtext(q + "AddtlNtryInf"),
        )


def validate_camt(camt: CamtFile) -> int:
    """Validate the whole file before anything is booked; returns the number of entries."""
    return sum(1 for _ in iter_entries(camt, validate=True))
