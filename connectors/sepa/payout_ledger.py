"""The payout ledger in the state database: which payout went into which credit-transfer file.

Why: a bank executes whatever file it is given, and a run may die at any point; a payout paid
twice is money gone. The steps per file (``tasks/sepa_payouts.py``) mirror the direct debits':

1. The file and its payouts are recorded as ``prepared`` (committed) before anything is written.
2. The file is written as ``.part``, validated and re-counted, and atomically renamed.
3. In one transaction, file and payouts become ``written``.

``recover`` runs first in every payout run: a ``prepared`` file whose final name exists (renamed
just before a crash) and checks out becomes ``written``; any other is abandoned, its ``.part``
deleted and its payouts released, so the next run writes them again. ``payout_id`` is unique:
a payout is in at most one file, ever, and one already ``written`` is reported as already paid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Date, DateTime, Index, Integer, Numeric, String, Table, Text, insert, select
from sqlalchemy.exc import IntegrityError

from connectors.sepa.errors import SepaLedgerConflict
from connectors.sepa.ledger import FileLedger, sepa_metadata
from connectors.sqlutil import chunks, utcnow

sepa_payout_files = Table(
    "sepa_payout_files",
    sepa_metadata,
    Column("msg_id", String(35), primary_key=True),
    Column("run_id", String(40), nullable=False),
    Column("path", String(500), nullable=False),
    Column("listing_path", String(500)),
    Column("status", String(12), nullable=False),  # prepared, written, abandoned
    Column("execution_date", Date, nullable=False),
    Column("nb_of_txs", Integer, nullable=False),
    Column("ctrl_sum", Numeric(14, 2), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("written_at", DateTime(timezone=True)),
    Column("note", Text),
    Index("ix_sepa_payout_files_run", "run_id"),
)

sepa_payouts = Table(
    "sepa_payouts",
    sepa_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("payout_id", String(35), nullable=False, unique=True),
    Column("msg_id", String(35), nullable=False),
    Column("pmt_inf_id", String(35), nullable=False),
    Column("end_to_end_id", String(35), nullable=False),
    Column("reference", String(70)),
    Column("creditor_iban", String(34), nullable=False),
    Column("debtor_iban", String(34), nullable=False),
    Column("amount", Numeric(12, 2), nullable=False),
    Column("execution_date", Date, nullable=False),
    Column("status", String(12), nullable=False),  # prepared, written
    Column("prepared_at", DateTime(timezone=True), nullable=False),
    Column("written_at", DateTime(timezone=True)),
    Index("ix_sepa_payouts_msg", "msg_id", "status"),
)


@dataclass(frozen=True)
class PayoutRow:
    """One payout in one file, as the ledger records it."""

    payout_id: str
    msg_id: str
    pmt_inf_id: str
    end_to_end_id: str
    reference: str
    creditor_iban: str
    debtor_iban: str
    amount: Decimal
    execution_date: date


@dataclass(frozen=True)
class PaidPayout:
    """A payout the ledger already holds: in which file, since when."""

    payout_id: str
    status: str
    msg_id: str
    path: str
    execution_date: date


class PayoutLedger(FileLedger):
    """Access to the payout tables of the state database; build one inside each task from the URL."""

    files_table = sepa_payout_files
    entries_table = sepa_payouts

    def files_of_run(self, run_id: str) -> int:
        """How many payout files a run has recorded (any status): the next file's number."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(sepa_payout_files.c.msg_id).where(sepa_payout_files.c.run_id == run_id)
            ).all()
        return len(rows)

    def known_payouts(self, payout_ids: Sequence[str]) -> dict[str, PaidPayout]:
        """The payouts among ``payout_ids`` that the ledger holds (after recovery: all ``written``)."""
        out: dict[str, PaidPayout] = {}
        query_cols = (
            sepa_payouts.c.payout_id,
            sepa_payouts.c.status,
            sepa_payouts.c.msg_id,
            sepa_payout_files.c.path,
            sepa_payouts.c.execution_date,
        )
        joined = sepa_payouts.join(sepa_payout_files, sepa_payouts.c.msg_id == sepa_payout_files.c.msg_id)
        with self.engine.connect() as conn:
            for part in chunks(sorted(set(payout_ids))):
                for row in conn.execute(
                    select(*query_cols).select_from(joined).where(sepa_payouts.c.payout_id.in_(part))
                ):
                    out[row[0]] = PaidPayout(row[0], row[1], row[2], row[3], row[4])
        return out

    def begin_file(
        self,
        msg_id: str,
        run_id: str,
        path: Path,
        listing_path: Path,
        execution_date: date,
        nb_of_txs: int,
        ctrl_sum: Decimal,
        rows: Iterable[PayoutRow],
        batch: int = 5000,
    ) -> None:
        """Record a file about to be written and its payouts, all ``prepared`` (committed).

        The file row comes first and alone, so that a crash while the payouts are recorded leaves
        a ``prepared`` file that recovery abandons (with whatever payouts made it in). ``rows``
        may be a generator: it is inserted in batches of ``batch``.

        Raises:
            SepaLedgerConflict: a payout is already recorded (in another file); nothing is written.
        """
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                insert(sepa_payout_files).values(
                    msg_id=msg_id,
                    run_id=run_id,
                    path=str(path),
                    listing_path=str(listing_path),
                    status="prepared",
                    execution_date=execution_date,
                    nb_of_txs=nb_of_txs,
                    ctrl_sum=ctrl_sum,
                    created_at=now,
                )
            )
        rows_iter = iter(rows)
        try:
            with self.engine.begin() as conn:
                while part := list(islice(rows_iter, batch)):
                    conn.execute(
                        insert(sepa_payouts),
                        [{**r.__dict__, "status": "prepared", "prepared_at": now} for r in part],
                    )
        except IntegrityError as exc:
            self.abandon_file(msg_id, "payouts already recorded in another file")
            raise SepaLedgerConflict(
                f"file {msg_id}: a payout of it is already recorded in the payout ledger (another run "
                "wrote it); nothing of this file is written, run again to see which one"
            ) from exc

    def rows(self, payout_ids: Sequence[str]) -> list[dict[str, Any]]:
        """All ledger rows of some payouts (tests and reports)."""
        return self.entries_where(sepa_payouts.c.payout_id, payout_ids)
