"""The portal sandbox's own state: one SQLAlchemy Core connection, an in-memory index, write-through.

Why this shape: the sandbox must take a couple of hundred thousand upserts quickly and survive a
restart. Every record lives as one row (the full JSON the API returns, plus the columns a list query
and a restart need); the process keeps a small index of every record (internal id, payload hash,
flags, timestamps) so that an upsert decides *created / updated / unchanged* and checks references
without reading the database. Each write is committed before the answer leaves the server, so what
the client was told is what a restarted sandbox still holds. Writes do not commit one by one:
the server calls ``commit()`` once per event-loop turn for all writes of that turn (group commit)
and answers them after it.

The index also holds what the list filters and the derived fields read, so neither needs the
bodies: a contact's flags (``isRegistered``, ``isInvited``) and contracts, the units of each property
and the contacts with a contract in each unit.

A single process owns the database file. All calls come from the server's event loop; the lock only
guards against a caller from another thread (tests, a threaded server).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.engine.url import make_url
from sqlalchemy.pool import StaticPool

ENTITIES = (
    "properties",
    "units",
    "contacts",
    "responsibilities",
    "ticket-types",
    "documents",
    "tickets",
    "bulletin-posts",
    "comments",
)
"""Entities the store keeps; ``responsibilities`` are keyed by the property's reference id."""

KEPT_FIELDS: dict[str, tuple[str, ...]] = {
    "ticket-types": ("editedInPortal",),
    "documents": ("contentVersion", "contentSha256", "contentSize", "contentType"),
    "tickets": ("origin", "lastPortalActivity"),
    "comments": ("origin",),
}
"""Read-only fields the portal keeps itself per entity: a client's PUT carries them over, the index
holds them (rebuilt from the bodies at start) so that neither a PUT nor a filter reads the body."""

metadata = MetaData()

records = Table(
    "records",
    metadata,
    Column("internal_id", Integer, primary_key=True, autoincrement=True),
    Column("entity", String(32), nullable=False),
    Column("ref_id", String(200), nullable=False),
    Column("parent_id", String(200), nullable=True),
    Column("body", Text, nullable=False),
    Column("body_hash", String(64), nullable=False),
    Column("archived", Boolean, nullable=False, default=False),
    Column("anonymised", Boolean, nullable=False, default=False),
    Column("created_at", String(24), nullable=False),
    Column("updated_at", String(24), nullable=False),
    Index("ix_records_entity_ref", "entity", "ref_id", unique=True),
    Index("ix_records_entity_internal", "entity", "internal_id"),
    sqlite_autoincrement=True,
)

write_log = Table(
    "write_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("entity", String(32), nullable=False),
    Column("ref_id", String(200), nullable=False),
    Column("op", String(16), nullable=False),
    Column("body_hash", String(64), nullable=True),
    Column("effective", Boolean, nullable=False),
    Column("at", String(24), nullable=False),
    Index("ix_write_log_record", "entity", "ref_id"),
)

tokens = Table(
    "tokens",
    metadata,
    Column("token", String(64), primary_key=True),
    Column("expires_at", String(24), nullable=False),
)


_INSERT_RECORD = insert(records)
_UPDATE_RECORD = (
    update(records)
    .where(records.c.internal_id == bindparam("b_iid"))
    .values(
        body=bindparam("b_body"),
        body_hash=bindparam("b_hash"),
        archived=bindparam("b_archived"),
        anonymised=bindparam("b_anonymised"),
        updated_at=bindparam("b_updated"),
        parent_id=bindparam("b_parent"),
    )
)
_SELECT_BODY = select(records.c.body).where(records.c.internal_id == bindparam("b_iid"))
_DELETE_RECORD = delete(records).where(records.c.internal_id == bindparam("b_iid"))
_INSERT_LOG = insert(write_log)
"""Statements built once: building a statement per request costs more than executing it."""


