"""Kept deposits (counterclaims) are paid by a pain.001 file, once each, to the owner by default
or to the manager's retention account; a payout that cannot be paid yet is reported each run and
paid once the data is fixed; never twice across re-runs and a crash of the bookings flow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, select

from connectors.erp import demo, schema
from connectors.erp.database import make_engine
from connectors.sepa.pain001 import scan_pain001
from connectors.sepa.payout_ledger import PayoutLedger
from connectors.state_store import StateStore
from flows.deposit_sync import run_deposit_bookings, run_deposit_master_data
from sandbox.deposit.server import DepositSandboxServer
from tests.deposit_env import BUSINESS_DATE, deposit_env, deposit_view

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parent.parent
MANAGER_IBAN = "DE02120300000000202051"


def _world(tmp_path: Path) -> tuple[Any, str, str]:
    erp_url, state_url = f"sqlite:///{tmp_path}/erp.sqlite", f"sqlite:///{tmp_path}/state.sqlite"
    engine = make_engine(erp_url)
    demo.generate_erp(engine, persons=1000, seed=5, business_date=BUSINESS_DATE)
    return engine, erp_url, state_url


def _claims(engine: Any, sandbox: DepositSandboxServer) -> dict[str, dict[str, Any]]:
    """The counterclaims of accounts at the partner, with the object's owner and bank account."""
    b, a, c, u, o, ba = (schema.deposit_bookings, schema.deposit_accounts, schema.contracts, schema.units,
                         schema.objects, schema.bank_accounts)  # fmt: skip
    at_partner = set(deposit_view(sandbox)["deposit_accounts"])
    query = (
        select(b.c.booking_id, b.c.amount, a.c.contract_no, o.c.owner_person_no, ba.c.iban)
        .join(a, a.c.account_no == b.c.account_no)
        .join(c, c.c.contract_no == a.c.contract_no)
        .join(u, u.c.unit_no == c.c.unit_no)
        .join(o, o.c.object_no == u.c.object_no)
        .outerjoin(ba, ba.c.person_no == o.c.owner_person_no)
        .where(b.c.booking_type == "COUNTERCLAIM")
    )
    with engine.connect() as conn:
        return {
            f"deposit-{r.booking_id}": dict(r._mapping)
            for r in conn.execute(query)
            if r.contract_no in at_partner
        }


