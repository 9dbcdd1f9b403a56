"""The deposit partner's two flows end to end on SQLite against the sandbox over HTTP: first run,
preconditions, no-change run, a new booking, a booking whose account is not at the partner yet."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
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


@pytest.fixture(scope="module")
def world(deposit_sandbox: DepositSandboxServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A seeded ERP (400 persons) and a first run of both flows, master data first."""
    folder = tmp_path_factory.mktemp("deposit-erp")
    erp_url, state_url = f"sqlite:///{folder}/erp.sqlite", f"sqlite:///{folder}/state.sqlite"
    engine = make_engine(erp_url)
    summary = demo.generate_erp(engine, persons=400, seed=11, business_date=BUSINESS_DATE)
    deposit_sandbox.reset()
    with deposit_env(deposit_sandbox, erp_url, state_url):
        master = run_deposit_master_data(profile="test")
        bookings = run_deposit_bookings(profile="test")
    return {
        "engine": engine,
        "erp_url": erp_url,
        "state_url": state_url,
        "edge": summary.edge_cases,
        "master": master,
        "bookings": bookings,
    }


def _erp(engine: Any) -> dict[str, list[dict[str, Any]]]:
    out = {}
    with engine.connect() as conn:
        for table in (schema.deposit_accounts, schema.deposit_bookings, schema.contracts, schema.units):
            out[table.name] = [dict(r._mapping) for r in conn.execute(select(table))]
    return out


def test_first_runs_send_every_account_and_booking_that_passes_the_preconditions(
    world: dict[str, Any], deposit_sandbox: DepositSandboxServer
) -> None:
    erp = _erp(world["engine"])
    unit_object = {u["unit_no"]: u["object_no"] for u in erp["units"]}
    contract_object = {c["contract_no"]: unit_object[c["unit_no"]] for c in erp["contracts"]}
    contract_tenant = {c["contract_no"]: c["person_no"] for c in erp["contracts"]}
    edge = world["edge"]
    held_objects = set(edge["deposit_no_owner"]) | set(edge["deposit_no_trust_account"])
    held_tenants = set(edge["deposit_two_accounts"])
    with world["engine"].connect() as conn:
        persons = {r.person_no: r for r in conn.execute(select(schema.persons))}
        joint = [r for r in conn.execute(select(schema.contract_partners)) if r.role == "VERTRAGSPARTNER"]
    nameless = {no for no, p in persons.items() if not p.last_name and not p.company_name}
    nameless_contracts = {c for c, p in contract_tenant.items() if p in nameless} | {
        r.contract_no for r in joint if r.person_no in nameless
    }
    expected = {
        a["contract_no"]
        for a in erp["deposit_accounts"]
        if contract_object[a["contract_no"]] not in held_objects
        and contract_tenant[a["contract_no"]] not in held_tenants
        and a["contract_no"] not in nameless_contracts
    }
    view = deposit_view(deposit_sandbox)
    assert set(view["deposit_accounts"]) == expected
    # the object 9003 is not held back as a whole: its other tenant went over
    assert any(contract_object[c] == "9003" for c in expected)
    account_of = {a["account_no"]: a["contract_no"] for a in erp["deposit_accounts"]}
    expected_bookings = {
        str(b["booking_id"]) for b in erp["deposit_bookings"] if account_of[b["account_no"]] in expected
    }
    assert set(view["bookings"]) == expected_bookings
    # amounts arrive to the cent with the right sign; balances add up at the partner
    for b in erp["deposit_bookings"]:
        if str(b["booking_id"]) in expected_bookings:
            assert Decimal(view["bookings"][str(b["booking_id"])]["amount"]) == b["amount"]
    assert world["master"]["failed"] == 0 and world["bookings"]["failed"] == 0
    assert deposit_sandbox.counters()["duplicate_writes"] == 0


def test_each_precondition_failure_is_reported_with_the_record_and_the_rule(world: dict[str, Any]) -> None:
    store = StateStore(world["state_url"])
    open_q = store.open_quarantine("deposit")
    rules = {(q["ref_id"], q["rule"]) for q in open_q}
    assert ("9001-001-01", "owner_on_object") in rules
    assert ("9002-001-01", "trust_account_on_object") in rules
    assert {
        ("9003-001-01", "one_deposit_account_per_tenant"),
        ("9003-002-01", "one_deposit_account_per_tenant"),
    } <= rules
    reasons = {q["ref_id"]: q["reason"] for q in open_q}
    assert "object 9001" in reasons["9001-001-01"] and "owner" in reasons["9001-001-01"]
    assert "Treuhandsammelkonto" in reasons["9002-001-01"]
    assert "only one deposit account per tenant" in reasons["9003-001-01"]
    # the bookings of the held accounts waited, with the reason, in the bookings run's protocol
    skipped = {r.ref_id: r.reason for r in store.protocol_rows(world["bookings"]["run_id"], ["skipped"])}
    assert any("9001-001-01 is held back" in reason for reason in skipped.values()), skipped


def test_a_second_run_of_both_flows_sends_nothing(
    world: dict[str, Any], deposit_sandbox: DepositSandboxServer
) -> None:
    before = deposit_sandbox.counters()
    with deposit_env(deposit_sandbox, world["erp_url"], world["state_url"]):
        master = run_deposit_master_data(profile="test")
        bookings = run_deposit_bookings(profile="test")
    after = deposit_sandbox.counters()
    assert master["planned_writes"] == 0 and bookings["planned_writes"] == 0
    assert after["writes"] == before["writes"] and after["duplicate_writes"] == 0


