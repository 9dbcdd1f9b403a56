"""Quiet deposit runs (tasks/deposit_quiet.py): a re-run the same day that finds nothing changed
sends nothing and reports what it holds, and any change to what a run acts on ends the quiet."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from connectors.erp import demo, schema
from connectors.erp.database import make_engine
from connectors.state_store import StateStore
from flows.deposit_sync import run_deposit_bookings, run_deposit_master_data
from sandbox.deposit.server import DepositSandboxServer
from tests.deposit_env import BUSINESS_DATE, deposit_env, deposit_view

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def world(deposit_sandbox: DepositSandboxServer, tmp_path: Path) -> dict[str, Any]:
    """A seeded ERP and one complete run of both flows."""
    erp_url, state_url = f"sqlite:///{tmp_path}/erp.sqlite", f"sqlite:///{tmp_path}/state.sqlite"
    engine = make_engine(erp_url)
    demo.generate_erp(engine, persons=200, seed=5, business_date=BUSINESS_DATE)
    deposit_sandbox.reset()
    with deposit_env(deposit_sandbox, erp_url, state_url):
        master = run_deposit_master_data(profile="test")
        bookings = run_deposit_bookings(profile="test")
    return {
        "engine": engine,
        "erp_url": erp_url,
        "state_url": state_url,
        "master": master,
        "bookings": bookings,
    }


def _both(world: dict[str, Any], sandbox: DepositSandboxServer, **env: str) -> tuple[dict[str, Any], ...]:
    with deposit_env(sandbox, world["erp_url"], world["state_url"], **env):
        return run_deposit_master_data(profile="test"), run_deposit_bookings(profile="test")


def _held(state_url: str, run_id: str) -> set[tuple[str, str, str]]:
    rows = StateStore(state_url).protocol_rows(run_id, ["skipped", "quarantined"], limit=100_000)
    return {(r.entity, r.ref_id, r.outcome) for r in rows}


def test_a_rerun_the_same_day_sends_nothing_and_reports_what_it_holds(
    world: dict[str, Any], deposit_sandbox: DepositSandboxServer
) -> None:
    """The first runs wrote, so they leave no mark (the store changed while they ran); the next
    runs compare, find nothing and leave one; the runs after them are quiet."""
    assert world["master"]["quarantined"] > 0 and world["bookings"]["waiting"] > 0  # the demo's held records
    compared_master, compared_bookings = _both(world, deposit_sandbox)
    assert "quiet_since" not in compared_master and "quiet_since" not in compared_bookings
    before = deposit_sandbox.counters()
    master, bookings = _both(world, deposit_sandbox)
    assert master["quiet_since"] == compared_master["run_id"]
    assert bookings["quiet_since"] == compared_bookings["run_id"]
    assert deposit_sandbox.counters()["writes"] == before["writes"]
    for quiet, full in ((master, compared_master), (bookings, compared_bookings)):
        assert (quiet["planned_writes"], quiet["failed"]) == (0, 0)
        assert (quiet["skipped"], quiet["quarantined"]) == (full["skipped"], full["quarantined"])
        assert _held(world["state_url"], quiet["run_id"]) == _held(world["state_url"], full["run_id"])
    assert bookings["waiting"] == compared_bookings["waiting"] == world["bookings"]["waiting"]
    assert master["unchanged"] == compared_master["unchanged"]
    again = _both(world, deposit_sandbox)
    assert [r["quiet_since"] for r in again] == [compared_master["run_id"], compared_bookings["run_id"]]


def test_a_change_the_erp_did_not_stamp_ends_the_quiet_of_the_master_data(
    world: dict[str, Any], deposit_sandbox: DepositSandboxServer
) -> None:
    """An owner's IBAN retyped to another of the same length, without ``modified_at``: the master
    data compares in full (its fingerprint digests every row it reads) and sends the change."""
    engine = world["engine"]
    _both(world, deposit_sandbox)  # leaves the marks
    view = deposit_view(deposit_sandbox)
    account = next(iter(view["deposit_accounts"].values()))
    object_no = account["object"]["id"]
    with engine.begin() as conn:
        iban = conn.execute(
            select(schema.objects.c.trust_account_iban).where(schema.objects.c.object_no == object_no)
        ).scalar_one()
        other = conn.execute(
            select(schema.objects.c.trust_account_iban).where(
                schema.objects.c.trust_account_iban.is_not(None), schema.objects.c.trust_account_iban != iban
            )
        ).first()
        assert other is not None and len(other[0]) == len(iban)
        conn.execute(
            update(schema.objects)
            .where(schema.objects.c.object_no == object_no)
            .values(trust_account_iban=other[0])
        )
    master, _ = _both(world, deposit_sandbox)
    assert "quiet_since" not in master
    assert master["confirmed"] >= 1
    after = deposit_view(deposit_sandbox)["deposit_accounts"][account["id"]]
    assert after["trustAccount"]["iban"] == other[0].replace(" ", "")


def test_a_new_booking_ends_the_quiet_of_the_bookings_and_goes_once(
    world: dict[str, Any], deposit_sandbox: DepositSandboxServer
) -> None:
    engine = world["engine"]
    marked, _ = _both(world, deposit_sandbox)
    contract_no, account = sorted(deposit_view(deposit_sandbox)["deposit_accounts"].items())[0]
    booking_id = _add_booking(engine, account["accountNo"], "INTEREST")
    master, bookings = _both(world, deposit_sandbox)
    assert master["quiet_since"] == marked["run_id"]  # the accounts did not change
    assert "quiet_since" not in bookings and bookings["confirmed"] == 1
    assert deposit_view(deposit_sandbox)["bookings"][str(booking_id)]["accountId"] == contract_no
    _, compared = _both(world, deposit_sandbox)
    _, quiet = _both(world, deposit_sandbox)
    assert compared["planned_writes"] == 0 and quiet["quiet_since"] == compared["run_id"]
    assert len(deposit_sandbox.write_log("bookings", str(booking_id))) == 1


def test_a_quarantined_booking_corrected_to_a_type_of_the_same_length_goes(
    world: dict[str, Any], deposit_sandbox: DepositSandboxServer
) -> None:
    """Aggregates cannot see ``PAYMNET_IN`` corrected to ``PAYMENT_IN``; the quarantined bookings
    are read in full for the fingerprint, so the admin's re-run sends it."""
    engine = world["engine"]
    account = sorted(deposit_view(deposit_sandbox)["deposit_accounts"].items())[0][1]
    booking_id = _add_booking(engine, account["accountNo"], "PAYMNET_IN")
    _, held = _both(world, deposit_sandbox)
    assert held["quarantined"] >= 1
    _both(world, deposit_sandbox)  # compares, finds nothing new, leaves the mark
    with engine.begin() as conn:
        conn.execute(
            update(schema.deposit_bookings)
            .where(schema.deposit_bookings.c.booking_id == booking_id)
            .values(booking_type="PAYMENT_IN")
        )
    _, fixed = _both(world, deposit_sandbox)
    assert "quiet_since" not in fixed and fixed["confirmed"] == 1
    assert str(booking_id) in deposit_view(deposit_sandbox)["bookings"]


