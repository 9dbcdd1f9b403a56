"""The state store: what each partner last confirmed, what is in flight, quarantine and protocol.

Why a store of our own: the partner is the only witness of what arrived, and a run may die at any
point. So each write is first recorded as *pending*, and the confirmed state advances only for
what the partner acknowledged. A later run verifies pending entries against the partner before it
plans anything, so a crash neither loses a change nor sends it twice.

SQLite by default, PostgreSQL (or Oracle) for real; portable SQLAlchemy Core only. The tables
below are the model; databases get them by the migrations in ``connectors/state_migrations``,
which run when a store is opened.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    delete,
    event,
    exists,
    func,
    insert,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import ColumnElement

from config.settings import SystemMixError
from connectors.erp.database import make_engine
from connectors.sqlutil import as_utc, chunks, driver_value, execute_many, sqlite_file, utcnow
from connectors.state_migrations import migrate

state_metadata = MetaData()

sync_state = Table(
    "sync_state",
    state_metadata,
    Column("target", String(20), primary_key=True),
    Column("entity", String(30), primary_key=True),
    Column("ref_id", String(60), primary_key=True),
    Column("payload_hash", String(64)),
    Column("status", String(12), nullable=False),  # active, archived, anonymised
    Column("partner_internal_id", String(40)),
    Column("confirmed_at", DateTime(timezone=True), nullable=False),
    Column("run_id", String(40)),
    # position in the store's change sequence (see StateStore.confirm): lets a run read only what
    # was confirmed since it last looked
    Column("seq", Integer),
    Index("ix_sync_state_seq", "target", "seq"),
)

sync_meta = Table(
    "sync_meta",
    state_metadata,
    Column("name", String(40), primary_key=True),
    Column("value", Integer, nullable=False),
)
STATE_SEQ = "state_seq"

sync_pending = Table(
    "sync_pending",
    state_metadata,
    Column("target", String(20), primary_key=True),
    Column("entity", String(30), primary_key=True),
    Column("ref_id", String(60), primary_key=True),
    Column("op", String(12), nullable=False),  # upsert, archive, anonymize
    Column("payload_hash", String(64)),
    Column("run_id", String(40)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

quarantine = Table(
    "quarantine",
    state_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("target", String(20), nullable=False),
    Column("entity", String(30), nullable=False),
    Column("ref_id", String(60), nullable=False),
    Column("rule", String(120), nullable=False),
    Column("reason", Text, nullable=False),
    Column("record_json", Text),
    Column("run_id", String(40)),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True)),
    UniqueConstraint("target", "entity", "ref_id", "rule", name="uq_quarantine_record_rule"),
    Index("ix_quarantine_open", "target", "resolved_at"),
)

sync_runs = Table(
    "sync_runs",
    state_metadata,
    Column("run_id", String(40), primary_key=True),
    Column("flow", String(40), nullable=False),
    Column("target", String(20), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("status", String(20), nullable=False),
    Column("dry_run", Boolean, nullable=False, default=False),
    Column("summary_json", Text),
)

protocol = Table(
    "protocol",
    state_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(40), nullable=False),
    Column("entity", String(30), nullable=False),
    Column("ref_id", String(60), nullable=False),
    Column(
        "outcome", String(20), nullable=False
    ),  # created updated archived anonymised skipped quarantined failed
    Column("reason", Text),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_protocol_run", "run_id", "outcome"),
)

KEY_HINT_LENGTH = 40
sync_keys = Table(
    "sync_keys",
    state_metadata,
    Column("name", String(40), primary_key=True),
    # a random key, created on first use (see StateStore.key); it keys the memo's row digests
    Column("key_hex", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

sync_cursors = Table(
    "sync_cursors",
    state_metadata,
    Column("target", String(20), primary_key=True),
    # what a sync reads from a partner incrementally (e.g. tickets created in the portal): the
    # partner's time up to which everything was taken into the ERP
    Column("name", String(40), primary_key=True),
    Column("value", String(80), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

file_digests = Table(
    "file_digests",
    state_metadata,
    # a document file's SHA-256, read again only when its size or modification time changes
    Column("path", String(1000), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("digest", String(64), nullable=False),
)

OWNER_ROW = 1
state_system = Table(
    "state_system",
    state_metadata,
    # one row: the system (settings profile) whose runs use this store, recorded by its first run
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("system", String(20), nullable=False),
    Column("claimed_at", DateTime(timezone=True), nullable=False),
)

partner_credentials = Table(
    "partner_credentials",
    state_metadata,
    Column("target", String(20), primary_key=True),
    # which key a connector uses, recognisable but useless to anyone who reads it (see credential_hint)
    Column("key_hint", String(KEY_HINT_LENGTH), nullable=False),
    Column("expires_at", DateTime(timezone=True)),  # NULL: the partner named no expiry
    Column("fetched_at", DateTime(timezone=True), nullable=False),
)


def record_json(record: dict[str, Any] | None) -> str | None:
    """A quarantined record as the quarantine table stores it (compare payloads with this).

    hausflow's own keys of a payload (``_...``, a document's file on disk) are left out."""
    if record and any(k.startswith("_") for k in record):
        record = {k: v for k, v in record.items() if not k.startswith("_")}
    return json.dumps(record, default=str) if record else None


def _each_record(table: Table) -> ColumnElement[bool]:
    """The row of one record of ``table``, named by the bind parameters ``b_target``, ``b_entity``
    and ``b_ref_id`` (for statements run once per record with :func:`execute_many`)."""
    return and_(
        table.c.target == bindparam("b_target"),
        table.c.entity == bindparam("b_entity"),
        table.c.ref_id == bindparam("b_ref_id"),
    )


def _delete_ids(conn: Connection, table: Table, target: str, entity: str, ref_ids: Iterable[str]) -> None:
    """Delete the rows of ``ref_ids`` of one target and entity (one driver call)."""
    execute_many(
        conn,
        delete(table).where(_each_record(table)),
        [{"b_target": target, "b_entity": entity, "b_ref_id": ref_id} for ref_id in ref_ids],
    )


def _insert_protocol(conn: Connection, run_id: str, rows: Sequence[ProtocolRow], now: datetime) -> None:
    """Append protocol lines of a run inside the caller's transaction."""
    at = driver_value(conn, protocol.c.at, now)
    execute_many(
        conn,
        insert(protocol),
        [
            {
                "run_id": run_id,
                "entity": r.entity,
                "ref_id": r.ref_id,
                "outcome": r.outcome,
                "reason": r.reason,
                "at": at,
            }
            for r in rows
        ],
    )


