"""The deposit sandbox's state: SQLite (stdlib), an in-memory index, write-through with group commit.

Every record is one row (the JSON the API returns, without the read-only fields it adds); the
process keeps every record's body, hash and flags in memory so that an upsert decides *created /
updated / unchanged* and checks the booking's account without reading the database. ``commit()``
is called once per event-loop turn for the writes of that turn, before they are answered, so what
a client was told survives a restart of the sandbox.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

ENTITIES = ("deposit-accounts", "bookings")


def now_iso() -> str:
    """Current time as the API writes it: UTC, milliseconds, ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def canonical(payload: dict[str, Any]) -> str:
    """Deterministic JSON (sorted keys, no spaces)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(slots=True)
class Entry:
    """One record as the sandbox holds it."""

    internal_id: int
    body: dict[str, Any]
    body_hash: str
    archived: bool
    created_at: str
    updated_at: str


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """``effective`` is false when the record already was in that state (a duplicate write)."""

    created: bool
    effective: bool
    entry: Entry


class Store:
    """Deposit accounts and bookings of one sandbox; see the module docstring.

    Args:
        path: the SQLite file (parent folders are created).
    """

    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS records (
                internal_id INTEGER PRIMARY KEY AUTOINCREMENT, entity TEXT NOT NULL, ref_id TEXT NOT NULL,
                body TEXT NOT NULL, body_hash TEXT NOT NULL, archived INTEGER NOT NULL,
                created_at TEXT NOT NULL, updated_at TEXT NOT NULL, UNIQUE (entity, ref_id));
            CREATE TABLE IF NOT EXISTS write_log (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, entity TEXT NOT NULL, ref_id TEXT NOT NULL,
                op TEXT NOT NULL, body_hash TEXT, effective INTEGER NOT NULL, at TEXT NOT NULL);
            CREATE INDEX IF NOT EXISTS ix_write_log_record ON write_log (entity, ref_id);
            CREATE TABLE IF NOT EXISTS tokens (token TEXT PRIMARY KEY, expires_at TEXT NOT NULL);
            """
        )
        self.index: dict[str, dict[str, Entry]] = {e: {} for e in ENTITIES}
        self.balances: dict[str, Decimal] = {}
        self._in_tx = False
        for iid, entity, ref_id, body, digest, archived, created, updated in self._db.execute(
            "SELECT internal_id, entity, ref_id, body, body_hash, archived, created_at, updated_at "
            "FROM records ORDER BY internal_id"
        ):
            entry = Entry(iid, json.loads(body), digest, bool(archived), created, updated)
            self.index[entity][ref_id] = entry
            if entity == "bookings":
                self._book(entry.body, Decimal(1))

    def _book(self, body: dict[str, Any], sign: Decimal) -> None:
        account = str(body["accountId"])
        self.balances[account] = self.balances.get(account, Decimal(0)) + sign * Decimal(str(body["amount"]))

    def _begin(self) -> None:
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True

    def commit(self) -> None:
        """Make every write so far durable (one commit for all writes of an event-loop turn)."""
        if self._in_tx:
            self._db.execute("COMMIT")
            self._in_tx = False

    def get(self, entity: str, ref_id: str) -> Entry | None:
        """The record, or ``None``."""
        return self.index[entity].get(ref_id)

    def upsert(self, entity: str, ref_id: str, body: dict[str, Any]) -> WriteOutcome:
        """Store ``body`` as the record's content (not archived); uncommitted until :meth:`commit`."""
        digest = hashlib.sha256(canonical(body).encode()).hexdigest()
        entry = self.index[entity].get(ref_id)
        now = now_iso()
        self._begin()
        if entry is not None and entry.body_hash == digest and not entry.archived:
            self._log(entity, ref_id, "upsert", digest, False, now)
            return WriteOutcome(False, False, entry)
        text = canonical(body)
        if entry is None:
            cursor = self._db.execute(
                "INSERT INTO records (entity, ref_id, body, body_hash, archived, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, 0, ?, ?)",
                (entity, ref_id, text, digest, now, now),
            )
            entry = Entry(int(cursor.lastrowid or 0), body, digest, False, now, now)
            self.index[entity][ref_id] = entry
            created = True
        else:
            self._db.execute(
                "UPDATE records SET body = ?, body_hash = ?, archived = 0, updated_at = ? WHERE internal_id = ?",
                (text, digest, now, entry.internal_id),
            )
            if entity == "bookings":
                self._book(entry.body, Decimal(-1))
            entry.body, entry.body_hash, entry.archived, entry.updated_at = body, digest, False, now
            created = False
        if entity == "bookings":
            self._book(body, Decimal(1))
        self._log(entity, ref_id, "upsert", digest, True, now)
        return WriteOutcome(created, True, entry)

    def archive(self, entity: str, ref_id: str) -> WriteOutcome | None:
        """Archive a record (``None``: unknown); archiving an archived record is a duplicate."""
        entry = self.index[entity].get(ref_id)
        if entry is None:
            return None
        now = now_iso()
        self._begin()
        if entry.archived:
            self._log(entity, ref_id, "archive", None, False, now)
            return WriteOutcome(False, False, entry)
        self._db.execute(
            "UPDATE records SET archived = 1, updated_at = ? WHERE internal_id = ?", (now, entry.internal_id)
        )
        entry.archived, entry.updated_at = True, now
        self._log(entity, ref_id, "archive", None, True, now)
        return WriteOutcome(False, True, entry)

    def _log(self, entity: str, ref_id: str, op: str, digest: str | None, effective: bool, at: str) -> None:
        self._db.execute(
            "INSERT INTO write_log (entity, ref_id, op, body_hash, effective, at) VALUES (?, ?, ?, ?, ?, ?)",
            (entity, ref_id, op, digest, int(effective), at),
        )

    def write_log(self, entity: str, ref_id: str) -> list[dict[str, Any]]:
        """Every write accepted for one record, oldest first."""
        self.commit()
        rows = self._db.execute(
            "SELECT op, body_hash, effective, at FROM write_log WHERE entity = ? AND ref_id = ? ORDER BY seq",
            (entity, ref_id),
        )
        return [{"op": op, "bodyHash": h, "effective": bool(e), "at": at} for op, h, e, at in rows]

    def save_token(self, token: str, expires_at: str) -> None:
        """Remember an issued token (a restarted sandbox still takes it)."""
        self._begin()
        self._db.execute(
            "INSERT OR REPLACE INTO tokens (token, expires_at) VALUES (?, ?)", (token, expires_at)
        )
        self.commit()

    def load_tokens(self) -> dict[str, str]:
        """Every token issued before, with its expiry."""
        return dict(self._db.execute("SELECT token, expires_at FROM tokens"))

    def reset(self) -> None:
        """No records and no write log (tokens stay valid)."""
        self.commit()
        self._db.execute("DELETE FROM records")
        self._db.execute("DELETE FROM write_log")
        self.index = {e: {} for e in ENTITIES}
        self.balances = {}

    def close(self) -> None:
        """Commit and close the database."""
        self.commit()
        self._db.close()
