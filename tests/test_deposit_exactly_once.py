"""Every booking of an account the partner holds reaches it exactly once, whatever the order of
events: an object that joins the group after both flows ran, a booking committed late with an id
below the newest one, a held account that is fixed later. Checked against the ERP, not against
hausflow's own state; and the partner's refusals and the booking rules hold a record, not the run."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, update

from connectors.deposit import DepositClient
from connectors.erp import demo, schema
from connectors.erp.database import make_engine
from connectors.state_store import QuarantineItem, StateStore
from connectors.sync.client import WriteOp
from flows.deposit_sync import run_deposit_bookings, run_deposit_master_data
from sandbox.deposit.server import DepositSandboxServer
from tests.deposit_env import BUSINESS_DATE, deposit_env, deposit_view, erp_bookings, missing_at_partner

pytestmark = pytest.mark.usefixtures("prefect_harness")
GROUP = "KM_Kautionen"


def _world(tmp_path: Path, persons: int = 300, seed: int = 5) -> tuple[Any, str, str]:
    erp_url, state_url = f"sqlite:///{tmp_path}/erp.sqlite", f"sqlite:///{tmp_path}/state.sqlite"
    engine = make_engine(erp_url)
    demo.generate_erp(engine, persons=persons, seed=seed, business_date=BUSINESS_DATE)
    return engine, erp_url, state_url


def _objects_with_bookings(engine: Any) -> list[str]:
    """Objects of the group (not the precondition edge cases) whose accounts have bookings."""
    b, a, c, u, g = (schema.deposit_bookings, schema.deposit_accounts, schema.contracts, schema.units,
                     schema.object_groups)  # fmt: skip
    query = (
        select(u.c.object_no)
        .join(c, c.c.unit_no == u.c.unit_no)
        .join(a, a.c.contract_no == c.c.contract_no)
        .join(b, b.c.account_no == a.c.account_no)
        .where(u.c.object_no.in_(select(g.c.object_no).where(g.c.group_name == GROUP)))
        .distinct()
    )
    with engine.connect() as conn:
        return sorted(o for o in conn.execute(query).scalars() if not o.startswith("900"))


def test_an_object_that_joins_the_group_later_sends_all_its_bookings(
    deposit_sandbox: DepositSandboxServer, tmp_path: Path
) -> None:
    engine, erp_url, state_url = _world(tmp_path, persons=1000, seed=5)
    victim = _objects_with_bookings(engine)[0]
    g = schema.object_groups
    with engine.begin() as conn:
        conn.execute(delete(g).where(g.c.group_name == GROUP, g.c.object_no == victim))
        # no account waits on a precondition, so nothing keeps a bookings cursor low
        conn.execute(delete(g).where(g.c.group_name == GROUP, g.c.object_no.in_(["9001", "9002", "9003"])))
        p = schema.persons
        conn.execute(
            update(p).where(p.c.last_name.is_(None), p.c.company_name.is_(None)).values(last_name="X")
        )
    deposit_sandbox.reset()
    with deposit_env(deposit_sandbox, erp_url, state_url):
        run_deposit_master_data(profile="test")
        run_deposit_bookings(profile="test")
        assert not missing_at_partner(engine, deposit_sandbox)
        with engine.begin() as conn:
            conn.execute(insert(g).values(group_name=GROUP, object_no=victim))
        master = run_deposit_master_data(profile="test")
        bookings = run_deposit_bookings(profile="test")
        again = run_deposit_bookings(profile="test")
    assert master["counts"].get("deposit_accounts.created", 0) >= 1
    view = deposit_view(deposit_sandbox)
    victim_refs = {r["id"] for r in view["deposit_accounts"].values() if r["object"]["id"] == victim}
    victim_bookings = [b for b, row in erp_bookings(engine).items() if row["contract_no"] in victim_refs]
    assert victim_bookings and bookings["confirmed"] == len(victim_bookings)
    assert missing_at_partner(engine, deposit_sandbox) == {}
    assert again["planned_writes"] == 0
    assert deposit_sandbox.counters()["duplicate_writes"] == 0


def test_a_booking_committed_late_with_a_lower_id_is_sent(
    deposit_sandbox: DepositSandboxServer, tmp_path: Path
) -> None:
    engine, erp_url, state_url = _world(tmp_path, seed=7)
    obj = _objects_with_bookings(engine)[0]
    late = min((b for b, row in erp_bookings(engine).items() if row["contract_no"].startswith(obj)), key=int)
    b = schema.deposit_bookings
    with engine.begin() as conn:  # not committed yet when the flows run
        row = dict(conn.execute(select(b).where(b.c.booking_id == int(late))).one()._mapping)
        conn.execute(delete(b).where(b.c.booking_id == int(late)))
    deposit_sandbox.reset()
    with deposit_env(deposit_sandbox, erp_url, state_url):
        run_deposit_master_data(profile="test")
        run_deposit_bookings(profile="test")
        with engine.begin() as conn:
            conn.execute(insert(b).values(**row))
        assert int(late) < max(int(i) for i in erp_bookings(engine))
        assert late in missing_at_partner(engine, deposit_sandbox)
        sent = run_deposit_bookings(profile="test")
    assert sent["confirmed"] == 1
    assert missing_at_partner(engine, deposit_sandbox) == {}
    assert len(deposit_sandbox.write_log("bookings", late)) == 1


def test_a_fixed_precondition_is_released_beside_a_refusal_and_its_bookings_go(
    deposit_sandbox: DepositSandboxServer, tmp_path: Path
) -> None:
    """Another open entry on the account (a refusal, which the preconditions never resolve) must
    not keep a fixed precondition open, nor make the account's bookings wait for ever."""
    engine, erp_url, state_url = _world(tmp_path, seed=9)
    store = StateStore(state_url)
    deposit_sandbox.reset()
    with deposit_env(deposit_sandbox, erp_url, state_url):
        run_deposit_master_data(profile="test")
        store.quarantine(
            "deposit",
            [QuarantineItem("deposit_accounts", "9001-001-01", "deposit_rejected", "an old refusal", None)],
            "earlier",
        )
        with engine.begin() as conn:
            owner = conn.execute(
                select(schema.objects.c.owner_person_no).where(schema.objects.c.object_no == "9002")
            ).scalar()
            conn.execute(
                update(schema.objects)
                .where(schema.objects.c.object_no == "9001")
                .values(owner_person_no=owner)
            )
        run_deposit_master_data(profile="test")
        run_deposit_bookings(profile="test")
    still = {(q["ref_id"], q["rule"]) for q in store.open_quarantine("deposit")}
    assert ("9001-001-01", "owner_on_object") not in still
    assert "9001-001-01" in deposit_view(deposit_sandbox)["deposit_accounts"]
    assert not any(b.startswith("9001") for b in missing_at_partner(engine, deposit_sandbox))
    # the account's write was confirmed: the old refusal no longer holds either
    assert ("9001-001-01", "deposit_rejected") not in still