def now_iso() -> str:
    """Current time as the API writes it: UTC, milliseconds, ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def canonical_json(payload: dict[str, Any]) -> str:
    """Deterministic JSON (sorted keys, no spaces), the same form hausflow's connector hashes."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def payload_hash(writable: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a record's writable fields: equal hash, equal content."""
    return hashlib.sha256(canonical_json(writable).encode()).hexdigest()


ContractLink = tuple[str | None, str | None, str | None, str | None]
"""A contact's contract as the index keeps it: unit id, type, start date, end date."""

FLAGS = ("isRegistered", "isInvited")
"""A contact's read-only flags the list filters read."""

FACT_ENTITIES = frozenset({"contacts", *KEPT_FIELDS})
"""Entities whose index entry holds facts taken from the body (see ``index_facts``)."""


@dataclass(slots=True)
class Entry:
    """What the store keeps in memory of one record (the body stays in the database).

    ``flags`` are a contact's (see ``FLAGS``) or ``{"deleted"}`` of a deleted document;
    ``contracts`` a contact's (see ``ContractLink``); ``kept`` the read-only fields the portal keeps
    itself (``KEPT_FIELDS``), ``None`` for the other entities.
    """

    internal_id: int
    body_hash: str
    archived: bool
    anonymised: bool
    created_at: str
    updated_at: str
    writes: int = 0
    parent_id: str | None = None
    flags: frozenset[str] = frozenset()
    contracts: tuple[ContractLink, ...] = ()
    kept: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """Result of one write: ``effective`` is false when the record already was in that state."""

    created: bool
    effective: bool
    body: str