@dataclass(frozen=True)
class StateEntry:
    """What the partner last confirmed for one record."""

    payload_hash: str | None
    status: str


@dataclass(frozen=True)
class PendingWrite:
    """A write that was sent (or about to be) but not yet confirmed."""

    entity: str
    ref_id: str
    op: str
    payload_hash: str | None
    run_id: str | None


@dataclass(frozen=True)
class Confirmation:
    """The partner's acknowledgement of one write."""

    entity: str
    ref_id: str
    op: str
    payload_hash: str | None
    partner_internal_id: str | None = None


@dataclass(frozen=True)
class QuarantineItem:
    """A record held back, with the rule it broke and a reason a person can act on."""

    entity: str
    ref_id: str
    rule: str
    reason: str
    record: dict[str, Any] | None = None


@dataclass(frozen=True)
class ProtocolRow:
    """One line of a run's protocol."""

    entity: str
    ref_id: str
    outcome: str
    reason: str | None = None


@dataclass(frozen=True)
class CredentialRecord:
    """When a partner's credentials were fetched and when they expire (times aware, in UTC)."""

    target: str
    key_hint: str
    expires_at: datetime | None
    fetched_at: datetime


KEY_HINT_CHARS = 4
MIN_KEY_CHARS_FOR_HINT = 16


def credential_hint(key: str) -> str:
    """The hint of a key the store keeps: its first 4 characters and "…".

    Why only that: enough to tell which of two keys is in use after a rotation, too little to use.
    A key shorter than 16 characters gives "…" alone (4 characters would be a quarter of it).
    """
    return (key[:KEY_HINT_CHARS] if len(key) >= MIN_KEY_CHARS_FOR_HINT else "") + "…"


STATUS_BY_OP = {"upsert": "active", "archive": "archived", "anonymize": "anonymised"}
WRITTEN_OUTCOMES = ("created", "updated", "restored", "archived", "anonymised")
"""The protocol's outcomes of a write the partner confirmed."""


_ENGINES: dict[str, tuple[tuple[int, Any], Engine]] = {}
_ENGINES_LOCK = threading.Lock()


def _file_identity(path: str | None) -> tuple[int, int] | None:
    """Device and inode of a file (``None`` if there is none): a file created anew differs."""
    try:
        stat = os.stat(path) if path else None
    except FileNotFoundError:
        return None
    return (stat.st_dev, stat.st_ino) if stat else None


def state_engine(url: str) -> Engine:
    """The engine of a state database, one per process and database, migrated to the newest schema.

    Why shared: a run builds a ``StateStore`` in each of its tasks; a new engine each time meant
    a new connection and a schema check every time (3-4 ms per store against the state database
    of a 100,000-person ERP, about 0.1 ms with the shared engine). In-memory SQLite is never
    shared (each engine is its own database). A SQLite file that was replaced (deleted and
    created anew) gets a new engine; the old one is disposed. A forked child builds its own.
    """
    file = sqlite_file(url)
    if url.startswith("sqlite") and file is None:
        engine = make_engine(url)
        migrate(engine)
        return engine
    identity: Any = _file_identity(file) if file else url
    key = (os.getpid(), identity)
    with _ENGINES_LOCK:
        known = _ENGINES.get(url)
        if known is not None and known[0] == key:
            return known[1]
        if known is not None:  # replaced file: close its connections; forked child: leave the parent's
            known[1].dispose(close=known[0][0] == os.getpid())
        engine = make_engine(url)
        if file:
            _checkpoint_off_the_path(engine)
        migrate(engine)
        if identity is None:  # the engine created the file: remember it by its identity
            key = (os.getpid(), _file_identity(file))
        _ENGINES[url] = (key, engine)
        return engine


