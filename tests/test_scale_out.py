"""The partitioned portal sync on the real setup: a Prefect server on PostgreSQL, the process work
pool, two partition workers and the control worker (``./hausflow cluster up``), the state store on
PostgreSQL, the sandbox over HTTP.

- two workers: the portal ends exactly as after a single run over everything, nothing twice;
- a worker killed (SIGKILL, its flow run with it) in the middle of a phase: its run is marked
  Crashed (heartbeats), the parent settles what it left pending and runs that partition again
  on the other worker; the portal still ends exactly so, with no duplicate write.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from sqlalchemy import create_engine, text

from connectors.erp import demo
from connectors.erp.database import make_engine
from connectors.state_store import StateStore
from flows.cluster import DEPLOYMENTS, ClusterDeployment
from flows.portal_sync import run_portal_sync
from sandbox.portal.server import SandboxServer
from tests.cluster_env import PG_URL, cluster_client, running_cluster
from tests.portal_env import BUSINESS_DATE, portal_content, portal_env

pytestmark = pytest.mark.usefixtures("prefect_harness")
CRASH_AFTER = 40  # heartbeats come every 30 s
UNSERVED = ClusterDeployment(
    flow="portal-sync",
    name="unserved",
    entrypoint="flows/portal_sync.py:portal_sync",
    queue="unserved",
    description="A deployment on a queue no worker takes runs from.",
)


@pytest.fixture(scope="module")
def world(sandbox: SandboxServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A demo ERP, what a single run over everything leaves at the portal, a state database on
    PostgreSQL and a running cluster whose workers' runs sync that ERP to ``sandbox``."""
    folder = tmp_path_factory.mktemp("scale-out")
    erp_url = f"sqlite:///{folder}/erp.sqlite"
    demo.generate_erp(make_engine(erp_url), persons=300, seed=7, business_date=BUSINESS_DATE)
    single = SandboxServer(db_url=f"sqlite:///{folder}/single.sqlite").start()
    try:
        with portal_env(single, erp_url, f"sqlite:///{folder}/single.sqlite-state"):
            alone = run_portal_sync(profile="test")
        expected = portal_content(single)
    finally:
        single.stop()
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"hausflow_t_{uuid.uuid4().hex[:12]}"
    state_url = PG_URL.rsplit("/", 1)[0] + "/" + name
    with portal_env(sandbox, erp_url, state_url, HAUSFLOW_PORTAL__CONCURRENCY="2") as env:
        settings_env = dict(env)
    with running_cluster(
        settings_env, workers=2, crash_after=CRASH_AFTER, deployments=[*DEPLOYMENTS, UNSERVED]
    ) as cluster:
        yield {
            "cluster": cluster,
            "expected": expected,
            "alone": alone,
            "state_url": state_url,
            "admin": admin,
            "db": name,
        }
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def fresh_start(world: dict[str, Any], sandbox: SandboxServer) -> None:
    """An empty portal and an empty state store (the flow runs create its tables)."""
    sandbox.reset()
    with world["admin"].connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{world["db"]}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{world["db"]}"'))


async def _start(cluster: Any, **parameters: Any) -> Any:
    from prefect.deployments import run_deployment

    async with cluster_client(cluster) as client:
        return await run_deployment(
            "portal-sync-partitioned/on-demand",
            parameters={"partitions": 2, "profile": "test", **parameters},
            timeout=0,
            as_subflow=False,
            client=client,
        )


async def _wait(cluster: Any, run_id: Any, timeout_s: float) -> Any:
    async with cluster_client(cluster) as client:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = await client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                return run
            await asyncio.sleep(1)
    raise AssertionError(f"the partitioned run did not end within {timeout_s} s")


async def _children(cluster: Any, parent_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async with cluster_client(cluster) as client:
        return list(
            await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])
                )
            )
        )


def _assert_as_a_single_run(world: dict[str, Any], sandbox: SandboxServer, run: Any) -> dict[str, Any]:
    assert run.state.is_completed(), run.state
    assert portal_content(sandbox) == world["expected"]
    assert sandbox.counters()["duplicate_writes"] == 0
    summary = StateStore(world["state_url"]).run_summary(str(run.id))
    assert summary is not None
    assert summary["failed"] == 0 and summary["quarantined"] == world["alone"]["quarantined"]
    return summary


