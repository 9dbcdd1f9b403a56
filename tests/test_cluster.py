"""``./hausflow cluster``: the scale-out setup on one machine (flows/cluster.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from flows import cluster as cluster_mod
from flows.cluster import (
    CONTROL_QUEUE,
    CONTROL_WORKER,
    CRASH_AUTOMATION,
    DEPLOYMENTS,
    PARTITION_QUEUE,
    POOL,
    RECORD,
    Cluster,
    ClusterDeployment,
    database_exists,
    main,
    safe_url,
)
from tests.cluster_env import PG_URL, cluster_client, free_port, running_cluster

ROOT = Path(__file__).resolve().parent.parent


PROBE = ClusterDeployment(
    "cluster-probe", "probe", "tests/cluster_flows.py:cluster_probe", PARTITION_QUEUE, "where a run runs"
)


def _run_probe(cluster: Cluster, report: Path) -> dict[str, Any]:
    """Start the probe on the partition worker; what it reports (its process, group, directory)."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: cluster.api_url}):
        run_deployment(PROBE.full_name, parameters={"report": str(report)}, timeout=0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            found: dict[str, Any] = json.loads(report.read_text())
            return found
        time.sleep(0.2)
    raise AssertionError(f"the probe run did not start within 30 s; see {cluster.processes[0].log}")


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


async def _what_the_api_holds(cluster: Cluster, limit_name: str) -> dict[str, Any]:
    async with cluster_client(cluster) as client:
        pool = await client.read_work_pool(POOL)
        queues = {q.name for q in await client.read_work_queues(work_pool_name=POOL)}
        workers = {w.name: str(w.status.value) for w in await client.read_workers_for_work_pool(POOL)}
        deployments = {}
        for wanted in DEPLOYMENTS:
            if wanted.path.exists():
                deployments[wanted.full_name] = await client.read_deployment_by_name(wanted.full_name)
        limit = await client.read_global_concurrency_limit_by_name(limit_name)
        automations = await client.read_automations_by_name(CRASH_AUTOMATION)
    return {
        "pool": pool,
        "queues": queues,
        "workers": workers,
        "deployments": deployments,
        "limit": limit,
        "automations": automations,
    }


@pytest.mark.postgres
@pytest.mark.slow
def test_cluster_up_configures_server_pool_workers_and_stop_leaves_nothing(tmp_path: Path) -> None:
    limit_name = f"portal-requests-{uuid.uuid4().hex[:6]}"
    env = {"HAUSFLOW_PORTAL__SHARED_RATE_LIMIT": limit_name, "HAUSFLOW_PORTAL__RATE_LIMIT_PER_S": "2.5"}
    folder = tmp_path / "cluster"
    with running_cluster(env, workers=1, directory=folder, deployments=[*DEPLOYMENTS, PROBE]) as cluster:
        assert httpx.get(f"{cluster.api_url}/health", timeout=5).json() is True
        held = asyncio.run(_what_the_api_holds(cluster, limit_name))
        prefect_database = cluster.prefect_database
        processes = [cluster.server, *cluster.processes]
        record = json.loads((folder / RECORD).read_text())
        status_code = main(["status", "--dir", str(folder)])
        probe = _run_probe(cluster, tmp_path / "probe.json")
        worker = cluster.processes[0]
        os.killpg(worker.pgid, signal.SIGKILL)  # the worker "host" dies, with its group
        probe_gone = _gone_within(probe["pid"], 10)

    assert held["pool"].type == "process"
    assert {PARTITION_QUEUE, CONTROL_QUEUE} <= held["queues"]
    assert held["workers"] == {"hausflow-worker-1": "ONLINE", CONTROL_WORKER: "ONLINE"}
    assert "portal-sync/partition" in held["deployments"]
    for name, deployment in held["deployments"].items():
        wanted = next(d for d in DEPLOYMENTS if d.full_name == name)
        assert deployment.work_pool_name == POOL
        assert deployment.work_queue_name == wanted.queue
        assert deployment.entrypoint == wanted.entrypoint
        assert not deployment.schedules
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
        ]
        assert deployment.job_variables["working_dir"] == str(ROOT)
    assert held["limit"].limit == 3 and held["limit"].slot_decay_per_second == 2.5
    [automation] = held["automations"]
    assert automation.trigger.after == {"prefect.flow-run.heartbeat"}
    assert automation.trigger.within.total_seconds() == 90
    assert automation.actions[0].type == "change-flow-run-state"
    assert "heartbeats stopped" in automation.actions[0].message

    assert status_code == 0
    assert record["api_url"] == cluster.api_url and record["database"] == safe_url(PG_URL)
    assert {w["name"] for w in record["workers"]} == {"hausflow-worker-1", CONTROL_WORKER}
    for process in processes:  # each led its own group, and nothing of any group is left
        assert process.pgid == process.pid
        assert not process.alive(), process
        assert not cluster_mod._group_alive(process.pgid), process
    assert not (folder / RECORD).exists()
    assert not database_exists(PG_URL, prefect_database)
    # a run is started in this checkout, in its worker's process group: killing the group kills it
    assert probe["pgid"] == worker.pgid and probe["cwd"] == str(ROOT)
    assert probe_gone


def _record(folder: Path, pid: int, started: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    server = {"name": "server", "role": "server", "pid": pid, "pgid": pid, "started": started, "log": "x"}
    record = {"api_url": f"http://127.0.0.1:{free_port()}/api", "server": server, "workers": []}
    (folder / RECORD).write_text(json.dumps(record))


def test_up_refuses_while_a_cluster_runs_and_down_with_nothing_running_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    running = tmp_path / "running"  # a record whose "server" is this very process
    _record(running, os.getpid(), psutil.Process().create_time())
    assert main(["up", "--dir", str(running), "--port", str(free_port())]) == 1
    assert "is running (server)" in capsys.readouterr().err
    assert (running / RECORD).exists()  # the running cluster's record stays

    empty = tmp_path / "empty"
    assert main(["down", "--dir", str(empty)]) == 0
    assert "nothing to stop" in capsys.readouterr().out
    assert main(["status", "--dir", str(empty)]) == 1

    stale = tmp_path / "stale"  # its processes are gone: status says so, down clears the record
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _record(stale, gone.pid, psutil.Process().create_time() - 100)
    assert main(["status", "--dir", str(stale)]) == 1
    assert "NOT RUNNING" in capsys.readouterr().out
    assert main(["down", "--dir", str(stale)]) == 0
    assert not (stale / RECORD).exists()


def test_the_record_keeps_no_password_and_the_prefect_database_is_never_the_urls_own() -> None:
    assert "secret" not in safe_url("postgresql://hausflow:secret@db.example:5432/erp")
    with pytest.raises(cluster_mod.ClusterError, match="database of its own"):
        cluster_mod.ensure_prefect_database("postgresql://127.0.0.1:5432/erp", "erp")
