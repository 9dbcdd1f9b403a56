"""Benchmark of the portal sync at scale (default 100,000 persons); prints one JSON line last.

The runs include the exchange (docs/portal-exchange.md): the licence ``documents_messages`` is
on, and the demo ERP writes a document file per document row (about 100,000 at 100,000 persons)
and about 53,000 messages; e-mails to contacts not in the portal go to a local SMTP sink
(aiosmtpd on a free loopback port, in a thread of this process). The full sync therefore
uploads the documents' files and sends the tickets, bulletin posts and comments; the no-change
runs must plan no write of the exchange either.

Measures, in one run against the sandbox started as its own process (the ERP generator, the
sandbox and the Prefect API each run in their own process):
- raw_records_per_s: the sandbox's saturation throughput, by a plain concurrent httpx loop (an
  ``httpx.AsyncClient`` per worker) sending the very payloads the sync sends (all of them by
  default; ``--raw-sample N`` sends only the first N, which are mostly units, for a quicker look);
  ``raw_sandbox_busy`` is the share of the time the sandbox's process was on the CPU (near 1.0:
  the loop measured the sandbox, not itself). It is the yardstick of the full sync;
- full_sync_s / full_records_per_s: the first full portal sync (all records created), in this
  process; full_vs_raw: its rate over the raw loop's;
- noop_s: a no-change run in this process after the full sync, with the imports done and the
  ERP rows of the last run kept in memory: the median of ``--repeat`` runs, each also printed
  with the seconds of its tasks as the Prefect API recorded them (``task_seconds``);
- served_noop_s: a no-change run as a served deployment runs it, in a new process. A served
  Prefect deployment starts every flow run in a new process, so every scheduled run pays the
  imports (Prefect, pandas, SQLAlchemy, the flow's modules) and reads the last run's memo from
  disk instead of the rows a warm process keeps. Measured as the wall time from spawning
  ``python -m flows.portal_sync`` with the benchmark's environment (its settings, and the
  benchmark's Prefect API) until that process exits; the median of ``--repeat`` runs. Each
  child's summary must say ``incremental`` with 0 planned writes, else the benchmark stops.
  This approximates a served run: it has the new process, the imports and the run, not the
  runner's polling nor its handing over of the run. Why not a real served deployment
  (``to_deployment``, a ``Runner`` and ``run_deployment``): it runs, but the flow's result is
  not persisted, so the benchmark could not check that the run was incremental and planned no
  writes without changing the flow;
- peak_rss_mb: peak resident memory of this process, where the full sync and the warm runs
  happen; served_peak_rss_mb: the largest peak of the served runs' processes;
- settle_runs: runs after the full sync until one plans no write (``--settle``, at most 5): the
  Word files LibreOffice did not convert in a run are tried again in the next;
- full_summary: the counts of the full sync's summary (records confirmed, skipped, ...);
  uploads / upload_mb: the files the sandbox took; mails: the e-mails the SMTP sink received;
- duplicate_writes: writes the sandbox received for a record that already held the same data
  (the sandbox's counter; 0 expected).

The raw loop sends the master data's payloads only (properties, units, contacts), so with the
exchange on, ``full_vs_raw`` compares a sync that also uploads files and sends messages with a
loop that does not: a lower bound, not the master data's share.

Targets: full >= 80 % of raw; noop <= 3 s; served noop <= 6 s; peak < 1 GB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUSINESS_DATE = date(2026, 11, 21)


class SmtpSink:
    """An aiosmtpd handler that counts the e-mails it received (and keeps nothing else)."""

    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 OK"


def start_smtp_sink() -> tuple[Any, SmtpSink, int]:
    """An SMTP server on a free loopback port: (its controller, its handler, its port)."""
    import socket

    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = SmtpSink()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    return controller, sink, port


def generate(erp_url: str, persons: int) -> None:
    """Seed the ERP in a child process, so its memory does not count for the sync."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "connectors.erp",
            "seed",
            "--url",
            erp_url,
            "--persons",
            str(persons),
            "--seed",
            "42",
            "--business-date",
            BUSINESS_DATE.isoformat(),
        ],
        cwd=ROOT,
        check=True,
    )


