"""The SEPA ledger in the state database: which claim went into which file under which EndToEndId.

Why: the bank collects whatever file it is given, and a run may die at any point. The ledger is
what makes "never twice" hold:

1. Before a file is written, its claims are recorded as ``prepared`` (committed).
2. The file is written as ``.part``, validated, and atomically renamed to its final name.
3. In one transaction, the file and its claims become ``written``.
4. The ERP claims become ``IN_COLLECTION``; then the file is marked ``erp_synced``.

``recover`` runs first in every run: a ``prepared`` file whose final name exists was renamed
just before a crash and becomes ``written``; one without it is abandoned (``.part`` deleted,
ledger rows removed) so its claims are free again. ``written`` files not yet ``erp_synced`` get
their ERP update again (idempotent). A claim with a ledger row in ``prepared``, ``written``,
``paid`` or ``partly_paid`` is never selected again; ``(claim_no, attempt)`` is unique, so two
runs racing for the same claim cannot both record it.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, NamedTuple

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    delete,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from connectors.erp.database import make_engine
from connectors.sepa.errors import SepaLedgerConflict, SepaRunLocked
from connectors.sepa.writing import (
    ParallelScan,
    PaymentFileTotals,
    fault_point,
    part_path,
    publish,
    write_checked_part,
)
from connectors.sqlutil import chunks, sqlite_file, utcnow

sepa_metadata = MetaData()

#: Ledger statuses that block a claim from being collected again.
ACTIVE_STATUSES = ("prepared", "written", "paid", "partly_paid")

sepa_files = Table(
    "sepa_files",
    sepa_metadata,
    Column("msg_id", String(35), primary_key=True),
    Column("run_id", String(40), nullable=False),
    Column("path", String(500), nullable=False),
    Column("status", String(12), nullable=False),  # prepared, written, abandoned
    Column("batch_booking", Boolean),
    Column("nb_of_txs", Integer, nullable=False),
    Column("ctrl_sum", Numeric(14, 2), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("written_at", DateTime(timezone=True)),
    Column("erp_synced_at", DateTime(timezone=True)),
    Column("note", Text),
)

sepa_blocks = Table(
    "sepa_blocks",
    sepa_metadata,
    Column("pmt_inf_id", String(35), primary_key=True),
    Column("msg_id", String(35), nullable=False),
    Column("collection_date", Date, nullable=False),
    Column("sequence_type", String(4), nullable=False),
    Column("nb_of_txs", Integer, nullable=False),
    Column("ctrl_sum", Numeric(14, 2), nullable=False),
    Column("batch_booking", Boolean),
    Index("ix_sepa_blocks_msg", "msg_id"),
)

sepa_ledger = Table(
    "sepa_ledger",
    sepa_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("claim_no", String(30), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("msg_id", String(35), nullable=False),
    Column("pmt_inf_id", String(35), nullable=False),
    Column("end_to_end_id", String(35), nullable=False),
    Column("mandate_id", String(35), nullable=False),
    Column("debtor_iban", String(34), nullable=False),
    Column("person_no", String(20), nullable=False),
    Column("object_no", String(20)),
    Column("amount", Numeric(12, 2), nullable=False),
    Column("sequence_type", String(4), nullable=False),
    Column("collection_date", Date, nullable=False),
    Column("status", String(12), nullable=False),  # prepared written paid partly_paid returned
    Column("paid_amount", Numeric(12, 2)),
    Column("return_reason", String(4)),
    Column("statement_ref", String(120)),
    Column("prepared_at", DateTime(timezone=True), nullable=False),
    Column("written_at", DateTime(timezone=True)),
    Column("settled_at", DateTime(timezone=True)),
    UniqueConstraint("claim_no", "attempt", name="uq_sepa_ledger_claim_attempt"),
    Index("ix_sepa_ledger_e2e", "end_to_end_id"),
    Index("ix_sepa_ledger_msg", "msg_id", "status"),
    Index("ix_sepa_ledger_block", "pmt_inf_id"),
    Index("ix_sepa_ledger_mandate", "mandate_id"),
)

sepa_statements = Table(
    "sepa_statements",
    sepa_metadata,
    Column("statement_key", String(200), primary_key=True),
    Column("path", String(500), nullable=False),
    Column("kind", String(10), nullable=False),
    Column("imported_at", DateTime(timezone=True), nullable=False),
    Column("summary_json", Text),
)

sepa_locks = Table(
    "sepa_locks",
    sepa_metadata,
    Column("name", String(40), primary_key=True),
    Column("run_id", String(40), nullable=False),
    Column("host", String(120), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("acquired_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class LedgerRow:
    """One claim in one file, as the ledger records it."""

    claim_no: str
    attempt: int
    msg_id: str
    pmt_inf_id: str
    end_to_end_id: str
    mandate_id: str
    debtor_iban: str
    person_no: str
    object_no: str | None
    amount: Decimal
    sequence_type: str
    collection_date: date


@dataclass(frozen=True)
class BlockRow:
    """One PmtInf block of a file."""

    pmt_inf_id: str
    msg_id: str
    collection_date: date
    sequence_type: str
    nb_of_txs: int
    ctrl_sum: Decimal
    batch_booking: bool | None


@dataclass(frozen=True)
class ClaimLedgerState:
    """What the ledger knows of one claim: its blocking entry (if any) and the next attempt number."""

    blocking_status: str | None
    blocking_msg_id: str | None
    next_attempt: int


@dataclass(frozen=True)
class RecoveryReport:
    """What ``recover`` found and did."""

    completed_files: list[str]
    abandoned_files: list[str]
    resynced_files: list[str]
    unverified_files: list[str] = field(default_factory=list)  # written, their file gone or changed


#: Called with (claim_nos, status) to update the ERP; must be idempotent.
ErpUpdate = Callable[[Sequence[str], str], None]


class FileRecovery(NamedTuple):
    """What :meth:`FileLedger.recover_files` did, by message id."""

    completed: list[str]
    abandoned: list[str]
    unverified: list[str]


class FileLedger:
    """What the direct-debit ledger and the payout ledger share: one table of files, one of entries.

    A file is ``prepared`` before it is written, ``written`` once it has its final name, or
    ``abandoned``; its entries (claims or payouts, keyed by ``msg_id``) follow it in one
    transaction. Subclasses name their two tables (same column names for ``msg_id``, ``path``,
    ``status``, ``written_at``, ``note``, ``created_at``; entries have ``amount`` and ``id``).
    A run lock (``sepa_locks``) keeps two runs of one kind from recovering each other's files.
    """

    files_table: Table
    entries_table: Table

    def __init__(self, url: str, engine: Engine | None = None, create_tables: bool = True) -> None:
        self.url = url
        self.engine = engine or make_engine(url)
        if create_tables:
            sepa_metadata.create_all(self.engine)

    # ---- run lock ------------------------------------------------------------------------------
    def acquire_lock(self, name: str, run_id: str) -> None:
        """Take the named run lock; a lock left by a dead process on this host is taken over.

        Raises:
            SepaRunLocked: a live process (or one on another host) holds it.
        """
        host, pid = socket.gethostname(), os.getpid()
        row = {"name": name, "run_id": run_id, "host": host, "pid": pid, "acquired_at": utcnow()}
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(sepa_locks).values(**row))
            return
        except IntegrityError:
            pass
        with self.engine.begin() as conn:
            holder = conn.execute(select(sepa_locks).where(sepa_locks.c.name == name)).mappings().first()
            if holder is not None and not (holder["host"] == host and not _pid_alive(holder["pid"])):
                if holder["host"] == host and holder["pid"] == pid:
                    return
                raise SepaRunLocked(
                    f"the {name} lock is held by run {holder['run_id']} (host {holder['host']}, pid "
                    f"{holder['pid']}, since {holder['acquired_at']}); wait for it to finish, or delete "
                    f"the row in sepa_locks if that process is gone"
                )
            conn.execute(delete(sepa_locks).where(sepa_locks.c.name == name))
            conn.execute(insert(sepa_locks).values(**row))

    def release_lock(self, name: str, run_id: str) -> None:
        """Give the lock back (only if this run holds it)."""
        with self.engine.begin() as conn:
            conn.execute(
                delete(sepa_locks).where(and_(sepa_locks.c.name == name, sepa_locks.c.run_id == run_id))
            )

    # ---- the life of a file -----------------------------------------------------------------
    def mark_written(self, msg_id: str, note: str | None = None) -> None:
        """The file is on disk under its final name: file and entries become ``written`` (one transaction)."""
        files, entries = self.files_table, self.entries_table
        now = utcnow()
        file_values: dict[str, Any] = {"status": "written", "written_at": now}
        if note is not None:
            file_values["note"] = note[:1000]
        with self.engine.begin() as conn:
            conn.execute(
                update(entries)
                .where(and_(entries.c.msg_id == msg_id, entries.c.status == "prepared"))
                .values(status="written", written_at=now)
            )
            conn.execute(update(files).where(files.c.msg_id == msg_id).values(**file_values))

    def mark_publishing(self, msg_id: str) -> None:
        """The file is about to get its final name: from here on a crash may leave it with the
        bank already (a client can pick a file up the moment it appears), so recovery never
        releases its entries again."""
        files = self.files_table
        with self.engine.begin() as conn:
            conn.execute(
                update(files)
                .where(and_(files.c.msg_id == msg_id, files.c.status == "prepared"))
                .values(status="publishing")
            )

    def abandon_file(self, msg_id: str, note: str) -> None:
        """Forget a file that never reached its final name: its entries are free again."""
        files, entries = self.files_table, self.entries_table
        with self.engine.begin() as conn:
            conn.execute(
                delete(entries).where(and_(entries.c.msg_id == msg_id, entries.c.status == "prepared"))
            )
            self._forget_file_parts(conn, msg_id)
            conn.execute(update(files).where(files.c.msg_id == msg_id).values(status="abandoned", note=note))

    def _forget_file_parts(self, conn: Connection, msg_id: str) -> None:
        """Hook: delete further rows of an abandoned file (inside ``abandon_file``'s transaction)."""

    def write_and_publish(
        self,
        msg_id: str,
        path: Path,
        kind: str,
        writer: Callable[[IO[bytes]], object],
        scan: ParallelScan | None = None,
    ) -> PaymentFileTotals:
        """Write a recorded (``prepared``) file crash-safely; on success it is ``written``.

        ``.part`` written while a child validates it -> headers, counted sums and this ledger's
        figures compared -> atomic rename -> file and entries ``written`` in one transaction.
        ``scan``: a validating child started earlier (``writing.start_scan``).
        The file is ``publishing`` from just before the rename until it is ``written``. The fault
        points ``before_publish``, ``after_publish`` and ``after_written`` let the crash tests stop
        the process between these steps.

        Raises:
            SepaValidationError: the file failed its schema or its sums; nothing is published and
                the file is abandoned (its entries free again).
        """
        try:
            part, totals = write_checked_part(path, kind, writer, lambda: self.ledger_totals(msg_id), scan)
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt | SystemExit):
                self.abandon_file(msg_id, f"not published: {exc}"[:1000])
            raise
        fault_point("before_publish")
        self.mark_publishing(msg_id)
        publish(part, path)
        fault_point("after_publish")
        self.mark_written(msg_id)
        fault_point("after_written")
        return totals

    def recover_files(self, check_file: Callable[[Path, str], bool]) -> FileRecovery:
        """Finish or undo every file a crash left ``prepared`` or ``publishing`` (idempotent).

        - ``prepared``: the rename had not begun, so the file never had its final name. Its
          ``.part`` is deleted and its entries released: the run pays them. (A final file that
          passes ``check_file(path, msg_id)``, left by a release without the ``publishing``
          step, is taken as written.)
        - ``publishing``: the crash came around the rename. Still a ``.part`` and no final
          file: the rename did not happen; released as above. The final file there and passing
          the check: it becomes ``written``. The final file gone (picked up by the bank's
          client, moved, deleted) or changed: it had its final name, so it may be with the bank.
          Its entries are never released, the file is recorded ``written`` with a note, and it
          is listed as ``unverified`` for a person to check with the bank. A changed file is
          renamed ``.rejected`` so nobody sends it as it is.

        Returns:
            The message ids completed, abandoned, and written without a file to check.
        """
        recovery = FileRecovery([], [], [])
        files = self.files_table
        with self.engine.connect() as conn:
            left = conn.execute(
                select(files.c.msg_id, files.c.path, files.c.status).where(
                    files.c.status.in_(("prepared", "publishing"))
                )
            ).all()
        for msg_id, path_text, status in left:
            path = Path(path_text)
            part = part_path(path)
            renamed = status == "publishing" and not part.exists()
            part.unlink(missing_ok=True)
            if path.exists() and check_file(path, msg_id):
                self.mark_written(msg_id)
                recovery.completed.append(msg_id)
            elif renamed:
                note = "published before a crash, then "
                if path.exists():
                    path.replace(path.with_name(path.name + ".rejected"))
                    note += "changed (renamed .rejected)"
                else:
                    note += "moved or deleted"
                self.mark_written(msg_id, f"{note}; not paid again: check with the bank that it arrived")
                recovery.unverified.append(msg_id)
            else:
                if path.exists():
                    path.replace(path.with_name(path.name + ".rejected"))
                self.abandon_file(msg_id, "run stopped before the file was complete; entries released")
                recovery.abandoned.append(msg_id)
        return recovery

    def ledger_totals(self, msg_id: str) -> tuple[int, Decimal]:
        """Number and sum of the entries of one file (to compare with the file on disk)."""
        entries = self.entries_table
        with self.engine.connect() as conn:
            n, total = conn.execute(
                select(func.count(), func.coalesce(func.sum(entries.c.amount), 0)).where(
                    entries.c.msg_id == msg_id
                )
            ).one()
        return int(n), Decimal(str(total)).quantize(Decimal("0.01"))

    def entries_where(self, column: Column[Any], values: Sequence[str]) -> list[dict[str, Any]]:
        """All entries whose ``column`` is one of ``values`` (tests and reports)."""
        out: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            for part in chunks(list(values)):
                query = select(self.entries_table).where(column.in_(part))
                out.extend(dict(r) for r in conn.execute(query).mappings())
        return out

    def files(self, status: str | None = None) -> list[dict[str, Any]]:
        """Files recorded, oldest first."""
        files = self.files_table
        query = select(files).order_by(files.c.created_at, files.c.msg_id)
        if status:
            query = query.where(files.c.status == status)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]