class Store:
    """Records of the sandbox in one database; see the module docstring for the contract.

    Args:
        db_url: SQLAlchemy URL; ``sqlite:///path`` (parent folders are created) is the default use.
    """

    def __init__(self, db_url: str) -> None:
        url = make_url(db_url)
        self._sqlite = url.get_backend_name() == "sqlite"
        if self._sqlite and url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        if self._sqlite:
            kwargs = {"connect_args": {"check_same_thread": False}, "poolclass": StaticPool}
        self._engine: Engine = create_engine(db_url, **kwargs)
        if self._sqlite:
            event.listen(self._engine, "connect", _sqlite_pragmas)
        metadata.create_all(self._engine)
        self._conn: Connection = self._engine.connect()
        self._lock = threading.RLock()
        self._index: dict[str, dict[str, Entry]] = {e: {} for e in ENTITIES}
        self._units_of: dict[str, set[str]] = {}  # property id -> its units' ids
        self._contacts_in: dict[str, set[str]] = {}  # unit id -> contacts with a contract in it
        self.max_writes_per_record = 0
        self._next_id = 1
        self._log_rows: list[dict[str, Any]] = []
        self._load_index()

    # ---- lifecycle ---------------------------------------------------------------------------
    def _load_index(self) -> None:
        """Rebuild the in-memory index from the table (start-up after a restart)."""
        query = select(
            records.c.entity,
            records.c.ref_id,
            records.c.internal_id,
            records.c.body_hash,
            records.c.archived,
            records.c.anonymised,
            records.c.created_at,
            records.c.updated_at,
            records.c.parent_id,
        ).order_by(records.c.internal_id)
        with_facts = select(records.c.entity, records.c.ref_id, records.c.body).where(
            records.c.entity.in_(sorted(FACT_ENTITIES))
        )
        with self._lock:
            result = self._conn.execution_options(yield_per=5000).execute(query)
            for row in result:
                self._index.setdefault(row.entity, {})[row.ref_id] = Entry(
                    row.internal_id,
                    row.body_hash,
                    bool(row.archived),
                    bool(row.anonymised),
                    row.created_at,
                    row.updated_at,
                    parent_id=row.parent_id,
                )
                self._next_id = max(self._next_id, row.internal_id + 1)
            for entity, ref_id, body in self._conn.execution_options(yield_per=5000).execute(with_facts):
                entry = self._index[entity][ref_id]
                entry.flags, entry.contracts, entry.kept = index_facts(entity, json.loads(body))
            for entity in ("units", "contacts"):
                for ref_id, entry in self._index[entity].items():
                    self._link(entity, ref_id, None, entry)
            if self._sqlite:  # ids of deleted records are not given out again
                seq = self._conn.exec_driver_sql(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'records'"
                ).scalar_one_or_none()
                self._next_id = max(self._next_id, int(seq or 0) + 1)
            self._conn.commit()

    def close(self) -> None:
        """Commit and close the connection (checkpoints the WAL on SQLite)."""
        with self._lock:
            self._flush_log()
            self._conn.commit()
            self._conn.close()
            self._engine.dispose()

    def reset(self) -> None:
        """Forget every record and the write log (tokens stay valid)."""
        with self._lock:
            self._log_rows = []
            self._conn.execute(delete(records))
            self._conn.execute(delete(write_log))
            self._conn.commit()
            self._index = {e: {} for e in ENTITIES}
            self._units_of, self._contacts_in = {}, {}
            self.max_writes_per_record = 0

    def commit(self) -> None:
        """Commit what the writes since the last commit did (the server groups commits).

        Writes do not commit themselves: under load one commit serves every write of an event-loop
        turn, and the server answers those writes only after this returns.
        """
        with self._lock:
            self._flush_log()
            if self._conn.in_transaction():
                self._conn.commit()

    def _flush_log(self) -> None:
        if self._log_rows:
            rows, self._log_rows = self._log_rows, []
            self._conn.execute(_INSERT_LOG, rows)

    # ---- reads -------------------------------------------------------------------------------
    def entry(self, entity: str, ref_id: str) -> Entry | None:
        """The index entry of a record, ``None`` when unknown."""
        return self._index[entity].get(ref_id)

    def get(self, entity: str, ref_id: str) -> str | None:
        """The stored JSON of one record, ``None`` when unknown."""
        entry = self._index[entity].get(ref_id)
        if entry is None:
            return None
        with self._lock:
            body = self._conn.execute(_SELECT_BODY, {"b_iid": entry.internal_id}).scalar_one_or_none()
        return body

    def get_dict(self, entity: str, ref_id: str) -> dict[str, Any] | None:
        """The stored record as a dict, ``None`` when unknown."""
        body = self.get(entity, ref_id)
        return None if body is None else dict(json.loads(body))

    def page(
        self,
        entity: str,
        page: int,
        page_size: int,
        modified_after: str | None = None,
        include_archived: bool = False,
        where: Callable[[Entry], bool] | None = None,
    ) -> tuple[list[str], bool]:
        """One page of stored JSON bodies ordered by internal id, and whether another page follows.

        The records are chosen in the index (``where`` is a filter on their entries), then their
        bodies read by internal id.
        """

        def wanted(entry: Entry) -> bool:
            return (
                (include_archived or not entry.archived)
                and (modified_after is None or entry.updated_at > modified_after)
                and (where is None or where(entry))
            )

        with self._lock:
            chosen = (e.internal_id for e in self._index[entity].values() if wanted(e))
            ids = list(islice(chosen, (page - 1) * page_size, page * page_size + 1))
            query = select(records.c.internal_id, records.c.body).where(
                records.c.internal_id.in_(ids[:page_size])
            )
            bodies = dict(self._conn.execute(query).tuples().all()) if ids else {}
        return [bodies[i] for i in ids[:page_size]], len(ids) > page_size

    def units_of(self, property_id: str) -> list[str]:
        """The ids of the property's units that are not archived, sorted."""
        units = self._index["units"]
        return sorted(u for u in self._units_of.get(property_id, ()) if not units[u].archived)

    def contracts_in(self, unit_id: str, today: str, include_inactive: bool) -> list[dict[str, Any]]:
        """The contracts of contacts in a unit, by contact id; active ones only unless asked.

        A contract is active on ``today`` (``YYYY-MM-DD``) when it has started, has not ended, and
        its contact is not archived.
        """
        out = []
        contacts = self._index["contacts"]
        for contact_id in sorted(self._contacts_in.get(unit_id, ())):
            entry = contacts[contact_id]
            for unit, kind, start, end in entry.contracts:
                active = not entry.archived and (start or "") <= today and (end is None or end >= today)
                if unit == unit_id and (active or include_inactive):
                    out.append({"contactId": contact_id, "type": kind, "startDate": start, "endDate": end})
        return out

    def iter_entries(self, entity: str) -> Iterator[tuple[str, Entry]]:
        """Every (reference id, entry) of an entity in internal-id order of creation."""
        yield from list(self._index[entity].items())

    def count(self, entity: str) -> dict[str, int]:
        """Number of records of an entity: total, active, archived, anonymised."""
        entries = self._index[entity].values()
        archived = sum(1 for e in entries if e.archived)
        anonymised = sum(1 for e in entries if e.anonymised)
        return {
            "total": len(entries),
            "active": len(entries) - archived,
            "archived": archived,
            "anonymised": anonymised,
        }

    def write_log(self, entity: str, ref_id: str) -> list[dict[str, Any]]:
        """Every write request the store accepted for one record, oldest first."""
        query = (
            select(
                write_log.c.seq, write_log.c.op, write_log.c.body_hash, write_log.c.effective, write_log.c.at
            )
            .where(write_log.c.entity == entity, write_log.c.ref_id == ref_id)
            .order_by(write_log.c.seq)
        )
        with self._lock:
            self._flush_log()
            rows = self._conn.execute(query).all()
        return [
            {"seq": r.seq, "op": r.op, "bodyHash": r.body_hash, "effective": bool(r.effective), "at": r.at}
            for r in rows
        ]

    # ---- writes ------------------------------------------------------------------------------
    def upsert(
        self,
        entity: str,
        ref_id: str,
        writable: dict[str, Any],
        read_only: dict[str, Any],
        body_hash: str,
        parent_id: str | None = None,
        logged: bool = True,
    ) -> WriteOutcome:
        """Create or replace a record; un-archives it. Unchanged content writes only the log.

        ``writable`` is what the client sent (every writable field, ``id`` first); ``read_only`` the
        entity's extra read-only fields (e.g. ``anonymised``); ``parent_id`` the reference a rule
        checks without reading the body (a unit's property). ``logged=False``: a record the portal
        makes itself (a tenant's ticket), neither logged nor counted. Returns the stored JSON.
        """
        now = now_iso()
        flags, contracts, kept = index_facts(entity, {**writable, **read_only})
        with self._lock:
            old = entry = self._index[entity].get(ref_id)
            if (
                entry is not None
                and entry.body_hash == body_hash
                and not entry.archived
                and entry.kept == kept
            ):
                body = _render(writable, entry, read_only)
                if logged:
                    self._log(entity, ref_id, "upsert", body_hash, False, now, entry)
                return WriteOutcome(False, False, body)
            if entry is None:
                entry = Entry(
                    self._next_id,
                    body_hash,
                    False,
                    False,
                    now,
                    now,
                    0,
                    parent_id,
                    flags,
                    contracts,
                    kept,
                )
                self._next_id += 1
                body = _render(writable, entry, read_only)
                self._conn.execute(
                    _INSERT_RECORD,
                    {
                        "internal_id": entry.internal_id,
                        "entity": entity,
                        "ref_id": ref_id,
                        "parent_id": parent_id,
                        "body": body,
                        "body_hash": body_hash,
                        "archived": False,
                        "anonymised": False,
                        "created_at": now,
                        "updated_at": now,
                    },
                )
                created = True
            else:
                entry = Entry(
                    entry.internal_id,
                    body_hash,
                    False,
                    False,
                    entry.created_at,
                    now,
                    entry.writes,
                    parent_id,
                    flags,
                    contracts,
                    kept,
                )
                body = _render(writable, entry, read_only)
                self._conn.execute(
                    _UPDATE_RECORD,
                    {
                        "b_iid": entry.internal_id,
                        "b_body": body,
                        "b_hash": body_hash,
                        "b_archived": False,
                        "b_anonymised": False,
                        "b_updated": now,
                        "b_parent": parent_id,
                    },
                )
                created = False
            if logged:
                self._log(entity, ref_id, "upsert", body_hash, True, now, entry)
            self._index[entity][ref_id] = entry
            self._link(entity, ref_id, old, entry)
        return WriteOutcome(created, True, body)

    def set_state(
        self, entity: str, ref_id: str, op: str, changes: dict[str, Any], archived: bool, anonymised: bool
    ) -> WriteOutcome | None:
        """Archive or anonymise: merge ``changes`` into the body and set the flags.

        Returns ``None`` for an unknown record; ``effective`` is false when the record already was
        in that state (then nothing but the write log changes).
        """
        now = now_iso()
        with self._lock:
            entry = self._index[entity].get(ref_id)
            if entry is None:
                return None
            current = self._conn.execute(_SELECT_BODY, {"b_iid": entry.internal_id}).scalar_one()
            if entry.archived == archived and entry.anonymised == anonymised:
                self._log(entity, ref_id, op, entry.body_hash, False, now, entry)
                return WriteOutcome(False, False, current)
            record = json.loads(current)
            record.update(changes)
            record["archived"] = archived
            record["updatedAt"] = now
            if "anonymised" in record or anonymised:
                record["anonymised"] = anonymised
            body_hash = entry.body_hash
            if changes:
                body_hash = payload_hash({k: v for k, v in record.items() if k not in READ_ONLY_FIELDS})
            body = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
            self._conn.execute(
                _UPDATE_RECORD,
                {
                    "b_iid": entry.internal_id,
                    "b_body": body,
                    "b_hash": body_hash,
                    "b_archived": archived,
                    "b_anonymised": anonymised,
                    "b_updated": now,
                    "b_parent": entry.parent_id,
                },
            )
            entry.body_hash = body_hash
            entry.archived = archived
            entry.anonymised = anonymised
            entry.updated_at = now
            entry.flags = index_facts(entity, record)[0]
            self._log(entity, ref_id, op, body_hash, True, now, entry)
        return WriteOutcome(False, True, body)

    def amend(
        self,
        entity: str,
        ref_id: str,
        changes: dict[str, Any],
        writable_fields: tuple[str, ...] | None = None,
    ) -> str | None:
        """Set fields the portal changes itself (a contact registers), with a new ``updatedAt``.

        Not a client's write: neither logged nor counted. ``changes`` may be empty (the record
        changed through another one, e.g. a property through its responsibilities). When they touch
        writable fields (a portal admin renames a ticket type), ``writable_fields`` names them all
        and the payload hash is taken again, so the client's next PUT of its own content is a change.
        Returns the stored JSON, ``None`` for an unknown record.
        """
        now = now_iso()
        with self._lock:
            entry = self._index[entity].get(ref_id)
            if entry is None:
                return None
            record = json.loads(self._conn.execute(_SELECT_BODY, {"b_iid": entry.internal_id}).scalar_one())
            record.update(changes, updatedAt=now)
            body = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
            if writable_fields is not None:
                entry.body_hash = payload_hash({k: record.get(k) for k in writable_fields})
            self._conn.execute(
                _UPDATE_RECORD,
                {
                    "b_iid": entry.internal_id,
                    "b_body": body,
                    "b_hash": entry.body_hash,
                    "b_archived": entry.archived,
                    "b_anonymised": entry.anonymised,
                    "b_updated": now,
                    "b_parent": entry.parent_id,
                },
            )
            entry.updated_at = now
            entry.flags, entry.contracts, entry.kept = index_facts(entity, record)
        return body

    def log_write(self, entity: str, ref_id: str, op: str, body_hash: str | None, effective: bool) -> None:
        """Log a write that is not an upsert of the record's fields (a document's content upload).

        It does not count towards ``max_writes_per_record`` (uploads have their own counters).
        """
        with self._lock:
            self._log_rows.append(
                {
                    "entity": entity,
                    "ref_id": ref_id,
                    "op": op,
                    "body_hash": body_hash,
                    "effective": effective,
                    "at": now_iso(),
                }
            )

    def next_number(self, entity: str, prefix: str) -> int:
        """One more than the largest ``<prefix><n>`` reference id of an entity (the portal's own ids)."""
        numbers = (ref[len(prefix) :] for ref in self._index[entity] if ref.startswith(prefix))
        return max((int(n) for n in numbers if n.isdigit()), default=0) + 1

    def delete(self, entity: str, ref_id: str) -> bool:
        """Remove a record for good; ``False`` when unknown."""
        with self._lock:
            entry = self._index[entity].pop(ref_id, None)
            if entry is None:
                return False
            self._link(entity, ref_id, entry, None)
            self._conn.execute(_DELETE_RECORD, {"b_iid": entry.internal_id})
            self._log(entity, ref_id, "delete", None, True, now_iso(), entry)
        return True

    def _link(self, entity: str, ref_id: str, old: Entry | None, new: Entry | None) -> None:
        """Keep the units of each property and the contacts in each unit in step with a change."""
        if entity == "units":
            links, before, after = self._units_of, {old and old.parent_id}, {new and new.parent_id}
        elif entity == "contacts":
            links = self._contacts_in
            before = {c[0] for c in old.contracts} if old else set()
            after = {c[0] for c in new.contracts} if new else set()
        else:
            return
        for key in before - after:
            if key and ref_id in links.get(key, ()):
                links[key].discard(ref_id)
        for key in after - before:
            if key:
                links.setdefault(key, set()).add(ref_id)

    def _log(
        self,
        entity: str,
        ref_id: str,
        op: str,
        body_hash: str | None,
        effective: bool,
        at: str,
        entry: Entry,
    ) -> None:
        """Queue a write-log row (inserted at the next commit, in one statement) and count the write."""
        self._log_rows.append(
            {
                "entity": entity,
                "ref_id": ref_id,
                "op": op,
                "body_hash": body_hash,
                "effective": effective,
                "at": at,
            }
        )
        entry.writes += 1
        if entry.writes > self.max_writes_per_record:
            self.max_writes_per_record = entry.writes

    # ---- tokens ------------------------------------------------------------------------------
    def save_token(self, token: str, expires_at: str) -> None:
        """Keep a token across restarts (a real portal's tokens outlive a server restart)."""
        with self._lock:
            self._conn.execute(insert(tokens).values(token=token, expires_at=expires_at))
            self._conn.commit()

    def load_tokens(self) -> dict[str, str]:
        """Every token that has not expired yet, with its expiry."""
        now = now_iso()
        with self._lock:
            self._conn.execute(delete(tokens).where(tokens.c.expires_at <= now))
            rows = self._conn.execute(select(tokens.c.token, tokens.c.expires_at)).all()
            self._conn.commit()
        return {r.token: r.expires_at for r in rows}

    def record_count(self) -> int:
        """Rows in the records table (a check that index and table agree)."""
        with self._lock:
            n = int(self._conn.execute(select(func.count()).select_from(records)).scalar_one())
        return n


