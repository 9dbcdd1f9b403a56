"""Benchmark of the scaled-out portal sync: N workers against one; prints one JSON line last.

The sandbox stands in for a remote portal: every request waits ``--latency-ms`` (50 ms) before it
is answered, and there is no rate limit, so the partner's latency, not this machine's cores, sets
the pace, as it does over the internet. Both runs are the first sync of a fresh demo ERP
(``--persons``, 100,000 by default) into an empty sandbox, master data only (properties, units,
contacts, responsibilities; the licence for documents and messages is off), each on a cluster of
its own started by ``flows.cluster.start_cluster`` (a Prefect server on PostgreSQL, the process
work pool, the workers; the state store on PostgreSQL):

- single_s: one worker runs one ordinary portal sync (a run of ``portal-sync/partition`` without
  a partition: what an installation without scale-out runs), from the moment the run is created
  until it has ended; the run is a new process on the worker, imports included;
- scaled_s: ``--workers`` workers run the partitioned sync (``portal-sync-partitioned/on-demand``
  with ``partitions`` = workers): the parent on the control worker, three phases of one run per
  partition, and the closing run, again from creation to end;
- speedup: single_s / scaled_s;
- same_state: the two sandboxes hold the same records with the same content (each record as
  hausflow writes it, read back over the API once the latency is off);
- duplicate_writes: writes either sandbox received for a record that already held the same data.

Starting the clusters and generating the ERP are not timed. Target: 2 workers against 1, speedup
>= 1.6, same_state true, duplicate_writes 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from portal_sync import BUSINESS_DATE, generate  # noqa: E402  (bench/portal_sync.py: the same demo ERP)

PG_URL = os.environ.get("HAUSFLOW_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def settings_env(sandbox: Any, erp_url: str, state_url: str, concurrency: int) -> dict[str, str]:
    """The workers' settings: the test profile with the portal on, pointed at ``sandbox``."""
    return {
        "HAUSFLOW_PROFILE": "test",
        "HAUSFLOW_ERP_URL": erp_url,
        "HAUSFLOW_STATE_URL": state_url,
        "HAUSFLOW_BUSINESS_DATE": BUSINESS_DATE.isoformat(),
        "HAUSFLOW_PORTAL__ENABLED": "true",
        "HAUSFLOW_PORTAL__BASE_URL": sandbox.base_url,
        "HAUSFLOW_PORTAL__API_KEY": sandbox.key,
        "HAUSFLOW_PORTAL__API_SECRET": sandbox.secret,
        "HAUSFLOW_PORTAL__CONCURRENCY": str(concurrency),
        "HAUSFLOW_LICENCES__DOCUMENTS_MESSAGES": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }


async def run_and_wait(api_url: str, deployment: str, parameters: dict[str, Any]) -> tuple[float, Any]:
    """Create a run of ``deployment`` and wait for its end: (seconds, the flow run)."""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        async with get_client() as client:
            began = time.perf_counter()
            run = await run_deployment(
                deployment, parameters=parameters, timeout=0, as_subflow=False, client=client
            )
            while True:
                run = await client.read_flow_run(run.id)
                if run.state is not None and run.state.is_final():
                    return time.perf_counter() - began, run
                await asyncio.sleep(0.5)


