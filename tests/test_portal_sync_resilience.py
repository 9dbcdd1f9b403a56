"""The portal sync under faults and crashes, and on PostgreSQL.

- faults: 20 % 5xx/429 plus latency and dropped connections: the run converges to exactly the
  desired state, no record written twice;
- crash: the sync process killed with SIGKILL in the middle of loading, several times at
  different points: the next run converges, none lost, none written twice;
- PostgreSQL: ERP and state store on PostgreSQL, same outcome as on SQLite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from connectors.erp import demo
from connectors.erp.database import make_engine
from connectors.state_store import StateStore
from flows.portal_sync import run_portal_sync
from sandbox.portal.server import SandboxServer
from tests.portal_env import BUSINESS_DATE, portal_env, portal_view, run_log

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parent.parent


def desired_ids(state_url: str) -> dict[str, set[str]]:
    """What the state store says the portal holds (active records)."""
    store = StateStore(state_url)
    return {
        entity: {rid for rid, e in store.load_state("portal", entity).items() if e.status == "active"}
        for entity in ("properties", "units", "contacts")
    }


def assert_portal_matches(sandbox: SandboxServer, state_url: str) -> None:
    """The portal holds exactly the confirmed active records, and nothing else."""
    view = portal_view(sandbox, include_archived=False)
    want = desired_ids(state_url)
    for entity, ids in want.items():
        assert set(view[entity]) == ids, entity


def sync_until_converged(env: dict[str, str], runs: int = 6) -> list[dict[str, Any]]:
    results = []
    for _ in range(runs):
        try:
            results.append(run_portal_sync(profile="test"))
        except RuntimeError as exc:  # some writes ran out of retries: the next run takes them
            results.append({"error": str(exc)})
            continue
        if results[-1]["planned_writes"] == 0:
            return results
    return results


def test_faults_converge_to_exactly_the_desired_state(sandbox: SandboxServer, tmp_path: Path) -> None:
    erp_url, state_url = f"sqlite:///{tmp_path}/erp.sqlite", f"sqlite:///{tmp_path}/state.sqlite"
    demo.generate_erp(make_engine(erp_url), persons=250, seed=21, business_date=BUSINESS_DATE)
    sandbox.reset()
    sandbox.set_faults(
        status_rates={"500": 0.05, "502": 0.03, "503": 0.04, "429": 0.08},
        retry_after_s=0,
        latency_ms=[1, 15],
        drop_rate=0.03,
        apply_then_drop_rate=0.03,
        seed=5,
    )
    try:
        with portal_env(sandbox, erp_url, state_url) as env:
            results = sync_until_converged(env)
    finally:
        sandbox.clear_faults()
    counters = sandbox.counters()
    assert sum(counters["faults_injected"].values()) > 20, counters["faults_injected"]
    with portal_env(sandbox, erp_url, state_url) as env:
        final = run_portal_sync(profile="test")
    assert final["planned_writes"] == 0, results
    assert_portal_matches(sandbox, state_url)
    assert sandbox.counters()["duplicate_writes"] == 0


def _start_sync_process(env: dict[str, str], extra_env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    from prefect.settings import PREFECT_API_URL

    child_env = dict(os.environ)
    child_env.update(env)
    child_env.update(extra_env)
    child_env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    return subprocess.Popen(
        [sys.executable, "-m", "flows.portal_sync"],
        cwd=ROOT,
        env=child_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.parametrize("kill_after_writes", [(25, 90, 160)])
def test_sigkill_mid_load_neither_loses_nor_duplicates(
    sandbox: SandboxServer, tmp_path: Path, kill_after_writes: tuple[int, ...]
) -> None:
    erp_url, state_url = f"sqlite:///{tmp_path}/erp.sqlite", f"sqlite:///{tmp_path}/state.sqlite"
    demo.generate_erp(make_engine(erp_url), persons=800, seed=33, business_date=BUSINESS_DATE)
    sandbox.reset()
    # latency keeps the load slow enough to kill it at a chosen point
    sandbox.set_faults(latency_ms=[5, 15], apply_then_drop_rate=0.02, seed=9)
    kills = 0
    log = open(tmp_path / "sync-processes.log", "wb")  # noqa: SIM115 - read on failure
    try:
        with portal_env(sandbox, erp_url, state_url, HAUSFLOW_PORTAL__BATCH_SIZE="50") as env:
            for threshold in kill_after_writes:  # new writes of this process before it is killed
                start_writes = sandbox.counters()["writes"]
                proc = _start_sync_process(env, {}, log)
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and proc.poll() is None:
                    if sandbox.counters()["writes"] - start_writes >= threshold:
                        os.kill(proc.pid, signal.SIGKILL)
                        kills += 1
                        break
                    time.sleep(0.02)
                proc.wait(timeout=30)
            log.flush()
            assert kills == len(kill_after_writes), (tmp_path / "sync-processes.log").read_text()[-3000:]
            results = sync_until_converged(env)
    finally:
        sandbox.clear_faults()
    with portal_env(sandbox, erp_url, state_url):
        final = run_portal_sync(profile="test")
    assert final["planned_writes"] == 0, results
    assert_portal_matches(sandbox, state_url)
    assert sandbox.counters()["duplicate_writes"] == 0
    assert not StateStore(state_url).load_pending("portal")


@pytest.mark.postgres
def test_whole_flow_on_postgresql(sandbox: SandboxServer, pg_database: Callable[[], str]) -> None:
    erp_url, state_url = pg_database(), pg_database()
    summary = demo.generate_erp(make_engine(erp_url), persons=250, seed=44, business_date=BUSINESS_DATE)
    sandbox.reset()
    with portal_env(sandbox, erp_url, state_url):
        first = run_portal_sync(profile="test")
        second = run_portal_sync(profile="test")
    assert first["confirmed"] > 0 and first["failed"] == 0
    assert second["planned_writes"] == 0
    assert_portal_matches(sandbox, state_url)
    contacts = portal_view(sandbox)["contacts"]
    for person_no in summary.edge_cases["no_last_name"] + summary.edge_cases["unreleased_object_tenants"]:
        assert person_no not in contacts


@pytest.mark.parametrize("committed", [False, True], ids=["confirm-lost", "confirm-committed"])
def test_a_retried_load_batch_sends_and_records_nothing_twice(
    sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, committed: bool
) -> None:
    """The load task fails after the portal took a batch: at its confirmation (a database
    error, which is retriable), or right after it was committed. Prefect retries the task; the retry reads the
    pending writes back from the portal and confirms them, or finds them confirmed by its
    earlier attempt. Nothing is sent twice, each record has one protocol row."""
    erp_url, state_url = f"sqlite:///{tmp_path}/erp.sqlite", f"sqlite:///{tmp_path}/state.sqlite"
    demo.generate_erp(make_engine(erp_url), persons=120, seed=12, business_date=BUSINESS_DATE)
    sandbox.reset()
    confirm = StateStore.confirm
    failed: list[int] = []

    def confirm_failing_once(self: StateStore, target: str, confirmations: Any, *args: Any) -> Any:
        if confirmations and not failed:
            failed.append(len(confirmations))
            if committed:
                confirm(self, target, confirmations, *args)
            raise OperationalError("UPDATE sync_state", {}, Exception("database went away (injected)"))
        return confirm(self, target, confirmations, *args)

    monkeypatch.setattr(StateStore, "confirm", confirm_failing_once)
    with portal_env(sandbox, erp_url, state_url, HAUSFLOW_PORTAL__BATCH_SIZE="5000"):
        result = run_portal_sync(profile="test")
        log = run_log(result["run_id"])
        after = run_portal_sync(profile="test")
    counters = sandbox.counters()
    assert failed and result["failed"] == 0
    assert result["confirmed"] == counters["writes"]
    assert counters["duplicate_writes"] == 0
    store = StateStore(state_url)
    written = ["created", "updated", "restored", "archived", "anonymised"]
    rows = store.protocol_rows(result["run_id"], written, limit=10_000)
    assert len(rows) == len({(r.entity, r.ref_id) for r in rows}) == result["confirmed"]
    assert not store.load_pending("portal")
    read_back = [line for line in log if f"{failed[0]} confirmed by reading back" in line]
    earlier = [line for line in log if f"{failed[0]} confirmed by an earlier attempt" in line]
    assert (len(read_back), len(earlier)) == ((0, 1) if committed else (1, 0)), log
    # the run's memo vouches for all it confirmed: the next run rebuilds only the quarantined records
    assert after["mode"] == "incremental" and after["planned_writes"] == 0
    assert after["rebuilt"]["properties"] == after["rebuilt"]["units"] == 0
    assert after["rebuilt"]["contacts"] <= result["quarantined"]
    assert_portal_matches(sandbox, state_url)


def test_a_retried_batch_settles_each_kind_of_earlier_outcome(sandbox: SandboxServer, tmp_path: Path) -> None:
    """What a retried load batch does with each record, given what the earlier attempt of the run
    (R) left in the state store and the portal: confirmed (A) is counted, not sent; pending and in
    the portal (B) is confirmed by reading back; pending but not in the portal (C) is sent;
    refused by the portal (D) and recorded as failed (E) stay failed, with one protocol line each;
    confirmed by R's recovery before the run looked (F) is sent as planned."""
    import asyncio

    from connectors.portal import PortalClient, WriteOp
    from connectors.portal.streams import STREAMS, payload_hash
    from connectors.state_store import Confirmation, PendingWrite, ProtocolRow, QuarantineItem
    from tasks.portal_tasks import PORTAL
    from tasks.sync.load import BatchOutcome, settle_earlier_attempt
    from tasks.sync.plan import PlannedWrite

    sandbox.reset()
    store = StateStore(f"sqlite:///{tmp_path}/state.sqlite")
    client = PortalClient(sandbox.base_url, sandbox.key, sandbox.secret)

    def planned(ref: str) -> PlannedWrite:
        payload = {
            "id": ref,
            "name": f"Haus {ref}",
            "number": ref,
            "postalCode": "10115",
            "city": "Berlin",
            "country": "DE",
            "addresses": [{"street": "Lindenstr. 5", "units": []}],
            "customFields": {},
        }
        return PlannedWrite(
            "properties", "upsert", ref, "created", payload, payload_hash(STREAMS["properties"], payload)
        )

    writes = {ref: planned(ref) for ref in "ABCDEF"}
    since = store.confirm(
        "portal", [Confirmation("properties", "F", "upsert", writes["F"].payload_hash, "9")], "R"
    )
    assert since is not None
    seq_a = store.confirm(
        "portal",
        [Confirmation("properties", "A", "upsert", writes["A"].payload_hash, "1")],
        "R",
        [ProtocolRow("properties", "A", "created", None)],
    )
    assert client.write_many([WriteOp("properties", "upsert", "B", writes["B"].payload)])[0].ok
    store.mark_pending(
        "portal", [PendingWrite("properties", ref, "upsert", writes[ref].payload_hash, "R") for ref in "BCE"]
    )
    store.quarantine(
        "portal", [QuarantineItem("properties", "D", "portal_rejected", "422: refused", None)], "R"
    )
    store.add_protocol("R", [ProtocolRow("properties", "E", "failed", "503 (gave up after 7 attempts)")])

    outcome = BatchOutcome()
    left = asyncio.run(
        settle_earlier_attempt(store, client, PORTAL, "R", since, list(writes.values()), outcome)
    )

    assert [w.ref_id for w in left] == ["C", "F"]
    assert (outcome.confirmed, outcome.confirmed_before, outcome.verified_by_read) == (2, 1, 1)
    assert (outcome.failed, sorted(outcome.failed_keys)) == (2, [("properties", "D"), ("properties", "E")])
    assert seq_a in outcome.seqs and len(outcome.seqs) == 2
    rows = store.protocol_rows("R")
    assert sorted((r.ref_id, r.outcome) for r in rows) == [
        ("A", "created"),
        ("B", "created"),
        ("D", "failed"),
        ("E", "failed"),
    ]
    assert store.load_state("portal", "properties")["B"].payload_hash == writes["B"].payload_hash
    assert {p.ref_id for p in store.load_pending("portal")} == {"C", "E"}
