"""Reader of bank statements (camt.053), intraday reports (camt.052) and debit/credit
notifications (camt.054), in the versions German banks send: ``.001.02`` (the DK format of
2014-2023), ``.001.04`` and ``.001.08``.

Streams entry by entry with ``iterparse`` while validating against the file's own ISO schema,
so a year of statements reads in constant memory. The version comes from the root namespace;
each version's element paths are one row of ``LAYOUTS`` and every version becomes the same
``CamtEntry``/``CamtTransaction`` records, so the matching never sees a version. Only what the
reconciliation needs is extracted: amount, direction, status, dates, bank transaction code,
batch data, and per transaction the references (EndToEndId, PmtInfId, MndtId), the return
reason, the debtor and the remittance text.

A file that cannot be read is refused with ``CamtRejected``: file name, the real line (see
``schema_error_line``), the reason, and what to ask the bank for.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from zoneinfo import ZoneInfo

from lxml import etree

from connectors.sepa.errors import SepaValidationError
from connectors.sepa.schemas import (
    CAMT_VERSIONS,
    NAMESPACES,
    SCHEMA_FILES,
    iter_validated,
    readable_error,
    schema_error_line,
)

#: The element that holds the entries, per message type.
CONTAINERS: dict[str, str] = {"camt.052": "Rpt", "camt.053": "Stmt", "camt.054": "Ntfctn"}
#: What a message type is, in the words of a report line.
MESSAGE_NAMES: dict[str, str] = {
    "camt.052": "intraday account report",
    "camt.053": "end-of-day account statement",
    "camt.054": "debit/credit notification",
}
_CAMT_NAMESPACE = re.compile(r"^urn:iso:std:iso:20022:tech:xsd:(camt\.05[234])\.(\d{3}\.\d{2})$")
_ANY_ISO_NAMESPACE = re.compile(r"^urn:iso:std:iso:20022:tech:xsd:([a-z]{4}\.\d{3})\.(\d{3}\.\d{2})$")
BERLIN = ZoneInfo("Europe/Berlin")


class CamtRejected(SepaValidationError):
    """A camt file the import refuses as a whole; nothing of it is booked.

    Attributes:
        file: the file's name.
        reason: what is wrong, in plain words (with the line where there is one).
        advice: what to do, usually what to ask the bank for.
        line: the line in the file (1-based), when the problem has one.
    """

    def __init__(self, file: str, reason: str, advice: str, line: int | None = None) -> None:
        self.file = file
        self.reason = reason
        self.advice = advice
        self.line = line
        where = f" line {line}" if line else ""
        super().__init__(f"{file}{where}: {reason}; {advice}")


def wanted_versions(kind: str) -> str:
    """The versions to ask a bank for, for a message type: ``camt.053.001.08 or .02``."""
    return f"{kind}.001.08 or .02"


def ask_bank_for(kind: str) -> str:
    """What to ask the bank for when a file's version is not read: ``ask the bank for ...``."""
    return f"ask the bank for {wanted_versions(kind)}"


@dataclass(frozen=True)
class CamtLayout:
    """Where one camt version keeps what the reconciliation reads.

    Paths are local element names separated by ``/``, relative to ``Ntry`` (``status``) or to
    ``TxDtls`` (the rest); the first path that has a text wins.
    """

    container: str
    status: tuple[str, ...]
    tx_amount: tuple[str, ...]
    tx_credit_debit: tuple[str, ...]
    debtor_name: tuple[str, ...]
    creditor_name: tuple[str, ...]