def _add_booking(engine: Any, account_no: str, kind: str, amount: str, text: str = "Buchung") -> str:
    b = schema.deposit_bookings
    with engine.begin() as conn:
        booking_id = max(int(i) for i in conn.execute(select(b.c.booking_id)).scalars()) + 1
        conn.execute(
            insert(b).values(booking_id=booking_id, account_no=account_no, booking_type=kind,
                             amount=Decimal(amount), booking_date=date(2026, 11, 20), text=text)
        )  # fmt: skip
    return str(booking_id)


def test_a_booking_breaking_a_rule_is_held_with_its_later_ones_not_the_run_until_fixed(
    deposit_sandbox: DepositSandboxServer, tmp_path: Path
) -> None:
    engine, erp_url, state_url = _world(tmp_path, seed=11)
    store = StateStore(state_url)
    deposit_sandbox.reset()
    with deposit_env(deposit_sandbox, erp_url, state_url):
        run_deposit_master_data(profile="test")
        run_deposit_bookings(profile="test")
        contract = sorted(deposit_view(deposit_sandbox)["deposit_accounts"])[0]
        account_no = f"K-{contract}"
        wrong = _add_booking(engine, account_no, "PAYMENT_IN", "-100.00", "Storno")  # a reversal, mis-booked
        later = _add_booking(engine, account_no, "INTEREST", "1.00")
        first = run_deposit_bookings(profile="test")
        second = run_deposit_bookings(profile="test")
        held = {(q["ref_id"], q["rule"]): q["reason"] for q in store.open_quarantine("deposit")}
        assert (wrong, "booking_sign") in held and "PAYOUT or COUNTERCLAIM" in held[(wrong, "booking_sign")]
        skipped = {r.ref_id: r.reason for r in store.protocol_rows(second["run_id"], ["skipped"])}
        assert f"waits for booking {wrong}" in skipped[later]
        assert first["failed"] == 0 and second["failed"] == 0 and second["planned_writes"] == 0
        with engine.begin() as conn:
            conn.execute(
                update(schema.deposit_bookings)
                .where(schema.deposit_bookings.c.booking_id == int(wrong))
                .values(booking_type="PAYOUT")
            )
        fixed = run_deposit_bookings(profile="test")
    assert fixed["confirmed"] == 2
    assert (wrong, "booking_sign") not in {(q["ref_id"], q["rule"]) for q in store.open_quarantine("deposit")}
    assert missing_at_partner(engine, deposit_sandbox) == {}
    assert deposit_sandbox.counters()["refused_writes"] == 0


def test_a_refused_booking_is_held_until_it_changes_in_the_erp(
    deposit_sandbox: DepositSandboxServer, tmp_path: Path
) -> None:
    """A refusal hausflow's rules did not foresee (here: the partner refuses a text it cannot
    take): the first run fails for it, the next ones hold it with the reason and stay green."""
    engine, erp_url, state_url = _world(tmp_path, seed=13)
    store = StateStore(state_url)
    deposit_sandbox.reset()
    with deposit_env(deposit_sandbox, erp_url, state_url):
        run_deposit_master_data(profile="test")
        run_deposit_bookings(profile="test")
        contract = sorted(deposit_view(deposit_sandbox)["deposit_accounts"])[0]
        bad = _add_booking(engine, f"K-{contract}", "INTEREST", "1.00", "x")
        # the partner refuses it: archive the account behind hausflow's back (422 accountId)
        account = deposit_view(deposit_sandbox)["deposit_accounts"][contract]
        DepositClient(deposit_sandbox.base_url, deposit_sandbox.key, deposit_sandbox.secret).write_many(
            [WriteOp("deposit_accounts", "archive", contract)]
        )
        with pytest.raises(RuntimeError, match="1 deposit bookings writes failed"):
            run_deposit_bookings(profile="test")
        held_run = run_deposit_bookings(profile="test")
        refused_before = deposit_sandbox.counters()["refused_writes"]
        again = run_deposit_bookings(profile="test")
    assert held_run["failed"] == 0 and again["failed"] == 0
    assert deposit_sandbox.counters()["refused_writes"] == refused_before  # not sent again
    skipped = {r.ref_id: r.reason for r in store.protocol_rows(again["run_id"], ["skipped"])}
    assert "refused" in skipped[bad] and account["id"] == contract
    assert (bad, "deposit_rejected") in {(q["ref_id"], q["rule"]) for q in store.open_quarantine("deposit")}
