"""hausflow's writes into the ERP for the portal exchange: tickets, comments and the "Serviceportal" columns.

Why a module of its own: everywhere else hausflow only reads the ERP. These are the exceptions the
design names (``docs/portal-exchange.md``, "Portal -> ERP"):

- a ticket created in the portal becomes an ERP message (:func:`enter_portal_tickets`), a public
  portal comment a public note (:func:`enter_portal_comments`);
- every message carries hausflow's verdict in ``portal_status`` (:func:`record_portal_status`) and
  the last change made in the portal in ``portal_changed_at`` / ``portal_change``
  (:func:`record_portal_changes`), cleared once the message is changed in the ERP.

Exactly once: an entered row is keyed by the portal's id (``messages.portal_ticket_id``,
``notes.portal_comment_id``, both unique) and inserted with ``ON CONFLICT DO NOTHING``; a
retried task, a second flow run or a concurrent caller finds the row and enters nothing. Each call
is one transaction: it is written completely or not at all.

The ERP has no sequence for message and note numbers that hausflow may use, so a new row takes
``max + 1`` computed inside its own ``INSERT`` and the insert is retried when that number was taken
in the meantime (see :func:`_insert_keyed`). ``modified_at`` of an existing row is never written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Column, Connection, Engine, Table, bindparam, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from connectors.erp import schema
from connectors.sqlutil import as_utc, chunks, driver_value, execute_many

ERP_USER_PATTERN = re.compile(r"^[0-9]{3}$")
NEW_MESSAGE_STATUS = "OFFEN"
MAX_ID_ATTEMPTS = 50  # each failed attempt means another writer committed a row in between
PORTAL_STATUS_LENGTH = 200


class WritebackError(Exception):
    """A write into the ERP that hausflow refuses before touching the database (nothing is written)."""


@dataclass(frozen=True)
class PortalTicket:
    """A ticket created in the portal, as it is entered into the ERP as a message (Meldung).

    ``message_type`` is an ERP message type code (the portal's ticket types are the ERP's),
    ``created_at`` an aware date-time (stored in UTC).
    """

    portal_ticket_id: str
    object_no: str
    message_type: str
    subject: str
    created_at: datetime
    unit_no: str | None = None
    person_no: str | None = None
    body: str | None = None


class EnteredTicket(NamedTuple):
    """The ERP message of a portal ticket; ``created`` is False when it was there already."""

    portal_ticket_id: str
    message_id: int
    created: bool


@dataclass(frozen=True)
class PortalComment:
    """A public comment written in the portal, entered into the ERP as a public note.

    ``message_id`` is the ERP message when the caller knows it (a ticket made in the ERP, which
    carries no ``portal_ticket_id``); else the message is the one entered for ``portal_ticket_id``.
    """

    portal_comment_id: str
    portal_ticket_id: str
    text: str
    created_at: datetime
    message_id: int | None = None


class EnteredComment(NamedTuple):
    """The ERP note of a portal comment.

    ``note_id`` is None when the comment was not entered; ``reason`` says why (the ticket is
    unknown in the ERP). ``created`` is False when the note was there already or not entered.
    """

    portal_comment_id: str
    note_id: int | None
    created: bool
    reason: str | None = None


class PortalChange(NamedTuple):
    """The last change made in the portal to an ERP message: when, and what (e.g. "neuer Kommentar")."""

    message_id: int
    changed_at: datetime
    change: str


def _insert_for(conn: Connection, table: Table) -> Any:
    """The dialect's ``INSERT`` that knows ``ON CONFLICT DO NOTHING`` (SQLite and PostgreSQL)."""
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise WritebackError(
        f"writing portal tickets and comments into an ERP on {name} is not supported "
        "(SQLite and PostgreSQL are); use one of those or leave the portal's inbound stream off"
    )


def _begin_write(conn: Connection) -> None:
    """Start the call's transaction as a writer.

    Why: on SQLite (WAL) a transaction that first reads and then writes fails at once with "database
    is locked" when another writer committed in between; ``BEGIN IMMEDIATE`` takes the write lock
    first (waiting up to the busy timeout), so the whole call sees and writes one state. On
    PostgreSQL the connection runs in READ COMMITTED (set by the caller's execution options): each
    statement sees what other transactions committed before it, which the id retry relies on.
    """
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _write_connection(engine: Engine) -> Connection:
    """A connection for one writing call (READ COMMITTED on PostgreSQL, whatever the engine's default)."""
    conn = engine.connect()
    if conn.dialect.name == "postgresql":
        conn = conn.execution_options(isolation_level="READ COMMITTED")
    return conn


