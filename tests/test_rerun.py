"""Re-running a failed sync, and the resync that repairs a partner's state (docs/operations.md,
*Re-running a failed sync*), against the sandboxes and a real Prefect API.

- The Prefect UI's *Retry* of a failed run of a served portal-sync deployment, by the API call the
  UI makes (prefect 3.8.8, ``retryFlowRun`` in the UI's bundle: ``POST /flow_runs/{id}/set_state``
  with a SCHEDULED state named ``AwaitingRetry`` and ``force: false``): the runner runs the same
  flow run again. And a new run of the deployment after a failure. Both end with the portal as a
  clean run leaves it and no record written twice.
- The resync: after the state store lost entries, kept stale ones (an old backup), and records
  were deleted or edited at the portal by hand, exactly the differences are sent; the same for the
  deposit partner; a dry run changes and sends nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from sqlalchemy import delete, update

from config.settings import load_settings
from connectors.deposit.streams import DEPOSIT_ACCOUNTS
from connectors.erp import demo
from connectors.erp.database import make_engine
from connectors.state_store import StateStore, sync_state
from flows.deposit_sync import run_deposit_bookings, run_deposit_master_data
from flows.portal_sync import run_portal_sync
from flows.resync import entities_to_repair, run_resync
from tasks.portal_exchange import EXCHANGE_ENTITIES
from tasks.portal_tasks import ENTITIES as MASTER
from tasks.sync.protocol import WRITTEN
from tests.deposit_env import deposit_env, deposit_view
from tests.portal_env import BUSINESS_DATE, portal_content, portal_env, run_log
from tests.test_portal_sync_reports import artifact

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parent.parent
UI_RETRY = {
    "state": {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"},
    "force": False,
}
UI_QUICK_RUN = {"state": {"type": "SCHEDULED", "message": "Run from the Prefect UI with defaults"}}
FAULTS = {"fail_after_writes": 60, "apply_then_drop_rate": 0.1, "methods": ["PUT", "POST"], "seed": 3}
"""The first run fails midway: after 60 writes every write answers 503 (the writes it sent but saw
refused stay unconfirmed), and some writes before that are applied with their answer lost (the
client reads them back)."""


# ---- helpers -------------------------------------------------------------------------------------
def api(sandbox: Any) -> httpx.Client:
    """The sandbox's API with a token, for what a person does at the partner by hand."""
    return httpx.Client(base_url=sandbox.base_url, headers={"token": sandbox.token()}, timeout=30)


def lose_entries(state_url: str, target: str, entity: str, ref_ids: list[str]) -> None:
    """The state store loses the entries of these records (rows deleted, or not in a backup)."""
    with StateStore(state_url).engine.begin() as conn:
        for ref_id in ref_ids:
            conn.execute(
                delete(sync_state).where(
                    sync_state.c.target == target,
                    sync_state.c.entity == entity,
                    sync_state.c.ref_id == ref_id,
                )
            )


def age_entries(state_url: str, target: str, entity: str, ref_ids: list[str]) -> None:
    """The state store holds an older version of these records (restored from an old backup)."""
    with StateStore(state_url).engine.begin() as conn:
        conn.execute(
            update(sync_state)
            .where(
                sync_state.c.target == target, sync_state.c.entity == entity, sync_state.c.ref_id.in_(ref_ids)
            )
            .values(payload_hash="0" * 64)
        )


def confirmed(state_url: str, target: str, entity: str) -> list[str]:
    return sorted(
        r for r, e in StateStore(state_url).load_state(target, entity).items() if e.status == "active"
    )


def written(summary: dict[str, Any]) -> dict[str, int]:
    """A sync summary's counts of what was written (not what was skipped or held)."""
    return {k: n for k, n in summary["counts"].items() if k.rsplit(".", 1)[1] in WRITTEN}


def delta(before: dict[str, Any], after: dict[str, Any], key: str) -> int:
    return int(after[key]) - int(before[key])


# ---- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def erp_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small demo ERP (100 persons: 6 objects, about 190 portal records), shared by the module."""
    url = f"sqlite:///{tmp_path_factory.mktemp('erp')}/erp.sqlite"
    engine = make_engine(url)
    demo.generate_erp(engine, persons=100, seed=11, business_date=BUSINESS_DATE)
    engine.dispose()
    return url


@dataclass
class Clean:
    """What one clean run leaves: the portal's content, and the run's protocol counts."""

    portal: dict[str, dict[str, dict[str, Any]]]
    counts: dict[str, int]