# Pages the write-ahead log of a SQLite state database may reach before the writing connection
# copies it back itself (SQLite's default is 1,000 pages); normally a background checkpoint does it
# first (see _checkpoint_off_the_path).
WAL_PAGES_BEFORE_INLINE_CHECKPOINT = 16_000
_checkpointing: set[int] = set()
_background_checkpoint: weakref.WeakSet[Engine] = weakref.WeakSet()


def _checkpoint_off_the_path(engine: Engine) -> None:
    """Let a SQLite state database copy its write-ahead log back in a background thread.

    Why: SQLite copies the log back into the database (with an fsync) inside the commit that
    makes it longer than 1,000 pages. A confirmation of 687 contacts writes about 1,000 pages, so
    nearly every run's confirmation paid the copy: 60 ms instead of 37 ms. Here the commit only
    appends to the log, and :func:`checkpoint_soon` starts the copy in a thread that waits for the
    disk while the run goes on. The copy is SQLite's own passive checkpoint: it never blocks a
    reader or writer and is safe to interrupt.
    """

    @event.listens_for(engine, "connect")
    def _wal_limit(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES_BEFORE_INLINE_CHECKPOINT}")
        cur.close()

    _background_checkpoint.add(engine)


def checkpoint_soon(engine: Engine) -> threading.Thread | None:
    """Start a passive checkpoint of a SQLite state database in a daemon thread (one at a time)."""
    if engine not in _background_checkpoint:
        return None
    with _ENGINES_LOCK:
        if id(engine) in _checkpointing:
            return None
        _checkpointing.add(id(engine))

    def run() -> None:
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception:  # a busy or closed database: the next checkpoint (or SQLite's own) follows
            pass
        finally:
            with _ENGINES_LOCK:
                _checkpointing.discard(id(engine))

    thread = threading.Thread(target=run, name="state-store-checkpoint", daemon=True)
    thread.start()
    return thread


