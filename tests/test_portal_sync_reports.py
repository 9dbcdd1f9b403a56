"""What a person sees of a portal sync: the details artifact, the log lines and where they point,
and a portal that does not answer. Artifacts and logs are read back through the Prefect API."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import select

from connectors.erp import demo, schema
from connectors.erp.database import make_engine
from connectors.state_store import ProtocolRow, StateStore, sync_runs
from flows.portal_sync import portal_sync, run_portal_sync
from sandbox.portal.server import SandboxServer, free_port
from tasks.sync.protocol import DETAILS_LIMIT, HELD, WRITTEN
from tests.portal_env import BUSINESS_DATE, portal_env, portal_view, run_log

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def world(sandbox: SandboxServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A seeded ERP of 800 persons (over 1,000 portal records, every edge case) and a first sync."""
    folder = tmp_path_factory.mktemp("reports")
    erp_url, state_url = f"sqlite:///{folder}/erp.sqlite", f"sqlite:///{folder}/state.sqlite"
    engine = make_engine(erp_url)
    summary = demo.generate_erp(engine, persons=800, seed=7, business_date=BUSINESS_DATE)
    sandbox.reset()
    with portal_env(sandbox, erp_url, state_url):
        first = run_portal_sync(profile="test")
    return {
        "engine": engine,
        "erp_url": erp_url,
        "state_url": state_url,
        "edge": summary.edge_cases,
        "first": first,
    }


def artifact(run_id: str, key: str) -> str:
    """The markdown of the run's artifact ``key``, read from the Prefect API."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)]),
                    key=ArtifactFilterKey(any_=[key]),
                )
            )

    found = asyncio.run(read())
    assert len(found) == 1, f"{len(found)} artifacts {key} of run {run_id}"
    return str(found[0].data)


def section(markdown: str, title: str) -> tuple[str, list[tuple[str, str, str, str]]]:
    """The heading line of a section of the details artifact and its table rows."""
    part = markdown.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    rows = [
        tuple(c.strip() for c in line.strip("|").split("|"))
        for line in part.splitlines()
        if line.startswith("| ") and not line.startswith("| entity ")
    ]
    return f"## {title}" + part.splitlines()[0], rows  # type: ignore[return-value]


def keyed(rows: list[ProtocolRow]) -> set[tuple[str, str, str]]:
    return {(r.entity, r.ref_id, r.outcome) for r in rows}


def test_the_details_list_every_write_and_every_record_held_back(world: dict[str, Any]) -> None:
    """A first sync of over 1,000 records: the first 1,000 writes with the count of the rest and
    where they are, then every skipped and quarantined record."""
    run_id = world["first"]["run_id"]
    store = StateStore(world["state_url"])
    written = store.protocol_rows(run_id, WRITTEN, limit=100_000)
    held = store.protocol_rows(run_id, HELD, limit=100_000)
    assert len(written) > DETAILS_LIMIT and held
    details = artifact(run_id, "portal-sync-details")

    heading, rows = section(details, "Writes")
    assert heading.startswith(f"## Writes: {len(written):,} (")
    assert len(rows) == DETAILS_LIMIT and {r[:3] for r in rows} <= keyed(written)
    assert (
        f"the other {len(written) - DETAILS_LIMIT:,} are in the state database's `protocol` table" in details
    )
    assert f"run_id '{run_id}'" in details

    heading, rows = section(details, "Held back")
    assert heading.startswith(f"## Held back: {len(held):,} (")
    assert {r[:3] for r in rows} == keyed(held) and len(rows) == len(held)
    reasons = {r[1]: r[3] for r in rows if r[2] == "quarantined"}
    for person_no in world["edge"]["no_last_name"]:
        assert "neither last name nor company name" in reasons[person_no]


def numbers(log: list[str]) -> tuple[int, dict[str, int]]:
    """The rules' "N to withdraw" and the plan's account of them, from a run's log."""
    rules = next(m for m in log if m.startswith("Portal rules on"))
    plan = next(m for m in log if m.startswith("Plan: properties"))
    withdrawn = int(re.search(r"(\d+) to withdraw", rules).group(1))  # type: ignore[union-attr]
    told = re.search(rf"of the {withdrawn} to withdraw: ([^;]*)\.$", plan)
    assert told, plan
    fate = {what: int(n) for n, what in re.findall(r"(\d+) ([a-z][a-z ]+)", told.group(1))}
    return withdrawn, fate


def test_the_withdrawn_of_the_rules_add_up_with_the_protocol(
    world: dict[str, Any], sandbox: SandboxServer
) -> None:
    """The rules log "N to withdraw"; the plan says what becomes of each of them, and the
    protocol's archived count is its "archived now": none in a first sync (they never reached
    the portal); in the next run the two tenants who moved out 40 days ago (grace: 30 days)."""
    store = StateStore(world["state_url"])
    first = world["first"]
    withdrawn, fate = numbers(run_log(first["run_id"]))
    assert withdrawn >= len(world["edge"]["moved_out_beyond_grace"]) > 0
    assert sum(fate.values()) == withdrawn
    assert fate == {"already archived or never in the portal": withdrawn}
    assert first["counts"].get("contacts.archived", 0) == 0

    view = portal_view(sandbox)["contacts"]
    with world["engine"].connect() as conn:
        contract_of = dict(
            conn.execute(
                select(schema.contracts.c.person_no, schema.contracts.c.contract_no).where(
                    schema.contracts.c.move_out_date.is_(None)
                )
            ).all()
        )
    edge = world["edge"]
    others = (
        set(edge["two_contracts"]) | set(edge["owners"]) | set(edge["caretakers"]) | set(edge["co_residents"])
    )
    leavers = [
        p for p in sorted(view) if p in contract_of and p not in others and len(view[p]["contracts"]) == 1
    ][:2]
    for person_no in leavers:
        demo.move_out(world["engine"], contract_of[person_no], BUSINESS_DATE - timedelta(days=40))
    with portal_env(sandbox, world["erp_url"], world["state_url"]):
        second = run_portal_sync(profile="test")
    withdrawn, fate = numbers(run_log(second["run_id"]))
    archived = store.protocol_rows(second["run_id"], ["archived"])
    assert sum(fate.values()) == withdrawn
    # the leavers, and the partners of their contracts with them
    assert fate["archived now"] == second["counts"]["contacts.archived"] == len(archived) >= 2
    assert set(leavers) <= {r.ref_id for r in archived}
    assert fate["already archived or never in the portal"] == withdrawn - len(archived)