async def child_runs(api_url: str, parent_id: Any) -> list[dict[str, Any]]:
    """The parent's runs: name, state and seconds."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])
                )
            )
    return sorted(
        (
            {
                "run": r.name.rsplit("-", 1)[-1] if r.name else "?",
                "name": r.name,
                "state": r.state.name if r.state else "?",
                "s": round((r.end_time - r.start_time).total_seconds(), 1)
                if r.end_time and r.start_time
                else None,
                "started": r.start_time.isoformat() if r.start_time else None,
            }
            for r in runs
        ),
        key=lambda r: r["started"] or "",
    )


def content(sandbox: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """Every record of the sandbox as hausflow writes it (written fields, archived or not)."""
    from connectors.portal import PortalClient
    from connectors.portal.streams import STREAMS

    client = PortalClient(sandbox.base_url, sandbox.key, sandbox.secret)
    view = {
        entity: {r["id"]: r for r in client.list_records(entity, include_archived=True)}
        for entity in ("properties", "units", "contacts")
    }
    view["responsibilities"] = {
        k: v for k, v in client.read_many("responsibilities", sorted(view["properties"])).items() if v
    }
    return {
        entity: {
            ref: {**STREAMS[entity].project(record), "archived": bool(record.get("archived"))}
            for ref, record in records.items()
        }
        for entity, records in view.items()
    }


def one_side(
    label: str,
    workers: int,
    deployment: str,
    parameters: dict[str, Any],
    work: Path,
    erp_url: str,
    args: argparse.Namespace,
    admin: Any,
) -> dict[str, Any]:
    """A fresh sandbox and state database, a cluster of ``workers``, the run; what it took."""
    from sqlalchemy import text

    from flows.cluster import drop_prefect_database, start_cluster
    from sandbox.portal.server import SandboxServer, free_port

    db = f"hausflow_bench_{label}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db}"'))
    state_url = PG_URL.rsplit("/", 1)[0] + "/" + db
    sandbox = SandboxServer(db_url=f"sqlite:///{work}/{label}-portal.sqlite").start()
    prefect_db = f"hausflow_prefect_bench_{uuid.uuid4().hex[:8]}"
    cluster = None
    try:
        sandbox.set_faults(latency_ms=[args.latency_ms, args.latency_ms])
        env = settings_env(sandbox, erp_url, state_url, args.concurrency)
        cluster = start_cluster(
            workers=workers,
            database_url=PG_URL,
            port=free_port(),
            directory=work / f"cluster-{label}",
            env=env,
            prefect_database=prefect_db,
        )
        seconds, run = asyncio.run(run_and_wait(cluster.api_url, deployment, parameters))
        state = run.state.name if run.state else "?"
        print(f"{label}: {state} in {seconds:.1f} s on {workers} worker(s)", flush=True)
        runs = asyncio.run(child_runs(cluster.api_url, run.id))
        for r in runs:
            print(f"  {r['name']}: {r['state']} {r['s']} s", flush=True)
        sandbox.clear_faults()
        counters = sandbox.counters()
        return {
            "s": seconds,
            "state": state,
            "runs": runs,
            "content": content(sandbox),
            "writes": counters["writes"],
            "duplicate_writes": counters["duplicate_writes"],
        }
    finally:
        if cluster is not None:
            cluster.stop()
        drop_prefect_database(PG_URL, prefect_db)
        sandbox.stop()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight per worker")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, databases)")
    args = parser.parse_args()

    from sqlalchemy import create_engine

    work = Path(tempfile.mkdtemp(prefix="hausflow-bench-scale-"))
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        erp_url = f"sqlite:///{work}/erp.sqlite"
        t0 = time.perf_counter()
        generate(erp_url, args.persons)
        print(f"ERP with {args.persons:,} persons generated in {time.perf_counter() - t0:.1f} s", flush=True)
        single = one_side(
            "single", 1, "portal-sync/partition", {"profile": "test"}, work, erp_url, args, admin
        )
        scaled = one_side(
            "scaled",
            args.workers,
            "portal-sync-partitioned/on-demand",
            {"profile": "test", "partitions": args.workers},
            work,
            erp_url,
            args,
            admin,
        )
    finally:
        admin.dispose()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    same = single["content"] == scaled["content"] and single["state"] == scaled["state"] == "Completed"
    records = sum(len(v) for v in single["content"].values())
    result = {
        "workers": args.workers,
        "persons": args.persons,
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
        "records": records,
        "single_s": round(single["s"], 1),
        "scaled_s": round(scaled["s"], 1),
        "speedup": round(single["s"] / scaled["s"], 2),
        "same_state": same,
        "duplicate_writes": single["duplicate_writes"] + scaled["duplicate_writes"],
        "writes": {"single": single["writes"], "scaled": scaled["writes"]},
        "scaled_runs": [{k: r[k] for k in ("name", "state", "s")} for r in scaled["runs"]],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