def desired_payloads(erp_url: str) -> list[tuple[str, dict[str, Any]]]:
    """The payloads the sync will send, computed with the same rules and checks (no Prefect).

    Records the validation quarantines are left out (the sync never sends them), as are units
    and contacts whose property or unit is left out.
    """
    from config.settings import load_settings
    from connectors.erp.database import make_engine
    from connectors.erp.extract import extract_portal_frames
    from tasks.portal_tasks import desired_state_for
    from tasks.validation import validate_records

    frames = extract_portal_frames(make_engine(erp_url))
    desired, _, _ = desired_state_for(load_settings("test"), frames, BUSINESS_DATE)
    held = {
        (s.entity, s.ref_id)
        for entity in ("properties", "units", "contacts")
        for s in validate_records(entity, desired.records[entity])
    }
    held_props = {rid for entity, rid in held if entity == "properties"}
    held |= {("units", rid) for rid, u in desired.records["units"].items() if u["propertyId"] in held_props}
    held_units = {rid for entity, rid in held if entity == "units"}
    out: list[tuple[str, dict[str, Any]]] = []
    for entity in ("properties", "units", "contacts"):
        for rid, p in desired.records[entity].items():
            if (entity, rid) in held:
                continue
            if entity == "contacts" and any(
                c["propertyId"] in held_props or c["unitId"] in held_units for c in p["contracts"]
            ):
                continue
            out.append((entity, p))
    return out


async def raw_loop(
    base_url: str, key: str, secret: str, payloads: list[tuple[str, dict[str, Any]]], concurrency: int
) -> float:
    """PUT the payloads with a plain concurrent httpx loop; returns records per second.

    Each of the ``concurrency`` workers sends over its own ``httpx.AsyncClient``. Why not one
    client with a pool of ``concurrency`` connections: httpcore checks every idle connection of a
    pool each time a request enters or leaves it; with 16 connections that costs more CPU than
    the sandbox spends on the write, so the loop measured the pool, not the sandbox (on a 2-core
    machine about 800 records/s, with the sandbox idle half of the time).
    """
    import httpx

    timeout = httpx.Timeout(60.0)
    tls = httpx.create_ssl_context()
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, verify=tls) as auth_client:
        answer = await auth_client.post("/v2/authenticate", json={"key": key, "secret": secret})
        token = answer.json()["token"]
    queue = list(reversed(payloads))

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=timeout, verify=tls) as client:
            while queue:
                entity, payload = queue.pop()
                r = await client.put(f"/v2/{entity}/{payload['id']}", json=payload, headers={"token": token})
                if r.status_code >= 400:
                    raise RuntimeError(f"raw loop: {r.status_code} {r.text[:200]}")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(payloads) / (time.perf_counter() - start)


def measure_raw(
    sandbox: Any, payloads: list[tuple[str, dict[str, Any]]], concurrency: int
) -> tuple[float, float]:
    """One raw loop into the emptied sandbox: (records per second, CPU share of the sandbox process).

    The sandbox is emptied again afterwards, so the full sync creates every record.
    """
    import psutil

    sandbox.reset()
    assert sandbox.process is not None
    proc = psutil.Process(sandbox.process.pid)
    cpu0, t0 = sum(proc.cpu_times()[:2]), time.perf_counter()
    rate = asyncio.run(raw_loop(sandbox.base_url, sandbox.key, sandbox.secret, payloads, concurrency))
    share = (sum(proc.cpu_times()[:2]) - cpu0) / (time.perf_counter() - t0)
    sandbox.reset()
    return rate, share


def require_noop(summary: dict[str, Any], what: str) -> None:
    """Stop the benchmark unless ``summary`` is an incremental run that planned no write.

    A full run or a run with writes is not the figure this benchmark reports as a no-change run.
    """
    if summary.get("mode") != "incremental" or summary.get("planned_writes") != 0:
        raise SystemExit(
            f"{what}: expected an incremental run with 0 planned writes, got mode {summary.get('mode')!r} "
            f"with {summary.get('planned_writes')!r} planned writes (full_reason {summary.get('full_reason')!r})"
        )


def task_seconds(flow_run_id: str, timeout_s: float = 20.0) -> dict[str, float]:
    """Seconds per task of one flow run (batches summed), as the Prefect API recorded them.

    Task-run states reach the server a little after the flow returns: read until every task run
    is final and their number stayed the same between two reads.
    """
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout_s
    runs: list[Any] = []
    with get_client(sync_client=True) as client:
        while True:
            before = len(runs)
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
            )
            final = bool(runs) and all(r.state is not None and r.state.is_final() for r in runs)
            if (final and len(runs) == before) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    out: dict[str, float] = {}
    for run in sorted(runs, key=lambda r: str(r.start_time or r.expected_start_time or "")):
        name = run.name.rsplit("-", 1)[0]  # "load-batch-3cb" -> "load-batch"
        out[name] = round(out.get(name, 0.0) + run.total_run_time.total_seconds(), 3)
    return out


