"""Rules of the portal exchange (documents, messages, notes; seed 001) as pure functions, no I/O.

``docs/portal-exchange.md`` is the design; this module decides, from plain ERP rows (the
design's column names) and what the caller read beforehand (file facts, what the portal holds),
which records the portal should hold and what the ERP learns back. Every function returns the
records it wants plus :class:`~tasks.portal_rules.Skip` entries for what it holds back with a
reason a property manager can act on (the run's protocol); the run goes on.

Entities and reference ids:

- ``documents``: ``str(document_id)``; a document of a released object that is not (or no
  longer) released is wanted as a deleted marker ``{"id", "propertyId", "deleted": True}``.
- ``ticket_types``: the message type's code.
- ``tickets``: ``messages.portal_ticket_id`` if set (the ticket came from the portal), else
  ``str(message_id)``.
- ``bulletin_posts``: ``str(message_id)``; a post not wanted any more is archived by the engine.
- ``comments``: ``note-<note_id>`` and ``order-<order_id>``; append-only.
- ``emails``: ``ticket-<ticket ref>`` and ``comment-<comment ref>``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

from connectors.documents import CONVERTIBLE_SUFFIXES, DOCUMENT_MIME_TYPES
from tasks.portal_rules import Skip, UnreadableDate, _missing, _text, parse_date

if TYPE_CHECKING:
    from config.settings import PortalSettings

BERLIN = ZoneInfo("Europe/Berlin")
MB = 1024 * 1024

# File types the portal takes as they are, by suffix, and the Word and OpenDocument texts that are
# converted to PDF with LibreOffice (never sent unconverted): one table, the document files' own.
MIME_TYPES = DOCUMENT_MIME_TYPES
CONVERTIBLE = CONVERTIBLE_SUFFIXES

# Message status in the ERP and the portal ticket status it maps to.
OPEN, CLOSED, CANCELLED = "OFFEN", "ABGESCHLOSSEN", "STORNIERT"
TICKET_STATUS = {OPEN: "open", CLOSED: "closed", CANCELLED: "closed"}
# portal_mode of a message type
SPERRE, PINNWAND, OBJEKTMELDUNG, EINZELMELDUNG = "SPERRE", "PINNWAND", "OBJEKTMELDUNG", "EINZELMELDUNG"
TICKET_MODES = frozenset({OBJEKTMELDUNG, EINZELMELDUNG})

# Texts of the ERP's "Serviceportal" column (messages.portal_status).
SENT_OPEN = "übertragen (offen)"
SENT_CLOSED = "übertragen (erledigt)"
ON_BOARD = "Pinnwand"
OFF_BOARD = "Pinnwand entfernt"
OBJECT_NOT_RELEASED = "Objekt nicht freigegeben"
TYPE_LOCKED = "Meldungsart gesperrt"
TYPE_UNKNOWN = "Meldungsart unbekannt"
TEAM_NOT_RELEASED = "Team nicht freigegeben"
IS_CLOSED = "abgeschlossen"
IS_CANCELLED = "storniert"
TYPE_CHANGED = "Meldungsart im Portal geändert"
NO_PERSON = "keine Person zugeordnet"
PERSON_NOT_IN_PORTAL = "Person nicht im Portal"
DATE_UNREADABLE = "Erfassungsdatum unlesbar"

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class FileFacts:
    """What the caller found out about a document's source file before the rules run.

    ``version`` is the SHA-256 (hex) of the source file's bytes; ``error`` says why the file
    cannot be read (missing, no permission, ...), else ``None``.
    """

    path: str | None
    size: int | None
    version: str | None
    error: str | None = None


@dataclass(frozen=True)
class Upload:
    """A document's content to upload: the source ``path``, converted to PDF first if ``convert``;
    ``mime_type`` is the type of the bytes sent (``application/pdf`` after a conversion);
    ``sha256`` the digest of the bytes sent when they are the source's (``None`` for a file still
    to convert), so the upload does not read the file once more for its ``Content-Digest``."""

    path: str
    convert: bool
    mime_type: str
    sha256: str | None = None


@dataclass(frozen=True)
class ExchangeRules:
    """The data configuration of the exchange, fixed for one run (``today`` decides the cut-offs)."""

    document_types: frozenset[str]
    document_types_without_time_filter: frozenset[str]
    documents_since: date
    max_document_bytes: int
    messages_since: date
    full_history_objects: frozenset[str]
    teams: frozenset[int]
    erp_user: str = "999"
    order_note_template: str = (
        "Ihre Meldung [MELDUNGSNUMMER] wurde am [AUFTRAGSDATUM] an [KREDITOR] beauftragt."
    )
    notify_unregistered_by_email: bool = True

    @classmethod
    def from_settings(cls, portal: PortalSettings, today: date) -> ExchangeRules:
        """The rules of ``portal`` (``[portal]`` settings) on ``today``.

        The cut-offs are 1 January of ``today.year - *_years_back`` (a business date, compared
        with the Europe/Berlin date of a timestamp); ``max_document_mb`` counts 1 MB as 1024 KiB.
        """
        return cls(
            document_types=frozenset(portal.document_types),
            document_types_without_time_filter=frozenset(portal.document_types_without_time_filter),
            documents_since=date(today.year - portal.document_years_back, 1, 1),
            max_document_bytes=int(portal.max_document_mb * MB),
            messages_since=date(today.year - portal.message_years_back, 1, 1),
            full_history_objects=frozenset(portal.full_history_objects),
            teams=frozenset(portal.teams),
            erp_user=portal.erp_user,
            order_note_template=portal.order_note_template,
            notify_unregistered_by_email=portal.notify_unregistered_by_email,
        )


# --------------------------------------------------------------------------------------------
# small helpers


def _ref(value: Any) -> str | None:
    """An id as text (``5`` for ``5``, ``5.0`` or ``'5'``), ``None`` for NULL or blank."""
    if _missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return _text(value)


def _instant(value: Any) -> datetime | None:
    """A timezone-aware UTC timestamp from a datetime (naive: taken as UTC, as stored) or ISO text.

    ``None`` for NULL; raises :class:`UnreadableDate` for anything else.
    """
    if _missing(value):
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day, tzinfo=UTC)
    elif isinstance(value, str) and value.strip():
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise UnreadableDate(repr(value)) from None
    else:
        raise UnreadableDate(repr(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def iso_utc(moment: datetime) -> str:
    """``2026-01-05T08:30:00.000Z``: the portal's timestamp form (UTC, milliseconds)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _german(day: date) -> str:
    return f"{day:%d.%m.%Y}"