def _existing(conn: Connection, key: Column[Any], value: Column[Any], keys: Iterable[str]) -> dict[str, int]:
    """Of ``keys``, those already in the table: key -> row id (portable ``IN`` chunks)."""
    found: dict[str, int] = {}
    for part in chunks(sorted(set(keys))):
        found.update((k, v) for k, v in conn.execute(select(key, value).where(key.in_(part))).tuples())
    return found


def _insert_keyed(
    conn: Connection, table: Table, id_column: Column[Any], key_column: Column[Any], values: dict[str, Any]
) -> tuple[int, bool]:
    """Insert one row keyed by ``values[key_column]`` with the next free id; returns (id, created).

    How the id is made safe without a sequence: the ``INSERT`` computes ``max(id) + 1`` itself and
    carries ``ON CONFLICT DO NOTHING RETURNING id``. A returned id: inserted. Nothing returned: a
    unique key was taken, either the portal key (the row is there: return it, created False) or
    the id (another writer took that number and committed): compute again. On PostgreSQL two
    concurrent callers compute the same number; the second one's insert waits on the first one's
    uncommitted row until it commits or rolls back, then does nothing or inserts; its next
    statement sees the committed row. Neither deadlocks, as the waiting one holds no row the other
    needs. On SQLite the call holds the write lock (``BEGIN IMMEDIATE``), so the first attempt wins.

    Raises:
        WritebackError: no free id after ``MAX_ID_ATTEMPTS`` attempts (a writer storm; the call
            is rolled back, a retry later enters the rows).
    """
    key = values[key_column.name]
    next_id = select(func.coalesce(func.max(id_column), 0) + 1).scalar_subquery()
    stmt = (
        _insert_for(conn, table)
        .values(**{id_column.name: next_id}, **values)
        .on_conflict_do_nothing()
        .returning(id_column)
    )
    for _ in range(MAX_ID_ATTEMPTS):
        new_id = conn.execute(stmt).scalar_one_or_none()
        if new_id is not None:
            return int(new_id), True
        existing = conn.execute(select(id_column).where(key_column == key)).scalar_one_or_none()
        if existing is not None:
            return int(existing), False
    raise WritebackError(
        f"no free {id_column} for {key_column.name} {key} after {MAX_ID_ATTEMPTS} attempts: other "
        "writers kept taking the next number; nothing was written, the next run enters it"
    )


def _check_user(erp_user: str) -> None:
    if not ERP_USER_PATTERN.match(erp_user):
        raise WritebackError(
            f"ERP user {erp_user!r} is not a three-digit user number; set portal.erp_user (e.g. '999')"
        )


def _check_references(conn: Connection, tickets: Sequence[PortalTicket]) -> None:
    """Refuse tickets naming a message type or object the ERP does not have, before writing anything.

    Why: the foreign keys would refuse them too, but as a database error without the ticket; this
    names the ticket, the column and the value.
    """
    mt, o = schema.message_types, schema.objects
    types = set(conn.execute(select(mt.c.code)).scalars())
    objects: set[str] = set()
    for part in chunks(sorted({t.object_no for t in tickets})):
        objects.update(conn.execute(select(o.c.object_no).where(o.c.object_no.in_(part))).scalars())
    for t in tickets:
        if t.message_type not in types:
            raise WritebackError(
                f"portal ticket {t.portal_ticket_id}: message type {t.message_type!r} is not in the ERP "
                "(message_types); nothing was entered. Create the type in the ERP or correct the ticket type"
            )
        if t.object_no not in objects:
            raise WritebackError(
                f"portal ticket {t.portal_ticket_id}: object {t.object_no} is not in the ERP; nothing was "
                "entered. Check the property's object number"
            )


