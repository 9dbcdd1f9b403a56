"""Turn a spooled plan into pain.008 files on disk, with the ledger steps that make it crash-safe.

The order of steps per file is the whole point (see ``connectors/sepa/ledger.py``):
``begin_file`` + ``add_prepared`` (committed) -> write ``.part`` -> validate and re-count ->
atomic rename -> ``mark_written`` -> ERP ``IN_COLLECTION`` -> ``erp_synced``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO

from connectors.sepa.ledger import BlockRow, ErpUpdate, LedgerRow, SepaLedger
from connectors.sepa.pain008 import Creditor, DebitTransaction, PaymentBlock, write_pain008
from connectors.sepa.spool import BlockKey, read_block
from connectors.sepa.writing import (
    block_figures,
    fault_point,
    file_matches_ledger,
    format_cents,
)


@dataclass(frozen=True)
class FilePlan:
    """One file to write: its message id, final path and blocks (with the spool keys)."""

    index: int
    msg_id: str
    path: Path
    blocks: list[tuple[BlockKey, PaymentBlock]]

    @property
    def nb_of_txs(self) -> int:
        """Transactions in the file."""
        return sum(b.nb_of_txs for _k, b in self.blocks)

    @property
    def ctrl_sum_cents(self) -> int:
        """Sum of the file in cents."""
        return sum(b.ctrl_sum_cents for _k, b in self.blocks)


@dataclass
class WrittenFile:
    """A file that reached its final name, with its figures as re-read from disk."""

    msg_id: str
    path: Path
    nb_of_txs: int
    ctrl_sum: str
    blocks: list[dict[str, object]] = field(default_factory=list)


def _parse_date(text: str) -> date:
    return date.fromisoformat(text)


def produce_file(
    plan: FilePlan,
    spool_dir: Path,
    creditor: Creditor,
    ledger: SepaLedger,
    run_id: str,
    created_at: datetime,
    batch_booking: bool | None,
    erp_update: ErpUpdate,
    ledger_batch: int = 5000,
    on_progress: Callable[[int], None] | None = None,
) -> WrittenFile:
    """Write one planned file crash-safely and record it; returns the file as re-read from disk.

    Raises:
        SepaValidationError: the written file failed the XSD or its sums (nothing published,
            the claims are released again).
        SepaLedgerConflict: a claim is already in the ledger (another run); nothing published.
    """
    blocks = [b for _k, b in plan.blocks]
    ledger.begin_file(
        plan.msg_id,
        run_id,
        plan.path,
        [
            BlockRow(
                b.pmt_inf_id,
                plan.msg_id,
                b.collection_date,
                b.sequence_type,
                b.nb_of_txs,
                Decimal(format_cents(b.ctrl_sum_cents)),
                b.batch_booking,
            )
            for b in blocks
        ],
        batch_booking,
    )
    fault_point("after_begin")
    keys = {b.pmt_inf_id: k for k, b in plan.blocks}
    written = 0
    pending: list[LedgerRow] = []

    def transactions(block: PaymentBlock) -> Iterator[DebitTransaction]:
        nonlocal written
        for row in read_block(spool_dir, keys[block.pmt_inf_id]):
            tx = DebitTransaction(
                end_to_end_id=row["end_to_end_id"],
                amount_cents=int(row["amount_cents"]),
                mandate_id=row["mandate_id"],
                mandate_signed_on=_parse_date(row["mandate_signed_on"]),
                debtor_name=row["debtor_name"],
                debtor_iban=row["debtor_iban"],
                debtor_bic=row["debtor_bic"] or None,
                remittance=row["remittance"] or None,
                original_debtor_iban=row["original_debtor_iban"] or None,
                original_agent_smnda=row["original_agent_smnda"] == "1",
            )
            pending.append(
                LedgerRow(
                    claim_no=row["claim_no"],
                    attempt=int(row["attempt"]),
                    msg_id=plan.msg_id,
                    pmt_inf_id=block.pmt_inf_id,
                    end_to_end_id=tx.end_to_end_id,
                    mandate_id=tx.mandate_id,
                    debtor_iban=tx.debtor_iban,
                    person_no=row["person_no"],
                    object_no=row["object_no"] or None,
                    amount=Decimal(format_cents(tx.amount_cents)),
                    sequence_type=block.sequence_type,
                    collection_date=block.collection_date,
                )
            )
            if len(pending) >= ledger_batch:
                ledger.add_prepared(pending)
                pending.clear()
            yield tx
            written += 1
            fault_point("after_tx")
            if on_progress is not None and written % 50_000 == 0:
                on_progress(written)

    def writer(fh: IO[bytes]) -> None:
        write_pain008(fh, plan.msg_id, created_at, creditor, blocks, transactions)
        ledger.add_prepared(pending)
        pending.clear()

    totals = ledger.write_and_publish(plan.msg_id, plan.path, "pain.008", writer)
    ledger.sync_erp(plan.msg_id, erp_update)
    return WrittenFile(
        plan.msg_id,
        plan.path,
        totals.counted_nb_of_txs,
        str(totals.counted_ctrl_sum),
        block_figures(totals),
    )


def check_published_file(ledger: SepaLedger) -> Callable[[Path, str], bool]:
    """A ``check_file`` for ``SepaLedger.recover``: valid XSD, sums add up, and agree with the ledger."""
    return lambda path, msg_id: file_matches_ledger(path, "pain.008", msg_id, ledger.ledger_totals(msg_id))


def plan_files(
    stats: Sequence[tuple[BlockKey, int, int]],
    msg_id_of: Callable[[int], str],
    output_dir: Path,
    batch_booking: bool | None,
) -> list[FilePlan]:
    """Group spooled blocks into files; blocks in a file ordered by collection date and sequence type.

    Args:
        stats: (key, count, sum in cents) of every spooled block.
        msg_id_of: message id of file number ``i``.
        output_dir: where the files go (``<msg_id>.xml``).
        batch_booking: BtchBookg of every block (None: leave it out, the bank's default applies).
    """
    by_file: dict[int, list[tuple[BlockKey, int, int]]] = {}
    for key, n, cents in sorted(stats, key=lambda s: s[0]):
        by_file.setdefault(key.file_index, []).append((key, n, cents))
    plans = []
    for index, items in sorted(by_file.items()):
        msg_id = msg_id_of(index)
        blocks = [
            (
                key,
                PaymentBlock(
                    pmt_inf_id=f"{msg_id}-{number:03d}",
                    collection_date=key.collection_date,
                    sequence_type=key.sequence_type,
                    nb_of_txs=n,
                    ctrl_sum_cents=cents,
                    batch_booking=batch_booking,
                ),
            )
            for number, (key, n, cents) in enumerate(items, start=1)
        ]
        plans.append(FilePlan(index, msg_id, output_dir / f"{msg_id}.xml", blocks))
    return plans