def layout_of(name: str) -> CamtLayout:
    """The layout of one supported version (``camt.053.001.02``); the rule table of the mapping.

    ``.001.02``: status is a code (``<Sts>BOOK</Sts>``), a transaction has no ``Amt`` of its own
    (its amount is in ``AmtDtls``: ``TxAmt``, else the instructed amount), parties have ``Nm``.
    ``.001.04``: status still a code, ``TxDtls/Amt`` and ``CdtDbtInd`` required, parties ``Nm``.
    ``.001.08``: status a choice (``Sts/Cd`` or ``Sts/Prtry``), ``TxDtls/Amt`` optional (then
    ``AmtDtls``), parties are a choice of ``Pty`` (a party) or ``Agt`` (a bank): ``Dbtr/Pty/Nm``.

    Raises:
        KeyError: ``name`` is not one of ``CAMT_VERSIONS``.
    """
    if name not in CAMT_VERSIONS:
        raise KeyError(name)
    kind, version = name[:8], name[9:]
    amount_details = ("AmtDtls/TxAmt/Amt", "AmtDtls/InstdAmt/Amt")
    if version == "001.08":
        status: tuple[str, ...] = ("Sts/Cd", "Sts/Prtry")
        party = "RltdPties/{}/Pty/Nm"
    else:
        status = ("Sts",)
        party = "RltdPties/{}/Nm"
    return CamtLayout(
        container=CONTAINERS[kind],
        status=status,
        tx_amount=amount_details if version == "001.02" else ("Amt", *amount_details),
        tx_credit_debit=() if version == "001.02" else ("CdtDbtInd",),
        debtor_name=(party.format("Dbtr"),),
        creditor_name=(party.format("Cdtr"),),
    )


@dataclass(frozen=True)
class CamtTransaction:
    """One transaction inside an entry (TxDtls), the same for every version."""

    end_to_end_id: str | None
    pmt_inf_id: str | None
    msg_id: str | None
    mandate_id: str | None
    amount: Decimal | None
    credit_debit: str | None
    return_reason: str | None
    return_info: str | None
    debtor_name: str | None = None
    debtor_iban: str | None = None
    creditor_name: str | None = None
    remittance: str | None = None


@dataclass(frozen=True)
class CamtEntry:
    """One booking (Ntry) of a statement, report or notification, the same for every version."""

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
    bank_reference: str | None = None  # AcctSvcrRef: the bank's own reference of the booking
    entry_reference: str | None = None  # NtryRef
    #: The booking's identity across files (see ``entry_identity``); set by the reader.
    identity: str = ""


def entry_identity(entry: CamtEntry, occurrence: int = 1) -> str:
    """The identity of a booking across files: the same in a camt.052 and the camt.053 of the day.

    Why: an intraday report and the statement carry the same booking; it must count once. The
    bank's reference (``AcctSvcrRef``) is the identity: ``<account>/<AcctSvcrRef>``. Without it,
    ``NtryRef`` with booking date, sign and amount (an ``NtryRef`` may be a number within one
    statement only): ``<account>/NtryRef <ref> <date> <sign><amount>``. Without either, a digest of
    what the bank cannot change between the two files: account, booking date, amount, sign
    (credit/debit, reversal), the batch's PmtInfId and each transaction's EndToEndId, PmtInfId,
    MndtId and amount, plus ``occurrence`` (the n-th entry with this digest in its file), so two
    equal bookings in one file stay two: ``<account>/sha256:<32 hex>#<n>``.
    """
    account = entry.account_iban or "-"
    if entry.bank_reference:
        return f"{account}/{entry.bank_reference}"
    sign = ("-" if entry.credit_debit == "DBIT" else "+") + ("R" if entry.reversal else "")
    day = entry.booking_date.isoformat() if entry.booking_date else "-"
    if entry.entry_reference:
        return f"{account}/NtryRef {entry.entry_reference} {day} {sign}{entry.amount}"
    parts = [account, day, f"{sign}{entry.amount}", entry.batch_pmt_inf_id or ""]
    for tx in entry.transactions:
        parts += [tx.end_to_end_id or "", tx.pmt_inf_id or "", tx.mandate_id or "", str(tx.amount or "")]
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
    return f"{account}/sha256:{digest}#{occurrence}"


@dataclass(frozen=True)
class CamtFile:
    """Header data of a camt file: kind, version, message id, and a content hash (import only once)."""

    path: Path
    kind: str  # camt.052, camt.053, camt.054
    msg_id: str
    sha256: str
    version: str = "001.08"

    @property
    def name(self) -> str:
        """The full message name, e.g. ``camt.053.001.02`` (the schema's name)."""
        return f"{self.kind}.{self.version}"

    @property
    def key(self) -> str:
        """Identity of the file for "imported already" checks."""
        return f"{self.kind}:{self.msg_id}:{self.sha256[:16]}"


