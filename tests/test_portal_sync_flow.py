"""The whole portal sync on SQLite against the sandbox over HTTP: rules end to end, idempotency,
ERP changes (move-out, co-resident removed, anonymisation), dry run, test profile, secrets."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest

from connectors.erp import demo
from connectors.erp.database import make_engine
from connectors.state_store import StateStore
from flows.portal_sync import run_portal_sync
from sandbox.portal.server import SandboxServer
from tests.portal_env import BUSINESS_DATE, portal_env, portal_view, run_log

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def world(sandbox: SandboxServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A seeded ERP (300 persons, every edge case) and a first successful sync."""
    folder = tmp_path_factory.mktemp("erp")
    erp_url, state_url = f"sqlite:///{folder}/erp.sqlite", f"sqlite:///{folder}/state.sqlite"
    engine = make_engine(erp_url)
    summary = demo.generate_erp(engine, persons=300, seed=7, business_date=BUSINESS_DATE)
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


def test_first_sync_loads_exactly_the_desired_portal(world: dict[str, Any], sandbox: SandboxServer) -> None:
    edge, first = world["edge"], world["first"]
    view = portal_view(sandbox)
    contacts = view["contacts"]
    assert first["failed"] == 0 and first["confirmed"] > 0
    assert first["confirmed"] == sum(len(v) for v in view.values()) + first["counts"].get(
        "responsibilities.created", 0
    )
    # every rule of seed 001, seen from the portal's side
    for person_no in edge["unreleased_object_tenants"]:
        assert person_no not in contacts, "tenant of an object that is not released"
    for person_no in edge["no_last_name"] + edge["invalid_email"]:
        assert person_no not in contacts, "the portal cannot take it: quarantined"
    # the edge-case lists overlap (an anonymised tenant may also have moved out): a person that is
    # anonymised or quarantined is never in the portal, whatever else is true of them
    gone = set(edge["anonymised"]) | set(edge["no_last_name"]) | set(edge["invalid_email"])
    for person_no in set(edge["not_enabled_type"]) - gone:
        assert contacts[person_no]["portalUser"] is False
    for person_no in set(edge["two_contracts"]) - gone:
        assert len(contacts[person_no]["contracts"]) >= 2
    present = edge["future_start_within_access"] + edge["moved_out_within_grace"] + edge["co_residents"]
    for person_no in set(present) - gone:
        assert person_no in contacts
    for person_no in edge["future_start_beyond_access"] + edge["moved_out_beyond_grace"]:
        assert person_no not in contacts
    for person_no in set(edge["owners"]) - gone:
        assert any(c["type"] == "OWNER" for c in contacts[person_no]["contracts"])
    for person_no in set(edge["caretakers"]) - gone:
        assert person_no in contacts
    for person_no in set(edge["company_tenant"]) - gone:
        assert contacts[person_no]["companyName"] and not contacts[person_no]["lastName"]
    for person_no in edge["anonymised"]:
        assert person_no not in contacts, "an anonymised person's data never leaves"


def test_every_edge_case_ends_in_quarantine_or_a_reported_skip(world: dict[str, Any]) -> None:
    store = StateStore(world["state_url"])
    open_q = {(q["ref_id"]): q for q in store.open_quarantine("portal")}
    for person_no in world["edge"]["no_last_name"]:
        assert "neither last name nor company name" in open_q[person_no]["reason"]
    for person_no in world["edge"]["invalid_email"]:
        assert "is not valid" in open_q[person_no]["reason"]
        assert open_q[person_no]["rule"] == "expect_column_values_to_match_regex(email)"
    run_id = world["first"]["run_id"]
    skipped = {r.ref_id: r.reason for r in store.protocol_rows(run_id, ["skipped"], limit=10_000)}
    gone = set(world["edge"]["anonymised"]) | set(open_q)
    for person_no in set(world["edge"]["future_start_beyond_access"]) - gone:
        assert "portal access opens on" in skipped[person_no]


def test_second_run_sends_nothing(world: dict[str, Any], sandbox: SandboxServer) -> None:
    before = sandbox.counters()
    with portal_env(sandbox, world["erp_url"], world["state_url"]):
        second = run_portal_sync(profile="test")
    after = sandbox.counters()
    assert second["planned_writes"] == 0 and second["confirmed"] == 0
    assert after["writes"] == before["writes"]
    assert after["duplicate_writes"] == 0


