"""Writes small camt.052/053/054 files in every version the import reads, from plain specs.

Hand-made test data (no bank's or project's file is copied): the same entries come out in each
version's own element paths (``Sts`` code or ``Sts/Cd``, ``AmtDtls/TxAmt/Amt`` or ``Amt``,
``Dbtr/Nm`` or ``Dbtr/Pty/Nm``), so a test can check that every version reads to the same records.

What banks vary and the reader must take is written from the spec, not from what the reader
expects: ``NtryRef``; the status as a proprietary code (``Sts/Prtry``, .001.08); a booking date
as ``DtTm`` or with a time zone (``booked_text``); a transaction amount only as the instructed
amount (``AmtDtls/InstdAmt``, where the version allows no ``Amt``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from lxml import etree

ROOTS = {"camt.052": "BkToCstmrAcctRpt", "camt.053": "BkToCstmrStmt", "camt.054": "BkToCstmrDbtCdtNtfctn"}
CONTAINER = {"camt.052": "Rpt", "camt.053": "Stmt", "camt.054": "Ntfctn"}
ACCOUNT = "DE02120300000000202051"


@dataclass
class Tx:
    """One TxDtls."""

    amount: str
    end_to_end_id: str | None = None
    pmt_inf_id: str | None = None
    mandate_id: str | None = None
    credit_debit: str = "CRDT"
    debtor: str | None = None
    debtor_iban: str | None = None
    creditor: str | None = None
    remittance: str | None = None
    return_reason: str | None = None
    return_info: str | None = None
    instructed_only: bool = False  # amount only in AmtDtls/InstdAmt (.02, .08; .04 requires Amt)


@dataclass
class Entry:
    """One Ntry."""

    amount: str
    bank_ref: str | None = None
    credit_debit: str = "CRDT"
    status: str = "BOOK"
    booked: date | None = date(2026, 3, 4)
    code: tuple[str, str, str] = ("PMNT", "IDDT", "ESDD")
    reversal: bool = False
    batch_pmt_inf_id: str | None = None
    batch_nb_of_txs: int | None = None
    txs: list[Tx] = field(default_factory=list)
    info: str | None = None
    entry_ref: str | None = None  # NtryRef
    status_proprietary: bool = False  # .001.08: Sts/Prtry instead of Sts/Cd
    booked_tag: str = "Dt"  # or DtTm (a date-time)
    booked_text: str | None = None  # the booking date's text as written (e.g. with a time zone)


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    child = etree.SubElement(parent, f"{{{parent.nsmap[None]}}}{tag}", **attrs)
    if text is not None:
        child.text = text
    return child


def _path(parent: etree._Element, path: str, text: str) -> None:
    node = parent
    for tag in path.split("/"):
        node = _sub(node, tag)
    node.text = text


def camt_document(name: str, msg_id: str, entries: list[Entry], statement_id: str = "S-1") -> bytes:
    """A camt file of version ``name`` (``camt.053.001.02``) with these entries, pretty-printed."""
    kind, version = name[:8], name[9:]
    ns = f"urn:iso:std:iso:20022:tech:xsd:{name}"
    root = etree.Element(f"{{{ns}}}Document", nsmap={None: ns})
    message = _sub(root, ROOTS[kind])
    header = _sub(message, "GrpHdr")
    _sub(header, "MsgId", msg_id)
    _sub(header, "CreDtTm", "2026-03-05T06:00:00+01:00")
    box = _sub(message, CONTAINER[kind])
    _sub(box, "Id", statement_id)
    _sub(box, "CreDtTm", "2026-03-05T06:00:00+01:00")
    _path(_sub(box, "Acct"), "Id/IBAN", ACCOUNT)
    if kind == "camt.053":
        balance = _sub(box, "Bal")
        _path(balance, "Tp/CdOrPrtry/Cd", "CLBD")
        _sub(balance, "Amt", "10000.00", Ccy="EUR")
        _sub(balance, "CdtDbtInd", "CRDT")
        _path(balance, "Dt/Dt", "2026-03-04")
    for spec in entries:
        ntry = _sub(box, "Ntry")
        if spec.entry_ref:
            _sub(ntry, "NtryRef", spec.entry_ref)
        _sub(ntry, "Amt", spec.amount, Ccy="EUR")
        _sub(ntry, "CdtDbtInd", spec.credit_debit)
        if spec.reversal:
            _sub(ntry, "RvslInd", "true")
        if version == "001.08":
            _path(ntry, "Sts/Prtry" if spec.status_proprietary else "Sts/Cd", spec.status)
        else:
            _sub(ntry, "Sts", spec.status)
        if spec.booked or spec.booked_text:
            text = spec.booked_text or (spec.booked.isoformat() if spec.booked else "")
            if spec.booked_tag == "DtTm" and spec.booked_text is None:
                text += "T10:15:00"
            _path(ntry, f"BookgDt/{spec.booked_tag}", text)
            _path(ntry, f"ValDt/{spec.booked_tag}", text)
        if spec.bank_ref:
            _sub(ntry, "AcctSvcrRef", spec.bank_ref)
        domain = _sub(_sub(ntry, "BkTxCd"), "Domn")
        _sub(domain, "Cd", spec.code[0])
        family = _sub(domain, "Fmly")
        _sub(family, "Cd", spec.code[1])
        _sub(family, "SubFmlyCd", spec.code[2])
        if spec.batch_pmt_inf_id or spec.txs:
            details = _sub(ntry, "NtryDtls")
            if spec.batch_pmt_inf_id:
                batch = _sub(details, "Btch")
                _sub(batch, "PmtInfId", spec.batch_pmt_inf_id)
                if spec.batch_nb_of_txs is not None:
                    _sub(batch, "NbOfTxs", str(spec.batch_nb_of_txs))
            for tx in spec.txs:
                _transaction(_sub(details, "TxDtls"), tx, version)
        if spec.info:
            _sub(ntry, "AddtlNtryInf", spec.info)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _transaction(node: etree._Element, tx: Tx, version: str) -> None:
    if tx.pmt_inf_id or tx.end_to_end_id or tx.mandate_id:
        refs = _sub(node, "Refs")
        for tag, value in (
            ("PmtInfId", tx.pmt_inf_id),
            ("EndToEndId", tx.end_to_end_id),
            ("MndtId", tx.mandate_id),
        ):
            if value:
                _sub(refs, tag, value)
    if version == "001.04" or (version == "001.08" and not tx.instructed_only):
        _sub(node, "Amt", tx.amount, Ccy="EUR")
        _sub(node, "CdtDbtInd", tx.credit_debit)
    if tx.instructed_only:
        _sub(_sub(_sub(node, "AmtDtls"), "InstdAmt"), "Amt", tx.amount, Ccy="EUR")
    elif version == "001.02":
        _sub(_sub(_sub(node, "AmtDtls"), "TxAmt"), "Amt", tx.amount, Ccy="EUR")
    if tx.debtor or tx.debtor_iban or tx.creditor:
        parties = _sub(node, "RltdPties")
        party = "Pty/Nm" if version == "001.08" else "Nm"
        if tx.debtor:
            _path(_sub(parties, "Dbtr"), party, tx.debtor)
        if tx.debtor_iban:
            _path(_sub(parties, "DbtrAcct"), "Id/IBAN", tx.debtor_iban)
        if tx.creditor:
            _path(_sub(parties, "Cdtr"), party, tx.creditor)
    if tx.remittance:
        _path(node, "RmtInf/Ustrd", tx.remittance)
    if tx.return_reason or tx.return_info:
        info = _sub(node, "RtrInf")
        if tx.return_reason:
            _path(info, "Rsn/Cd", tx.return_reason)
        if tx.return_info:
            _sub(info, "AddtlInf", tx.return_info)


def write_camt(folder: Path, file_name: str, name: str, msg_id: str, entries: list[Entry]) -> Path:
    """Write ``camt_document`` to ``folder/file_name``; returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name
    path.write_bytes(camt_document(name, msg_id, entries))
    return path