#: ``xs:date``: a calendar date, optionally with a time zone (``2026-03-04``, ``2026-03-04+01:00``,
#: ``2026-03-04Z``); the date is the one written, whatever the zone.
_XS_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})(?:Z|[+-]\d{2}:\d{2})?")
#: ``xs:dateTime``: fractions of any length, optionally a time zone; ``24:00:00`` is the next midnight.
_XS_DATE_TIME = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(Z|[+-]\d{2}:\d{2})?")


def xs_date(text: str) -> date:
    """The date of an ``xs:date`` text, with or without a time zone.

    Why: ``date.fromisoformat`` refuses ``2026-03-04+01:00``, which the schema allows and banks
    send. A date keeps its calendar day; the zone only says where that day is.

    Raises:
        ValueError: not an ``xs:date`` (the schema refuses it first).
    """
    match = _XS_DATE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a date: {text!r}")
    return date.fromisoformat(match.group(1))


def xs_date_time_day(text: str) -> date:
    """The business day (Europe/Berlin) of an ``xs:dateTime`` text (``DtTm`` booking dates).

    A date-time with a zone (``2026-03-04T23:30:00Z``) is the day in Berlin at that moment
    (here 5 March); one without a zone is taken as local time, its date as written.

    Raises:
        ValueError: not an ``xs:dateTime``.
    """
    match = _XS_DATE_TIME.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a date-time: {text!r}")
    day_text, hour, minute, second, zone = match.groups()
    day, hours = date.fromisoformat(day_text), int(hour)
    if hours == 24:  # xs:dateTime allows 24:00:00: midnight at the end of the day
        if (minute, second) != ("00", "00"):
            raise ValueError(f"not a date-time: {text!r}")
        day, hours = day + timedelta(days=1), 0
    if zone is None:
        return day
    offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])) if zone != "Z" else timedelta(0)
    zone_info = timezone(-offset if zone.startswith("-") else offset)
    moment = datetime(day.year, day.month, day.day, hours, int(minute), int(second), tzinfo=zone_info)
    return moment.astimezone(BERLIN).date()


def _date(elem: etree._Element | None, q: str) -> date | None:
    """``BookgDt``/``ValDt``: a choice of ``Dt`` (``xs:date``) or ``DtTm`` (``xs:dateTime``)."""
    if elem is None:
        return None
    text = elem.findtext(q + "Dt")
    if text:
        return xs_date(text)
    text = elem.findtext(q + "DtTm")
    return xs_date_time_day(text) if text else None


def _decimal(text: str | None) -> Decimal | None:
    return Decimal(text) if text else None


def _root_namespace(path: Path) -> str:
    """The namespace of the root element (reads only the start of the file).

    Raises:
        CamtRejected: empty, not XML, or unreadable.
    """
    try:
        for _event, elem in etree.iterparse(str(path), events=("start",)):
            return etree.QName(elem).namespace or ""
    except etree.XMLSyntaxError as exc:
        raise CamtRejected(
            path.name,
            f"not a well-formed XML file ({readable_error(exc.msg or str(exc))})",
            "download it again or ask the bank to send it again",
            exc.lineno or None,
        ) from exc
    except OSError as exc:
        raise CamtRejected(
            path.name, f"cannot be read ({exc.strerror or exc})", "check the path and the file's permissions"
        ) from exc
    raise CamtRejected(path.name, "empty file", "download it again or ask the bank to send it again")