def test_the_tasks_of_a_run_share_one_prefect_api_client(
    world: dict[str, Any], sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client costs a TLS context (about 25 ms): one per run, not one per task."""
    from prefect.client.orchestration import SyncPrefectClient

    made: list[int] = []
    init = SyncPrefectClient.__init__

    def counting(self: SyncPrefectClient, *args: Any, **kwargs: Any) -> None:
        made.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(SyncPrefectClient, "__init__", counting)
    with portal_env(sandbox, world["erp_url"], world["state_url"]):
        result = run_portal_sync(profile="test")
    assert result["planned_writes"] == 0
    # the flow engine's own (it looks up the result storage) and the one every task uses; each
    # of the nine synchronous tasks built its own before
    assert len(made) <= 2


def test_erp_changes_move_out_co_resident_removal_and_anonymisation(
    world: dict[str, Any], sandbox: SandboxServer
) -> None:
    engine = world["engine"]
    edge = world["edge"]
    view = portal_view(sandbox)
    # a tenant who moved out 40 days ago (grace is 30 days) with no other contract
    from sqlalchemy import select

    from connectors.erp import schema

    with engine.connect() as conn:
        counts = dict(
            conn.execute(
                select(schema.contracts.c.person_no, schema.contracts.c.contract_no).where(
                    schema.contracts.c.move_out_date.is_(None)
                )
            ).all()
        )
        partner_row = conn.execute(
            select(schema.contract_partners.c.contract_no, schema.contract_partners.c.person_no).where(
                schema.contract_partners.c.person_no.in_(edge["co_residents"])
            )
        ).first()
    leaver = next(
        p
        for p in view["contacts"]
        if p in counts
        and p not in edge["two_contracts"]
        and p not in edge["owners"]
        and p not in edge["caretakers"]
        and len(view["contacts"][p]["contracts"]) == 1
    )
    demo.move_out(engine, counts[leaver], BUSINESS_DATE - timedelta(days=40))
    assert partner_row is not None
    demo.remove_co_resident(engine, partner_row.contract_no, partner_row.person_no)
    victim = next(
        p
        for p in view["contacts"]
        if p not in (leaver, partner_row.person_no)
        and p not in edge["owners"]
        and p not in edge["caretakers"]
    )
    demo.anonymise_person(engine, victim)
    with portal_env(sandbox, world["erp_url"], world["state_url"]):
        run = run_portal_sync(profile="test")
    after = portal_view(sandbox)["contacts"]
    assert after[leaver]["archived"] is True
    assert after[partner_row.person_no]["archived"] is True
    assert after[victim]["anonymised"] is True
    assert after[victim]["lastName"] in (None, "") and after[victim]["email"] in (None, "")
    assert run["counts"]["contacts.archived"] >= 2 and run["counts"]["contacts.anonymised"] == 1
    store = StateStore(world["state_url"])
    archived = {r.ref_id: r.reason for r in store.protocol_rows(run["run_id"], ["archived"])}
    assert "reported deleted after 30 days" in archived[leaver]
    with portal_env(sandbox, world["erp_url"], world["state_url"]):
        assert run_portal_sync(profile="test")["planned_writes"] == 0


def test_dry_run_shows_the_plan_and_sends_nothing(world: dict[str, Any], sandbox: SandboxServer) -> None:
    changed = demo.mutate_erp(world["engine"], seed=3, fraction=0.05, business_date=BUSINESS_DATE)
    before = sandbox.counters()
    with portal_env(sandbox, world["erp_url"], world["state_url"]):
        plan = run_portal_sync(profile="test", dry_run=True)
    assert sandbox.counters()["writes"] == before["writes"]
    assert 0 < plan["planned_writes"] <= len(changed)
    assert plan["confirmed"] == 0


def test_test_profile_has_the_interface_off_and_sends_nothing(
    world: dict[str, Any], sandbox: SandboxServer
) -> None:
    before = sandbox.counters()["requests"]
    with portal_env(sandbox, world["erp_url"], world["state_url"], HAUSFLOW_PORTAL__ENABLED="false"):
        result = run_portal_sync(profile="test")
    assert result["status"] == "disabled"
    assert sandbox.counters()["requests"] == before


def test_logs_and_artifacts_carry_neither_secret_nor_token(
    world: dict[str, Any], sandbox: SandboxServer
) -> None:
    import asyncio
    from uuid import UUID

    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from connectors.portal.auth import TokenCache

    # the cached token was revoked: the load gets a 401 and fetches one new token
    revoked = "revoked-3f9a8c2e7d1b4a6f"
    with portal_env(sandbox, world["erp_url"], world["state_url"]):
        TokenCache.put((sandbox.base_url.rstrip("/"), sandbox.key), revoked, time.time() + 3600)
        demo.mutate_erp(world["engine"], seed=11, fraction=0.02, business_date=BUSINESS_DATE)
        run_id = run_portal_sync(profile="test")["run_id"]
        tokens = [t for t, _ in TokenCache._tokens.values()]
    assert tokens and revoked not in tokens

    async def collect() -> list[str]:
        async with get_client() as client:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)]))
            )
            params = (await client.read_flow_run(UUID(run_id))).parameters
        return [json.dumps(a.data, default=str) for a in artifacts] + [json.dumps(params)]

    text = "\n".join(run_log(run_id) + asyncio.run(collect()))
    assert "Plan:" in text and "portal-sync" not in sandbox.secret
    assert "1 new token after the portal refused one" in text
    assert sandbox.secret not in text
    for token in [*tokens, revoked]:
        assert token not in text


def test_the_tokens_expiry_is_kept_for_the_credential_warning(
    world: dict[str, Any], sandbox: SandboxServer
) -> None:
    from datetime import UTC, datetime

    record = StateStore(world["state_url"]).credentials("portal")
    assert record is not None and record.expires_at is not None
    assert record.expires_at > datetime.now(UTC) and record.fetched_at <= datetime.now(UTC)
    assert sandbox.key not in record.key_hint and sandbox.secret not in record.key_hint


def test_wrong_credentials_end_the_run_at_once_and_blame_no_record(
    world: dict[str, Any], sandbox: SandboxServer
) -> None:
    """A wrong API secret: one login refused, the run Failed before any write, one log line that
    names the settings, nothing quarantined or counted as failed (it used to send one login per
    record and quarantine every record as refused by the portal)."""
    from sqlalchemy import select

    from connectors.state_store import sync_runs
    from connectors.sync.errors import PartnerCredentialsError

    store = StateStore(world["state_url"])
    quarantined = {(q["entity"], q["ref_id"], q["rule"]) for q in store.open_quarantine("portal")}
    before = sandbox.counters()
    with (
        portal_env(
            sandbox, world["erp_url"], world["state_url"], HAUSFLOW_PORTAL__API_SECRET="not-the-secret-9c1e"
        ),
        pytest.raises(PartnerCredentialsError),
    ):
        run_portal_sync(profile="test", full_resync=True)
    after = sandbox.counters()
    assert after["logins"] - before["logins"] <= 2 and after["logins_refused"] > before["logins_refused"]
    assert after["writes"] == before["writes"] and after["duplicate_writes"] == before["duplicate_writes"]
    assert {(q["entity"], q["ref_id"], q["rule"]) for q in store.open_quarantine("portal")} == quarantined
    with store.engine.connect() as conn:
        run_id, status = conn.execute(
            select(sync_runs.c.run_id, sync_runs.c.status).order_by(sync_runs.c.started_at.desc()).limit(1)
        ).one()
    assert status == "FAILED" and store.protocol_rows(run_id) == []
    log = run_log(run_id, until="refused the login")
    lines = [m for m in log if "portal.api_key" in m]
    assert (
        len(lines) == 1 and "portal.api_secret" in lines[0] and "stops before it reads or sends" in lines[0]
    )
    assert not any("not-the-secret-9c1e" in m for m in log)


class _Node:
    """A cycle-capable object a weak reference can watch."""

    def __init__(self) -> None:
        self.me = self


def test_a_run_collects_its_own_objects_and_leaks_none_of_the_older_ones() -> None:
    import gc
    import weakref

    from flows.portal_sync import collect_run_objects_only

    assert gc.get_freeze_count() == 0
    older = _Node()
    older_ref = weakref.ref(older)
    with collect_run_objects_only():
        assert gc.get_freeze_count() > 0  # what the process held is set aside
        del older  # an older cycle dropped during the run
        made = _Node()
        made_ref = weakref.ref(made)
        del made
        gc.collect()
        assert made_ref() is None  # the run's own garbage is collected
        assert older_ref() is not None  # the set-aside objects are not walked
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert older_ref() is None  # ... and go back to the collector after the run: nothing leaks


def test_a_process_that_froze_objects_itself_keeps_its_arrangement() -> None:
    """The flow neither freezes nor unfreezes when the process froze objects itself.

    The count is compared with margins: frozen objects that other threads free meanwhile leave
    the permanent generation, so it may shrink a little; a freeze by the flow would add the
    10,000 lists made after the process's own, an unfreeze would empty it.
    """
    import gc

    from flows.portal_sync import collect_run_objects_only

    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        made_after = [[i] for i in range(10_000)]
        with collect_run_objects_only():
            inside = gc.get_freeze_count()
        after = gc.get_freeze_count()
        assert frozen - 1_000 < inside < frozen + 1_000, (frozen, inside)
        assert frozen - 1_000 < after < frozen + 1_000, (frozen, after)
        del made_after
    finally:
        gc.unfreeze()