READ_ONLY_FIELDS = frozenset(
    {"internalId", "createdAt", "updatedAt", "archived", "anonymised", "isRegistered", "isInvited"}
)


def index_facts(
    entity: str, record: dict[str, Any]
) -> tuple[frozenset[str], tuple[ContractLink, ...], dict[str, Any] | None]:
    """What the index keeps of a record's body: flags, a contact's contracts, the kept fields."""
    if entity == "contacts":
        flags = frozenset(f for f in FLAGS if record.get(f))
        contracts = tuple(
            (c.get("unitId"), c.get("type"), c.get("startDate"), c.get("endDate"))
            for c in record.get("contracts") or []
            if isinstance(c, dict)
        )
        return flags, contracts, None
    kept_fields = KEPT_FIELDS.get(entity)
    if kept_fields is None:
        return frozenset(), (), None
    flags = frozenset({"deleted"}) if record.get("deleted") else frozenset()
    return flags, (), {k: record.get(k) for k in kept_fields}


def _render(writable: dict[str, Any], entry: Entry, read_only: dict[str, Any]) -> str:
    """The JSON the API returns: writable fields, then the read-only ones."""
    record = dict(writable)
    if "responsibilities" in record:
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    record["internalId"] = entry.internal_id
    record.setdefault("createdAt", entry.created_at)  # tickets, posts, comments send their own
    record["updatedAt"] = entry.updated_at
    record["archived"] = entry.archived
    record.update(read_only)
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL and ``synchronous=NORMAL``: committed writes survive a process crash, at low cost."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()