class StateStore:
    """Access to the state database; build one inside each task from the URL (plain data in)."""

    def __init__(self, url: str, engine: Engine | None = None) -> None:
        self.url = url
        if engine is None:
            self.engine = state_engine(url)
        else:
            self.engine = engine
            migrate(self.engine)

    # ---- confirmed state -------------------------------------------------------------------
    def current_seq(self) -> int:
        """The newest position of the change sequence (0 before the first confirmation)."""
        with self.engine.connect() as conn:
            value = conn.execute(select(sync_meta.c.value).where(sync_meta.c.name == STATE_SEQ)).scalar()
        return int(value or 0)

    def count_state(self, target: str) -> int:
        """Number of confirmed records of ``target`` (all entities)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).where(sync_state.c.target == target)).scalar() or 0)

    def changed_since(self, target: str, seq: int) -> tuple[dict[str, set[str]], set[int]]:
        """Records confirmed after position ``seq``: entity -> reference ids, and the positions seen."""
        query = select(sync_state.c.entity, sync_state.c.ref_id, sync_state.c.seq).where(
            and_(sync_state.c.target == target, sync_state.c.seq > seq)
        )
        changed: dict[str, set[str]] = {}
        seqs: set[int] = set()
        with self.engine.connect() as conn:
            for entity, ref_id, position in conn.execute(query):
                changed.setdefault(entity, set()).add(ref_id)
                seqs.add(int(position))
        return changed, seqs

    def entity_position(self, target: str, entity: str) -> tuple[int, int]:
        """How many records of ``entity`` are confirmed, and the newest position among them."""
        query = select(func.count(), func.max(sync_state.c.seq)).where(
            and_(sync_state.c.target == target, sync_state.c.entity == entity)
        )
        with self.engine.connect() as conn:
            count, newest = conn.execute(query).one()
        return int(count or 0), int(newest or 0)

    def positions_since(self, target: str, seq: int) -> set[int]:
        """The positions of the change sequence confirmed after ``seq`` (read from the index alone)."""
        query = (
            select(sync_state.c.seq)
            .where(and_(sync_state.c.target == target, sync_state.c.seq > seq))
            .distinct()
        )
        with self.engine.connect() as conn:
            return {int(position) for position in conn.execute(query).scalars()}

    def load_state_for(self, target: str, entity: str, ref_ids: Iterable[str]) -> dict[str, StateEntry]:
        """Confirmed entries of some records of one entity (chunked ``IN`` lists)."""
        out: dict[str, StateEntry] = {}
        ids = sorted(set(ref_ids))
        with self.engine.connect() as conn:
            for part in chunks(ids):
                query = select(sync_state.c.ref_id, sync_state.c.payload_hash, sync_state.c.status).where(
                    and_(
                        sync_state.c.target == target,
                        sync_state.c.entity == entity,
                        sync_state.c.ref_id.in_(part),
                    )
                )
                for ref_id, payload_hash, status in conn.execute(query):
                    out[ref_id] = StateEntry(payload_hash, status)
        return out

    def confirmed_in_run(
        self, target: str, run_id: str, entity: str, ref_ids: Iterable[str], after_seq: int
    ) -> dict[str, tuple[StateEntry, int]]:
        """Entries of these records that run ``run_id`` confirmed past position ``after_seq``.

        Returns reference id -> (entry, its position in the change sequence). A retried load
        batch asks this first: what an earlier attempt of the same run confirmed is neither sent
        nor recorded again. ``after_seq`` (where the run looked) leaves out what the run's
        recovery of an interrupted run confirmed before.
        """
        out: dict[str, tuple[StateEntry, int]] = {}
        with self.engine.connect() as conn:
            for part in chunks(sorted(set(ref_ids))):
                query = select(
                    sync_state.c.ref_id, sync_state.c.payload_hash, sync_state.c.status, sync_state.c.seq
                ).where(
                    and_(
                        sync_state.c.target == target,
                        sync_state.c.entity == entity,
                        sync_state.c.run_id == run_id,
                        sync_state.c.seq > after_seq,
                        sync_state.c.ref_id.in_(part),
                    )
                )
                for ref_id, payload_hash, status, seq in conn.execute(query):
                    out[ref_id] = (StateEntry(payload_hash, status), int(seq))
        return out

    def load_state(self, target: str, entity: str) -> dict[str, StateEntry]:
        """All confirmed entries of one entity (streamed; one small tuple per record)."""
        query = select(sync_state.c.ref_id, sync_state.c.payload_hash, sync_state.c.status).where(
            and_(sync_state.c.target == target, sync_state.c.entity == entity)
        )
        out: dict[str, StateEntry] = {}
        with self.engine.connect().execution_options(stream_results=True) as conn:
            for ref_id, payload_hash, status in conn.execute(query):
                out[ref_id] = StateEntry(payload_hash, status)
        return out

    def confirm(
        self,
        target: str,
        confirmations: Sequence[Confirmation],
        run_id: str | None,
        protocol_rows: Sequence[ProtocolRow] = (),
    ) -> int | None:
        """Advance the confirmed state and drop the matching pending entries, in one transaction.

        ``protocol_rows`` (of run ``run_id``) are written in the same transaction, so a run's
        protocol never lacks a confirmed write. Returns the position in the change sequence this
        confirmation got (``None`` if there was nothing to confirm). The counter row is updated
        first, so its row lock orders concurrent confirmations: positions become visible in
        order, and a reader never skips one.

        Records the store holds already are updated in place, the others inserted. Why not
        delete and insert again: that rewrites each record's primary-key entry too; for 687
        updated contacts in a store of 135,000 records it wrote 1,640 pages and took 37 ms,
        updating in place 1,010 pages and 20 ms (SQLite, WAL).
        """
        if not confirmations:
            if protocol_rows and run_id is not None:
                self.add_protocol(run_id, protocol_rows)
            return None
        now = utcnow()
        by_entity: dict[str, list[Confirmation]] = {}
        for c in confirmations:
            by_entity.setdefault(c.entity, []).append(c)
        changed_in_place = (
            update(sync_state)
            .where(_each_record(sync_state))
            .values(
                payload_hash=bindparam("b_hash"),
                status=bindparam("b_status"),
                partner_internal_id=bindparam("b_internal_id"),
                confirmed_at=bindparam("b_at"),
                run_id=bindparam("b_run_id"),
                seq=bindparam("b_seq"),
            )
        )
        with self.engine.begin() as conn:
            at = driver_value(conn, sync_state.c.confirmed_at, now)
            conn.execute(
                update(sync_meta).where(sync_meta.c.name == STATE_SEQ).values(value=sync_meta.c.value + 1)
            )
            seq = int(
                conn.execute(select(sync_meta.c.value).where(sync_meta.c.name == STATE_SEQ)).scalar_one()
            )
            for entity, items in by_entity.items():
                latest = {c.ref_id: c for c in items}  # the last confirmation of a record wins
                ids = sorted(latest)
                held: set[str] = set()
                for part in chunks(ids):
                    held.update(
                        conn.execute(
                            select(sync_state.c.ref_id).where(
                                and_(
                                    sync_state.c.target == target,
                                    sync_state.c.entity == entity,
                                    sync_state.c.ref_id.in_(part),
                                )
                            )
                        ).scalars()
                    )
                execute_many(
                    conn,
                    changed_in_place,
                    [
                        {
                            "b_target": target,
                            "b_entity": entity,
                            "b_ref_id": ref_id,
                            "b_hash": latest[ref_id].payload_hash,
                            "b_status": STATUS_BY_OP[latest[ref_id].op],
                            "b_internal_id": latest[ref_id].partner_internal_id,
                            "b_at": at,
                            "b_run_id": run_id,
                            "b_seq": seq,
                        }
                        for ref_id in ids
                        if ref_id in held
                    ],
                )
                execute_many(
                    conn,
                    insert(sync_state),
                    [
                        {
                            "target": target,
                            "entity": entity,
                            "ref_id": c.ref_id,
                            "payload_hash": c.payload_hash,
                            "status": STATUS_BY_OP[c.op],
                            "partner_internal_id": c.partner_internal_id,
                            "confirmed_at": at,
                            "run_id": run_id,
                            "seq": seq,
                        }
                        for c in (latest[ref_id] for ref_id in ids if ref_id not in held)
                    ],
                )
                _delete_ids(conn, sync_pending, target, entity, ids)
            if protocol_rows and run_id is not None:
                _insert_protocol(conn, run_id, protocol_rows, now)
        checkpoint_soon(self.engine)
        return seq

    def forget(self, target: str, entity: str, ref_ids: Sequence[str]) -> None:
        """Drop the confirmed entries of records the partner does not hold (a repair found them
        missing there): the next run plans them as new and sends them."""
        if not ref_ids:
            return
        with self.engine.begin() as conn:
            _delete_ids(conn, sync_state, target, entity, ref_ids)

    # ---- pending writes --------------------------------------------------------------------
    def mark_pending(self, target: str, writes: Sequence[PendingWrite]) -> None:
        """Record writes about to be sent (replacing older pending entries of the same records)."""
        if not writes:
            return
        now = utcnow()
        with self.engine.begin() as conn:
            by_entity: dict[str, list[PendingWrite]] = {}
            for w in writes:
                by_entity.setdefault(w.entity, []).append(w)
            for entity, items in by_entity.items():
                _delete_ids(conn, sync_pending, target, entity, {w.ref_id for w in items})
            created_at = driver_value(conn, sync_pending.c.created_at, now)
            latest = {(w.entity, w.ref_id): w for w in writes}  # the last write of a record wins
            execute_many(
                conn,
                insert(sync_pending),
                [
                    {
                        "target": target,
                        "entity": w.entity,
                        "ref_id": w.ref_id,
                        "op": w.op,
                        "payload_hash": w.payload_hash,
                        "run_id": w.run_id,
                        "created_at": created_at,
                    }
                    for w in latest.values()
                ],
            )

    def load_pending(self, target: str) -> list[PendingWrite]:
        """Writes of earlier runs that were never confirmed (the run died or gave up)."""
        query = select(
            sync_pending.c.entity,
            sync_pending.c.ref_id,
            sync_pending.c.op,
            sync_pending.c.payload_hash,
            sync_pending.c.run_id,
        ).where(sync_pending.c.target == target)
        with self.engine.connect() as conn:
            return [PendingWrite(*row) for row in conn.execute(query)]

    def clear_pending(self, target: str, entity: str, ref_ids: Sequence[str]) -> None:
        """Forget pending writes that definitely did not happen (the partner refused them)."""
        with self.engine.begin() as conn:
            _delete_ids(conn, sync_pending, target, entity, ref_ids)

    # ---- quarantine ------------------------------------------------------------------------
    def quarantine(
        self, target: str, items: Sequence[QuarantineItem], run_id: str | None
    ) -> list[QuarantineItem]:
        """Put records into quarantine, or refresh ``last_seen`` if they are there for the same rule.

        A record seen again keeps the payload it is held with now (``record_json``): a hold that
        lasts while the payload is unchanged compares with the latest one.

        Returns the items that were not open in quarantine before (new, or back after they had
        been resolved), so a run can tell what is new from what it merely still holds.
        """
        if not items:
            return []
        now = utcnow()
        opened: list[QuarantineItem] = []
        with self.engine.begin() as conn:
            existing: set[tuple[str, str, str]] = set()
            still_open: set[tuple[str, str, str]] = set()
            by_entity: dict[str, list[QuarantineItem]] = {}
            for item in items:
                by_entity.setdefault(item.entity, []).append(item)
            for entity, group in by_entity.items():
                for part in chunks(sorted({i.ref_id for i in group})):
                    rows = conn.execute(
                        select(
                            quarantine.c.entity,
                            quarantine.c.ref_id,
                            quarantine.c.rule,
                            quarantine.c.resolved_at,
                        ).where(
                            and_(
                                quarantine.c.target == target,
                                quarantine.c.entity == entity,
                                quarantine.c.ref_id.in_(part),
                            )
                        )
                    )
                    for e, r, ru, resolved_at in rows:
                        existing.add((e, r, ru))
                        if resolved_at is None:
                            still_open.add((e, r, ru))
            new_rows = []
            seen_again = []
            for item in items:
                key = (item.entity, item.ref_id, item.rule)
                if key not in still_open:
                    still_open.add(key)
                    opened.append(item)
                if key in existing:
                    seen_again.append(
                        {
                            "b_entity": item.entity,
                            "b_ref_id": item.ref_id,
                            "b_rule": item.rule,
                            "b_reason": item.reason,
                            "b_record": record_json(item.record),
                        }
                    )
                else:
                    existing.add(key)
                    new_rows.append(
                        {
                            "target": target,
                            "entity": item.entity,
                            "ref_id": item.ref_id,
                            "rule": item.rule,
                            "reason": item.reason,
                            "record_json": record_json(item.record),
                            "run_id": run_id,
                        }
                    )
            seen_at = driver_value(conn, quarantine.c.last_seen, now)
            execute_many(
                conn,
                update(quarantine)
                .where(and_(_each_record(quarantine), quarantine.c.rule == bindparam("b_rule")))
                .values(
                    last_seen=bindparam("b_seen"),
                    resolved_at=null(),
                    reason=bindparam("b_reason"),
                    record_json=bindparam("b_record"),
                    run_id=bindparam("b_run_id"),
                ),
                [{**row, "b_target": target, "b_seen": seen_at, "b_run_id": run_id} for row in seen_again],
            )
            execute_many(
                conn,
                insert(quarantine),
                [{**row, "first_seen": seen_at, "last_seen": seen_at} for row in new_rows],
            )
        return opened

    def resolve_quarantine(self, target: str, still_failing: Iterable[tuple[str, str]]) -> int:
        """Mark open quarantine entries resolved unless (entity, ref_id) is still failing.

        Returns the number of entries resolved.
        """
        failing = set(still_failing)
        now = utcnow()
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(quarantine.c.id, quarantine.c.entity, quarantine.c.ref_id).where(
                    and_(quarantine.c.target == target, quarantine.c.resolved_at.is_(None))
                )
            ).all()
            ids = [row.id for row in rows if (row.entity, row.ref_id) not in failing]
            for part in chunks(ids):
                conn.execute(update(quarantine).where(quarantine.c.id.in_(part)).values(resolved_at=now))
        return len(ids)

    def resolve_quarantine_entries(self, target: str, entries: Iterable[tuple[str, str, str]]) -> int:
        """Mark exactly these open entries (entity, ref_id, rule) resolved; other rules' entries of
        the same record stay open.

        Why beside :meth:`resolve_quarantine`: a record may be held by several rules at once (a
        precondition and a refusal by the partner); fixing one must release that one only, and an
        entry no rule of the caller looks at must not keep a fixed one open. Returns the number
        of entries resolved.
        """
        wanted = set(entries)
        if not wanted:
            return 0
        now = utcnow()
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(quarantine.c.id, quarantine.c.entity, quarantine.c.ref_id, quarantine.c.rule).where(
                    and_(quarantine.c.target == target, quarantine.c.resolved_at.is_(None))
                )
            ).all()
            ids = [row.id for row in rows if (row.entity, row.ref_id, row.rule) in wanted]
            for part in chunks(ids):
                conn.execute(update(quarantine).where(quarantine.c.id.in_(part)).values(resolved_at=now))
        return len(ids)

    def confirmed_ids(self, target: str, entity: str, status: str = "active") -> set[str]:
        """The reference ids of one entity the partner confirmed with ``status`` (ids only: a
        no-change run compares half a million of them with the ERP in a fraction of a second,
        where :meth:`load_state` builds an entry per record)."""
        query = select(sync_state.c.ref_id).where(
            and_(sync_state.c.target == target, sync_state.c.entity == entity, sync_state.c.status == status)
        )
        with self.engine.connect().execution_options(stream_results=True) as conn:
            return set(conn.execute(query).scalars())

    def open_quarantine(self, target: str) -> list[dict[str, Any]]:
        """Open quarantine entries, oldest first."""
        query = (
            select(quarantine)
            .where(and_(quarantine.c.target == target, quarantine.c.resolved_at.is_(None)))
            .order_by(quarantine.c.id)
        )
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    # ---- the system it belongs to -----------------------------------------------------------
    def claim_system(self, system: str) -> None:
        """Record that this store belongs to ``system`` on its first run; refuse a run of another.

        Why: the settings refuse a state store shared with another system only where both
        systems' settings can be seen (one process, one set of profiles); the store itself
        remembers whose it is, whatever host or configuration a run comes from.

        Raises:
            SystemMixError: the store belongs to another system (nothing was read or written).
        """
        query = select(state_system.c.system).where(state_system.c.id == OWNER_ROW)
        with self.engine.connect() as conn:
            owner = conn.execute(query).scalar()
        if owner is None:
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        insert(state_system).values(id=OWNER_ROW, system=system, claimed_at=utcnow())
                    )
                return
            except IntegrityError:  # another run recorded its system at the same moment: take that
                with self.engine.connect() as conn:
                    owner = conn.execute(query).scalar_one()
        if owner != system:
            url = self.engine.url.render_as_string(hide_password=True)
            raise SystemMixError(
                f"The state store {url} belongs to the {owner} system; this run is the {system} system's "
                f"and uses nothing of it. Point the {system} system at its own state store (state_url); if "
                f"this database was copied from the {owner} system on purpose, empty its table "
                "state_system and the next run records it for its system (docs/operations.md)."
            )

    def system(self) -> str | None:
        """The system this store belongs to (``None`` before its first run)."""
        with self.engine.connect() as conn:
            owner: str | None = conn.execute(
                select(state_system.c.system).where(state_system.c.id == OWNER_ROW)
            ).scalar()
        return owner

    # ---- partner credentials ---------------------------------------------------------------
    def key(self, name: str) -> bytes:
        """The random 32-byte key called ``name``, created on first use (by whichever process is first).

        Why here: such a key protects digests kept outside the state database (the memo's row
        digests in ``cache_dir``); it must live where the personal data it stands for lives.
        """
        query = select(sync_keys.c.key_hex).where(sync_keys.c.name == name)
        with self.engine.connect() as conn:
            found = conn.execute(query).scalar()
        if found is None:
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        insert(sync_keys).values(
                            name=name,
                            key_hex=secrets.token_hex(32),
                            created_at=utcnow(),
                        )
                    )
            except IntegrityError:
                pass  # another process created it at the same moment: take theirs
            with self.engine.connect() as conn:
                found = conn.execute(query).scalar_one()
        return bytes.fromhex(found)

    def record_credentials(self, target: str, key_hint: str, expires_at: datetime | None) -> None:
        """Remember which key ``target``'s connector fetched credentials with and when they expire.

        Why: a later run warns before a partner's token or certificate runs out. One row per
        target, replaced on each call; ``fetched_at`` is now (UTC). Never pass the key or token:
        ``key_hint`` is what :func:`credential_hint` makes of it.

        Raises:
            ValueError: ``key_hint`` is longer than a hint (40 characters: more likely the secret
                itself), or ``expires_at`` has no time zone.
        """
        if len(key_hint) > KEY_HINT_LENGTH:
            raise ValueError(
                f"key hint of {target} has {len(key_hint)} characters: pass credential_hint(key), "
                "never the key or token itself"
            )
        if expires_at is not None and expires_at.tzinfo is None:
            raise ValueError(f"expiry of the credentials of {target} has no time zone: {expires_at}")
        values = {
            "key_hint": key_hint,
            "expires_at": None if expires_at is None else expires_at.astimezone(UTC),
            "fetched_at": utcnow(),
        }
        replace = update(partner_credentials).where(partner_credentials.c.target == target).values(**values)
        try:
            with self.engine.begin() as conn:
                if conn.execute(replace).rowcount == 0:
                    conn.execute(insert(partner_credentials).values(target=target, **values))
        except IntegrityError:  # another process inserted the target's row between the two statements
            with self.engine.begin() as conn:
                conn.execute(replace)

    def credentials(self, target: str) -> CredentialRecord | None:
        """What :meth:`record_credentials` last recorded for ``target`` (``None``: nothing yet)."""
        query = select(
            partner_credentials.c.key_hint, partner_credentials.c.expires_at, partner_credentials.c.fetched_at
        ).where(partner_credentials.c.target == target)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        expires_at = None if row.expires_at is None else as_utc(row.expires_at)
        return CredentialRecord(target, row.key_hint, expires_at, as_utc(row.fetched_at))

    # ---- cursors and file digests ---------------------------------------------------------
    def cursor(self, target: str, name: str) -> str | None:
        """The position ``target``'s incremental read ``name`` reached (``None``: never read)."""
        query = select(sync_cursors.c.value).where(
            sync_cursors.c.target == target, sync_cursors.c.name == name
        )
        with self.engine.connect() as conn:
            value: str | None = conn.execute(query).scalar()
        return value

    def set_cursor(self, target: str, name: str, value: str) -> None:
        """Advance the cursor: only once what was read up to ``value`` has been kept."""
        values = {"value": value, "updated_at": utcnow()}
        replace = (
            update(sync_cursors)
            .where(sync_cursors.c.target == target, sync_cursors.c.name == name)
            .values(**values)
        )
        try:
            with self.engine.begin() as conn:
                if conn.execute(replace).rowcount == 0:
                    conn.execute(insert(sync_cursors).values(target=target, name=name, **values))
        except IntegrityError:  # another process inserted it between the two statements
            with self.engine.begin() as conn:
                conn.execute(replace)

    def file_digests(self) -> dict[str, tuple[int, int, str]]:
        """Every remembered file digest: path -> (size, mtime_ns, SHA-256 hex)."""
        query = select(
            file_digests.c.path, file_digests.c.size, file_digests.c.mtime_ns, file_digests.c.digest
        )
        with self.engine.connect() as conn:
            return {row[0]: (row[1], row[2], row[3]) for row in conn.execute(query)}

    def file_stats(self) -> list[tuple[str, int, int]]:
        """Every remembered file as (path, size, mtime_ns) at the time its digest was read: what
        a quiet run checks with one ``stat`` each (the digests themselves are not needed)."""
        query = select(file_digests.c.path, file_digests.c.size, file_digests.c.mtime_ns)
        with self.engine.connect() as conn:
            return [(row[0], row[1], row[2]) for row in conn.execute(query)]

    def save_file_digests(
        self, changed: Mapping[str, tuple[int, int, str]], gone: Iterable[str] = ()
    ) -> None:
        """Remember new or changed digests and forget those of files no longer read."""
        gone = list(gone)
        if not changed and not gone:
            return
        with self.engine.begin() as conn:
            keys = list(changed) + gone
            for i in range(0, len(keys), 500):
                conn.execute(delete(file_digests).where(file_digests.c.path.in_(keys[i : i + 500])))
            if changed:
                conn.execute(
                    insert(file_digests),
                    [
                        {"path": p, "size": size, "mtime_ns": mtime, "digest": digest}
                        for p, (size, mtime, digest) in changed.items()
                    ],
                )

    # ---- runs and protocol -----------------------------------------------------------------
    def start_run(self, run_id: str, flow: str, target: str, dry_run: bool) -> None:
        """Record the start of a run.

        A re-used run id (a flow run retried from the Prefect UI) is restarted: the writes of
        its earlier attempt stay in its protocol; what that attempt failed, skipped, held or
        noted without writing it is decided again by this one, so those lines go.
        """
        written = protocol.alias("written")
        noted_and_written = exists().where(
            written.c.run_id == run_id,
            written.c.entity == protocol.c.entity,
            written.c.ref_id == protocol.c.ref_id,
            written.c.outcome.in_(WRITTEN_OUTCOMES),
        )
        with self.engine.begin() as conn:
            conn.execute(
                delete(protocol).where(
                    protocol.c.run_id == run_id,
                    or_(
                        protocol.c.outcome.in_(("failed", "skipped", "quarantined")),
                        and_(protocol.c.outcome == "note", ~noted_and_written),
                    ),
                )
            )
            conn.execute(delete(sync_runs).where(sync_runs.c.run_id == run_id))
            conn.execute(
                insert(sync_runs).values(
                    run_id=run_id,
                    flow=flow,
                    target=target,
                    started_at=utcnow(),
                    status="RUNNING",
                    dry_run=dry_run,
                )
            )

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any]) -> None:
        """Record the end of a run with its summary."""
        with self.engine.begin() as conn:
            conn.execute(
                update(sync_runs)
                .where(sync_runs.c.run_id == run_id)
                .values(finished_at=utcnow(), status=status, summary_json=json.dumps(summary, default=str))
            )

    def run_summary(self, run_id: str) -> dict[str, Any] | None:
        """The summary a finished run recorded (``None``: unknown run, or not finished)."""
        with self.engine.connect() as conn:
            text = conn.execute(select(sync_runs.c.summary_json).where(sync_runs.c.run_id == run_id)).scalar()
        return json.loads(text) if text else None

    def add_protocol(self, run_id: str, rows: Sequence[ProtocolRow]) -> None:
        """Append protocol lines of a run."""
        if not rows:
            return
        with self.engine.begin() as conn:
            _insert_protocol(conn, run_id, rows, utcnow())

    def protocol_counts(self, run_id: str) -> dict[tuple[str, str], int]:
        """Counts per (entity, outcome) of one run."""
        query = (
            select(protocol.c.entity, protocol.c.outcome, func.count())
            .where(protocol.c.run_id == run_id)
            .group_by(protocol.c.entity, protocol.c.outcome)
        )
        with self.engine.connect() as conn:
            return {(e, o): n for e, o, n in conn.execute(query)}

    def protocol_rows(
        self, run_id: str, outcomes: Sequence[str] | None = None, limit: int = 1000
    ) -> list[ProtocolRow]:
        """Protocol lines of one run, optionally of some outcomes only."""
        query = select(protocol.c.entity, protocol.c.ref_id, protocol.c.outcome, protocol.c.reason).where(
            protocol.c.run_id == run_id
        )
        if outcomes:
            query = query.where(protocol.c.outcome.in_(list(outcomes)))
        query = query.order_by(protocol.c.id).limit(limit)
        with self.engine.connect() as conn:
            return [ProtocolRow(*row) for row in conn.execute(query)]
