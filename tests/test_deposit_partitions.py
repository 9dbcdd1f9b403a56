"""The deposit partner's partitioned sync (flows/scale_out.py) in one process: partition runs of
both flows give the partner exactly what one run over everything gives, every record once; what
needs the whole picture (payouts, archives, other ranges' quarantine) is left to the closing runs.

The ERP: the demo's deposit group (objects 1001, 1008, 9001-9003; two ranges: 1001 and
1008..9003), plus a tenant of 1001 who is also joint tenant of an open tenancy in 1008: the
one-account-per-tenant rule holds back both accounts only if every range's run sees both.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from sqlalchemy import delete, func, insert, select

from config.settings import load_settings
from connectors.erp import demo, schema
from connectors.erp.database import make_engine
from connectors.sepa.payout_ledger import sepa_payout_files, sepa_payouts
from connectors.state_store import StateStore
from flows import scale_out
from flows.deposit_sync import (
    deposit_bookings,
    deposit_master_data,
    run_deposit_bookings,
    run_deposit_master_data,
)
from flows.scale_out import DEPOSIT_CLOSING, deposit_sync_partitioned
from sandbox.deposit.server import DepositSandboxServer
from tasks.deposit_tasks import deposit_object_weights
from tasks.partitions import Partition, split_objects
from tests.deposit_env import BUSINESS_DATE, deposit_env, deposit_view

pytestmark = pytest.mark.usefixtures("prefect_harness")
VOLATILE = ("internalId", "createdAt", "updatedAt")
"""What the partner stamps on a record by when and in which order it arrived."""


def _content(sandbox: DepositSandboxServer) -> dict[str, dict[str, dict[str, Any]]]:
    """What the partner holds, without what depends on the order of the writes."""
    return {
        entity: {ref: {k: v for k, v in rec.items() if k not in VOLATILE} for ref, rec in records.items()}
        for entity, records in deposit_view(sandbox).items()
    }


def _payouts(state_url: str) -> tuple[dict[str, tuple[Any, ...]], set[str]]:
    """The payouts the ledger holds (payout id -> amount and accounts), and the runs that wrote files."""
    engine = make_engine(state_url)
    p, f = sepa_payouts, sepa_payout_files
    try:
        with engine.connect() as conn:
            paid = {
                r.payout_id: (r.amount, r.creditor_iban, r.debtor_iban, r.status)
                for r in conn.execute(
                    select(p.c.payout_id, p.c.amount, p.c.creditor_iban, p.c.debtor_iban, p.c.status)
                )
            }
            runs = {str(r) for r in conn.execute(select(f.c.run_id)).scalars()}
    finally:
        engine.dispose()
    return paid, runs


def _tenant_in_two_ranges(erp_url: str) -> tuple[str, str]:
    """Make the lead tenant of an open deposit account of object 1001 joint tenant of an open
    tenancy with a deposit account in object 1008; returns their two contract references."""
    engine = make_engine(erp_url)
    c, u, a = schema.contracts, schema.units, schema.deposit_accounts
    try:
        with engine.begin() as conn:

            def first_open(object_no: str) -> Any:
                row = conn.execute(
                    select(c.c.contract_no, c.c.person_no)
                    .join(u, u.c.unit_no == c.c.unit_no)
                    .join(a, a.c.contract_no == c.c.contract_no)
                    .where(u.c.object_no == object_no, a.c.closed_on.is_(None), c.c.move_out_date.is_(None))
                    .order_by(c.c.contract_no)
                ).first()
                assert row is not None, f"no open tenancy with a deposit account in object {object_no}"
                return row

            here, there = first_open("1001"), first_open("1008")
            conn.execute(
                insert(schema.contract_partners).values(
                    contract_no=there.contract_no, person_no=here.person_no, role="VERTRAGSPARTNER"
                )
            )
    finally:
        engine.dispose()
    return str(here.contract_no), str(there.contract_no)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The ERP, and what one run of each flow over everything leaves at a partner of its own."""
    folder = tmp_path_factory.mktemp("deposit-partitions")
    erp = folder / "erp.sqlite"
    engine = make_engine(f"sqlite:///{erp}")
    demo.generate_erp(engine, persons=400, seed=11, business_date=BUSINESS_DATE)
    engine.dispose()
    doubled = _tenant_in_two_ranges(f"sqlite:///{erp}")
    single = DepositSandboxServer(db_path=f"{folder}/single.sqlite")
    single.start()
    state_url = f"sqlite:///{folder}/single-state.sqlite"
    try:
        with deposit_env(single, f"sqlite:///{erp}", state_url):
            master = run_deposit_master_data(profile="test")
            bookings = run_deposit_bookings(profile="test")
        content = _content(single)
    finally:
        single.stop()
    paid, _ = _payouts(state_url)
    assert bookings["payouts"]["paid"] >= 1  # a payout to compare
    assert len(paid) == bookings["payouts"]["paid"]
    return {
        "erp": erp,
        "doubled": doubled,
        "master": master,
        "bookings": bookings,
        "content": content,
        "paid": paid,
    }