@pytest.fixture(scope="module")
def clean(sandbox: Any, erp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Clean:
    sandbox.reset()
    with portal_env(sandbox, erp_url, f"sqlite:///{tmp_path_factory.mktemp('clean')}/state.sqlite"):
        summary = run_portal_sync(profile="test")
    assert summary["failed"] == 0
    assert sandbox.counters()["max_writes_per_record"] == 1
    return Clean(portal_content(sandbox), summary["counts"])


@dataclass
class Served:
    """The served ``portal-sync/rerun-test`` deployment and the files of its runs."""

    deployment_id: str
    api: httpx.Client
    state_url: str
    folder: Path

    def fresh(self) -> None:
        """A new state database and memo folder for the next runs."""
        for path in self.folder.glob("state.sqlite*"):
            path.unlink()
        shutil.rmtree(self.folder / "cache", ignore_errors=True)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the Prefect API as the UI does; a busy SQLite server (503) is asked again."""
        for _ in range(10):
            response = self.api.post(path, json=body)
            if response.status_code != 503:
                break
            time.sleep(1)
        assert response.status_code < 300, (path, response.status_code, response.text)
        answer: dict[str, Any] = response.json()
        return answer

    def wait_for(self, run_id: str, name: str, timeout_s: float = 120) -> dict[str, Any]:
        """The flow run once its state is ``name`` (fails on another final state, or after the timeout)."""
        deadline = time.monotonic() + timeout_s
        while True:
            run: dict[str, Any] = self.api.get(f"/flow_runs/{run_id}").json()
            state = run["state"] or {}
            if state.get("name") == name:
                return run
            final = state.get("type") in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
            assert not final or state.get("name") == name, state
            assert time.monotonic() < deadline, state
            time.sleep(0.5)


@pytest.fixture(scope="module")
def served(sandbox: Any, erp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``portal-sync/rerun-test`` served by its own process, as ``./hausflow up`` serves the sync."""
    from prefect.settings import PREFECT_API_URL

    folder = tmp_path_factory.mktemp("served")
    state_url = f"sqlite:///{folder}/state.sqlite"
    with portal_env(sandbox, erp_url, state_url) as values:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HAUSFLOW_"))}
        env.update(values)
    api_url = str(PREFECT_API_URL.value())
    env.update(
        {
            "PREFECT_API_URL": api_url,
            "PREFECT_HOME": str(folder / "prefect-home"),
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "HAUSFLOW_CACHE_DIR": str(folder / "cache"),
            "HAUSFLOW_PORTAL__MAX_RETRIES": "0",  # a write the sandbox refuses fails at once
        }
    )
    log = folder / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.rerun_flows"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    client = httpx.Client(base_url=api_url, timeout=30)
    try:
        deadline = time.monotonic() + 90
        while (response := client.get("/deployments/name/portal-sync/rerun-test")).status_code != 200:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        yield Served(str(response.json()["id"]), client, state_url, folder)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        client.close()


def _failed_run(served: Served, sandbox: Any) -> dict[str, Any]:
    """A run of the deployment, started as the UI's *Quick run* does, that fails midway."""
    served.fresh()
    sandbox.reset()
    sandbox.set_faults(**FAULTS)
    try:
        run = served.post(f"/deployments/{served.deployment_id}/create_flow_run", UI_QUICK_RUN)
        served.wait_for(run["id"], "Failed")
    finally:
        sandbox.clear_faults()
    injected = sandbox.counters()["faults_injected"]
    assert injected.get("fail_after_writes", 0) > 0, injected
    return run


def _read_back(run_id: str) -> int:
    """How many writes the run read back first, of those an earlier run or attempt left
    unconfirmed (its log's recovery line)."""
    lines = [m for m in run_log(run_id) if m.startswith("Found ")]
    found = re.match(r"Found (\d+) unconfirmed writes of an interrupted run", lines[0] if lines else "")
    assert found, lines
    return int(found.group(1))


def _assert_as_a_clean_run(served: Served, sandbox: Any, erp_url: str, clean: Clean) -> None:
    counters = sandbox.counters()
    assert counters["duplicate_writes"] == 0, counters
    assert counters["max_writes_per_record"] == 1, counters
    assert portal_content(sandbox) == clean.portal
    with portal_env(sandbox, erp_url, served.state_url):
        assert run_portal_sync(profile="test")["planned_writes"] == 0


# ---- re-running a failed run ---------------------------------------------------------------------
def test_the_ui_retry_of_a_failed_run_completes_it_and_writes_nothing_twice(
    served: Served, sandbox: Any, erp_url: str, clean: Clean
) -> None:
    run = _failed_run(served, sandbox)
    answer = served.post(f"/flow_runs/{run['id']}/set_state", UI_RETRY)
    assert answer["status"] == "ACCEPT", answer
    done = served.wait_for(run["id"], "Completed")
    assert done["run_count"] == 2  # the same flow run, run again by the served runner
    assert _read_back(run["id"]) > 0  # what the first attempt left unconfirmed, before planning
    _assert_as_a_clean_run(served, sandbox, erp_url, clean)
    # the run's protocol says what a clean run's says: what both attempts wrote, once, and no failure
    counts = StateStore(served.state_url).protocol_counts(run["id"])
    assert {f"{e}.{o}": n for (e, o), n in sorted(counts.items())} == clean.counts


def test_a_new_run_of_the_deployment_after_a_failure_completes_what_the_failed_run_left(
    served: Served, sandbox: Any, erp_url: str, clean: Clean
) -> None:
    from prefect import get_client

    _failed_run(served, sandbox)

    async def new_run() -> str:
        async with get_client() as client:
            return str((await client.create_flow_run_from_deployment(UUID(served.deployment_id))).id)

    run_id = asyncio.run(new_run())
    served.wait_for(run_id, "Completed")
    assert _read_back(run_id) > 0
    _assert_as_a_clean_run(served, sandbox, erp_url, clean)


# ---- resync --------------------------------------------------------------------------------------
def test_resync_sends_exactly_what_the_portal_lacks_or_holds_otherwise(
    sandbox: Any, erp_url: str, clean: Clean, tmp_path: Path
) -> None:
    state_url = f"sqlite:///{tmp_path}/state.sqlite"
    sandbox.reset()
    with portal_env(sandbox, erp_url, state_url):
        run_portal_sync(profile="test")
        caretakers = {
            r["contactId"]
            for rec in clean.portal["responsibilities"].values()
            for r in rec["responsibilities"]
        }
        contacts = [c for c in confirmed(state_url, "portal", "contacts") if c not in caretakers]
        lost, aged, deleted, edited = contacts[:8], contacts[8:12], contacts[12], contacts[13]
        lose_entries(state_url, "portal", "contacts", lost)
        age_entries(state_url, "portal", "contacts", aged)
        with api(sandbox) as portal:  # by hand at the portal: one contact deleted, one edited
            assert portal.post(f"/v2/contacts/{deleted}/archive").status_code == 200
            assert portal.delete(f"/v2/contacts/{deleted}").status_code == 204
            body = {k: v for k, v in clean.portal["contacts"][edited].items() if k != "archived"}
            assert portal.put(
                f"/v2/contacts/{edited}", json={**body, "email": "von.hand@example.org"}
            ).is_success
        before = sandbox.counters()
        result = run_resync(partner="portal", profile="test")
        after = sandbox.counters()
        assert run_portal_sync(profile="test")["planned_writes"] == 0  # the next regular run
    held = len(confirmed(state_url, "portal", "contacts")) - len(lost) - len(aged) - 2
    assert result["repair"]["contacts"] == {
        "entity": "contacts",
        "held as confirmed": held,
        "missing": 1,
        "different": len(aged) + 1,
        "found": len(lost),
    }
    for entity in ("properties", "units", "responsibilities"):
        counts = result["repair"][entity]
        assert (counts["missing"], counts["different"], counts["found"]) == (0, 0, 0), counts
    # sent: the deleted contact, and the edited one as the ERP has it; nothing else, nothing twice
    sync = result["sync"]["portal-sync"]
    assert written(sync) == {"contacts.created": 1, "contacts.updated": 1}
    assert delta(before, after, "writes") == 2
    assert after["duplicate_writes"] == 0
    assert portal_content(sandbox) == clean.portal


def test_a_dry_run_resync_reports_what_differs_and_changes_nothing(
    sandbox: Any, erp_url: str, tmp_path: Path
) -> None:
    state_url = f"sqlite:///{tmp_path}/state.sqlite"
    sandbox.reset()
    with portal_env(sandbox, erp_url, state_url):
        run_portal_sync(profile="test")
        units = confirmed(state_url, "portal", "units")
        lose_entries(state_url, "portal", "units", units[:3])
        with api(sandbox) as portal:
            assert portal.post(f"/v2/units/{units[3]}/archive").status_code == 200
        store = StateStore(state_url)
        state = {e: store.load_state("portal", e) for e in ("properties", "units", "contacts")}
        before = sandbox.counters()
        result = run_resync(partner="portal", entities=["units"], dry_run=True, profile="test")
        after = sandbox.counters()
    assert result["repair"] == {
        "units": {
            "entity": "units",
            "held as confirmed": len(units) - 4,
            "missing": 0,
            "different": 1,
            "found": 3,
        }
    }
    assert result["sync"] == {}
    assert delta(before, after, "writes") == 0
    assert {e: store.load_state("portal", e) for e in state} == state
    published = json.loads(artifact(result["run_id"], "portal-resync"))
    assert published == [result["repair"]["units"]]


def test_resync_of_the_deposit_partner_after_the_state_store_was_restored_from_an_old_backup(
    deposit_sandbox: Any, erp_url: str, tmp_path: Path
) -> None:
    state_url = f"sqlite:///{tmp_path}/state.sqlite"
    deposit_sandbox.reset()
    with deposit_env(deposit_sandbox, erp_url, state_url):
        run_deposit_master_data(profile="test")
        run_deposit_bookings(profile="test")
        accounts = confirmed(state_url, "deposit", "deposit_accounts")
        bookings = confirmed(state_url, "deposit", "bookings")
        # the backup knew every other account and none of the bookings
        lost = accounts[::2]
        lose_entries(state_url, "deposit", "deposit_accounts", lost)
        lose_entries(state_url, "deposit", "bookings", bookings)
        edited = accounts[1]  # and an account was edited at the partner since
        record = DEPOSIT_ACCOUNTS.project(deposit_view(deposit_sandbox)["deposit_accounts"][edited])
        with httpx.Client(
            base_url=deposit_sandbox.base_url, headers={"token": deposit_sandbox.token()}, timeout=30
        ) as partner:
            assert partner.put(
                f"/v1/deposit-accounts/{edited}", json={**record, "depositAmount": "1.00"}
            ).is_success
        before = deposit_sandbox.counters()
        result = run_resync(partner="deposit", profile="test")
        after = deposit_sandbox.counters()
        assert run_deposit_master_data(profile="test")["planned_writes"] == 0
        assert run_deposit_bookings(profile="test")["planned_writes"] == 0
    assert result["repair"]["deposit_accounts"] == {
        "entity": "deposit_accounts",
        "held as confirmed": len(accounts) - len(lost) - 1,
        "missing": 0,
        "different": 1,
        "found": len(lost),
    }
    assert result["repair"]["bookings"] == {
        "entity": "bookings",
        "held as confirmed": 0,
        "missing": 0,
        "different": 0,
        "found": len(bookings),
    }
    assert written(result["sync"]["deposit-master-data"]) == {"deposit_accounts.updated": 1}
    assert result["sync"]["deposit-bookings"]["planned_writes"] == 0
    assert delta(before, after, "writes") == 1
    assert after["duplicate_writes"] == 0
    assert deposit_view(deposit_sandbox)["deposit_accounts"][edited]["depositAmount"] != "1.00"


@pytest.mark.parametrize(
    ("partner", "objects", "entities", "exchange", "repaired"),
    [
        ("portal", None, None, False, list(MASTER)),
        (
            "portal",
            None,
            None,
            True,
            [*MASTER, *EXCHANGE_ENTITIES],
        ),  # with the documents-and-messages licence
        ("portal", ["1001"], None, True, list(MASTER)),  # an exchange record's object is not in its entry
        ("portal", None, ["documents", "contacts", "inbound"], True, ["contacts", "documents"]),
        ("deposit", None, None, False, ["deposit_accounts", "bookings"]),
        ("deposit", None, ["bookings"], False, ["bookings"]),
    ],
)
def test_what_a_resync_repairs(
    partner: str, objects: list[str] | None, entities: list[str] | None, exchange: bool, repaired: list[str]
) -> None:
    settings = load_settings("test")
    settings = settings.model_copy(
        update={"licences": settings.licences.model_copy(update={"documents_messages": exchange})}
    )
    assert entities_to_repair(settings, partner, objects, entities) == repaired


@pytest.mark.parametrize(
    ("partner", "objects", "entities", "message"),
    [
        ("deposit", ["1001"], None, "objects are for the portal"),
        ("portal", None, ["bookings"], "the portal takes no entities ['bookings']"),
        ("deposit", None, ["contacts"], "the deposit takes no entities ['contacts']"),
    ],
)
def test_a_resync_refuses_a_scope_the_partner_does_not_have(
    partner: str, objects: list[str] | None, entities: list[str] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        entities_to_repair(load_settings("test"), partner, objects, entities)