def _is_public(flag: Any) -> bool:
    """A note is public only when ``internal`` is explicitly false: NULL or junk stays internal."""
    return flag is False or (flag.__class__ is int and flag == 0)


# --------------------------------------------------------------------------------------------
# documents


def _document_label(row: Mapping[str, Any], ref: str) -> str:
    title = _text(row.get("title"))
    return f"document {title!r} (id {ref})" if title else f"document {ref}"


def _audience(
    row: Mapping[str, Any], label: str, portal_contacts: Collection[str], portal_units: Collection[str]
) -> tuple[str | None, list[str], Skip | None]:
    """``(unitId, contactIds, skip)`` of a document: a person, else a unit, else the property."""
    ref = str(row["document_id"])
    source = (_text(row.get("source")) or "ERP").upper()
    recipient_type = (_text(row.get("recipient_type")) or "").upper()
    person = _ref(row.get("person_no"))
    unit = _ref(row.get("unit_no"))
    if source == "DMS":
        if recipient_type == "K":
            return None, [], None  # a creditor's document is shared with the property
        if recipient_type == "P":
            person = _ref(row.get("recipient_id"))
        else:
            return (
                None,
                [],
                Skip(
                    "documents",
                    ref,
                    "dms_recipient_type_unknown",
                    f"{label}: the DMS recipient type is {recipient_type!r}, neither P (person) nor K "
                    "(creditor); correct the document's attributes in the DMS",
                ),
            )
    if person:
        if person not in portal_contacts:
            return (
                None,
                [],
                Skip(
                    "documents",
                    ref,
                    "document_person_not_in_portal",
                    f"{label} is addressed to person {person}, and person {person} is not a portal contact; "
                    "it is sent once the person is in the portal (see the person's own entry)",
                ),
            )
        return None, [person], None
    if unit:
        if unit not in portal_units:
            return (
                None,
                [],
                Skip(
                    "documents",
                    ref,
                    "document_unit_not_in_portal",
                    f"{label} belongs to unit {unit}, which is not in the portal; correct the unit in the "
                    "ERP document or see the unit's own entry",
                ),
            )
        return unit, [], None
    return None, [], None