def served_noop(env: dict[str, str]) -> tuple[float, float]:
    """One no-change run in a new process, as a served deployment starts it: (seconds, peak RSS MB).

    The seconds run from spawning ``python -m flows.portal_sync`` until the process has exited.
    Its peak memory is the high-water mark of its own memory (``VmHWM`` in ``/proc``), read every
    10 ms while it runs. Why not ``ru_maxrss`` (``os.wait4``, ``RUSAGE_CHILDREN``): on Linux a
    child's ``ru_maxrss`` includes the resident memory of the process that started it, at the
    time it started it; here that is this process's peak after the full sync.
    """
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "flows.portal_sync"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    status_file = Path(f"/proc/{child.pid}/status")
    peak_kb = 0
    while child.poll() is None:
        try:
            found = re.search(r"^VmHWM:\s+(\d+) kB", status_file.read_text(), re.MULTILINE)
        except OSError:  # it has just exited
            found = None
        if found:
            peak_kb = max(peak_kb, int(found[1]))
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    assert child.stdout is not None
    out = child.stdout.read()  # a JSON summary (its log goes to the benchmark's own stderr)
    child.stdout.close()
    if child.returncode != 0:
        raise SystemExit(f"served no-change run: the process exited with code {child.returncode}")
    require_noop(json.loads(out.strip().splitlines()[-1]), "served no-change run")
    return seconds, peak_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument(
        "--raw-sample", type=int, default=0, help="records the raw loop sends (0 = all, the default)"
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--repeat", type=int, default=5, help="warm and served no-change runs each (the median is reported)"
    )
    parser.add_argument(
        "--settle", type=int, default=5,
        help="at most this many runs after the full sync until one plans no write (Word files left to convert)",
    )  # fmt: skip
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hausflow-bench-"))
    erp_url, state_url = f"sqlite:///{work}/erp.sqlite", f"sqlite:///{work}/state.sqlite"
    t0 = time.perf_counter()
    generate(erp_url, args.persons)
    print(f"ERP with {args.persons:,} persons generated in {time.perf_counter() - t0:.1f} s", flush=True)

    from sandbox.portal.server import SandboxServer

    sandbox = SandboxServer(db_url=f"sqlite:///{work}/portal.sqlite")
    sandbox.start()
    smtp, mails, smtp_port = start_smtp_sink()
    try:
        payloads = desired_payloads(erp_url)
        sample = payloads if args.raw_sample <= 0 else payloads[: args.raw_sample]
        raw_rate, raw_share = measure_raw(sandbox, sample, args.concurrency)
        print(
            f"raw httpx loop (a client per worker): {len(sample):,} PUTs at {raw_rate:,.0f} records/s, "
            f"sandbox busy {raw_share:.0%}",
            flush=True,
        )
        del payloads, sample

        os.environ.update(
            {
                "HAUSFLOW_PROFILE": "test",
                "HAUSFLOW_ERP_URL": erp_url,
                "HAUSFLOW_STATE_URL": state_url,
                "HAUSFLOW_BUSINESS_DATE": BUSINESS_DATE.isoformat(),
                "HAUSFLOW_PORTAL__ENABLED": "true",
                "HAUSFLOW_PORTAL__BASE_URL": sandbox.base_url,
                "HAUSFLOW_PORTAL__API_KEY": sandbox.key,
                "HAUSFLOW_PORTAL__API_SECRET": sandbox.secret,
                "HAUSFLOW_PORTAL__CONCURRENCY": str(args.concurrency),
                "HAUSFLOW_LICENCES__DOCUMENTS_MESSAGES": "true",
                "HAUSFLOW_MAIL__HOST": "127.0.0.1",
                "HAUSFLOW_MAIL__PORT": str(smtp_port),
                "HAUSFLOW_MAIL__SENDER": "verwaltung@hausflow.example",
                "PREFECT_LOGGING_LEVEL": "WARNING",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            }
        )
        from prefect.settings import PREFECT_API_URL
        from prefect.testing.utilities import prefect_test_harness

        from flows.portal_sync import run_portal_sync
        from tasks.portal_tasks import ENTITIES

        with prefect_test_harness(server_startup_timeout=60):
            # the master data first, alone: the figure the raw loop (master data only) compares with
            t = time.perf_counter()
            first = run_portal_sync(profile="test", entities=list(ENTITIES))
            full_s = time.perf_counter() - t
            master_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"full sync, master data: {first['confirmed']:,} records in {full_s:.1f} s", flush=True)
            if first.get("failed"):
                raise SystemExit(f"full sync: {first['failed']} writes failed")
            # then the exchange's first run: documents with their files, tickets, posts, comments, mails
            t = time.perf_counter()
            exchange = run_portal_sync(profile="test")
            exchange_s = time.perf_counter() - t
            print(f"full sync, exchange: {exchange['confirmed']:,} records in {exchange_s:.1f} s", flush=True)
            full_summary = {
                k: v for k, v in exchange.items() if isinstance(v, int) and not isinstance(v, bool)
            }
            print(f"  summary: {full_summary}; e-mails received: {mails.count:,}", flush=True)
            if exchange.get("failed"):
                raise SystemExit(f"exchange: {exchange['failed']} writes failed")

            # Word files LibreOffice did not convert in a run are tried again in the next; runs
            # until one plans no write, so that the no-change runs below measure no change.
            settle: list[dict[str, Any]] = []
            while len(settle) < args.settle:
                t = time.perf_counter()
                run = run_portal_sync(profile="test")
                settle.append(
                    {"planned_writes": run.get("planned_writes"), "s": round(time.perf_counter() - t, 2)}
                )
                print(
                    f"settling run: {settle[-1]['planned_writes']} writes in {settle[-1]['s']:.2f} s",
                    flush=True,
                )
                if run.get("planned_writes") == 0:
                    break

            noop_runs: list[float] = []
            exchange_modes: list[str] = []
            noop_tasks: list[dict[str, float]] = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                noop = run_portal_sync(profile="test")
                noop_runs.append(time.perf_counter() - t)
                require_noop(noop, "warm no-change run")
                exchange_modes.append(noop.get("exchange", "?"))
                print(
                    f"warm no-change run: {noop['planned_writes']} writes in {noop_runs[-1]:.2f} s",
                    flush=True,
                )
                noop_tasks.append(task_seconds(noop["run_id"]))
                print(
                    "  tasks: " + ", ".join(f"{n} {s:.2f} s" for n, s in noop_tasks[-1].items()), flush=True
                )

            # The served runs' processes get the settings above from the environment, and this API.
            child_env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
            served_runs: list[float] = []
            served_peaks: list[float] = []
            for _ in range(args.repeat):
                seconds, peak = served_noop(child_env)
                served_runs.append(seconds)
                served_peaks.append(peak)
                print(
                    f"served no-change run (new process): 0 writes in {seconds:.2f} s, peak {peak:.0f} MB",
                    flush=True,
                )
        counters = sandbox.counters()
    finally:
        sandbox.stop()
        smtp.stop()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    full_rate = first["confirmed"] / full_s
    noop_s = statistics.median(noop_runs)
    served_s = statistics.median(served_runs)
    result = {
        "persons": args.persons,
        "full_sync_s": round(full_s, 2),
        "exchange_full_s": round(exchange_s, 2),
        "exchange_records": exchange["confirmed"],
        "full_records_per_s": round(full_rate, 1),
        "raw_records_per_s": round(raw_rate, 1),
        "full_vs_raw": round(full_rate / raw_rate, 3),
        "raw_sandbox_busy": round(raw_share, 2),
        "raw_sample": args.raw_sample,
        "noop_s": round(noop_s, 2),
        "noop_runs_s": [round(x, 2) for x in noop_runs],
        "noop_exchange": exchange_modes,
        "task_seconds": noop_tasks,
        "served_noop_s": round(served_s, 2),
        "served_noop_runs_s": [round(x, 2) for x in served_runs],
        "peak_rss_mb": round(master_peak_mb, 1),
        "peak_rss_with_exchange_mb": round(peak_mb, 1),
        "served_peak_rss_mb": round(max(served_peaks), 1),
        "full_summary": full_summary,
        "settle_runs": settle,
        "uploads": counters.get("uploads"),
        "upload_mb": round((counters.get("upload_bytes") or 0) / 2**20, 1),
        "mails": mails.count,
        "duplicate_writes": counters.get("duplicate_writes"),
        "targets_met": {
            "full_ge_80pct_raw": full_rate >= 0.8 * raw_rate,
            "noop_le_3s": noop_s <= 3.0,
            "served_noop_le_6s": served_s <= 6.0,
            "peak_below_1gb": master_peak_mb < 1024,
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
