"""Small, explicit ERP fixtures for the SEPA tests (independent of the demo-data generator).

One scenario with one person per rule of seed 004 and of the checks; the test that uses it can
read the expected outcome straight from ``EXPECTED``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from connectors.erp.database import create_erp_schema, make_engine
from connectors.erp.schema import claims, objects, payment_types, persons, sepa_mandates

TODAY = date(2026, 3, 2)  # a Monday
COLLECTION = date(2026, 3, 4)

IBAN_BYLA = "DE50120300001234567897"  # BYLADEM1001
IBAN_BYLA_2 = "DE23120300000532013000"  # same bank
IBAN_PBNK = "DE84100100101234567898"  # PBNKDEFFXXX
IBAN_INGD = "DE91500105171234567900"  # INGDDEFFXXX
IBAN_COBA = "DE62370400440532013001"  # COBADEFFXXX

PAYMENT_TYPES = [
    {
        "code": "LS",
        "name": "Lastschrift",
        "auto_debit": True,
        "remittance_line1": "HAUSVERWALTUNG MUSTER",
        "remittance_line2": "Mietkonto",
    },
    {"code": "UE", "name": "Ueberweisung", "auto_debit": False},
]


def person(no: str, last: str, payment: str = "LS", release: str | None = None) -> dict[str, Any]:
    """A tenant row."""
    return {
        "person_no": no,
        "person_type": "MIETER",
        "first_name": "Test",
        "last_name": last,
        "anonymised": False,
        "payment_type_code": payment,
        "elv_release_amount": Decimal(release) if release else None,
    }


def mandate(mid: str, person_no: str, iban: str, bic: str | None = None, **kw: Any) -> dict[str, Any]:
    """A mandate row (recurrent, signed 2023-01-10 unless given)."""
    row = {
        "mandate_id": mid,
        "person_no": person_no,
        "mandate_type": "RECURRENT",
        "iban": iban,
        "bic": bic,
        "account_holder": kw.pop("holder", f"Holder {person_no}"),
        "signed_on": date(2023, 1, 10),
        "first_collection_on": None,
        "last_collection_on": None,
        "original_iban": None,
        "revoked_on": None,
    }
    row.update(kw)
    return row


def claim(no: str, person_no: str, amount: str, obj: str = "O100", **kw: Any) -> dict[str, Any]:
    """An open claim row (invoice of 10.02.2026, due 01.03.2026 unless given)."""
    row = {
        "claim_no": no,
        "person_no": person_no,
        "object_no": obj,
        "invoice_no": kw.pop("invoice_no", no.replace("C", "")),
        "invoice_date": date(2026, 2, 10),
        "due_date": date(2026, 3, 1),
        "amount": Decimal(amount),
        "open_amount": Decimal(amount),
        "booking_text": None,
        "single_mandate_id": None,
        "status": "OPEN",
    }
    row.update(kw)
    return row


USED = {"first_collection_on": date(2024, 1, 3), "last_collection_on": date(2026, 2, 3)}

PERSONS = [
    person("P001", "Müller"),
    person("P002", "Schulz"),
    person("P003", "Budget", payment="UE", release="150.00"),
    person("P004", "Einzel", payment="UE"),
    person("P005", "Falschiban"),
    person("P006", "Widerruf"),
    person("P007", "Verfallen"),
    person("P008", "Ohnemandat"),
    person("P009", "Falschbic"),
    person("P010", "Umzug"),
    person("P011", "Ueberweiser", payment="UE"),
    person("P012", "Bezahlt"),
]

MANDATES = [
    mandate("M-P001", "P001", IBAN_BYLA, "BYLADEM1001", holder="Jürgen Müller & Söhne", **USED),
    mandate("M-P002", "P002", IBAN_PBNK, None, signed_on=date(2026, 2, 20)),
    mandate("M-P003", "P003", IBAN_INGD, "INGDDEFFXXX", **USED),
    mandate("SM-1", "P004", IBAN_COBA, "COBADEFFXXX", mandate_type="SINGLE", signed_on=date(2026, 2, 25)),
    mandate("M-P005", "P005", "DE45120300001234567891", None, **USED),
    mandate("M-P006", "P006", IBAN_BYLA, None, revoked_on=date(2026, 2, 1), **USED),
    mandate(
        "M-P007",
        "P007",
        IBAN_BYLA,
        None,
        first_collection_on=date(2021, 1, 4),
        last_collection_on=date(2022, 12, 1),
    ),
    mandate("M-P009", "P009", IBAN_BYLA, "COBADEFFXXX", **USED),
    mandate("M-P010", "P010", IBAN_BYLA_2, None, original_iban=IBAN_PBNK, **USED),
    mandate("M-P012", "P012", IBAN_BYLA, None, **USED),
]

LONG_TEXT = "Nebenkostennachzahlung 2025 fuer die Wohnung im dritten Obergeschoss links\nMonat November"

CLAIMS = [
    claim("C1001", "P001", "750.00", booking_text="Miete März 2026"),
    claim("C1002", "P001", "45.50", obj="O200", due_date=date(2026, 2, 1), booking_text=LONG_TEXT),
    claim("C2001", "P002", "620.00"),
    claim("C3001", "P003", "100.00", due_date=date(2026, 2, 1)),
    claim("C3002", "P003", "80.00"),
    claim("C4001", "P004", "99.99", single_mandate_id="SM-1"),
    claim("C5001", "P005", "10.00"),
    claim("C6001", "P006", "10.00"),
    claim("C7001", "P007", "10.00"),
    claim("C8001", "P008", "10.00"),
    claim("C9001", "P009", "10.00"),
    claim("C1010", "P010", "300.00"),
    claim("C1101", "P011", "500.00"),
    claim("C1201", "P012", "500.00", status="PAID"),
    claim("C1202", "P001", "12.00", due_date=date(2026, 3, 20)),  # not yet due
]

#: outcome and rule per claim for the standard scenario
EXPECTED = {
    "C1001": ("debit", "RCUR"),
    "C1002": ("debit", "RCUR"),
    "C2001": ("debit", "FRST"),
    "C3001": ("debit", "RCUR"),
    "C3002": ("skip", "sepa.budget"),
    "C4001": ("debit", "OOFF"),
    "C5001": ("quarantine", "sepa.iban"),
    "C6001": ("quarantine", "sepa.mandate.revoked"),
    "C7001": ("quarantine", "sepa.mandate.lapsed"),
    "C8001": ("quarantine", "sepa.mandate.missing"),
    "C9001": ("quarantine", "sepa.bic"),
    "C1010": ("debit", "RCUR"),
}


def build_erp(url: str, extra_claims: list[dict[str, Any]] | None = None) -> None:
    """Create the ERP schema at ``url`` and insert the standard scenario."""
    engine = make_engine(url)
    create_erp_schema(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(payment_types),
            [
                {"remittance_line1": None, "remittance_line2": None, "remittance_line3": None, **p}
                for p in PAYMENT_TYPES
            ],
        )
        conn.execute(insert(persons), PERSONS)
        conn.execute(
            insert(objects),
            [{"object_no": "O100", "name": "Musterstraße 1"}, {"object_no": "O200", "name": "Hofweg 7"}],
        )
        conn.execute(insert(sepa_mandates), MANDATES)
        conn.execute(insert(claims), CLAIMS + (extra_claims or []))
    engine.dispose()


@contextmanager
def sepa_env(erp_url: str, state_url: str, output_dir: str, **sepa: Any) -> Iterator[dict[str, str]]:
    """Environment that points the settings at the test databases (restored afterwards)."""
    env = {
        "HAUSFLOW_PROFILE": "test",
        "HAUSFLOW_ERP_URL": erp_url,
        "HAUSFLOW_STATE_URL": state_url,
        "HAUSFLOW_BUSINESS_DATE": TODAY.isoformat(),
        "HAUSFLOW_SEPA__OUTPUT_DIR": output_dir,
        "HAUSFLOW_SEPA__ENABLED": "true",  # off on the test system until switched on
        **{f"HAUSFLOW_SEPA__{k.upper()}": str(v) for k, v in sepa.items()},
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


CREATED = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
MSG_ID = "HF20260302090000-testrun0-001"


@dataclass
class Scenario:
    """URLs and folders of one test's ERP, state database and output."""

    erp_url: str
    state_url: str
    output_dir: Path