def enter_portal_tickets(
    engine: Engine, tickets: Sequence[PortalTicket], erp_user: str
) -> list[EnteredTicket]:
    """Enter portal tickets as ERP messages, each exactly once (keyed by ``portal_ticket_id``).

    A new message is open (``OFFEN``), of the ticket's type, object, unit and person, entered by
    ``erp_user``, created at the ticket's ``created_at``; its ``modified_at`` is that same moment
    (the row did not exist before, and a reader's "changed since" cursor then sees it as new;
    hausflow never writes ``modified_at`` of an existing row). A ticket already entered (a retry,
    a second run, a concurrent caller) is returned with its message and ``created`` False.

    All tickets are entered in one transaction: a failure leaves none of them entered.

    Args:
        engine: the ERP (SQLite or PostgreSQL).
        tickets: the portal's tickets to enter; a ticket id given twice is entered once.
        erp_user: the three-digit ERP user (setting ``portal.erp_user``).

    Returns:
        One ``EnteredTicket`` per ticket, in the given order.

    Raises:
        WritebackError: a bad ``erp_user``, a ticket naming a message type or object the ERP does
            not have, another dialect, or no free message number; nothing is written.
        sqlalchemy.exc.SQLAlchemyError: the database refused the write; nothing is written.
    """
    _check_user(erp_user)
    if not tickets:
        return []
    m = schema.messages
    out: list[EnteredTicket] = []
    with _write_connection(engine) as conn, conn.begin():
        _begin_write(conn)
        known = _existing(conn, m.c.portal_ticket_id, m.c.message_id, (t.portal_ticket_id for t in tickets))
        todo = [t for t in tickets if t.portal_ticket_id not in known]
        if todo:
            _check_references(conn, todo)
        for t in tickets:
            if t.portal_ticket_id in known:
                out.append(EnteredTicket(t.portal_ticket_id, known[t.portal_ticket_id], False))
                continue
            created_at = as_utc(t.created_at)
            message_id, created = _insert_keyed(
                conn,
                m,
                m.c.message_id,
                m.c.portal_ticket_id,
                {
                    "portal_ticket_id": t.portal_ticket_id,
                    "object_no": t.object_no,
                    "unit_no": t.unit_no,
                    "person_no": t.person_no,
                    "message_type": t.message_type,
                    "status": NEW_MESSAGE_STATUS,
                    "subject": t.subject[:200],
                    "body": t.body,
                    "notify_by_email": False,
                    "created_at": created_at,
                    "modified_at": created_at,
                    "entered_by": erp_user,
                },
            )
            known[t.portal_ticket_id] = message_id
            out.append(EnteredTicket(t.portal_ticket_id, message_id, created))
    return out


def enter_portal_comments(
    engine: Engine, comments: Sequence[PortalComment], erp_user: str
) -> list[EnteredComment]:
    """Enter public portal comments as public ERP notes, each exactly once (keyed by ``portal_comment_id``).

    The caller passes public comments only (internal portal comments never reach the ERP). A
    comment's message is ``message_id`` if given, else the message entered for its
    ``portal_ticket_id``; a comment whose message the ERP does not have is not entered and comes
    back with the reason (the next run tries again, e.g. once its ticket is entered). All notes
    are entered in one transaction.

    Args:
        engine: the ERP (SQLite or PostgreSQL).
        comments: the portal's public comments.
        erp_user: the three-digit ERP user (setting ``portal.erp_user``).

    Returns:
        One ``EnteredComment`` per comment, in the given order.

    Raises:
        WritebackError: a bad ``erp_user``, another dialect, or no free note number; nothing is written.
        sqlalchemy.exc.SQLAlchemyError: the database refused the write; nothing is written.
    """
    _check_user(erp_user)
    if not comments:
        return []
    m, n = schema.messages, schema.notes
    out: list[EnteredComment] = []
    with _write_connection(engine) as conn, conn.begin():
        _begin_write(conn)
        known = _existing(conn, n.c.portal_comment_id, n.c.note_id, (c.portal_comment_id for c in comments))
        by_ticket = _existing(
            conn,
            m.c.portal_ticket_id,
            m.c.message_id,
            (c.portal_ticket_id for c in comments if c.message_id is None),
        )
        given_ids = sorted({c.message_id for c in comments if c.message_id is not None})
        messages: set[int] = set()
        for part in chunks(given_ids):
            messages.update(conn.execute(select(m.c.message_id).where(m.c.message_id.in_(part))).scalars())
        for c in comments:
            if c.portal_comment_id in known:
                out.append(EnteredComment(c.portal_comment_id, known[c.portal_comment_id], False))
                continue
            message_id = c.message_id if c.message_id in messages else by_ticket.get(c.portal_ticket_id)
            if message_id is None:
                what = f"message {c.message_id}" if c.message_id is not None else "no message"
                out.append(
                    EnteredComment(
                        c.portal_comment_id,
                        None,
                        False,
                        f"ticket {c.portal_ticket_id} is unknown in the ERP ({what} for it); "
                        "the comment is entered once its ticket is",
                    )
                )
                continue
            note_id, created = _insert_keyed(
                conn,
                n,
                n.c.note_id,
                n.c.portal_comment_id,
                {
                    "portal_comment_id": c.portal_comment_id,
                    "message_id": message_id,
                    "internal": False,
                    "text": c.text,
                    "created_at": as_utc(c.created_at),
                    "entered_by": erp_user,
                },
            )
            known[c.portal_comment_id] = note_id
            out.append(EnteredComment(c.portal_comment_id, note_id, created))
    return out