def _new_booking(engine: Any, account_no: str, kind: str, amount: str) -> int:
    with engine.begin() as conn:
        booking_id = (
            int(conn.execute(select(func.max(schema.deposit_bookings.c.booking_id))).scalar_one()) + 1
        )
        conn.execute(
            insert(schema.deposit_bookings).values(
                booking_id=booking_id,
                account_no=account_no,
                booking_type=kind,
                amount=Decimal(amount),
                booking_date=date(2026, 11, 20),
                text="Zinsen",
            )
        )
    return booking_id


def test_a_new_booking_goes_once(world: dict[str, Any], deposit_sandbox: DepositSandboxServer) -> None:
    engine = world["engine"]
    view = deposit_view(deposit_sandbox)
    contract_no = sorted(view["deposit_accounts"])[0]
    account_no = view["deposit_accounts"][contract_no]["accountNo"]
    booking_id = _new_booking(engine, account_no, "INTEREST", "3.15")
    with deposit_env(deposit_sandbox, world["erp_url"], world["state_url"]):
        first = run_deposit_bookings(profile="test")
        again = run_deposit_bookings(profile="test")
    assert first["confirmed"] == 1 and again["planned_writes"] == 0
    assert deposit_view(deposit_sandbox)["bookings"][str(booking_id)]["accountId"] == contract_no
    assert len(deposit_sandbox.write_log("bookings", str(booking_id))) == 1


def test_a_booking_of_an_account_the_partner_lacks_waits_then_goes(
    world: dict[str, Any], deposit_sandbox: DepositSandboxServer
) -> None:
    """A new tenancy's deposit and its payment: the bookings run before the master data lets the
    booking wait with the reason; after the master-data run the next bookings run sends it."""
    engine = world["engine"]
    with engine.begin() as conn:
        unit = conn.execute(
            select(schema.units.c.unit_no)
            .where(schema.units.c.object_no == "9003")
            .order_by(schema.units.c.unit_no.desc())
        ).first()
        assert unit is not None
        tenant = conn.execute(
            select(schema.persons.c.person_no).where(schema.persons.c.person_type == "INTERESSENT")
        ).first()
        assert tenant is not None
        conn.execute(
            insert(schema.contracts).values(
                contract_no="9003-NEU-01", unit_no=unit[0], person_no=tenant[0], contract_type="RENTER",
                start_date=date(2026, 11, 1),
            )
        )  # fmt: skip
        conn.execute(
            insert(schema.deposit_accounts).values(
                account_no="K-9003-NEU-01", contract_no="9003-NEU-01", deposit_amount=Decimal("2100.00"),
                opened_on=date(2026, 11, 1),
            )
        )  # fmt: skip
    booking_id = _new_booking(engine, "K-9003-NEU-01", "PAYMENT_IN", "2100.00")
    later = _new_booking(engine, "K-9003-NEU-01", "INTEREST", "0.50")
    store = StateStore(world["state_url"])
    with deposit_env(deposit_sandbox, world["erp_url"], world["state_url"]):
        waiting = run_deposit_bookings(profile="test")
        skipped = {r.ref_id: r.reason for r in store.protocol_rows(waiting["run_id"], ["skipped"])}
        assert "not at the deposit partner yet" in skipped[str(booking_id)]
        assert f"waits for booking {booking_id}" in skipped[str(later)]
        assert str(booking_id) not in deposit_view(deposit_sandbox)["bookings"]
        master = run_deposit_master_data(profile="test")
        assert master["counts"].get("deposit_accounts.created") == 1
        sent = run_deposit_bookings(profile="test")
    assert sent["confirmed"] == 2 and sent["waiting"] == waiting["waiting"] - 2
    bookings = deposit_view(deposit_sandbox)["bookings"]
    assert bookings[str(booking_id)]["accountId"] == "9003-NEU-01"
    assert deposit_sandbox.counters()["duplicate_writes"] == 0


def test_a_fixed_precondition_releases_the_object(
    world: dict[str, Any], deposit_sandbox: DepositSandboxServer
) -> None:
    engine = world["engine"]
    with engine.begin() as conn:
        owner = conn.execute(
            select(schema.objects.c.owner_person_no).where(schema.objects.c.object_no == "9002")
        ).scalar()
        conn.execute(
            update(schema.objects).where(schema.objects.c.object_no == "9001").values(owner_person_no=owner)
        )
    with deposit_env(deposit_sandbox, world["erp_url"], world["state_url"]):
        master = run_deposit_master_data(profile="test")
        bookings = run_deposit_bookings(profile="test")
    assert master["counts"].get("deposit_accounts.created") == 1
    assert "9001-001-01" in deposit_view(deposit_sandbox)["deposit_accounts"]
    assert bookings["confirmed"] >= 1
    still = {(q["ref_id"], q["rule"]) for q in StateStore(world["state_url"]).open_quarantine("deposit")}
    assert not any(ref == "9001-001-01" for ref, _ in still)
    assert ("9002-001-01", "trust_account_on_object") in still


def test_switched_off_or_unlicensed_sends_nothing(
    world: dict[str, Any], deposit_sandbox: DepositSandboxServer
) -> None:
    before = deposit_sandbox.counters()["requests"]
    with deposit_env(
        deposit_sandbox, world["erp_url"], world["state_url"], HAUSFLOW_LICENCES__DEPOSIT="false"
    ):
        assert run_deposit_master_data(profile="test")["status"] == "not licensed"
    with deposit_env(
        deposit_sandbox, world["erp_url"], world["state_url"], HAUSFLOW_DEPOSIT__ENABLED="false"
    ):
        assert run_deposit_bookings(profile="test")["status"] == "disabled"
    assert deposit_sandbox.counters()["requests"] == before