def test_failed_writes_and_held_records_are_where_the_messages_say(
    world: dict[str, Any], sandbox: SandboxServer
) -> None:
    """Writes the portal does not take (503 to every write, one retry): the run fails with a
    message that names portal-sync-details, which lists each failed record with its reason; the
    log's line on records still in quarantine names it too, and it lists them."""
    demo.mutate_erp(world["engine"], seed=5, fraction=0.02, business_date=BUSINESS_DATE)
    store = StateStore(world["state_url"])
    sandbox.set_faults(status_rates={"503": 1.0}, retry_after_s=0, methods=["PUT", "POST"])
    try:
        with portal_env(sandbox, world["erp_url"], world["state_url"], HAUSFLOW_PORTAL__MAX_RETRIES="1"):
            state = asyncio.run(portal_sync(profile="test", return_state=True))
    finally:
        sandbox.clear_faults()
    assert state.is_failed()
    run_id = str(state.state_details.flow_run_id)
    assert "portal writes failed (listed with the reason in portal-sync-details)" in str(state.message)
    failed = store.protocol_rows(run_id, ["failed"], limit=100_000)
    assert failed
    details = artifact(run_id, "portal-sync-details")
    _, rows = section(details, "Held back")
    listed = {(r[0], r[1]): r[3] for r in rows if r[2] == "failed"}
    assert set(listed) == {(r.entity, r.ref_id) for r in failed}
    assert all("503" in reason for reason in listed.values())

    log = run_log(run_id, until="stay in quarantine")
    line = next(m for m in log if "stay in quarantine from earlier runs" in m)
    assert "./hausflow quarantine lists them, portal-sync-details too" in line
    held = {(r[0], r[1]) for r in rows if r[2] == "quarantined"}
    assert {(q["entity"], q["ref_id"]) for q in store.open_quarantine("portal")} - {
        (r.entity, r.ref_id) for r in failed
    } <= held
    with portal_env(sandbox, world["erp_url"], world["state_url"]):
        assert run_portal_sync(profile="test")["failed"] == 0  # the next run takes them


@pytest.mark.parametrize("fault", ["closed port", "503", "timeout"])
def test_a_portal_that_does_not_answer_fails_the_run_before_anything_is_planned(
    world: dict[str, Any], sandbox: SandboxServer, fault: str
) -> None:
    """Connection refused, 503 after the client's retries, or no answer in time: the run is
    Failed after the check, with one line that names the address and what to check; nothing
    is read from the ERP, planned or sent, and the check is not retried on top of the client."""
    store = StateStore(world["state_url"])
    base_url = f"http://127.0.0.1:{free_port()}" if fault == "closed port" else sandbox.base_url
    extra = {"HAUSFLOW_PORTAL__BASE_URL": base_url}
    if fault == "503":
        sandbox.set_faults(status_rates={"503": 1.0}, retry_after_s=0, methods=["GET"])
    if fault == "timeout":
        sandbox.set_faults(latency_ms=[1500, 1500], methods=["GET"])
        extra |= {"HAUSFLOW_PORTAL__TIMEOUT_S": "0.3", "HAUSFLOW_PORTAL__MAX_RETRIES": "1"}
    before = sandbox.counters()
    try:
        with portal_env(sandbox, world["erp_url"], world["state_url"], **extra):
            state = asyncio.run(portal_sync(profile="test", return_state=True))
    finally:
        sandbox.clear_faults()
    after = sandbox.counters()
    assert state.is_failed()
    run_id = str(state.state_details.flow_run_id)
    assert f"the portal at {base_url} is not available" in str(state.message)
    log = run_log(run_id, until="is not available")
    lines = [m for m in log if "portal.base_url" in m]
    assert len(lines) == 1, log
    assert lines[0].startswith(f"The portal at {base_url} is not available (")
    for advice in ("portal.base_url", "HTTPS_PROXY", "the portal's status", "stops before it reads or sends"):
        assert advice in lines[0]
    assert not any(m.startswith(("Read the ERP", "Plan:", "Portal rules", "Loaded")) for m in log)
    assert after["writes"] == before["writes"]
    if fault == "503":  # the client's 1 + 6 retries, once: the task does not start it again
        assert after["faults_injected"]["503"] - before["faults_injected"].get("503", 0) == 7
    assert store.protocol_rows(run_id) == []
    with store.engine.connect() as conn:
        status = conn.execute(select(sync_runs.c.status).where(sync_runs.c.run_id == run_id)).scalar_one()
    assert status == "FAILED"