def record_portal_status(engine: Engine, statuses: Mapping[int, str]) -> int:
    """Write hausflow's verdict into ``messages.portal_status`` ("Serviceportal"), for many messages at once.

    Why so: every run has a status for every message (transferred, or why not), tens of thousands
    at 100,000 persons; one ``executemany`` in one transaction, and only rows whose status differs
    are written, so an unchanged run writes nothing. ``modified_at`` is not touched: the status is
    hausflow's note, not a change of the message. Texts longer than the column are cut.

    Args:
        engine: the ERP.
        statuses: message id -> status text (e.g. ``übertragen (offen)``, ``Meldungsart gesperrt``).

    Returns:
        The number of messages whose status changed (where the driver counts executemany rows).
    """
    if not statuses:
        return 0
    m = schema.messages
    stmt = (
        update(m)
        .where(m.c.message_id == bindparam("b_id"), m.c.portal_status.is_distinct_from(bindparam("b_status")))
        .values(portal_status=bindparam("b_status"))
    )
    rows = [
        {"b_id": message_id, "b_status": status[:PORTAL_STATUS_LENGTH]}
        for message_id, status in sorted(statuses.items())
    ]
    with engine.begin() as conn:
        return execute_many(conn, stmt, rows)


def _reset_outdated_changes(conn: Connection) -> int:
    m = schema.messages
    stmt = (
        update(m)
        .where(m.c.portal_changed_at.is_not(None), m.c.modified_at > m.c.portal_changed_at)
        .values(portal_changed_at=None, portal_change=None)
    )
    return int(conn.execute(stmt).rowcount)


def record_portal_changes(engine: Engine, changes: Sequence[PortalChange]) -> tuple[int, int]:
    """Record the last change made in the portal per message, then apply the reset rule.

    ``portal_changed_at`` / ``portal_change`` show the ERP clerk what happened in the portal (a
    comment, a status, a new ticket). A change is written when it is newer than the recorded one
    (a retried or late call never moves it back); of several changes for one message the newest
    counts. Then, in the same transaction, both columns are cleared where the message's
    ``modified_at`` is later than ``portal_changed_at``: the clerk has changed the message since,
    so the portal change has been seen. ``modified_at`` itself is never written.

    Returns:
        (messages whose change was recorded, messages whose change was cleared by the reset rule).
    """
    m = schema.messages
    newest: dict[int, PortalChange] = {}
    for change in changes:
        held = newest.get(change.message_id)
        if held is None or as_utc(change.changed_at) > as_utc(held.changed_at):
            newest[change.message_id] = change
    stmt = (
        update(m)
        .where(
            m.c.message_id == bindparam("b_id"),
            or_(m.c.portal_changed_at.is_(None), m.c.portal_changed_at < bindparam("b_at")),
        )
        .values(portal_changed_at=bindparam("b_at"), portal_change=bindparam("b_change"))
    )
    with engine.begin() as conn:
        rows = [
            {
                "b_id": c.message_id,
                "b_at": driver_value(conn, m.c.portal_changed_at, as_utc(c.changed_at)),
                "b_change": c.change[:PORTAL_STATUS_LENGTH],
            }
            for c in sorted(newest.values())
        ]
        recorded = execute_many(conn, stmt, rows)
        cleared = _reset_outdated_changes(conn)
    return recorded, cleared


def reset_portal_changes(engine: Engine) -> int:
    """Apply the reset rule alone: clear ``portal_changed_at`` / ``portal_change`` where ``modified_at`` is later.

    Returns:
        The number of messages cleared.
    """
    with engine.begin() as conn:
        return _reset_outdated_changes(conn)