def identify(path: Path) -> tuple[str, str]:
    """Message type and version of a camt file from its root namespace (``camt.053``, ``001.02``).

    Raises:
        CamtRejected: not a camt.052/053/054 file, or a version the import does not read (with
            what to ask the bank for).
    """
    namespace = _root_namespace(path)
    match = _CAMT_NAMESPACE.match(namespace)
    if match is None:
        other = _ANY_ISO_NAMESPACE.match(namespace)
        what = f"a {other.group(1)}.{other.group(2)} file" if other else f"of namespace {namespace!r}"
        raise CamtRejected(
            path.name,
            f"not a bank statement: {what}",
            "import the bank's account statements (camt.053), intraday reports (camt.052) or "
            "notifications (camt.054)",
        )
    kind, version = match.group(1), match.group(2)
    name = f"{kind}.{version}"
    if name not in CAMT_VERSIONS:
        known = ", ".join(v[9:] for v in CAMT_VERSIONS if v.startswith(kind))
        no_schema = (
            " (no schema for it is available to check it against)" if name == "camt.052.001.04" else ""
        )
        raise CamtRejected(
            path.name,
            f"{name} ({MESSAGE_NAMES[kind]}) is not supported{no_schema}; supported: {kind} {known}",
            ask_bank_for(kind),
        )
    return kind, version


def open_camt(path: Path) -> CamtFile:
    """Identify a camt file (type and version from the namespace, GrpHdr/MsgId, SHA-256 of the bytes).

    Raises:
        CamtRejected: not a camt file of a supported version, or not readable.
    """
    kind, version = identify(path)
    q = f"{{{NAMESPACES[f'{kind}.{version}']}}}"
    msg_id = ""
    try:
        for _event, elem in etree.iterparse(str(path), events=("end",), tag=q + "GrpHdr"):
            msg_id = elem.findtext(q + "MsgId") or ""
            break
    except etree.XMLSyntaxError as exc:
        raise CamtRejected(
            path.name,
            f"not a well-formed XML file ({readable_error(exc.msg or str(exc))})",
            "download it again or ask the bank to send it again",
            exc.lineno or None,
        ) from exc
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return CamtFile(path, kind, msg_id, digest.hexdigest(), version)