def _setup(world: dict[str, Any], folder: Path) -> tuple[str, str]:
    """A copy of the ERP and a fresh state store in ``folder``: their URLs. SQLite's backup, not a
    file copy: what a connection still open holds in the write-ahead log is copied too."""
    with (
        closing(sqlite3.connect(world["erp"])) as source,
        closing(sqlite3.connect(folder / "erp.sqlite")) as copy,
    ):
        source.backup(copy)
    return f"sqlite:///{folder}/erp.sqlite", f"sqlite:///{folder}/state.sqlite"


def _parts(count: int) -> list[Partition]:
    ranges = split_objects(deposit_object_weights(load_settings("test")), count)
    return [Partition(i, len(ranges), first, last) for i, (first, last) in enumerate(ranges)]


def _created(state_url: str, run_ids: list[str]) -> Counter[tuple[str, str]]:
    """How often each record was created by the runs ``run_ids`` (their protocol)."""
    store = StateStore(state_url)
    return Counter(
        (r.entity, r.ref_id) for run in run_ids for r in store.protocol_rows(run, ["created"], limit=100_000)
    )


def test_partition_runs_give_the_deposit_partner_what_one_run_gives(
    world: dict[str, Any], deposit_sandbox: DepositSandboxServer, tmp_path: Path
) -> None:
    """Two partitions, master data then bookings, each partition's run in turn, then the closing
    runs: the partner holds what a single run leaves, every account and booking was written once
    and by a partition run, and only the closing bookings run paid out."""
    erp_url, state_url = _setup(world, tmp_path)
    deposit_sandbox.reset()
    with deposit_env(deposit_sandbox, erp_url, state_url):
        parts = _parts(2)
        assert [(p.first, p.last) for p in parts] == [("1001", "1001"), ("1008", "9003")]
        summaries = [
            run(profile="test", partition=p.parameter())
            for run in (run_deposit_master_data, run_deposit_bookings)
            for p in parts
        ]
        before_closing = deposit_sandbox.counters()
        closing_master = run_deposit_master_data(profile="test")
        closing_bookings = run_deposit_bookings(profile="test")
    content = _content(deposit_sandbox)
    assert content == world["content"]
    counters = deposit_sandbox.counters()
    assert counters["duplicate_writes"] == 0
    records = sum(len(recs) for recs in content.values())
    # each record once, none by the closing runs
    assert before_closing["writes"] == counters["writes"] == records
    created = _created(state_url, [s["run_id"] for s in summaries])
    assert set(created) == {(e, ref) for e, recs in content.items() for ref in recs}
    assert set(created.values()) == {1}
    assert (
        sum(s["confirmed"] for s in summaries)
        == world["master"]["confirmed"] + world["bookings"]["confirmed"]
    )
    assert closing_master["confirmed"] == closing_bookings["confirmed"] == 0
    # the rules saw every range: the tenant of two ranges holds back both accounts, each in its range
    store = StateStore(state_url)
    held = {(q["ref_id"], q["rule"]) for q in store.open_quarantine("deposit")}
    assert {(ref, "one_deposit_account_per_tenant") for ref in world["doubled"]} <= held
    assert not set(world["doubled"]) & set(content["deposit_accounts"])
    # what is held back is each range's own; the closing runs report the whole, as a single run does
    assert sum(s["quarantined"] for s in summaries[:2]) == world["master"]["quarantined"]
    assert closing_master["quarantined"] == world["master"]["quarantined"]
    assert closing_bookings["skipped"] == world["bookings"]["skipped"]
    assert closing_bookings["waiting"] == world["bookings"]["waiting"]
    # payouts: only the closing bookings run, one file, the same payouts as the single run
    assert all(not s.get("payouts") for s in summaries[2:])
    assert closing_bookings["payouts"]["paid"] == world["bookings"]["payouts"]["paid"]
    paid, file_runs = _payouts(state_url)
    assert paid == world["paid"] and file_runs == {closing_bookings["run_id"]}


async def _run_here(name: str, parameters: dict[str, Any], flow_run_name: str, **_: Any) -> FlowRun:
    """``run_deployment`` without workers: the deployment's flow as a subflow in this process."""
    flows: dict[str, Callable[..., Any]] = {
        scale_out.DEPOSIT_MASTER_DEPLOYMENT: deposit_master_data,
        scale_out.DEPOSIT_BOOKINGS_DEPLOYMENT: deposit_bookings,
    }
    flow = flows[name].with_options(flow_run_name=flow_run_name)  # type: ignore[attr-defined]
    state = await flow(**parameters, return_state=True)
    async with get_client() as client:
        return await client.read_flow_run(state.state_details.flow_run_id)


