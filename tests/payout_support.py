"""Payouts for the credit-transfer tests: a small fixed set and the settings environment."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from connectors.sepa.pain001 import Payout
from tests.sepa_support import IBAN_BYLA, IBAN_COBA, IBAN_INGD, IBAN_PBNK, sepa_env

TRUST_A = "DE02120300000000202051"  # BYLADEM1001, trust pooled account of object O100
TRUST_B = "DE89370400440532013000"  # COBADEFFXXX, trust pooled account of object O200
CREATED = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
EXECUTION = date(2026, 3, 2)  # the business date of ``sepa_env`` is a Monday: executed that day


def payout(pid: str, amount: str = "850.00", **kw: Any) -> Payout:
    """A valid payout from trust account A to an owner (override any field)."""
    base: dict[str, Any] = {
        "payout_id": pid,
        "amount": Decimal(amount),
        "creditor_name": "Jürgen Müller",
        "creditor_iban": IBAN_BYLA,
        "creditor_bic": "BYLADEM1001",
        "debtor_name": "Treuhandsammelkonto Musterstraße 1",
        "debtor_iban": TRUST_A,
        "debtor_bic": "BYLADEM1001",
        "remittance": f"Kautionseinbehalt {pid} Mietvertrag V-4711",
        "reference": "V-4711/O100",
    }
    base.update(kw)
    return Payout(**base)


#: five payouts over two trust accounts, with and without BIC
PAYOUTS = [
    payout("BK-1001", "850.00"),
    payout("BK-1002", "120.55", creditor_iban=IBAN_PBNK, creditor_bic=None, creditor_name="Schulz GbR"),
    payout(
        "BK-2001",
        "999.99",
        debtor_iban=TRUST_B,
        debtor_bic=None,
        debtor_name="Treuhandkonto Hofweg 7",
        creditor_iban=IBAN_INGD,
        creditor_bic="INGDDEFFXXX",
        reference="V-0815/O200",
    ),
    payout("BK-1003", "0.01", creditor_iban=IBAN_COBA, creditor_bic=None, remittance=""),
    payout("BK-2002", "45.00", debtor_iban=TRUST_B, debtor_bic=None, debtor_name="Treuhandkonto Hofweg 7"),
]


@contextmanager
def payout_env(tmp_path: Path, **payouts: Any) -> Iterator[dict[str, str]]:
    """Settings environment: state database and payout folder under ``tmp_path``, business date fixed."""
    extra = {f"payouts__{k}": v for k, v in payouts.items()}
    with sepa_env(
        f"sqlite:///{tmp_path}/erp.sqlite",
        f"sqlite:///{tmp_path}/state.sqlite",
        str(tmp_path / "sepa"),
        payouts__output_dir=str(tmp_path / "payouts" / "out"),
        **extra,
    ) as env:
        yield env


def run_payouts(
    payouts: list[Payout] | None = None, run_id: str = "payrun01", dry_run: bool = False
) -> dict[str, Any]:
    """One payout run through the plain steps (no Prefect), fixed creation time."""
    from config.settings import load_settings
    from tasks.sepa_payouts import write_payouts

    return write_payouts(load_settings(), PAYOUTS if payouts is None else payouts, run_id, dry_run, CREATED)