def iter_entries(camt: CamtFile, validate: bool = True) -> Iterator[CamtEntry]:
    """Stream the entries of a camt file, validating the whole file against its own schema.

    Raises:
        CamtRejected: the file breaks its schema or is not well-formed, with the line (raised
            when the bad part is read; callers that must not act on a bad file read it fully
            first, see ``validate_camt``).
    """
    name = camt.name
    q = f"{{{NAMESPACES[name]}}}"
    layout = layout_of(name)

    def paths(rel: tuple[str, ...]) -> tuple[str, ...]:
        return tuple("/".join(q + part for part in p.split("/")) for p in rel)

    status_paths = paths(layout.status)
    amount_paths = paths(layout.tx_amount)
    cd_paths = paths(layout.tx_credit_debit)
    debtor_paths = paths(layout.debtor_name)
    creditor_paths = paths(layout.creditor_name)

    def first(elem: etree._Element, candidates: tuple[str, ...]) -> str | None:
        for path in candidates:
            text = elem.findtext(path)
            if text:
                return text
        return None

    def transaction(tx: etree._Element, entry_credit_debit: str) -> CamtTransaction:
        ustrd = [t.text for t in tx.findall(f"{q}RmtInf/{q}Ustrd") if t.text]
        return CamtTransaction(
            end_to_end_id=tx.findtext(f"{q}Refs/{q}EndToEndId"),
            pmt_inf_id=tx.findtext(f"{q}Refs/{q}PmtInfId"),
            msg_id=tx.findtext(f"{q}Refs/{q}MsgId"),
            mandate_id=tx.findtext(f"{q}Refs/{q}MndtId"),
            amount=_decimal(first(tx, amount_paths)),
            credit_debit=first(tx, cd_paths) or entry_credit_debit,  # .02: only the entry has it
            return_reason=tx.findtext(f"{q}RtrInf/{q}Rsn/{q}Cd") or tx.findtext(f"{q}RtrInf/{q}Rsn/{q}Prtry"),
            return_info=" ".join(t.text or "" for t in tx.findall(f"{q}RtrInf/{q}AddtlInf")) or None,
            debtor_name=first(tx, debtor_paths),
            debtor_iban=tx.findtext(f"{q}RltdPties/{q}DbtrAcct/{q}Id/{q}IBAN"),
            creditor_name=first(tx, creditor_paths),
            remittance=" ".join(ustrd) or None,
        )

    def entry(index: int, elem: etree._Element) -> CamtEntry:
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
        nb = batch.findtext(q + "NbOfTxs") if batch is not None else None
        bank_reference = elem.findtext(q + "AcctSvcrRef")
        entry_reference = elem.findtext(q + "NtryRef")
        credit_debit = elem.findtext(q + "CdtDbtInd") or ""
        record = CamtEntry(
            statement_id=statement_id or "",
            account_iban=iban,
            index=index,
            reference=bank_reference or entry_reference or f"#{index}",
            amount=Decimal(elem.findtext(q + "Amt") or "0"),
            credit_debit=credit_debit,
            reversal=(elem.findtext(q + "RvslInd") or "").lower() == "true",
            status=first(elem, status_paths) or "",
            booking_date=_date(elem.find(q + "BookgDt"), q),
            value_date=_date(elem.find(q + "ValDt"), q),
            bank_code=bank_code,
            batch_msg_id=batch.findtext(q + "MsgId") if batch is not None else None,
            batch_pmt_inf_id=batch.findtext(q + "PmtInfId") if batch is not None else None,
            batch_nb_of_txs=int(nb) if nb else None,
            transactions=[transaction(tx, credit_debit) for tx in elem.findall(f"{q}NtryDtls/{q}TxDtls")],
            info=elem.findtext(q + "AddtlNtryInf"),
            bank_reference=bank_reference,
            entry_reference=entry_reference,
        )
        identity = entry_identity(record)
        if not (bank_reference or entry_reference):  # a digest: equal bookings of a file stay apart
            occurrences[identity] = occurrence = occurrences.get(identity, 0) + 1
            identity = entry_identity(record, occurrence)
        return replace(record, identity=identity)

    occurrences: dict[str, int] = {}
    elements = iter_validated(camt.path, name, ("Ntry",), validate, locate_errors=False)
    try:
        for index, elem in enumerate(elements, start=1):
            try:
                record = entry(index, elem)
            except (InvalidOperation, ValueError) as exc:
                # lxml raises a schema error only once the whole file is read: read on, so the
                # schema's message and line explain the bad value, not the conversion
                for _elem in elements:
                    pass
                raise CamtRejected(
                    camt.path.name,
                    f"entry {index} has a value the import cannot read ({exc}); nothing of the file is booked",
                    f"ask the bank for a corrected file (a valid {name})",
                ) from exc
            yield record
    except SepaValidationError as exc:
        raise _refusal(camt, exc) from exc.__cause__


def _refusal(camt: CamtFile, exc: SepaValidationError) -> SepaValidationError:
    """The ``CamtRejected`` for a streaming parser's error: reason, line and what to do."""
    cause = exc.__cause__
    if isinstance(exc, CamtRejected) or not isinstance(cause, etree.XMLSyntaxError):
        return exc
    name = camt.name
    raw = readable_error(cause.msg or str(cause))
    if cause.lineno:  # the XML parser knows its line; only schema errors come without one
        reason = f"not a well-formed XML file ({raw})"
        advice = "download it again or ask the bank to send it again"
        line: int | None = int(cause.lineno)
    else:
        reason = f"not valid against {SCHEMA_FILES[name]}: {raw}"
        advice = f"ask the bank for a corrected {name} file (this message says what is wrong)"
        line = schema_error_line(camt.path, name)
    return CamtRejected(camt.path.name, reason, advice, line)


def validate_camt(camt: CamtFile) -> int:
    """Validate the whole file and convert every entry before anything is booked; returns the number
    of entries.

    Why both: a file is imported whole or refused whole. The schema guarantees the structure, but
    a value the schema allows may still not convert (a date form the reader does not know); such
    a file must be refused here, before its first entry is booked, not half-way through the import.
    Costs about five times a bare validation (the records are built and dropped), small beside
    matching each entry against the ledger.

    Raises:
        CamtRejected: as ``iter_entries``.
    """
    return sum(1 for _ in iter_entries(camt, validate=True))