def test_the_parent_run_reports_the_combined_protocol_and_leaves_the_whole_picture_to_its_closing_runs(
    world: dict[str, Any],
    deposit_sandbox: DepositSandboxServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The parent flow, its runs started here instead of on workers (the work pool and workers
    are not part of this test): the partitions' runs, then the two closing runs, and the combined
    protocol. Then an object leaves the deposit group: the partition runs archive nothing and
    leave the quarantine entries of accounts no range holds; the closing run archives them."""
    monkeypatch.setattr(scale_out, "run_deployment", _run_here)
    erp_url, state_url = _setup(world, tmp_path)
    deposit_sandbox.reset()
    with deposit_env(deposit_sandbox, erp_url, state_url):
        summary = asyncio.run(deposit_sync_partitioned(partitions=2, profile="test"))
        assert _content(deposit_sandbox) == world["content"]
        assert [(r["phase"], r["objects"], r["state"]) for r in summary["runs"]] == [
            ("master-data", "1001..1001", "Completed"),
            ("master-data", "1008..9003", "Completed"),
            ("bookings", "1001..1001", "Completed"),
            ("bookings", "1008..9003", "Completed"),
            (DEPOSIT_CLOSING[0], "all", "Completed"),
            (DEPOSIT_CLOSING[1], "all", "Completed"),
        ]
        assert summary["confirmed"] == world["master"]["confirmed"] + world["bookings"]["confirmed"]
        assert summary["failed"] == summary["not_completed"] == 0
        for key in ("quarantined", "skipped"):
            assert summary[key] == world["master"][key] + world["bookings"][key], key
        # the closing run found the accounts the ranges sent unchanged
        assert summary["unchanged"] == world["master"]["confirmed"]
        assert summary["payouts"]["paid"] == world["bookings"]["payouts"]["paid"]

        # object 9003 leaves the deposit group: its accounts at the partner are no range's; a new
        # booking of range 2 breaks a booking rule
        gone = sorted(ref for ref in world["content"]["deposit_accounts"] if ref.startswith("9003-"))
        assert gone
        accounts = world["content"]["deposit_accounts"]
        in_range_2 = next(
            accounts[ref] for ref in sorted(accounts) if accounts[ref]["object"]["id"] == "1008"
        )
        bad = _leave_group_and_book_wrong(erp_url, "9003", in_range_2)
        store = StateStore(state_url)

        def entries() -> set[tuple[str, str]]:
            return {(q["ref_id"], q["rule"]) for q in store.open_quarantine("deposit")}

        before = entries()
        assert {
            ("9001-001-01", "owner_on_object"),
            ("9003-001-01", "one_deposit_account_per_tenant"),
        } <= before
        ranges = [Partition(0, 2, "1001", "1001").parameter(), Partition(1, 2, "1008", "9003").parameter()]
        first = run_deposit_master_data(profile="test", partition=ranges[0])
        assert entries() == before  # the first range decided nothing about the others' accounts
        second = run_deposit_master_data(profile="test", partition=ranges[1])
        assert first["confirmed"] == second["confirmed"] == 0
        view = deposit_view(deposit_sandbox)["deposit_accounts"]
        assert not any(view[ref]["archived"] for ref in gone)  # no range archives
        assert entries() == before  # no range holds 9003 now: its entries wait for the closing run
        run_deposit_bookings(profile="test", partition=ranges[1])
        run_deposit_bookings(profile="test", partition=ranges[0])
        assert entries() == before | {(bad, "booking_type_known")}  # range 1 left range 2's booking alone
        closing = run_deposit_master_data(profile="test")
    view = deposit_view(deposit_sandbox)["deposit_accounts"]
    assert closing["counts"].get("deposit_accounts.archived") == len(gone)
    assert all(view[ref]["archived"] for ref in gone)
    assert entries() == {e for e in before if not e[0].startswith("9003-")} | {(bad, "booking_type_known")}
    assert deposit_sandbox.counters()["duplicate_writes"] == 0


def _leave_group_and_book_wrong(erp_url: str, object_no: str, account: dict[str, Any]) -> str:
    """Take the object out of the deposit group, and add a booking of an unknown type to the
    account (as the partner holds it): returns the booking's id."""
    engine = make_engine(erp_url)
    b, g = schema.deposit_bookings, schema.object_groups
    try:
        with engine.begin() as conn:
            conn.execute(delete(g).where(g.c.group_name == "KM_Kautionen", g.c.object_no == object_no))
            booking_id = int(conn.execute(select(func.max(b.c.booking_id))).scalar_one()) + 1
            conn.execute(
                insert(b).values(
                    booking_id=booking_id,
                    account_no=account["accountNo"],
                    booking_type="REFUND",
                    amount=Decimal("10.00"),
                    booking_date=BUSINESS_DATE,
                    text="Erstattung",
                )
            )
    finally:
        engine.dispose()
    return str(booking_id)