def build_documents(
    rules: ExchangeRules,
    rows: Iterable[Mapping[str, Any]],
    released_objects: Collection[str],
    files: Mapping[int, FileFacts],
    portal_contacts: Collection[str],
    portal_units: Collection[str],
    converter_available: bool,
) -> tuple[dict[str, dict[str, Any]], dict[str, Upload], list[Skip]]:
    """The portal documents the ERP's ``documents`` rows call for, their uploads, and the skips.

    - Only documents of released objects; others yield nothing at all (not the portal's).
    - Released: a type "without time filter" always; a (time-filtered) released type when dated
      on or after ``rules.documents_since``. Any other document of a released object is wanted
      as deleted, ``{"id", "propertyId", "deleted": True}``, without content.
    - Skipped with a reason (nothing wanted, so whatever the portal holds stays as it is): a DMS
      document without recipient type, object number or recipient id (each named); no object
      number; an unreadable date; a file type the portal does not take; a Word/OpenDocument
      file without LibreOffice (never sent unconverted); a missing or unreadable file; a file
      above ``max_document_bytes``; a person that is no portal contact; a unit not in the portal.
    - Audience: the person (``person_no``, or a DMS document of recipient type ``P``: its
      ``recipient_id``) alone, ``unitId`` ``None``; else ``unit_no``; else the whole property.
      A DMS document of recipient type ``K`` (creditor) goes to the whole property.
    - ``version`` and ``size`` are those of the source file (:class:`FileFacts`); a converted
      file keeps the source's version, so a changed source uploads a new PDF.

    Args:
        files: document id -> facts of its source file (a document without an entry counts as
            a file not read).
        converter_available: LibreOffice can be run for this run's conversions.

    Returns:
        ``(records, uploads, skipped)``, records and uploads keyed by ``str(document_id)``.
    """
    records: dict[str, dict[str, Any]] = {}
    uploads: dict[str, Upload] = {}
    skipped: list[Skip] = []

    for row in rows:
        ref = _ref(row.get("document_id")) or "?"
        label = _document_label(row, ref)
        object_no = _ref(row.get("object_no"))
        source = (_text(row.get("source")) or "ERP").upper()
        if source == "DMS":
            missing = [
                name
                for name, column in (
                    ("recipient type", "recipient_type"),
                    ("object number", "object_no"),
                    ("recipient id", "recipient_id"),
                )
                if _text(row.get(column)) is None
            ]
            if object_no is not None and object_no not in released_objects:
                continue
            if missing:
                skipped.append(
                    Skip(
                        "documents",
                        ref,
                        "dms_fields_missing",
                        f"{label} from the DMS has no {', no '.join(missing)}; a DMS document needs recipient "
                        "type (P or K), object number and recipient id: add them in the DMS",
                    )
                )
                continue
        if object_no is None:
            skipped.append(
                Skip(
                    "documents",
                    ref,
                    "document_object_missing",
                    f"{label} names no object; enter the object number in the ERP document",
                )
            )
            continue
        if object_no not in released_objects:
            continue
        doc_type = _text(row.get("doc_type")) or ""
        try:
            doc_date = parse_date(row.get("document_date"))
        except UnreadableDate as exc:
            skipped.append(
                Skip(
                    "documents",
                    ref,
                    "document_date_unreadable",
                    f"{label}: the document date {exc} is no date; correct it in the ERP document",
                )
            )
            continue
        if doc_type in rules.document_types_without_time_filter:
            released = True
        elif doc_type in rules.document_types:
            if doc_date is None:
                skipped.append(
                    Skip(
                        "documents",
                        ref,
                        "document_date_missing",
                        f"{label} of type {doc_type} has no date, and its type is sent only when dated since "
                        f"{_german(rules.documents_since)}; enter the date in the ERP document",
                    )
                )
                continue
            released = doc_date >= rules.documents_since
        else:
            released = False
        if not released:
            records[ref] = {"id": ref, "propertyId": object_no, "deleted": True}
            continue

        file_name = _text(row.get("file_name")) or ""
        suffix = PurePath(file_name).suffix.lower()
        convert = suffix in CONVERTIBLE
        if not convert and suffix not in MIME_TYPES:
            skipped.append(
                Skip(
                    "documents",
                    ref,
                    "document_file_type",
                    f"{label}: the file {file_name!r} is of a type the portal does not take (only PDF, JPEG, "
                    "PNG, and Word/OpenDocument converted to PDF); save it as PDF in the ERP",
                )
            )
            continue
        if convert and not converter_available:
            skipped.append(
                Skip(
                    "documents",
                    ref,
                    "converter_missing",
                    f"{label}: the file {file_name!r} must be converted to PDF, but LibreOffice is not installed "
                    "(setting portal.converter); not sent unconverted: install LibreOffice or store it as PDF",
                )
            )
            continue
        facts = files.get(int(row["document_id"]))
        if facts is None or facts.error or not facts.path or not facts.version:
            why = (facts.error if facts else None) or "the file was not read"
            skipped.append(
                Skip(
                    "documents",
                    ref,
                    "document_file_unreadable",
                    f"{label}: {why}; check the file ({row.get('content_path')}) and the setting portal.document_dir",
                )
            )
            continue
        raw_size: Any = facts.size if facts.size is not None else row.get("size_bytes")
        size = None if _missing(raw_size) else int(raw_size)
        if size is not None and size > rules.max_document_bytes:
            skipped.append(
                Skip(
                    "documents",
                    ref,
                    "document_too_large",
                    f"{label} is {size / MB:.1f} MB, above the limit of {rules.max_document_bytes / MB:g} MB "
                    "(setting portal.max_document_mb); make the file smaller or share it otherwise",
                )
            )
            continue
        unit_id, contact_ids, problem = _audience(row, label, portal_contacts, portal_units)
        if problem:
            skipped.append(problem)
            continue
        mime_type = "application/pdf" if convert else MIME_TYPES[suffix]
        records[ref] = {
            "id": ref,
            "title": _text(row.get("title")) or file_name,
            "documentType": doc_type,
            "fileName": str(PurePath(file_name).with_suffix(".pdf")) if convert else file_name,
            "mimeType": mime_type,
            "date": doc_date.isoformat() if doc_date else None,
            "propertyId": object_no,
            "unitId": unit_id,
            "contactIds": contact_ids,
            "version": facts.version,
            "size": size,
            "deleted": False,
        }
        uploads[ref] = Upload(facts.path, convert, mime_type, None if convert else facts.version)
    return records, uploads, skipped