class SepaLedger(FileLedger):
    """Access to the SEPA direct-debit tables of the state database; build one inside each task."""

    files_table = sepa_files
    entries_table = sepa_ledger

    @classmethod
    def existing(cls, url: str) -> SepaLedger | None:
        """The ledger for reading only, or None when there is none yet; creates nothing.

        Why: a dry run must leave the state as it is: no database file, no folder, no tables.
        A SQLite file that does not exist, or a database without the SEPA tables, has no ledger.
        """
        file = sqlite_file(url)
        if file is not None and not Path(file).exists():
            return None
        engine = make_engine(url)
        names = set(inspect(engine).get_table_names())
        if not {sepa_ledger.name, sepa_blocks.name, sepa_statements.name} <= names:
            engine.dispose()
            return None
        return cls(url, engine, create_tables=False)

    # ---- lookups for planning ----------------------------------------------------------------
    def claim_states(self, claim_nos: Sequence[str]) -> dict[str, ClaimLedgerState]:
        """Ledger state of the given claims (claims without a row are absent from the result)."""
        out: dict[str, ClaimLedgerState] = {}
        query_cols = (
            sepa_ledger.c.claim_no,
            sepa_ledger.c.attempt,
            sepa_ledger.c.status,
            sepa_ledger.c.msg_id,
        )
        with self.engine.connect() as conn:
            for part in chunks(list(claim_nos)):
                for claim_no, attempt, status, msg_id in conn.execute(
                    select(*query_cols).where(sepa_ledger.c.claim_no.in_(part))
                ):
                    prev = out.get(claim_no)
                    blocking = status if status in ACTIVE_STATUSES else None
                    next_attempt = max(attempt + 1, prev.next_attempt if prev else 1)
                    if prev is not None and prev.blocking_status is not None:
                        out[claim_no] = ClaimLedgerState(
                            prev.blocking_status, prev.blocking_msg_id, next_attempt
                        )
                    else:
                        out[claim_no] = ClaimLedgerState(blocking, msg_id if blocking else None, next_attempt)
        return out

    def mandate_history(self, mandate_ids: Sequence[str]) -> dict[str, tuple[date | None, frozenset[str]]]:
        """Per mandate: latest collection date and IBANs collected from (prepared/written/paid rows)."""
        out: dict[str, tuple[date | None, frozenset[str]]] = {}
        with self.engine.connect() as conn:
            for part in chunks(list(mandate_ids)):
                query = (
                    select(
                        sepa_ledger.c.mandate_id,
                        sepa_ledger.c.debtor_iban,
                        func.max(sepa_ledger.c.collection_date),
                    )
                    .where(
                        and_(sepa_ledger.c.mandate_id.in_(part), sepa_ledger.c.status.in_(ACTIVE_STATUSES))
                    )
                    .group_by(sepa_ledger.c.mandate_id, sepa_ledger.c.debtor_iban)
                )
                for mandate_id, iban, last in conn.execute(query):
                    prev_last, prev_ibans = out.get(mandate_id, (None, frozenset()))
                    newest = (
                        max(d for d in (prev_last, last) if d is not None) if (prev_last or last) else None
                    )
                    out[mandate_id] = (newest, prev_ibans | {iban})
        return out

    def in_flight_by_person(self, person_nos: Sequence[str]) -> dict[str, int]:
        """Per person: cents collected but not settled yet (``prepared``/``written``/``partly_paid``)."""
        out: dict[str, int] = {}
        with self.engine.connect() as conn:
            for part in chunks(sorted(set(person_nos))):
                query = (
                    select(
                        sepa_ledger.c.person_no,
                        func.sum(sepa_ledger.c.amount - func.coalesce(sepa_ledger.c.paid_amount, 0)),
                    )
                    .where(
                        and_(
                            sepa_ledger.c.person_no.in_(part),
                            sepa_ledger.c.status.in_(("prepared", "written", "partly_paid")),
                        )
                    )
                    .group_by(sepa_ledger.c.person_no)
                )
                for person_no, total in conn.execute(query):
                    out[person_no] = int(Decimal(str(total or 0)) * 100)
        return out

    # ---- writing a file ----------------------------------------------------------------------
    def begin_file(
        self, msg_id: str, run_id: str, path: Path, blocks: Sequence[BlockRow], batch_booking: bool | None
    ) -> None:
        """Record a file about to be written (status ``prepared``) with its blocks."""
        with self.engine.begin() as conn:
            conn.execute(
                insert(sepa_files).values(
                    msg_id=msg_id,
                    run_id=run_id,
                    path=str(path),
                    status="prepared",
                    batch_booking=batch_booking,
                    nb_of_txs=sum(b.nb_of_txs for b in blocks),
                    ctrl_sum=sum((b.ctrl_sum for b in blocks), Decimal("0")),
                    created_at=utcnow(),
                )
            )
            if blocks:
                conn.execute(insert(sepa_blocks), [b.__dict__ for b in blocks])

    def add_prepared(self, rows: Sequence[LedgerRow]) -> None:
        """Record claims of a file being written (status ``prepared``), committed before the rename.

        Raises:
            SepaLedgerConflict: a claim/attempt is already recorded (another run collected it).
        """
        if not rows:
            return
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(sepa_ledger),
                    [{**r.__dict__, "status": "prepared", "prepared_at": now} for r in rows],
                )
        except IntegrityError as exc:
            raise SepaLedgerConflict(
                f"claims {', '.join(r.claim_no for r in rows[:5])}{'...' if len(rows) > 5 else ''} (or one of them) "
                "are already recorded in the SEPA ledger by another run; nothing of this file is sent"
            ) from exc

    def _forget_file_parts(self, conn: Connection, msg_id: str) -> None:
        """An abandoned debit file's payment blocks go with it."""
        conn.execute(delete(sepa_blocks).where(sepa_blocks.c.msg_id == msg_id))

    def file_claims(self, msg_id: str, chunk: int = 5000) -> Iterator[list[str]]:
        """Claim numbers of a file, in chunks (streamed)."""
        query = (
            select(sepa_ledger.c.claim_no).where(sepa_ledger.c.msg_id == msg_id).order_by(sepa_ledger.c.id)
        )
        with self.engine.connect().execution_options(stream_results=True) as conn:
            result = conn.execute(query)
            while True:
                rows = result.fetchmany(chunk)
                if not rows:
                    break
                yield [r[0] for r in rows]

    def sync_erp(self, msg_id: str, erp_update: ErpUpdate) -> None:
        """Set the file's claims ``IN_COLLECTION`` in the ERP, then mark the file ``erp_synced``."""
        for claim_nos in self.file_claims(msg_id):
            erp_update(claim_nos, "IN_COLLECTION")
        with self.engine.begin() as conn:
            conn.execute(
                update(sepa_files).where(sepa_files.c.msg_id == msg_id).values(erp_synced_at=utcnow())
            )

    # ---- recovery ------------------------------------------------------------------------------
    def recover(self, erp_update: ErpUpdate, check_file: Callable[[Path, str], bool]) -> RecoveryReport:
        """Bring ledger, files on disk and ERP back into agreement after a crash (idempotent).

        Args:
            erp_update: sets claims' ERP status (see ``ErpUpdate``).
            check_file: ``(path, msg_id) -> bool``: the final file is complete and matches the
                ledger (validated, sums agree). A file that fails it is abandoned and renamed
                ``.rejected`` so nobody sends it.
        """
        resynced: list[str] = []
        completed, abandoned, unverified = self.recover_files(check_file)
        with self.engine.connect() as conn:
            unsynced = conn.execute(
                select(sepa_files.c.msg_id).where(
                    and_(sepa_files.c.status == "written", sepa_files.c.erp_synced_at.is_(None))
                )
            ).all()
        for (msg_id,) in unsynced:
            self.sync_erp(msg_id, erp_update)
            if msg_id not in completed:
                resynced.append(msg_id)
        return RecoveryReport(completed, abandoned, resynced, unverified)

    # ---- reconciliation ------------------------------------------------------------------------
    def statement_seen(self, key: str) -> bool:
        """True when a statement with this key was imported before."""
        with self.engine.connect() as conn:
            return (
                conn.execute(
                    select(sepa_statements.c.statement_key).where(sepa_statements.c.statement_key == key)
                ).first()
                is not None
            )

    def record_statement(self, key: str, path: Path, kind: str, summary_json: str) -> None:
        """Remember an imported statement so a second import changes nothing."""
        with self.engine.begin() as conn:
            conn.execute(
                insert(sepa_statements).values(
                    statement_key=key,
                    path=str(path),
                    kind=kind,
                    imported_at=utcnow(),
                    summary_json=summary_json,
                )
            )

    def entry_booked(self, identity: str) -> str | None:
        """Where a bank booking (account + the bank's reference) was booked from, or None.

        Why: a camt.052 intraday report and the camt.053 of the same day (and each cumulative
        intraday report of a day) carry the same booking; it must count once. Bookings share the
        ``sepa_statements`` table with the files, under the key ``entry:<identity>``.
        """
        with self.engine.connect() as conn:
            row = conn.execute(
                select(sepa_statements.c.summary_json).where(
                    sepa_statements.c.statement_key == f"entry:{identity}"[:200]
                )
            ).first()
        if row is None:
            return None
        try:
            return str(json.loads(row[0] or "{}").get("booked_from") or "an earlier file")
        except ValueError:
            return "an earlier file"

    def book_entry(
        self,
        identity: str,
        path: Path,
        kind: str,
        booked_from: str,
        row_updates: Sequence[tuple[int, dict[str, Any]]],
    ) -> bool:
        """Book one bank entry: its ledger row changes and the record of the entry, one transaction.

        Why one transaction: the record is what makes the same booking in another file (the
        camt.053 after a camt.052) count once; written apart from the ledger changes, a crash
        between the two would book the entry again on the next import. The record is inserted
        first, so a concurrent import of the same booking fails here before changing a row.

        Args:
            identity: the entry's identity (``CamtEntry.identity``).
            row_updates: ``(ledger row id, column values)`` in order.

        Returns:
            False when the entry was recorded already (by another import meanwhile): nothing changed.

        Raises:
            SQLAlchemyError: the state database refused a write (nothing of the entry is kept).
        """
        record = insert(sepa_statements).values(
            statement_key=f"entry:{identity}"[:200],
            path=str(path)[:500],
            kind=kind[:10],
            imported_at=utcnow(),
            summary_json=json.dumps({"booked_from": booked_from}),
        )
        with self.engine.connect() as conn:
            try:
                conn.execute(record)
            except IntegrityError:
                conn.rollback()
                if self.entry_booked(identity) is None:  # not a duplicate: a real failure
                    raise
                return False
            for row_id, values in row_updates:
                conn.execute(update(sepa_ledger).where(sepa_ledger.c.id == row_id).values(**values))
            conn.commit()
        return True

    def find_by_end_to_end(
        self, e2e_ids: Iterable[str], statuses: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """Latest ledger row per EndToEndId among rows in ``statuses``."""
        ids = sorted(set(e2e_ids))
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for part in chunks(ids):
                rows = conn.execute(
                    select(sepa_ledger)
                    .where(
                        and_(sepa_ledger.c.end_to_end_id.in_(part), sepa_ledger.c.status.in_(list(statuses)))
                    )
                    .order_by(sepa_ledger.c.id)
                ).mappings()
                for row in rows:
                    out[row["end_to_end_id"]] = dict(row)
        return out

    def rows_by_end_to_end(self, e2e_ids: Iterable[str], statuses: Sequence[str]) -> list[dict[str, Any]]:
        """Every ledger row of these EndToEndIds in ``statuses``, oldest first."""
        out: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            for part in chunks(sorted(set(e2e_ids))):
                query = select(sepa_ledger).where(
                    and_(sepa_ledger.c.end_to_end_id.in_(part), sepa_ledger.c.status.in_(list(statuses)))
                )
                out.extend(dict(r) for r in conn.execute(query).mappings())
        return sorted(out, key=lambda r: int(r["id"]))

    def find_by_mandate_amount(
        self, mandate_id: str, amount: Decimal, statuses: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Ledger rows of one mandate and amount (fallback when the EndToEndId is NOTPROVIDED)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(sepa_ledger).where(
                    and_(
                        sepa_ledger.c.mandate_id == mandate_id,
                        sepa_ledger.c.amount == amount,
                        sepa_ledger.c.status.in_(list(statuses)),
                    )
                )
            ).mappings()
            return [dict(r) for r in rows]

    def block(self, pmt_inf_id: str) -> dict[str, Any] | None:
        """A payment block with the count and sum of its rows still waiting for money (``written``)."""
        with self.engine.connect() as conn:
            row = (
                conn.execute(select(sepa_blocks).where(sepa_blocks.c.pmt_inf_id == pmt_inf_id))
                .mappings()
                .first()
            )
            if row is None:
                return None
            n, total = conn.execute(
                select(func.count(), func.coalesce(func.sum(sepa_ledger.c.amount), 0)).where(
                    and_(sepa_ledger.c.pmt_inf_id == pmt_inf_id, sepa_ledger.c.status == "written")
                )
            ).one()
        return {**dict(row), "open_n": int(n), "open_sum": Decimal(str(total)).quantize(Decimal("0.01"))}

    def block_rows(self, pmt_inf_id: str, statuses: Sequence[str]) -> list[dict[str, Any]]:
        """Ledger rows of one block in the given statuses."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(sepa_ledger).where(
                    and_(sepa_ledger.c.pmt_inf_id == pmt_inf_id, sepa_ledger.c.status.in_(list(statuses)))
                )
            ).mappings()
            return [dict(r) for r in rows]

    def settle(self, ids: Sequence[int], status: str, statement_ref: str, **values: Any) -> None:
        """Move ledger rows to ``paid``/``partly_paid``/``returned`` with the statement reference."""
        now = utcnow()
        with self.engine.begin() as conn:
            for part in chunks(list(ids)):
                conn.execute(
                    update(sepa_ledger)
                    .where(sepa_ledger.c.id.in_(part))
                    .values(status=status, statement_ref=statement_ref[:120], settled_at=now, **values)
                )

    def settle_block_paid(self, pmt_inf_id: str, statement_ref: str) -> list[str]:
        """Every ``written`` row of a block is paid in full; returns their claim numbers."""
        now = utcnow()
        with self.engine.begin() as conn:
            claim_nos = [
                r[0]
                for r in conn.execute(
                    select(sepa_ledger.c.claim_no).where(
                        and_(sepa_ledger.c.pmt_inf_id == pmt_inf_id, sepa_ledger.c.status == "written")
                    )
                )
            ]
            conn.execute(
                update(sepa_ledger)
                .where(and_(sepa_ledger.c.pmt_inf_id == pmt_inf_id, sepa_ledger.c.status == "written"))
                .values(
                    status="paid",
                    paid_amount=sepa_ledger.c.amount,
                    statement_ref=statement_ref[:120],
                    settled_at=now,
                )
            )
        return claim_nos

    def set_row(self, row_id: int, **values: Any) -> None:
        """Update one ledger row (per-transaction reconciliation)."""
        with self.engine.begin() as conn:
            conn.execute(update(sepa_ledger).where(sepa_ledger.c.id == row_id).values(**values))

    def rows_of_claims(self, claim_nos: Sequence[str]) -> list[dict[str, Any]]:
        """All ledger rows of some claims (tests and reports)."""
        return self.entries_where(sepa_ledger.c.claim_no, claim_nos)


def _pid_alive(pid: int) -> bool:
    """True when a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