def _paid(state_url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    return {r["payout_id"]: r for r in PayoutLedger(state_url).rows(ids)}


def test_kept_deposits_go_to_the_owner_once_and_a_missing_account_is_paid_after_it_is_added(
    deposit_sandbox: DepositSandboxServer, tmp_path: Path
) -> None:
    engine, erp_url, state_url = _world(tmp_path)
    with engine.begin() as conn:  # one owner's bank account is missing at first
        owner = conn.execute(
            select(schema.objects.c.owner_person_no)
            .join(schema.units, schema.units.c.object_no == schema.objects.c.object_no)
            .join(schema.contracts, schema.contracts.c.unit_no == schema.units.c.unit_no)
            .join(
                schema.deposit_accounts,
                schema.deposit_accounts.c.contract_no == schema.contracts.c.contract_no,
            )
            .join(
                schema.deposit_bookings,
                schema.deposit_bookings.c.account_no == schema.deposit_accounts.c.account_no,
            )
            .where(schema.deposit_bookings.c.booking_type == "COUNTERCLAIM")
        ).first()[0]
        saved = dict(
            conn.execute(select(schema.bank_accounts).where(schema.bank_accounts.c.person_no == owner))
            .one()
            ._mapping
        )
        conn.execute(delete(schema.bank_accounts).where(schema.bank_accounts.c.person_no == owner))
    deposit_sandbox.reset()
    store = StateStore(state_url)
    with deposit_env(deposit_sandbox, erp_url, state_url):
        run_deposit_master_data(profile="test")
        first = run_deposit_bookings(profile="test")
        claims = _claims(engine, deposit_sandbox)
        waiting = {k for k, c in claims.items() if c["owner_person_no"] == owner}
        assert claims and waiting and set(claims) - waiting
        paid = _paid(state_url, sorted(claims))
        assert set(paid) == set(claims) - waiting
        for pid, row in paid.items():  # the owner's account, the amount the partner posted
            assert row["creditor_iban"] == claims[pid]["iban"] and row["amount"] == -claims[pid]["amount"]
        again = run_deposit_bookings(profile="test")  # still reported, with the reason, nothing paid twice
        skipped = {r.ref_id: r.reason for r in store.protocol_rows(again["run_id"], ["skipped"])}
        for pid in waiting:
            assert "has no bank account" in skipped[pid.removeprefix("deposit-")]
        assert again["payouts"]["paid"] == 0
        with engine.begin() as conn:
            conn.execute(insert(schema.bank_accounts).values(**saved))
        fixed = run_deposit_bookings(profile="test")
        last = run_deposit_bookings(profile="test")
    assert first["payouts"]["paid"] == len(claims) - len(waiting)
    assert fixed["payouts"]["paid"] == len(waiting) and last["payouts"]["paid"] == 0
    rows = PayoutLedger(state_url).rows(sorted(claims))
    assert sorted(r["payout_id"] for r in rows) == sorted(claims)  # each once
    for path in {Path(r) for r in (first["payouts"]["file"], fixed["payouts"]["file"])}:
        assert scan_pain001(path).counted_nb_of_txs >= 1


def test_per_transfer_pays_the_managers_retention_account(
    deposit_sandbox: DepositSandboxServer, tmp_path: Path
) -> None:
    engine, erp_url, state_url = _world(tmp_path)
    deposit_sandbox.reset()
    extra = {
        "HAUSFLOW_DEPOSIT__RETENTION_ACCOUNT": "per_transfer",
        "HAUSFLOW_DEPOSIT__MANAGER_RETENTION_NAME": "Hausverwaltung Muster GmbH",
        "HAUSFLOW_DEPOSIT__MANAGER_RETENTION_IBAN": MANAGER_IBAN,
    }
    with deposit_env(deposit_sandbox, erp_url, state_url, **extra):
        run_deposit_master_data(profile="test")
        run_deposit_bookings(profile="test")
        claims = _claims(engine, deposit_sandbox)
    paid = _paid(state_url, sorted(claims))
    assert claims and set(paid) == set(claims)
    assert {r["creditor_iban"] for r in paid.values()} == {MANAGER_IBAN}


def test_with_the_bank_files_off_kept_deposits_stay_due_until_they_are_switched_on(
    deposit_sandbox: DepositSandboxServer, tmp_path: Path
) -> None:
    engine, erp_url, state_url = _world(tmp_path)
    deposit_sandbox.reset()
    with deposit_env(deposit_sandbox, erp_url, state_url, HAUSFLOW_SEPA__ENABLED="false"):
        run_deposit_master_data(profile="test")
        off = run_deposit_bookings(profile="test")
        claims = _claims(engine, deposit_sandbox)
    assert claims and off["confirmed"] > 0  # the bookings went to the partner all the same
    assert off["payouts"] == {"due": off["payouts"]["due"], "paid": 0, "file": None, "status": "disabled"}
    assert off["payouts"]["due"] >= len(claims) and _paid(state_url, sorted(claims)) == {}
    assert not (tmp_path / "payouts").exists()
    with deposit_env(deposit_sandbox, erp_url, state_url):
        on = run_deposit_bookings(profile="test")
    assert on["payouts"]["paid"] == len(claims) and set(_paid(state_url, sorted(claims))) == set(claims)
    assert (tmp_path / "payouts" / ".hausflow-system").read_text() == "test\n"


def test_a_crash_while_paying_out_neither_loses_nor_doubles_a_payout(
    deposit_sandbox: DepositSandboxServer, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    engine, erp_url, state_url = _world(tmp_path)
    deposit_sandbox.reset()
    with deposit_env(deposit_sandbox, erp_url, state_url) as env:
        run_deposit_master_data(profile="test")
        child_env = {**os.environ, **env, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
                     "HAUSFLOW_SEPA_FAULT": "before_publish"}  # fmt: skip
        child = subprocess.run(
            [sys.executable, "-m", "flows.deposit_sync", "bookings"], cwd=ROOT, env=child_env,
            capture_output=True, timeout=300,
        )  # fmt: skip
        assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
        claims = _claims(engine, deposit_sandbox)
        assert claims and not [
            r for r in PayoutLedger(state_url).rows(sorted(claims)) if r["status"] == "written"
        ]
        rerun = run_deposit_bookings(profile="test")
        again = run_deposit_bookings(profile="test")
    rows = PayoutLedger(state_url).rows(sorted(claims))
    assert sorted(r["payout_id"] for r in rows) == sorted(claims)
    assert {r["status"] for r in rows} == {"written"}
    assert rerun["payouts"]["paid"] == len(claims) and again["payouts"]["paid"] == 0
    files = sorted((tmp_path / "payouts").glob("*.xml"))
    assert sum(scan_pain001(f).counted_nb_of_txs for f in files) == len(claims)