# --------------------------------------------------------------------------------------------
# ticket types and messages


def build_ticket_types(
    message_types_rows: Iterable[Mapping[str, Any]], portal_types: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The portal ticket types (``{id, name, locked: True}``) of the ERP's message types.

    Only the types that make tickets (``OBJEKTMELDUNG``, ``EINZELMELDUNG``); ``SPERRE`` never
    reaches the portal and ``PINNWAND`` makes bulletin posts. A type the portal holds with
    ``editedInPortal`` true or a name other than the ERP's was changed in the portal: it is not
    sent (the portal's edit stays visible until resolved there) and is returned in
    ``changed_in_portal`` (code -> reason); the messages of that type are not transferred.

    Args:
        portal_types: code -> the portal's record of that ticket type, as read.
    """
    records: dict[str, dict[str, Any]] = {}
    changed: dict[str, str] = {}
    for row in message_types_rows:
        code = _ref(row.get("code"))
        mode = (_text(row.get("portal_mode")) or "").upper()
        if not code or mode not in TICKET_MODES:
            continue
        name = _text(row.get("name")) or code
        held = portal_types.get(code)
        if held is not None:
            held_name = _text(held.get("name")) if held.get("name") is not None else None
            if held.get("editedInPortal") is True or held_name != name:
                changed[code] = (
                    f"message type {code} ({name!r}) was changed in the portal (name there: {held_name!r}); "
                    "its messages are not transferred until the type is reset in the portal or renamed alike "
                    "in the ERP"
                )
                continue
        records[code] = {"id": code, "name": name, "locked": True}
    return records, changed


@dataclass
class MessagesOutcome:
    """What :func:`build_messages` decided.

    ``tickets`` and ``posts`` are the wanted portal records by reference id; ``status`` holds the
    ERP's "Serviceportal" text for every message id; ``ticket_refs`` maps the message id of each
    wanted ticket to its reference (what comments name as ``ticketId``).
    """

    tickets: dict[str, dict[str, Any]] = field(default_factory=dict)
    posts: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: dict[int, str] = field(default_factory=dict)
    ticket_refs: dict[int, str] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)


def ticket_ref(row: Mapping[str, Any]) -> str:
    """The portal reference of a message's ticket: its ``portal_ticket_id`` or ``str(message_id)``."""
    return _ref(row.get("portal_ticket_id")) or str(int(row["message_id"]))


def build_messages(
    rules: ExchangeRules,
    messages_rows: Iterable[Mapping[str, Any]],
    message_types_rows: Iterable[Mapping[str, Any]],
    released_objects: Collection[str],
    at_portal_tickets: Collection[str],
    at_portal_posts: Collection[str],
    changed_types: Mapping[str, str],
    portal_contacts: Collection[str],
    portal_units: Collection[str] | None = None,
) -> MessagesOutcome:
    """Tickets and bulletin posts for the ERP's messages, and each message's portal status.

    Decided in this order (the first that applies gives the status text):

    1. object not released: ``Objekt nicht freigegeben``, nothing wanted;
    2. unknown message type (skip), ``SPERRE``: ``Meldungsart gesperrt``;
    3. ``rules.teams`` set and the message's team not among them (a message of no team passes):
       ``Team nicht freigegeben``;
    4. eligible: the portal already holds it (so a close reaches it), or its object is in
       ``full_history_objects`` (every status and age), or it is ``OFFEN`` and created (Berlin
       date) on or after ``rules.messages_since``; else ``abgeschlossen`` / ``storniert`` /
       ``zu alt (vor DD.MM.YYYY)``;
    5. ``PINNWAND``: a post ``{id, propertyId, title, text, createdAt}`` while ``OFFEN``
       (``Pinnwand``); once closed or cancelled no post is wanted (the engine archives the one
       the portal holds: ``Pinnwand entfernt``);
    6. ticket types changed in the portal (``changed_types``): not transferred (skip naming the type);
    7. ``OBJEKTMELDUNG``: a ticket visible to the property (``contactId`` the reporter if a portal
       contact, else ``None``); ``EINZELMELDUNG``: visible to the reporter alone, so a message
       without a person, or whose person is not a portal contact, is not transferred (skip).

    A ticket's status is ``open`` for ``OFFEN``, ``closed`` for ``ABGESCHLOSSEN``/``STORNIERT``
    (``übertragen (offen)`` / ``übertragen (erledigt)``). Skips are only what a person must act
    on; the usual "not transferred" cases (locked type, team, age, closed) are only statuses.

    Args:
        at_portal_tickets / at_portal_posts: reference ids the portal holds (the state store).
        changed_types: code -> reason, from :func:`build_ticket_types`.
        portal_units: units the portal holds; a ticket's unit not among them is sent without
            ``unitId`` (it still belongs to the property). ``None``: ``unit_no`` is sent as is.
    """
    outcome = MessagesOutcome()
    types: dict[str, tuple[str, str]] = {}
    for type_row in message_types_rows:
        code = _ref(type_row.get("code"))
        if code:
            types[code] = (
                (_text(type_row.get("portal_mode")) or "").upper(),
                _text(type_row.get("name")) or code,
            )

    for row in messages_rows:
        message_id = int(row["message_id"])
        ref = ticket_ref(row)
        post_ref = str(message_id)
        object_no = _ref(row.get("object_no"))
        if object_no is None or object_no not in released_objects:
            outcome.status[message_id] = OBJECT_NOT_RELEASED
            continue
        label = f"message {message_id} ({_text(row.get('subject')) or 'no subject'}, object {object_no})"

        def skip(rule: str, status: str, reason: str, message_id: int = message_id) -> None:
            outcome.status[message_id] = status
            outcome.skipped.append(Skip("tickets", str(message_id), rule, reason))

        type_code = _ref(row.get("message_type")) or ""
        if type_code not in types:
            skip(
                "message_type_unknown",
                TYPE_UNKNOWN,
                f"{label}: message type {type_code!r} is not among the ERP's message types; correct the "
                "message type in the ERP",
            )
            continue
        mode, type_name = types[type_code]
        if mode == SPERRE:
            outcome.status[message_id] = TYPE_LOCKED
            continue
        if mode not in TICKET_MODES and mode != PINNWAND:
            skip(
                "message_type_mode_unknown",
                TYPE_UNKNOWN,
                f"{label}: message type {type_code} has portal mode {mode!r}, which is none of SPERRE, "
                "PINNWAND, OBJEKTMELDUNG, EINZELMELDUNG; correct the message type in the ERP",
            )
            continue
        raw_team: Any = row.get("team_id")
        team = None if _missing(raw_team) else int(raw_team)
        if rules.teams and team is not None and team not in rules.teams:
            outcome.status[message_id] = TEAM_NOT_RELEASED
            continue
        status = (_text(row.get("status")) or "").upper()
        if status not in TICKET_STATUS:
            skip(
                "message_status_unknown",
                f"Status unbekannt ({status or 'leer'})",
                f"{label}: status {status!r} is none of OFFEN, ABGESCHLOSSEN, STORNIERT; correct it in the ERP",
            )
            continue
        try:
            created = _instant(row.get("created_at"))
        except UnreadableDate:
            created = None
        if created is None:
            skip(
                "message_created_unreadable",
                DATE_UNREADABLE,
                f"{label}: the entry date {row.get('created_at')!r} is no timestamp; correct it in the ERP",
            )
            continue
        held = ref in at_portal_tickets if mode in TICKET_MODES else post_ref in at_portal_posts
        recent = created.astimezone(BERLIN).date() >= rules.messages_since
        if not (held or object_no in rules.full_history_objects or (status == OPEN and recent)):
            if status == CLOSED:
                outcome.status[message_id] = IS_CLOSED
            elif status == CANCELLED:
                outcome.status[message_id] = IS_CANCELLED
            else:
                outcome.status[message_id] = f"zu alt (vor {_german(rules.messages_since)})"
            continue
        title = _text(row.get("subject")) or f"Meldung {message_id}"
        body = row.get("body")
        text = body.strip() or None if isinstance(body, str) else None
        if mode == PINNWAND:
            if status == OPEN:
                outcome.posts[post_ref] = {
                    "id": post_ref,
                    "propertyId": object_no,
                    "title": title,
                    "text": text,
                    "createdAt": iso_utc(created),
                }
                outcome.status[message_id] = ON_BOARD
            elif held:
                outcome.status[message_id] = OFF_BOARD
            else:
                outcome.status[message_id] = IS_CLOSED if status == CLOSED else IS_CANCELLED
            continue
        if type_code in changed_types:
            skip(
                "message_type_changed_in_portal",
                TYPE_CHANGED,
                f"{label} is not transferred: {changed_types[type_code]}",
            )
            continue
        person = _ref(row.get("person_no"))
        if mode == EINZELMELDUNG:
            if person is None:
                skip(
                    "message_person_missing",
                    NO_PERSON,
                    f"{label} is of type {type_code} ({type_name}), visible to the reporting person alone, but "
                    "names no person; enter the person in the ERP message or use an object message type",
                )
                continue
            if person not in portal_contacts:
                skip(
                    "message_person_not_in_portal",
                    PERSON_NOT_IN_PORTAL,
                    f"{label} is for person {person}, who is not a portal contact; it is transferred once the "
                    "person is in the portal (see the person's own entry)",
                )
                continue
            contact: str | None = person
            visibility = "contact"
        else:
            contact = person if person in portal_contacts else None
            visibility = "property"
        unit = _ref(row.get("unit_no"))
        if unit is not None and portal_units is not None and unit not in portal_units:
            unit = None
        outcome.tickets[ref] = {
            "id": ref,
            "ticketTypeId": type_code,
            "propertyId": object_no,
            "unitId": unit,
            "contactId": contact,
            "visibility": visibility,
            "title": title,
            "description": text,
            "status": TICKET_STATUS[status],
            "createdAt": iso_utc(created),
        }
        outcome.ticket_refs[message_id] = ref
        outcome.status[message_id] = SENT_OPEN if status == OPEN else SENT_CLOSED
    return outcome


# --------------------------------------------------------------------------------------------
# comments (notes and orders)


def order_note(template: str, creditor: str, order_date: date, message_no: int | str) -> str:
    """The order note of ``template`` with ``[KREDITOR]``, ``[AUFTRAGSDATUM]`` (dd.mm.yyyy) and
    ``[MELDUNGSNUMMER]`` filled in."""
    return (
        template.replace("[KREDITOR]", creditor)
        .replace("[AUFTRAGSDATUM]", _german(order_date))
        .replace("[MELDUNGSNUMMER]", str(message_no))
    )


def build_comments(
    rules: ExchangeRules,
    notes_rows: Iterable[Mapping[str, Any]],
    orders_rows: Iterable[Mapping[str, Any]],
    tickets: Mapping[int, str],
    at_portal_comments: Collection[str],
    author: str = "Hausverwaltung",
) -> tuple[dict[str, dict[str, Any]], list[Skip]]:
    """Portal comments ``{id, ticketId, text, public: True, createdAt, author}`` for transferred tickets.

    - Public notes (``internal`` false; NULL or anything else counts as internal) become
      ``note-<note_id>``; internal notes never go over. A note carrying ``portal_comment_id``
      came from the portal and is never sent back.
    - An order becomes ``order-<order_id>`` with ``rules.order_note_template`` filled in
      (:func:`order_note`; the message number is the ERP's ``message_id``).
    - Only notes and orders of messages in ``tickets`` (message id -> ticket reference: the
      tickets wanted in this run); bulletin posts take no comments.
    - **Append-only**: a comment the portal already holds (its reference in
      ``at_portal_comments``) is left out of the records entirely: it is never sent again nor
      changed, whatever became of the note in the ERP (the portal refuses a changed comment).

    Returns:
        ``(records, skipped)``; skipped are notes and orders whose text or dates cannot be read.
    """
    records: dict[str, dict[str, Any]] = {}
    skipped: list[Skip] = []
    for row in notes_rows:
        message_id = int(row["message_id"])
        if message_id not in tickets or not _is_public(row.get("internal")):
            continue
        if _ref(row.get("portal_comment_id")) is not None:
            continue
        ref = f"note-{int(row['note_id'])}"
        if ref in at_portal_comments:
            continue
        raw = row.get("text")
        text = raw.strip() if isinstance(raw, str) else None
        try:
            created = _instant(row.get("created_at"))
        except UnreadableDate:
            created = None
        if not text or created is None:
            what = "has no text" if not text else f"has the unreadable entry date {row.get('created_at')!r}"
            skipped.append(
                Skip(
                    "comments",
                    ref,
                    "note_unreadable",
                    f"public note {row['note_id']} of message {message_id} {what}; correct it in the ERP",
                )
            )
            continue
        records[ref] = {
            "id": ref,
            "ticketId": tickets[message_id],
            "text": text,
            "public": True,
            "createdAt": iso_utc(created),
            "author": author,
        }
    for row in orders_rows:
        message_id = int(row["message_id"])
        if message_id not in tickets:
            continue
        ref = f"order-{int(row['order_id'])}"
        if ref in at_portal_comments:
            continue
        creditor = _text(row.get("creditor_name"))
        try:
            ordered = parse_date(row.get("order_date"))
            created = _instant(row.get("created_at"))
        except UnreadableDate as exc:
            ordered, created = None, None
            why = f"a date is unreadable ({exc})"
        else:
            why = "it has no order date" if ordered is None else "it names no creditor"
        if ordered is None or not creditor:
            skipped.append(
                Skip(
                    "comments",
                    ref,
                    "order_unreadable",
                    f"order {row['order_id']} of message {message_id}: {why}; no order note is sent until it is "
                    "corrected in the ERP",
                )
            )
            continue
        if created is None:
            created = datetime(ordered.year, ordered.month, ordered.day, tzinfo=BERLIN).astimezone(UTC)
        records[ref] = {
            "id": ref,
            "ticketId": tickets[message_id],
            "text": order_note(rules.order_note_template, creditor, ordered, message_id),
            "public": True,
            "createdAt": iso_utc(created),
            "author": author,
        }
    return records, skipped


# --------------------------------------------------------------------------------------------
# e-mails to contacts not registered in the portal


def _person_name(person: Mapping[str, Any]) -> str:
    name = " ".join(n for n in (_text(person.get("first_name")), _text(person.get("last_name"))) if n)
    return name or _text(person.get("company_name")) or ""


def build_emails(
    created: Iterable[tuple[str, Literal["ticket", "comment"], Mapping[str, Any]]],
    persons: Mapping[str, Mapping[str, Any]],
    registered: Mapping[str, bool],
    tickets_by_ref: Mapping[str, Mapping[str, Any]],
    message_numbers: Mapping[str, int | str] | None = None,
    enabled: bool = True,
) -> tuple[dict[str, dict[str, Any]], list[Skip]]:
    """E-mails ``{id, to, toName, subject, text}`` for tickets and comments just created in the portal,
    to their contact when that contact is not registered in the portal.

    - Only tickets visible to one contact (``visibility`` ``contact``) and comments on such
      tickets: a property ticket is for everyone in the property, so no one is e-mailed.
    - A registered contact (``registered[contact] is True``) reads it in the portal; a contact
      missing from ``registered`` counts as not registered.
    - Sent once: the reference is ``ticket-<ref>`` / ``comment-<ref>`` (the engine sends each
      reference once; the ``Message-ID`` derives from it).
    - A contact not registered without a usable e-mail address is skipped with the reason.

    Args:
        created: ``(ref, kind, payload)`` of each ticket or comment the portal confirmed created.
        persons: person number -> ERP person row (``email``, ``first_name``, ``last_name``,
            ``company_name``).
        tickets_by_ref: ticket reference -> ticket payload (a comment's ticket).
        message_numbers: ticket reference -> ERP message number (default: the reference).
        enabled: ``notify_unregistered_by_email``; false: no e-mails at all.
    """
    emails: dict[str, dict[str, Any]] = {}
    skipped: list[Skip] = []
    if not enabled:
        return emails, skipped
    numbers = message_numbers or {}
    for ref, kind, payload in created:
        ticket = payload if kind == "ticket" else tickets_by_ref.get(str(payload.get("ticketId")))
        if ticket is None or ticket.get("visibility") != "contact" or not ticket.get("contactId"):
            continue
        contact = str(ticket["contactId"])
        if registered.get(contact) is True:
            continue
        email_ref = f"{kind}-{ref}"
        person = persons.get(contact, {})
        address = _text(person.get("email"))
        if not address or not _EMAIL.match(address):
            skipped.append(
                Skip(
                    "emails",
                    email_ref,
                    "email_address_missing" if not address else "email_address_invalid",
                    f"person {contact} is not registered in the portal and "
                    + (
                        f"the e-mail address {address!r} is not usable"
                        if address
                        else "has no e-mail address"
                    )
                    + f", so the {kind} {ref} reaches them neither way; enter a valid address in the ERP person",
                )
            )
            continue
        name = _person_name(person)
        number = numbers.get(str(ticket["id"]), ticket["id"])
        title = ticket.get("title") or ""
        greeting = f"Guten Tag {name}," if name else "Guten Tag,"
        footer = (
            "Sie erhalten diese Nachricht per E-Mail, weil Sie im Mieterportal noch nicht registriert sind. "
            "Nach der Registrierung finden Sie Ihre Meldungen dort.\n\nIhre Hausverwaltung"
        )
        if kind == "ticket":
            subject = f"Ihre Meldung {number}: {title}"
            text = f"{greeting}\n\nzu Ihrer Meldung {number} „{title}“ wurde ein Vorgang angelegt."
            if ticket.get("description"):
                text += f"\n\n{ticket['description']}"
        else:
            subject = f"Neue Nachricht zu Ihrer Meldung {number}: {title}"
            text = f"{greeting}\n\nzu Ihrer Meldung {number} „{title}“ gibt es eine neue Nachricht:\n\n{payload.get('text')}"
        emails[email_ref] = {
            "id": email_ref,
            "to": address,
            "toName": name or None,
            "subject": subject,
            "text": f"{text}\n\n{footer}\n",
        }
    return emails, skipped


# --------------------------------------------------------------------------------------------
# portal -> ERP


def known_tickets(messages_rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Every ticket reference the ERP knows -> its message id: ``portal_ticket_id`` (tickets made in
    the portal) and ``str(message_id)`` (tickets hausflow sent)."""
    known: dict[str, int] = {}
    for row in messages_rows:
        message_id = int(row["message_id"])
        known[str(message_id)] = message_id
        portal_id = _ref(row.get("portal_ticket_id"))
        if portal_id:
            known[portal_id] = message_id
    return known


def inbound_messages(
    portal_tickets: Iterable[Mapping[str, Any]],
    portal_comments: Iterable[Mapping[str, Any]],
    known: Mapping[str, int],
    message_types_rows: Iterable[Mapping[str, Any]],
    erp_user: str,
    known_comment_ids: Collection[str] = (),
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Skip]]:
    """ERP messages and notes for what was written in the portal.

    - A ticket of ``origin`` ``portal`` the ERP does not know yet becomes a message: status
      ``OFFEN``, type = the ticket type, object / unit / person from the ticket,
      ``entered_by = erp_user``, ``portal_ticket_id`` = the portal's id. Tickets hausflow sent
      (origin ``erp``) are never taken back.
    - A public comment written in the portal becomes a public note (``internal`` false,
      ``portal_comment_id``). Internal portal comments never; comments hausflow wrote
      (``note-``/``order-``, origin ``erp``) never.
    - A comment's ``ticketId`` is resolved with ``known`` (see :func:`known_tickets`): a ticket
      made in the portal by its portal id, a ticket hausflow sent by ``str(message_id)``. A note
      of a ticket that becomes a message in this same batch has ``message_id`` ``None``: the
      writeback resolves it by ``portal_ticket_id`` after inserting the message.

    Returns:
        ``(new_messages, new_notes, skipped)``; rows in the ERP's column names. The writeback
        inserts them keyed by the portal ids (inserting again does nothing).
    """
    codes = {code for row in message_types_rows if (code := _ref(row.get("code")))}
    new_messages: list[dict[str, Any]] = []
    new_notes: list[dict[str, Any]] = []
    skipped: list[Skip] = []
    new_ids: set[str] = set()
    for ticket in portal_tickets:
        portal_id = _ref(ticket.get("id"))
        if not portal_id or ticket.get("origin") != "portal" or portal_id in known or portal_id in new_ids:
            continue
        type_code = _ref(ticket.get("ticketTypeId"))
        property_id = _ref(ticket.get("propertyId"))
        try:
            created = _instant(ticket.get("createdAt"))
        except UnreadableDate:
            created = None
        problem = None
        if type_code not in codes:
            problem = f"its ticket type {type_code!r} is no ERP message type"
        elif not property_id:
            problem = "it names no property"
        elif created is None:
            problem = f"its creation time {ticket.get('createdAt')!r} is unreadable"
        if problem:
            skipped.append(
                Skip(
                    "inbound",
                    portal_id,
                    "portal_ticket_unreadable",
                    f"portal ticket {portal_id} ({ticket.get('title')!r}) is not entered in the ERP: {problem}; "
                    "correct it in the portal or add the message type in the ERP",
                )
            )
            continue
        new_ids.add(portal_id)
        new_messages.append(
            {
                "portal_ticket_id": portal_id,
                "object_no": property_id,
                "unit_no": _ref(ticket.get("unitId")),
                "person_no": _ref(ticket.get("contactId")),
                "message_type": type_code,
                "status": OPEN,
                "subject": _text(ticket.get("title")) or "Meldung aus dem Portal",
                "body": (ticket.get("description") or "").strip() or None,
                "created_at": created,
                "entered_by": erp_user,
            }
        )
    seen: set[str] = set(known_comment_ids)
    for comment in portal_comments:
        comment_id = _ref(comment.get("id"))
        if not comment_id or comment_id in seen or comment.get("public") is not True:
            continue
        if comment.get("origin", "portal") != "portal" or comment_id.startswith(("note-", "order-")):
            continue
        ticket_id = _ref(comment.get("ticketId"))
        try:
            created = _instant(comment.get("createdAt"))
        except UnreadableDate:
            created = None
        text = (comment.get("text") or "").strip()
        problem = None
        if not ticket_id or (ticket_id not in known and ticket_id not in new_ids):
            problem = f"its ticket {ticket_id} is not in the ERP (see the ticket's own entry)"
        elif not text:
            problem = "it has no text"
        elif created is None:
            problem = f"its creation time {comment.get('createdAt')!r} is unreadable"
        if problem:
            skipped.append(
                Skip(
                    "inbound",
                    comment_id,
                    "portal_comment_unreadable",
                    f"portal comment {comment_id} is not entered in the ERP: {problem}",
                )
            )
            continue
        seen.add(comment_id)
        new_notes.append(
            {
                "portal_comment_id": comment_id,
                "portal_ticket_id": ticket_id,
                "message_id": known.get(ticket_id or ""),
                "internal": False,
                "text": text,
                "created_at": created,
                "entered_by": erp_user,
            }
        )
    return new_messages, new_notes, skipped


def portal_changes(
    portal_tickets: Iterable[Mapping[str, Any]], messages_rows: Iterable[Mapping[str, Any]]
) -> dict[int, tuple[datetime, str]]:
    """The last change made in the portal per ERP message (``portal_changed_at``, ``portal_change``).

    From each ticket's ``lastPortalActivity`` ``{at, what}``, matched to its message by ticket
    reference (``portal_ticket_id`` or ``str(message_id)``), and only where it is later than the
    message's ``modified_at`` (a message changed in the ERP since has seen it: the writeback
    clears the columns of messages not in the result). A message without ``modified_at`` takes
    every change.
    """
    rows = {ticket_ref(row): row for row in messages_rows}
    changes: dict[int, tuple[datetime, str]] = {}
    for ticket in portal_tickets:
        activity = ticket.get("lastPortalActivity")
        row = rows.get(str(ticket.get("id")))
        if row is None or not isinstance(activity, Mapping):
            continue
        try:
            at = _instant(activity.get("at"))
            modified = _instant(row.get("modified_at"))
        except UnreadableDate:
            continue
        what = _text(activity.get("what"))
        if at is None or not what:
            continue
        if modified is not None and at <= modified:
            continue
        changes[int(row["message_id"])] = (at, what)
    return changes