def _add_booking(engine: Any, account_no: str, kind: str) -> int:
    with engine.begin() as conn:
        booking_id = (
            int(conn.execute(select(func.max(schema.deposit_bookings.c.booking_id))).scalar_one()) + 1
        )
        conn.execute(
            insert(schema.deposit_bookings).values(
                booking_id=booking_id, account_no=account_no, booking_type=kind,
                amount=Decimal("1.25"), booking_date=date(2026, 11, 20), text="Zinsen",
            )
        )  # fmt: skip
    return booking_id


def test_the_next_business_day_and_a_dry_run_compare_in_full(
    world: dict[str, Any], deposit_sandbox: DepositSandboxServer
) -> None:
    marked, _ = _both(world, deposit_sandbox)
    with deposit_env(deposit_sandbox, world["erp_url"], world["state_url"]):
        dry = run_deposit_master_data(profile="test", dry_run=True)
    assert "quiet_since" not in dry
    master, _ = _both(world, deposit_sandbox)
    assert master["quiet_since"] == marked["run_id"], "a dry run changes no mark"
    tomorrow = (BUSINESS_DATE + timedelta(days=1)).isoformat()
    master, bookings = _both(world, deposit_sandbox, HAUSFLOW_BUSINESS_DATE=tomorrow)
    assert "quiet_since" not in master and "quiet_since" not in bookings