def test_two_workers_leave_the_portal_as_one_run_does(world: dict[str, Any], sandbox: SandboxServer) -> None:
    fresh_start(world, sandbox)
    cluster = world["cluster"]
    started = asyncio.run(_start(cluster))
    run = asyncio.run(_wait(cluster, started.id, 240))
    summary = _assert_as_a_single_run(world, sandbox, run)
    # two partition runs, then the closing run (what names both partitions), on the two workers
    rows = summary["runs"]
    assert [r["phase"] for r in rows] == [*["properties+units+contacts"] * 2, "closing"]
    assert summary["confirmed"] == world["alone"]["confirmed"]
    assert rows[-1]["confirmed"] < 0.1 * summary["confirmed"]  # the partitions did nearly all
    children = asyncio.run(_children(cluster, run.id))
    assert len(children) == 3 and all(c.state.is_completed() for c in children)


def test_a_worker_killed_mid_phase_costs_a_rerun_not_a_record(
    world: dict[str, Any], sandbox: SandboxServer
) -> None:
    fresh_start(world, sandbox)
    cluster = world["cluster"]
    sandbox.set_faults(latency_ms=[100, 100])  # slow enough to be caught in the middle
    started = asyncio.run(_start(cluster))
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        if sandbox.counters()["writes"] >= 20:  # the first phase is under way on both workers
            for name, pid, pgid in cluster.workers:
                if name.startswith("hausflow-worker") and psutil.Process(pid).children():
                    victim = (name, pid, pgid)
                    break
        time.sleep(0.2)
    assert victim is not None, "no partition run was seen running"
    os.killpg(victim[2], signal.SIGKILL)
    writes_at_kill = sandbox.counters()["writes"]
    sandbox.clear_faults()
    run = asyncio.run(_wait(cluster, started.id, 300))
    _assert_as_a_single_run(world, sandbox, run)
    children = asyncio.run(_children(cluster, run.id))
    crashed = [c for c in children if c.state.is_crashed()]
    assert len(crashed) == 1, [(c.name, c.state.name) for c in children]
    assert "heartbeats stopped" in (crashed[0].state.message or "")
    assert len(children) == 4  # the crashed partition ran again
    assert writes_at_kill < sandbox.counters()["writes"]


def test_a_partition_run_no_worker_takes_is_cancelled_and_the_sync_stops_saying_why(
    world: dict[str, Any], sandbox: SandboxServer
) -> None:
    """A run that never starts sends no heartbeat, so nothing would mark it Crashed: the parent
    cancels it after its start timeout and ends Failed, naming the run and the queue's workers."""
    cluster = world["cluster"]
    writes = sandbox.counters()["writes"]
    started = asyncio.run(_start(cluster, deployment="portal-sync/unserved", start_timeout_s=3))
    run = asyncio.run(_wait(cluster, started.id, 120))
    assert run.state.is_failed()
    assert "no worker took it" in (run.state.message or "")
    children = asyncio.run(_children(cluster, run.id))
    assert children and all(c.state.is_cancelled() for c in children), [
        (c.name, c.state.name) for c in children
    ]
    assert sandbox.counters()["writes"] == writes


def test_a_partitioned_sync_waits_for_a_run_of_its_deployment_already_under_way(
    world: dict[str, Any], sandbox: SandboxServer
) -> None:
    """A run of the partition deployment started by hand (or left behind by a parent whose own
    worker died) writes to the same portal: the parent waits for it to end before it reads back
    pending writes and starts its partitions. The portal ends as after one run, nothing twice."""
    from prefect.deployments import run_deployment

    fresh_start(world, sandbox)
    cluster = world["cluster"]

    async def by_hand() -> Any:
        async with cluster_client(cluster) as client:
            return await run_deployment(
                "portal-sync/partition",
                parameters={"profile": "test"},
                timeout=0,
                as_subflow=False,
                client=client,
            )

    single = asyncio.run(by_hand())
    started = asyncio.run(_start(cluster))
    run = asyncio.run(_wait(cluster, started.id, 240))
    first = asyncio.run(_wait(cluster, single.id, 10))
    assert first.state.is_completed()
    _assert_as_a_single_run(world, sandbox, run)
    children = asyncio.run(_children(cluster, run.id))
    assert min(c.start_time for c in children) >= first.end_time  # its partitions began after it ended