def make_scenario(tmp_path: Path, extra_claims: list[dict[str, Any]] | None = None) -> Scenario:
    """Fresh SQLite ERP with the standard scenario, an empty state database, an output folder."""
    scenario = Scenario(
        erp_url=f"sqlite:///{tmp_path}/erp.sqlite",
        state_url=f"sqlite:///{tmp_path}/state.sqlite",
        output_dir=tmp_path / "out",
    )
    build_erp(scenario.erp_url, extra_claims)
    return scenario


def debit_run(
    collection: date | None = COLLECTION,
    batch_booking: bool | None = None,
    dry_run: bool = False,
    run_id: str = "testrun0",
    created_at: datetime = CREATED,
) -> tuple[Any, Any, list[dict[str, Any]]]:
    """One debit run through the plain steps (no Prefect), with fixed run id and creation time."""
    from config.settings import load_settings
    from tasks.sepa_run import finish_debit_run, plan_debits, start_debit_run, write_debit_files

    run = start_debit_run(
        load_settings(), collection, batch_booking, dry_run, run_id=run_id, created_at=created_at
    )
    try:
        plan = plan_debits(run)
        files = [] if dry_run else write_debit_files(run, plan)
    finally:
        finish_debit_run(run)
    return run, plan, files


def claim_states(erp_url: str) -> dict[str, tuple[str, Decimal, str | None]]:
    """Status, open amount and return reason of every claim in the ERP."""
    engine = make_engine(erp_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(claims.c.claim_no, claims.c.status, claims.c.open_amount, claims.c.return_reason)
        )
        out = {r[0]: (r[1], Decimal(str(r[2])), r[3]) for r in rows}
    engine.dispose()
    return out
