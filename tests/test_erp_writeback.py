"""hausflow's writes into the ERP: exactly once, all or nothing, safe with concurrent callers, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, exc, func, insert, select, update

from connectors.erp import schema as s
from connectors.erp.database import create_erp_schema, make_engine
from connectors.erp.writeback import (
    EnteredComment,
    EnteredTicket,
    PortalChange,
    PortalComment,
    PortalTicket,
    WritebackError,
    enter_portal_comments,
    enter_portal_tickets,
    record_portal_changes,
    record_portal_status,
    reset_portal_changes,
)

USER = "999"
T0 = datetime(2025, 6, 10, 8, 0, tzinfo=UTC)
ERP_MESSAGES = 3  # messages made in the ERP before any portal ticket


def _seed(engine: Engine) -> None:
    """The smallest ERP the writes need: one object, unit, person, the message types, three ERP messages."""
    create_erp_schema(engine)
    with engine.begin() as conn:
        conn.execute(insert(s.persons), [{"person_no": "P1", "person_type": "MIETER", "last_name": "Müller"}])
        conn.execute(insert(s.objects), [{"object_no": "1001", "name": "Lindenstraße 5"}])
        conn.execute(insert(s.units), [{"unit_no": "1001-001", "object_no": "1001", "name": "EG links"}])
        conn.execute(
            insert(s.message_types),
            [
                {"code": "SCHADEN", "name": "Schadensmeldung", "portal_mode": "EINZELMELDUNG"},
                {"code": "OBJEKT", "name": "Objektmeldung", "portal_mode": "OBJEKTMELDUNG"},
            ],
        )
        conn.execute(
            insert(s.messages),
            [
                {
                    "message_id": i,
                    "object_no": "1001",
                    "message_type": "OBJEKT",
                    "status": "OFFEN",
                    "subject": f"ERP-Meldung {i}",
                    "created_at": T0 - timedelta(days=30),
                    "modified_at": T0 - timedelta(days=i),
                }
                for i in range(1, ERP_MESSAGES + 1)
            ],
        )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def erp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A small ERP on SQLite, and on its own PostgreSQL database (made and dropped per test)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/erp.sqlite"
    else:
        url = request.getfixturevalue("pg_database")()
    engine = make_engine(url)
    _seed(engine)
    yield engine
    engine.dispose()


def _ticket(n: int, **changes: Any) -> PortalTicket:
    values: dict[str, Any] = {
        "portal_ticket_id": f"t-{n:04d}",
        "object_no": "1001",
        "message_type": "SCHADEN",
        "subject": f"Wasserhahn tropft ({n})",
        "created_at": T0 + timedelta(minutes=n),
        "unit_no": "1001-001",
        "person_no": "P1",
        "body": "Seit gestern tropft der Wasserhahn in der Küche.",
    }
    values.update(changes)
    return PortalTicket(**values)


def _rows(engine: Engine, table: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(table).order_by(*table.primary_key.columns))]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_tickets_are_entered_once_and_a_retry_returns_them(erp: Engine) -> None:
    tickets = [_ticket(1), _ticket(2, unit_no=None, person_no=None, message_type="OBJEKT")]
    first = enter_portal_tickets(erp, tickets, USER)
    assert [(e.portal_ticket_id, e.created) for e in first] == [("t-0001", True), ("t-0002", True)]
    assert sorted(e.message_id for e in first) == [ERP_MESSAGES + 1, ERP_MESSAGES + 2]
    again = enter_portal_tickets(erp, [*tickets, _ticket(3)], USER)
    assert again[:2] == [EnteredTicket(e.portal_ticket_id, e.message_id, False) for e in first]
    assert again[2].created and again[2].message_id == ERP_MESSAGES + 3
    assert _count(erp, s.messages) == ERP_MESSAGES + 3
    row = next(r for r in _rows(erp, s.messages) if r["portal_ticket_id"] == "t-0001")
    assert row["status"] == "OFFEN" and row["entered_by"] == USER and row["message_type"] == "SCHADEN"
    assert (row["object_no"], row["unit_no"], row["person_no"]) == ("1001", "1001-001", "P1")
    assert _utc(row["created_at"]) == _utc(row["modified_at"]) == T0 + timedelta(minutes=1)
    assert row["portal_status"] is None and row["portal_changed_at"] is None


def test_a_ticket_given_twice_in_one_call_is_entered_once(erp: Engine) -> None:
    entered = enter_portal_tickets(erp, [_ticket(1), _ticket(1)], USER)
    assert [e.created for e in entered] == [True, False]
    assert entered[0].message_id == entered[1].message_id
    assert _count(erp, s.messages) == ERP_MESSAGES + 1


def test_a_failure_mid_way_leaves_nothing_written(erp: Engine) -> None:
    # the third ticket names a unit the ERP does not have: the database refuses it after two inserts
    tickets = [_ticket(1), _ticket(2), _ticket(3, unit_no="9999-999")]
    with pytest.raises(exc.IntegrityError):
        enter_portal_tickets(erp, tickets, USER)
    assert _count(erp, s.messages) == ERP_MESSAGES
    comments = [
        PortalComment("c-1", "t-0001", "Danke!", T0, message_id=1),
        PortalComment("c-2", "t-0001", "x" * 10, T0, message_id=2),
    ]
    # the second comment's text is one the database refuses (NOT NULL), after the first note
    with pytest.raises(exc.IntegrityError):
        enter_portal_comments(erp, [comments[0], PortalComment("c-2", "t-0001", None, T0, 2)], USER)  # type: ignore[arg-type]
    assert _count(erp, s.notes) == 0
    # the same call, corrected, then enters everything
    assert [e.created for e in enter_portal_tickets(erp, tickets[:2], USER)] == [True, True]
    assert [e.created for e in enter_portal_comments(erp, comments, USER)] == [True, True]


def test_refused_before_writing_with_the_ticket_named(erp: Engine) -> None:
    with pytest.raises(WritebackError, match=r"t-0002.*'WASSER'"):
        enter_portal_tickets(erp, [_ticket(1), _ticket(2, message_type="WASSER")], USER)
    with pytest.raises(WritebackError, match="object 4711"):
        enter_portal_tickets(erp, [_ticket(1, object_no="4711")], USER)
    with pytest.raises(WritebackError, match="three-digit"):
        enter_portal_tickets(erp, [_ticket(1)], "99")
    assert _count(erp, s.messages) == ERP_MESSAGES


def test_comments_are_entered_once_unknown_tickets_are_not(erp: Engine) -> None:
    (ticket,) = enter_portal_tickets(erp, [_ticket(1)], USER)
    comments = [
        PortalComment("c-1", "t-0001", "Wann kommt der Handwerker?", T0 + timedelta(hours=1)),
        PortalComment("c-2", "erp-2", "Danke für die Info.", T0 + timedelta(hours=2), message_id=2),
        PortalComment("c-3", "t-9999", "Hallo?", T0 + timedelta(hours=3)),
        PortalComment("c-4", "erp-77", "Hallo?", T0 + timedelta(hours=3), message_id=77),
    ]
    first = enter_portal_comments(erp, comments, USER)
    assert [(e.portal_comment_id, e.created) for e in first] == [
        ("c-1", True),
        ("c-2", True),
        ("c-3", False),
        ("c-4", False),
    ]
    assert first[2].note_id is None and first[2].reason and "t-9999" in first[2].reason
    assert first[3].note_id is None and first[3].reason and "message 77" in first[3].reason
    again = enter_portal_comments(erp, comments[:2], USER)
    assert again == [EnteredComment(e.portal_comment_id, e.note_id, False) for e in first[:2]]
    notes = _rows(erp, s.notes)
    assert [(n["message_id"], n["portal_comment_id"], n["internal"]) for n in notes] == [
        (ticket.message_id, "c-1", False),
        (2, "c-2", False),
    ]
    assert notes[0]["entered_by"] == USER and notes[0]["text"] == "Wann kommt der Handwerker?"
    assert _utc(notes[1]["created_at"]) == T0 + timedelta(hours=2)


def test_concurrent_callers_enter_each_ticket_and_comment_once(erp: Engine) -> None:
    shared = [_ticket(n) for n in range(1, 31)]
    batches = [
        shared + [_ticket(100 + n) for n in range(5)],
        shared[::-1] + [_ticket(200 + n) for n in range(5)],
    ]
    results: list[list[EnteredTicket]] = [[], []]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(i: int) -> None:
        try:
            barrier.wait()
            for start in range(0, len(batches[i]), 5):  # several calls each, interleaving
                results[i].extend(enter_portal_tickets(erp, batches[i][start : start + 5], USER))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    rows = [r for r in _rows(erp, s.messages) if r["portal_ticket_id"]]
    assert len(rows) == 40 == len({r["portal_ticket_id"] for r in rows})
    ids = {r["portal_ticket_id"]: r["message_id"] for r in rows}
    seen = [e for part in results for e in part]
    assert all(ids[e.portal_ticket_id] == e.message_id for e in seen)
    created = [e.portal_ticket_id for e in seen if e.created]
    assert sorted(created) == sorted(ids)  # created by exactly one of the callers
    assert sorted(ids.values()) == list(range(ERP_MESSAGES + 1, ERP_MESSAGES + 41))

    comments = [PortalComment(f"c-{n}", f"t-{n:04d}", f"Kommentar {n}", T0) for n in range(1, 31)]
    outcomes: list[list[EnteredComment]] = [[], []]

    def comment(i: int) -> None:
        try:
            barrier.wait()
            ordered = comments if i == 0 else comments[::-1]
            for start in range(0, len(ordered), 3):
                outcomes[i].extend(enter_portal_comments(erp, ordered[start : start + 3], USER))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=comment, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert _count(erp, s.notes) == 30
    assert sum(e.created for part in outcomes for e in part) == 30


def test_portal_status_is_written_in_bulk_without_touching_modified_at(erp: Engine) -> None:
    before = {r["message_id"]: _utc(r["modified_at"]) for r in _rows(erp, s.messages)}
    statuses = {1: "übertragen (offen)", 2: "Meldungsart gesperrt", 3: "zu alt " + "x" * 300}
    assert record_portal_status(erp, statuses) == 3
    rows = {r["message_id"]: r for r in _rows(erp, s.messages)}
    assert rows[1]["portal_status"] == "übertragen (offen)" and len(rows[3]["portal_status"]) == 200
    assert {k: _utc(r["modified_at"]) for k, r in rows.items()} == before
    # unchanged statuses are not written again; a changed one is
    assert record_portal_status(erp, {**statuses, 2: "übertragen (erledigt)"}) == 1
    assert record_portal_status(erp, {}) == 0


def test_portal_changes_and_the_reset_rule(erp: Engine) -> None:
    # message 1 was modified 1 day before T0, message 2 two days, message 3 three days before
    before = {r["message_id"]: _utc(r["modified_at"]) for r in _rows(erp, s.messages)}
    changes = [
        PortalChange(1, T0 - timedelta(days=2), "neuer Kommentar"),  # older than modified_at: reset
        PortalChange(2, T0, "Status im Portal: erledigt"),
        PortalChange(2, T0 - timedelta(hours=1), "neuer Kommentar"),  # the newer one of message 2 counts
        PortalChange(3, T0 + timedelta(hours=1), "neuer Kommentar"),
    ]
    recorded, cleared = record_portal_changes(erp, changes)
    assert (recorded, cleared) == (3, 1)
    rows = {r["message_id"]: r for r in _rows(erp, s.messages)}
    assert rows[1]["portal_changed_at"] is None and rows[1]["portal_change"] is None
    assert (_utc(rows[2]["portal_changed_at"]), rows[2]["portal_change"]) == (
        T0,
        "Status im Portal: erledigt",
    )
    # a late or retried older change never moves the column back
    assert record_portal_changes(erp, [PortalChange(3, T0, "älter")]) == (0, 0)
    assert _rows(erp, s.messages)[2]["portal_change"] == "neuer Kommentar"
    # the clerk changes message 2 in the ERP: the next reset clears its portal change
    with erp.begin() as conn:
        conn.execute(
            update(s.messages)
            .where(s.messages.c.message_id == 2)
            .values(modified_at=T0 + timedelta(minutes=5))
        )
    assert reset_portal_changes(erp) == 1
    rows = {r["message_id"]: r for r in _rows(erp, s.messages)}
    assert rows[2]["portal_changed_at"] is None and rows[3]["portal_changed_at"] is not None
    before[2] = T0 + timedelta(minutes=5)
    assert {k: _utc(r["modified_at"]) for k, r in rows.items()} == before
