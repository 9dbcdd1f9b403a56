"""Spool of planned direct debits: one CSV file per (file, collection date, sequence type).

Why: a pain.008 file announces its counts and sums before the transactions, and its payment blocks
group transactions by collection date and sequence type, while claims arrive ordered by person.
The planning pass appends each transaction to the spool of its block and counts; the writing pass
then streams block after block. Memory stays flat; the disk holds the plan once.

The spool holds names and full IBANs: its folder is created 0700 and its files 0600, and the run
deletes it when it ends (a crashed run's spool is deleted by the next run, see ``remove_stale_spools``).
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import IO, Any

from connectors.sepa.writing import make_private_dir, open_private

SPOOL_FIELDS = (
    "claim_no",
    "attempt",
    "person_no",
    "object_no",
    "end_to_end_id",
    "amount_cents",
    "mandate_id",
    "mandate_signed_on",
    "debtor_name",
    "debtor_iban",
    "debtor_bic",
    "remittance",
    "original_debtor_iban",
    "original_agent_smnda",
)


@dataclass(frozen=True, order=True)
class BlockKey:
    """Which file (0, 1, ...) and which payment block a transaction belongs to."""

    file_index: int
    collection_date: date
    sequence_type: str

    def file_name(self) -> str:
        """Spool file name of the block."""
        return f"{self.file_index:04d}_{self.collection_date.isoformat()}_{self.sequence_type}.csv"


@dataclass
class BlockStats:
    """Count and sum (cents) of one spooled block."""

    nb_of_txs: int = 0
    ctrl_sum_cents: int = 0


class SpoolWriter:
    """Appends planned transactions to per-block CSV files and keeps their counts.

    Transactions are numbered in arrival order; transaction ``i`` goes to file ``i // max_per_file``,
    so no file exceeds the limit and a file holds whole blocks of one run.
    """

    def __init__(self, folder: Path, max_per_file: int) -> None:
        if max_per_file < 1:
            raise ValueError("max_per_file must be at least 1")
        self.folder = folder
        self.max_per_file = max_per_file
        make_private_dir(folder)
        self.stats: dict[BlockKey, BlockStats] = {}
        self._handles: dict[BlockKey, tuple[IO[str], Any]] = {}
        self._count = 0

    def add(self, collection_date: date, sequence_type: str, row: dict[str, Any]) -> BlockKey:
        """Spool one transaction (``row`` has the ``SPOOL_FIELDS``); returns its block."""
        key = BlockKey(self._count // self.max_per_file, collection_date, sequence_type)
        self._count += 1
        entry = self._handles.get(key)
        if entry is None:
            if key.file_index > 0:  # blocks of earlier files are complete: close them
                for old in [k for k in self._handles if k.file_index < key.file_index]:
                    self._handles.pop(old)[0].close()
            fh = open_private(self.folder / key.file_name(), "w", newline="", encoding="utf-8")
            entry = (fh, csv.writer(fh))
            self._handles[key] = entry
        entry[1].writerow([row[f] if row[f] is not None else "" for f in SPOOL_FIELDS])
        stats = self.stats.setdefault(key, BlockStats())
        stats.nb_of_txs += 1
        stats.ctrl_sum_cents += int(row["amount_cents"])
        return key

    def close(self) -> None:
        """Close every open spool file."""
        for fh, _writer in self._handles.values():
            fh.close()
        self._handles.clear()

    @property
    def count(self) -> int:
        """Transactions spooled so far."""
        return self._count


def read_block(folder: Path, key: BlockKey) -> Iterator[dict[str, str]]:
    """Stream the spooled transactions of one block as dicts of text (empty text = None)."""
    with open(folder / key.file_name(), newline="", encoding="utf-8") as fh:
        for values in csv.reader(fh):
            yield dict(zip(SPOOL_FIELDS, values, strict=True))


def remove_spool(folder: Path) -> None:
    """Delete a spool folder (after the files were written, or after a dry run)."""
    shutil.rmtree(folder, ignore_errors=True)


def remove_stale_spools(output_dir: Path, keep: Path) -> list[Path]:
    """Delete the spool folders (``.work-*``) of earlier runs in ``output_dir``; returns them.

    Call only while holding the run lock: then no other run is writing a spool there, and any
    other ``.work-*`` folder is what a crashed run left behind (names and IBANs nobody needs).
    """
    if not output_dir.is_dir():
        return []
    stale = [p for p in output_dir.glob(".work-*") if p.is_dir() and p != keep]
    for folder in stale:
        remove_spool(folder)
    return stale
