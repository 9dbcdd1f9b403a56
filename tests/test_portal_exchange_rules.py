"""Rule tables for the portal exchange of seed 001: documents, messages, notes (pure functions)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from config.settings import PortalSettings
from tasks.portal_exchange_rules import (
    ExchangeRules,
    FileFacts,
    Upload,
    build_comments,
    build_documents,
    build_emails,
    build_messages,
    build_ticket_types,
    inbound_messages,
    known_tickets,
    portal_changes,
)

TODAY = date(2026, 11, 21)
RULES = ExchangeRules.from_settings(
    PortalSettings(
        document_types=["ABRECHNUNG", "PROTOKOLL"],
        document_types_without_time_filter=["MIETVERTRAG"],
        document_years_back=1,
        max_document_mb=100,
        message_years_back=1,
        full_history_objects=["2002"],
        teams=[],
    ),
    TODAY,
)
TEAMS = ExchangeRules.from_settings(PortalSettings(teams=[7]), TODAY)
RELEASED = {"1001", "2002"}
CONTACTS = {"P1", "P2"}
UNITS = {"1001-01"}
PDF = FileFacts("/docs/a.pdf", 2048, "ab" * 32)


def test_from_settings_cut_offs() -> None:
    assert RULES.documents_since == date(2025, 1, 1)
    assert RULES.messages_since == date(2025, 1, 1)
    assert RULES.max_document_bytes == 100 * 1024 * 1024
    two = ExchangeRules.from_settings(PortalSettings(document_years_back=2, message_years_back=0), TODAY)
    assert two.documents_since == date(2024, 1, 1)
    assert two.messages_since == date(2026, 1, 1)


# ---------------------------------------------------------------------------------------------
# documents


def doc(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "document_id": 1,
        "object_no": "1001",
        "unit_no": None,
        "person_no": None,
        "doc_type": "ABRECHNUNG",
        "title": "Nebenkostenabrechnung 2025",
        "file_name": "nk2025.pdf",
        "size_bytes": 2048,
        "content_path": "a.pdf",
        "document_date": date(2026, 3, 1),
        "source": "ERP",
        "recipient_type": None,
        "recipient_id": None,
    }
    base.update(kw)
    return base


def dms(**kw: Any) -> dict[str, Any]:
    return doc(source="DMS", recipient_type="P", recipient_id="P1", **kw)


@pytest.mark.parametrize(
    ("case", "row", "facts", "converter", "expect"),
    [
        ("released type, recent: sent", doc(), PDF, True, "sent"),
        (
            "released type on 1 January of the cut-off year: sent",
            doc(document_date=date(2025, 1, 1)),
            PDF,
            True,
            "sent",
        ),
        (
            "released type on 31 December before: deleted",
            doc(document_date=date(2024, 12, 31)),
            PDF,
            True,
            "deleted",
        ),
        (
            "type without time filter, old: sent",
            doc(doc_type="MIETVERTRAG", document_date=date(2001, 5, 1)),
            PDF,
            True,
            "sent",
        ),
        ("type not released: deleted", doc(doc_type="MAHNUNG"), PDF, True, "deleted"),
        (
            "type not released, file missing: still only deleted",
            doc(doc_type="MAHNUNG"),
            None,
            True,
            "deleted",
        ),
        ("object not released: nothing", doc(object_no="3003"), PDF, True, "nothing"),
        (
            "object not released, type not released: nothing",
            doc(object_no="3003", doc_type="MAHNUNG"),
            PDF,
            True,
            "nothing",
        ),
        (
            "at the limit: sent",
            doc(),
            FileFacts("/docs/a.pdf", 100 * 1024 * 1024, "ab" * 32),
            True,
            "sent",
        ),
        (
            "one byte above the limit: skipped",
            doc(),
            FileFacts("/docs/a.pdf", 100 * 1024 * 1024 + 1, "ab" * 32),
            True,
            "skip:document_too_large:above the limit of 100 MB",
        ),
        (
            "file missing: skipped with the reason",
            doc(),
            FileFacts("/docs/a.pdf", None, None, "file not found: /docs/a.pdf"),
            True,
            "skip:document_file_unreadable:file not found",
        ),
        ("file not read at all: skipped", doc(), None, True, "skip:document_file_unreadable:not read"),
        ("DMS with all fields: sent to the person", dms(), PDF, True, "sent"),
        (
            "DMS without recipient type: skipped",
            dms() | {"recipient_type": None},
            PDF,
            True,
            "skip:dms_fields_missing:has no recipient type",
        ),
        (
            "DMS without object number: skipped",
            dms() | {"object_no": None},
            PDF,
            True,
            "skip:dms_fields_missing:has no object number",
        ),
        (
            "DMS without recipient id: skipped",
            dms() | {"recipient_id": None},
            PDF,
            True,
            "skip:dms_fields_missing:has no recipient id",
        ),
        (
            "DMS without all three: each named",
            doc(source="DMS", object_no=None),
            PDF,
            True,
            "skip:dms_fields_missing:no recipient type, no object number, no recipient id",
        ),
        (
            "DMS of an object not released, fields missing: nothing",
            dms() | {"object_no": "3003", "recipient_id": None},
            PDF,
            True,
            "nothing",
        ),
        (
            "ERP document without object: skipped",
            doc(object_no=None),
            PDF,
            True,
            "skip:document_object_missing:names no object",
        ),
        (
            "Word file with LibreOffice: converted",
            doc(file_name="brief.docx"),
            FileFacts("/docs/brief.docx", 900, "cd" * 32),
            True,
            "sent",
        ),
        (
            "Word file without LibreOffice: skipped, not sent unconverted",
            doc(file_name="brief.docx"),
            FileFacts("/docs/brief.docx", 900, "cd" * 32),
            False,
            "skip:converter_missing:not sent unconverted",
        ),
        (
            "OpenDocument without LibreOffice: skipped",
            doc(file_name="brief.odt"),
            FileFacts("/docs/brief.odt", 900, "cd" * 32),
            False,
            "skip:converter_missing:LibreOffice is not installed",
        ),
        (
            "PDF without LibreOffice: sent",
            doc(),
            PDF,
            False,
            "sent",
        ),
        (
            "file type the portal does not take: skipped",
            doc(file_name="plan.dwg"),
            FileFacts("/docs/plan.dwg", 900, "cd" * 32),
            True,
            "skip:document_file_type:does not take",
        ),
        (
            "person not a portal contact: skipped",
            doc(person_no="P9"),
            PDF,
            True,
            "skip:document_person_not_in_portal:person P9 is not a portal contact",
        ),
        (
            "unit not in the portal: skipped",
            doc(unit_no="1001-99"),
            PDF,
            True,
            "skip:document_unit_not_in_portal:unit 1001-99",
        ),
        (
            "unreadable date: skipped",
            doc(document_date="31.02.2026"),
            PDF,
            True,
            "skip:document_date_unreadable:is no date",
        ),
    ],
)
def test_document_rules(
    case: str, row: dict[str, Any], facts: FileFacts | None, converter: bool, expect: str
) -> None:
    files = {1: facts} if facts else {}
    records, uploads, skipped = build_documents(RULES, [row], RELEASED, files, CONTACTS, UNITS, converter)
    if expect == "nothing":
        assert (records, uploads, skipped) == ({}, {}, [])
    elif expect == "deleted":
        assert records == {"1": {"id": "1", "propertyId": "1001", "deleted": True}}
        assert uploads == {} and skipped == []
    elif expect == "sent":
        assert skipped == [] and records["1"]["deleted"] is False and "1" in uploads
        assert records["1"]["version"] == facts.version if facts else False
    else:
        _, rule, part = expect.split(":", 2)
        assert records == {} and uploads == {}
        assert [s.rule for s in skipped] == [rule]
        assert part in skipped[0].reason
        assert "(id 1)" in skipped[0].reason and skipped[0].ref_id == "1"


@pytest.mark.parametrize(
    ("case", "row", "unit_id", "contact_ids"),
    [
        ("person: that person's contact alone", doc(person_no="P1", unit_no="1001-01"), None, ["P1"]),
        ("unit: the unit's tenants", doc(unit_no="1001-01"), "1001-01", []),
        ("neither: the whole property", doc(), None, []),
        ("DMS person (P): the recipient", dms(), None, ["P1"]),
        (
            "DMS creditor (K): the whole property",
            doc(source="DMS", recipient_type="K", recipient_id="K7"),
            None,
            [],
        ),
    ],
)
def test_document_audience(
    case: str, row: dict[str, Any], unit_id: str | None, contact_ids: list[str]
) -> None:
    records, _, skipped = build_documents(RULES, [row], RELEASED, {1: PDF}, CONTACTS, UNITS, True)
    assert skipped == []
    assert (records["1"]["unitId"], records["1"]["contactIds"]) == (unit_id, contact_ids)


def test_document_payload_and_conversion() -> None:
    rows = [doc(), doc(document_id=2, file_name="Brief an Mieter.DOCX", title="Brief")]
    files = {1: PDF, 2: FileFacts("/docs/2.docx", 900, "cd" * 32)}
    records, uploads, _ = build_documents(RULES, rows, RELEASED, files, CONTACTS, UNITS, True)
    assert records["1"] == {
        "id": "1",
        "title": "Nebenkostenabrechnung 2025",
        "documentType": "ABRECHNUNG",
        "fileName": "nk2025.pdf",
        "mimeType": "application/pdf",
        "date": "2026-03-01",
        "propertyId": "1001",
        "unitId": None,
        "contactIds": [],
        "version": "ab" * 32,
        "size": 2048,
        "deleted": False,
    }
    assert uploads["1"] == Upload(
        "/docs/a.pdf", False, "application/pdf", "ab" * 32
    )  # sent as is: its digest
    assert records["2"]["fileName"] == "Brief an Mieter.pdf"
    assert records["2"]["mimeType"] == "application/pdf"
    assert uploads["2"] == Upload("/docs/2.docx", True, "application/pdf", None)  # the PDF is not made yet


@pytest.mark.parametrize(
    ("file_name", "mime"),
    [("a.pdf", "application/pdf"), ("a.JPG", "image/jpeg"), ("a.jpeg", "image/jpeg"), ("a.png", "image/png")],
)
def test_document_mime_types(file_name: str, mime: str) -> None:
    records, uploads, _ = build_documents(
        RULES, [doc(file_name=file_name)], RELEASED, {1: PDF}, CONTACTS, UNITS, False
    )
    assert records["1"]["mimeType"] == mime and uploads["1"].convert is False


def test_document_skip_names_title_and_id() -> None:
    _, _, skipped = build_documents(RULES, [doc(person_no="P9")], RELEASED, {1: PDF}, CONTACTS, UNITS, True)
    assert skipped[0].entity == "documents"
    assert "'Nebenkostenabrechnung 2025' (id 1)" in skipped[0].reason


# ---------------------------------------------------------------------------------------------
# ticket types


TYPES = [
    {"code": "SP", "name": "Intern", "portal_mode": "SPERRE"},
    {"code": "PW", "name": "Hausmitteilung", "portal_mode": "PINNWAND"},
    {"code": "OM", "name": "Objektmeldung", "portal_mode": "OBJEKTMELDUNG"},
    {"code": "EM", "name": "Schaden", "portal_mode": "EINZELMELDUNG"},
]


@pytest.mark.parametrize(
    ("case", "portal", "sent", "changed"),
    [
        ("not yet in the portal: sent locked", {}, {"OM", "EM"}, set()),
        ("portal holds it unchanged: sent", {"EM": {"id": "EM", "name": "Schaden"}}, {"OM", "EM"}, set()),
        (
            "edited in the portal: not sent, listed",
            {"EM": {"id": "EM", "name": "Schaden", "editedInPortal": True}},
            {"OM"},
            {"EM"},
        ),
        ("renamed in the portal: not sent, listed", {"EM": {"id": "EM", "name": "Defekt"}}, {"OM"}, {"EM"}),
    ],
)
def test_ticket_types(
    case: str, portal: dict[str, dict[str, Any]], sent: set[str], changed: set[str]
) -> None:
    records, changed_in_portal = build_ticket_types(TYPES, portal)
    assert set(records) == sent and set(changed_in_portal) == changed
    if "OM" in records:
        assert records["OM"] == {"id": "OM", "name": "Objektmeldung", "locked": True}
    for code in changed:
        assert code in changed_in_portal[code] and "changed in the portal" in changed_in_portal[code]


# ---------------------------------------------------------------------------------------------
# messages


def msg(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "message_id": 10,
        "object_no": "1001",
        "unit_no": "1001-01",
        "person_no": "P1",
        "message_type": "EM",
        "status": "OFFEN",
        "team_id": None,
        "subject": "Heizung defekt",
        "body": "Die Heizung im Bad\nbleibt kalt.",
        "created_at": datetime(2026, 3, 1, 8, 30, tzinfo=UTC),
        "modified_at": datetime(2026, 3, 1, 8, 30, tzinfo=UTC),
        "portal_ticket_id": None,
    }
    base.update(kw)
    return base


OLD = datetime(2024, 6, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("case", "row", "rules", "at_portal", "changed", "where", "status", "skip_rule"),
    [
        (
            "open, recent, single: ticket to the person",
            msg(),
            RULES,
            set(),
            {},
            "ticket",
            "übertragen (offen)",
            None,
        ),
        (
            "open, created 1 January 00:30 Berlin (31.12. in UTC): recent",
            msg(created_at=datetime(2024, 12, 31, 23, 30, tzinfo=UTC)),
            RULES,
            set(),
            {},
            "ticket",
            "übertragen (offen)",
            None,
        ),
        (
            "open, created 31 December 23:30 Berlin: too old",
            msg(created_at=datetime(2024, 12, 31, 22, 30, tzinfo=UTC)),
            RULES,
            set(),
            {},
            None,
            "zu alt (vor 01.01.2025)",
            None,
        ),
        ("open, old: too old", msg(created_at=OLD), RULES, set(), {}, None, "zu alt (vor 01.01.2025)", None),
        (
            "closed, recent: not sent",
            msg(status="ABGESCHLOSSEN"),
            RULES,
            set(),
            {},
            None,
            "abgeschlossen",
            None,
        ),
        ("cancelled, recent: not sent", msg(status="STORNIERT"), RULES, set(), {}, None, "storniert", None),
        (
            "closed, already at the portal: sent closed",
            msg(status="ABGESCHLOSSEN"),
            RULES,
            {"10"},
            {},
            "ticket",
            "übertragen (erledigt)",
            None,
        ),
        (
            "cancelled and old, already at the portal: sent closed",
            msg(status="STORNIERT", created_at=OLD),
            RULES,
            {"10"},
            {},
            "ticket",
            "übertragen (erledigt)",
            None,
        ),
        (
            "full history object: closed and old still go over",
            msg(object_no="2002", status="ABGESCHLOSSEN", created_at=OLD),
            RULES,
            set(),
            {},
            "ticket",
            "übertragen (erledigt)",
            None,
        ),
        (
            "full history object: open and old",
            msg(object_no="2002", created_at=OLD),
            RULES,
            set(),
            {},
            "ticket",
            "übertragen (offen)",
            None,
        ),
        (
            "object not released",
            msg(object_no="3003"),
            RULES,
            set(),
            {},
            None,
            "Objekt nicht freigegeben",
            None,
        ),
        ("teams set, own team: sent", msg(team_id=7), TEAMS, set(), {}, "ticket", "übertragen (offen)", None),
        (
            "teams set, no team: sent",
            msg(team_id=None),
            TEAMS,
            set(),
            {},
            "ticket",
            "übertragen (offen)",
            None,
        ),
        (
            "teams set, other team: not sent",
            msg(team_id=8),
            TEAMS,
            set(),
            {},
            None,
            "Team nicht freigegeben",
            None,
        ),
        ("no teams set: every team", msg(team_id=8), RULES, set(), {}, "ticket", "übertragen (offen)", None),
        ("type SPERRE: never", msg(message_type="SP"), RULES, set(), {}, None, "Meldungsart gesperrt", None),
        (
            "type SPERRE, full history: never",
            msg(message_type="SP", object_no="2002"),
            RULES,
            set(),
            {},
            None,
            "Meldungsart gesperrt",
            None,
        ),
        ("PINNWAND open: post", msg(message_type="PW"), RULES, set(), {}, "post", "Pinnwand", None),
        (
            "PINNWAND closed, on the board: removed",
            msg(message_type="PW", status="ABGESCHLOSSEN"),
            RULES,
            {"10"},
            {},
            None,
            "Pinnwand entfernt",
            None,
        ),
        (
            "PINNWAND cancelled, on the board: removed",
            msg(message_type="PW", status="STORNIERT"),
            RULES,
            {"10"},
            {},
            None,
            "Pinnwand entfernt",
            None,
        ),
        (
            "PINNWAND closed, never posted: not sent",
            msg(message_type="PW", status="ABGESCHLOSSEN"),
            RULES,
            set(),
            {},
            None,
            "abgeschlossen",
            None,
        ),
        (
            "OBJEKTMELDUNG: property ticket",
            msg(message_type="OM"),
            RULES,
            set(),
            {},
            "ticket",
            "übertragen (offen)",
            None,
        ),
        (
            "OBJEKTMELDUNG without person: property ticket all the same",
            msg(message_type="OM", person_no=None),
            RULES,
            set(),
            {},
            "ticket",
            "übertragen (offen)",
            None,
        ),
        (
            "EINZELMELDUNG without person: not sent",
            msg(person_no=None),
            RULES,
            set(),
            {},
            None,
            "keine Person zugeordnet",
            "message_person_missing",
        ),
        (
            "EINZELMELDUNG, person not a portal contact: not sent",
            msg(person_no="P9"),
            RULES,
            set(),
            {},
            None,
            "Person nicht im Portal",
            "message_person_not_in_portal",
        ),
        (
            "type changed in the portal: not sent",
            msg(),
            RULES,
            set(),
            {"EM": "message type EM ('Schaden') was changed in the portal"},
            None,
            "Meldungsart im Portal geändert",
            "message_type_changed_in_portal",
        ),
        (
            "unknown type: not sent",
            msg(message_type="XX"),
            RULES,
            set(),
            {},
            None,
            "Meldungsart unbekannt",
            "message_type_unknown",
        ),
    ],
)
def test_message_rules(
    case: str,
    row: dict[str, Any],
    rules: ExchangeRules,
    at_portal: set[str],
    changed: dict[str, str],
    where: str | None,
    status: str,
    skip_rule: str | None,
) -> None:
    posts_at_portal = at_portal if row["message_type"] == "PW" else set()
    out = build_messages(rules, [row], TYPES, RELEASED, at_portal, posts_at_portal, changed, CONTACTS)
    assert out.status == {10: status}
    assert set(out.tickets) == ({"10"} if where == "ticket" else set())
    assert set(out.posts) == ({"10"} if where == "post" else set())
    assert [s.rule for s in out.skipped] == ([skip_rule] if skip_rule else [])
    if skip_rule:
        assert "message 10" in out.skipped[0].reason
    if skip_rule == "message_type_changed_in_portal":
        assert "EM" in out.skipped[0].reason


def test_ticket_and_post_payloads() -> None:
    rows = [
        msg(),
        msg(message_id=11, message_type="OM", person_no="P9", status="ABGESCHLOSSEN"),
        msg(message_id=12, message_type="PW", created_at=datetime(2026, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)),
        msg(message_id=13, portal_ticket_id="pt-5"),
    ]
    out = build_messages(RULES, rows, TYPES, RELEASED, {"11"}, set(), {}, CONTACTS)
    assert out.tickets["10"] == {
        "id": "10",
        "ticketTypeId": "EM",
        "propertyId": "1001",
        "unitId": "1001-01",
        "contactId": "P1",
        "visibility": "contact",
        "title": "Heizung defekt",
        "description": "Die Heizung im Bad\nbleibt kalt.",
        "status": "open",
        "createdAt": "2026-03-01T08:30:00.000Z",
    }
    assert out.tickets["11"]["visibility"] == "property"
    assert out.tickets["11"]["contactId"] is None  # P9 is no portal contact: the ticket is the property's
    assert out.tickets["11"]["status"] == "closed"
    assert out.posts["12"] == {
        "id": "12",
        "propertyId": "1001",
        "title": "Heizung defekt",
        "text": "Die Heizung im Bad\nbleibt kalt.",
        "createdAt": "2026-03-01T08:30:15.123Z",
    }
    assert "pt-5" in out.tickets and out.ticket_refs == {10: "10", 11: "11", 13: "pt-5"}


def test_naive_created_at_is_utc() -> None:
    out = build_messages(
        RULES, [msg(created_at="2026-03-01 08:30:00")], TYPES, RELEASED, set(), set(), {}, CONTACTS
    )
    assert out.tickets["10"]["createdAt"] == "2026-03-01T08:30:00.000Z"


# ---------------------------------------------------------------------------------------------
# comments


def note(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "note_id": 5,
        "message_id": 10,
        "internal": False,
        "text": "Der Handwerker kommt am Montag.",
        "created_at": datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
        "portal_comment_id": None,
    }
    base.update(kw)
    return base


ORDER = {
    "order_id": 3,
    "message_id": 10,
    "creditor_name": "Heizung Müller GmbH",
    "order_date": date(2026, 3, 4),
    "created_at": datetime(2026, 3, 4, 10, 0, tzinfo=UTC),
}


@pytest.mark.parametrize(
    ("case", "notes", "orders", "at_portal", "refs"),
    [
        ("public note of a transferred ticket: comment", [note()], [], set(), {"note-5"}),
        ("internal note: never", [note(internal=True)], [], set(), set()),
        ("internal flag NULL: counts as internal", [note(internal=None)], [], set(), set()),
        ("note from the portal: never sent back", [note(portal_comment_id="pc-1")], [], set(), set()),
        ("note of a message not transferred: nothing", [note(message_id=99)], [], set(), set()),
        ("append-only: already at the portal, not re-sent", [note(text="changed")], [], {"note-5"}, set()),
        ("order: order note", [], [ORDER], set(), {"order-3"}),
        ("order note already at the portal: not re-sent", [], [ORDER], {"order-3"}, set()),
        ("order of a message not transferred: nothing", [], [ORDER | {"message_id": 99}], set(), set()),
    ],
)
def test_comment_rules(
    case: str, notes: list[dict[str, Any]], orders: list[dict[str, Any]], at_portal: set[str], refs: set[str]
) -> None:
    records, skipped = build_comments(RULES, notes, orders, {10: "10"}, at_portal)
    assert set(records) == refs and skipped == []


def test_comment_payloads_and_order_template() -> None:
    records, _ = build_comments(RULES, [note()], [ORDER], {10: "pt-5"}, set())
    assert records["note-5"] == {
        "id": "note-5",
        "ticketId": "pt-5",
        "text": "Der Handwerker kommt am Montag.",
        "public": True,
        "createdAt": "2026-03-02T09:00:00.000Z",
        "author": "Hausverwaltung",
    }
    assert (
        records["order-3"]["text"] == "Ihre Meldung 10 wurde am 04.03.2026 an Heizung Müller GmbH beauftragt."
    )
    assert records["order-3"]["ticketId"] == "pt-5" and records["order-3"]["public"] is True


def test_order_without_creditor_is_skipped() -> None:
    records, skipped = build_comments(RULES, [], [ORDER | {"creditor_name": None}], {10: "10"}, set())
    assert records == {} and skipped[0].rule == "order_unreadable" and "order 3" in skipped[0].reason


# ---------------------------------------------------------------------------------------------
# e-mails


PERSONS = {
    "P1": {"person_no": "P1", "first_name": "Anna", "last_name": "Schmidt", "email": "anna@example.de"},
    "P2": {"person_no": "P2", "company_name": "Bäckerei Korn", "email": "kein-at-zeichen"},
    "P3": {"person_no": "P3", "first_name": "Otto", "last_name": "Ohne", "email": None},
}
TICKET_P1 = {
    "id": "10",
    "visibility": "contact",
    "contactId": "P1",
    "title": "Heizung defekt",
    "description": "kalt",
}
TICKET_P2 = TICKET_P1 | {"id": "11", "contactId": "P2"}
TICKET_P3 = TICKET_P1 | {"id": "12", "contactId": "P3"}
TICKET_ALL = TICKET_P1 | {"id": "13", "visibility": "property"}
TICKETS = {t["id"]: t for t in (TICKET_P1, TICKET_P2, TICKET_P3, TICKET_ALL)}


@pytest.mark.parametrize(
    ("case", "created", "registered", "emails", "skip_rule"),
    [
        (
            "ticket, contact not registered, with e-mail: e-mailed",
            [("10", "ticket", TICKET_P1)],
            {},
            {"ticket-10"},
            None,
        ),
        (
            "ticket, contact registered: not e-mailed",
            [("10", "ticket", TICKET_P1)],
            {"P1": True},
            set(),
            None,
        ),
        (
            "ticket, contact explicitly not registered: e-mailed",
            [("10", "ticket", TICKET_P1)],
            {"P1": False},
            {"ticket-10"},
            None,
        ),
        ("property ticket: never e-mailed", [("13", "ticket", TICKET_ALL)], {}, set(), None),
        (
            "comment on a contact ticket: e-mailed",
            [("note-5", "comment", {"id": "note-5", "ticketId": "10", "text": "Montag"})],
            {},
            {"comment-note-5"},
            None,
        ),
        (
            "comment on a property ticket: not e-mailed",
            [("note-6", "comment", {"id": "note-6", "ticketId": "13", "text": "Montag"})],
            {},
            set(),
            None,
        ),
        ("invalid address: skipped", [("11", "ticket", TICKET_P2)], {}, set(), "email_address_invalid"),
        ("no address: skipped", [("12", "ticket", TICKET_P3)], {}, set(), "email_address_missing"),
    ],
)
def test_email_rules(
    case: str,
    created: list[Any],
    registered: dict[str, bool],
    emails: set[str],
    skip_rule: str | None,
) -> None:
    out, skipped = build_emails(created, PERSONS, registered, TICKETS)
    assert set(out) == emails
    assert [s.rule for s in skipped] == ([skip_rule] if skip_rule else [])


def test_email_payload() -> None:
    out, _ = build_emails(
        [("10", "ticket", TICKET_P1), ("note-5", "comment", {"ticketId": "10", "text": "Montag 8 Uhr"})],
        PERSONS,
        {},
        TICKETS,
    )
    mail = out["ticket-10"]
    assert mail["id"] == "ticket-10" and mail["to"] == "anna@example.de" and mail["toName"] == "Anna Schmidt"
    assert "Meldung 10" in mail["subject"] and "Heizung defekt" in mail["subject"]
    assert mail["text"].startswith("Guten Tag Anna Schmidt,") and "nicht registriert" in mail["text"]
    assert (
        "Montag 8 Uhr" in out["comment-note-5"]["text"] and "Meldung 10" in out["comment-note-5"]["subject"]
    )


def test_emails_off() -> None:
    assert build_emails([("10", "ticket", TICKET_P1)], PERSONS, {}, TICKETS, enabled=False) == ({}, [])


# ---------------------------------------------------------------------------------------------
# portal -> ERP


def portal_ticket(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "pt-1",
        "ticketTypeId": "EM",
        "propertyId": "1001",
        "unitId": "1001-01",
        "contactId": "P1",
        "visibility": "contact",
        "title": "Fenster klemmt",
        "description": "Im Schlafzimmer.",
        "status": "open",
        "createdAt": "2026-03-05T07:00:00.000Z",
        "origin": "portal",
    }
    base.update(kw)
    return base


def portal_comment(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "pc-1",
        "ticketId": "pt-1",
        "text": "Danke!",
        "public": True,
        "createdAt": "2026-03-06T07:00:00.000Z",
        "origin": "portal",
    }
    base.update(kw)
    return base


KNOWN = known_tickets([msg(), msg(message_id=13, portal_ticket_id="pt-9")])


@pytest.mark.parametrize(
    ("case", "tickets", "comments", "messages", "notes"),
    [
        ("new portal ticket: new message", [portal_ticket()], [], ["pt-1"], []),
        (
            "ticket hausflow sent (origin erp): never taken back",
            [portal_ticket(id="10", origin="erp")],
            [],
            [],
            [],
        ),
        ("portal ticket the ERP holds already: not again", [portal_ticket(id="pt-9")], [], [], []),
        (
            "public comment on a new portal ticket: note",
            [portal_ticket()],
            [portal_comment()],
            ["pt-1"],
            [("pc-1", None)],
        ),
        (
            "public comment on a ticket hausflow sent: note of that message",
            [],
            [portal_comment(ticketId="10")],
            [],
            [("pc-1", 10)],
        ),
        (
            "public comment on a known portal ticket: note",
            [],
            [portal_comment(ticketId="pt-9")],
            [],
            [("pc-1", 13)],
        ),
        ("internal portal comment: never", [], [portal_comment(ticketId="10", public=False)], [], []),
        (
            "comment hausflow wrote: never taken back",
            [],
            [portal_comment(id="note-5", ticketId="10", origin="erp")],
            [],
            [],
        ),
    ],
)
def test_inbound_rules(
    case: str,
    tickets: list[dict[str, Any]],
    comments: list[dict[str, Any]],
    messages: list[str],
    notes: list[tuple[str, int | None]],
) -> None:
    new_messages, new_notes, skipped = inbound_messages(tickets, comments, KNOWN, TYPES, "999")
    assert [m["portal_ticket_id"] for m in new_messages] == messages
    assert [(n["portal_comment_id"], n["message_id"]) for n in new_notes] == notes
    assert skipped == []


def test_inbound_rows() -> None:
    new_messages, new_notes, _ = inbound_messages([portal_ticket()], [portal_comment()], KNOWN, TYPES, "042")
    assert new_messages == [
        {
            "portal_ticket_id": "pt-1",
            "object_no": "1001",
            "unit_no": "1001-01",
            "person_no": "P1",
            "message_type": "EM",
            "status": "OFFEN",
            "subject": "Fenster klemmt",
            "body": "Im Schlafzimmer.",
            "created_at": datetime(2026, 3, 5, 7, 0, tzinfo=UTC),
            "entered_by": "042",
        }
    ]
    assert new_notes[0] | {} == {
        "portal_comment_id": "pc-1",
        "portal_ticket_id": "pt-1",
        "message_id": None,
        "internal": False,
        "text": "Danke!",
        "created_at": datetime(2026, 3, 6, 7, 0, tzinfo=UTC),
        "entered_by": "042",
    }


@pytest.mark.parametrize(
    ("case", "ticket", "comment", "rule"),
    [
        ("unknown ticket type", portal_ticket(ticketTypeId="ZZ"), None, "portal_ticket_unreadable"),
        (
            "comment of a ticket the ERP does not know",
            None,
            portal_comment(ticketId="pt-77"),
            "portal_comment_unreadable",
        ),
    ],
)
def test_inbound_skips(
    case: str, ticket: dict[str, Any] | None, comment: dict[str, Any] | None, rule: str
) -> None:
    _, _, skipped = inbound_messages(
        [ticket] if ticket else [], [comment] if comment else [], KNOWN, TYPES, "999"
    )
    assert [s.rule for s in skipped] == [rule]


@pytest.mark.parametrize(
    ("case", "activity_at", "modified_at", "expected"),
    [
        (
            "portal change after the ERP's last change: shown",
            "2026-03-07T10:00:00Z",
            datetime(2026, 3, 1, tzinfo=UTC),
            True,
        ),
        ("ERP changed since: cleared", "2026-03-07T10:00:00Z", datetime(2026, 3, 8, tzinfo=UTC), False),
        ("same instant: cleared", "2026-03-07T10:00:00Z", datetime(2026, 3, 7, 10, tzinfo=UTC), False),
        ("message never modified: shown", "2026-03-07T10:00:00Z", None, True),
    ],
)
def test_portal_changes(case: str, activity_at: str, modified_at: datetime | None, expected: bool) -> None:
    tickets = [{"id": "10", "lastPortalActivity": {"at": activity_at, "what": "Kommentar"}}]
    changes = portal_changes(tickets, [msg(modified_at=modified_at)])
    if expected:
        assert changes == {10: (datetime(2026, 3, 7, 10, tzinfo=UTC), "Kommentar")}
    else:
        assert changes == {}


def test_portal_changes_by_portal_ticket_id() -> None:
    tickets = [{"id": "pt-9", "lastPortalActivity": {"at": "2026-03-07T10:00:00Z", "what": "neues Ticket"}}]
    changes = portal_changes(tickets, [msg(message_id=13, portal_ticket_id="pt-9", modified_at=None)])
    assert changes == {13: (datetime(2026, 3, 7, 10, tzinfo=UTC), "neues Ticket")}
