"""Benchmark of the deposit partner's two flows at scale (default 50,000 deposit accounts and
500,000 bookings); prints one JSON line last.

Method (as ``bench/portal_sync.py``): a synthetic ERP in SQLite (objects of the group
``KM_Kautionen`` with owner and trust pooled account, one tenant, tenancy and deposit account per
unit, ``--bookings-per-account`` bookings each), the deposit sandbox as its own process, and in
this process:
- raw_bookings_per_s: a plain concurrent httpx loop (an ``httpx.AsyncClient`` per worker, one
  login) PUTs the very booking payloads the flow sends into the sandbox holding the accounts: the
  sandbox's saturation rate, the yardstick;
- master_s: the first master-data run (every account created); bookings_s / bookings_per_s: the
  first bookings run (every booking sent once), after the sandbox was emptied and refilled by it;
- noop_s: a warm no-change run of both flows (master data, then bookings) in this process, a
  re-run the same day: the median of ``--repeat``. The master data reads and digests its ERP
  tables, the bookings read aggregates, and both find the fingerprint of the complete run before
  (``tasks/deposit_quiet.py``); as in the demo, some accounts are held back by a precondition (every
  ``HELD_EVERY``-th object has no owner), so each run also reads and reports their waiting bookings;
- peak_rss_mb: peak resident memory of this process (the flows'; the raw loop runs in a child
  process of its own, so its payloads are not counted).

Targets: bookings_per_s >= 80 % of raw_bookings_per_s; noop_s <= 3 s; peak < 1 GB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BUSINESS_DATE = date(2026, 11, 21)
UNITS_PER_OBJECT = 50
HELD_EVERY = 100
"""Every 100th object has no owner: its accounts and bookings are held back (1 % of the accounts)."""
KINDS = ("PAYMENT_IN", "INTEREST", "WITHHOLDING_TAX", "SOLIDARITY_SURCHARGE", "INTEREST")


def generate(erp_url: str, accounts: int, per_account: int) -> None:
    """A synthetic ERP with ``accounts`` deposit accounts and ``per_account`` bookings each."""
    from sqlalchemy import insert

    from connectors.erp import schema as s
    from connectors.erp.database import make_engine

    engine = make_engine(erp_url)
    s.metadata.create_all(engine)
    n_objects = max(1, accounts // UNITS_PER_OBJECT)
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in ("persons", "objects", "object_groups", "units",
                                                             "contracts", "deposit_accounts", "bank_accounts")}  # fmt: skip
    for o in range(n_objects):
        owner = f"E{o:07d}"
        rows["persons"].append({"person_no": owner, "person_type": "EIGENTUEMER", "company_name": f"Eigentum {o} GmbH",
                                "anonymised": False})  # fmt: skip
        rows["bank_accounts"].append({"person_no": owner, "iban": "DE89370400440532013000", "bic": "COBADEFFXXX",
                                      "account_holder": f"Eigentum {o} GmbH"})  # fmt: skip
        object_no = f"{10000 + o}"
        held = o % HELD_EVERY == HELD_EVERY - 1
        rows["objects"].append({"object_no": object_no, "name": f"Wohnanlage {o}", "street": "Hauptstraße 1",
                                "postal_code": "20095", "city": "Hamburg", "country": "DE",
                                "owner_person_no": None if held else owner,
                                "trust_account_iban": "DE02200505501015871393"})  # fmt: skip
        rows["object_groups"].append({"group_name": "KM_Kautionen", "object_no": object_no})
    for i in range(accounts):
        object_no = f"{10000 + i % n_objects}"
        person, unit, contract = f"P{i:07d}", f"{object_no}-{i:06d}", f"{object_no}-{i:06d}-01"
        rows["persons"].append({"person_no": person, "person_type": "MIETER", "first_name": "Eva",
                                "last_name": f"Müller {i}", "city": "Hamburg", "anonymised": False})  # fmt: skip
        rows["units"].append(
            {"unit_no": unit, "object_no": object_no, "name": "Whg.", "unit_type": "WOHNUNG"}
        )
        start = BUSINESS_DATE - timedelta(days=400 + i % 2000)
        rows["contracts"].append({"contract_no": contract, "unit_no": unit, "person_no": person,
                                  "contract_type": "RENTER", "start_date": start})  # fmt: skip
        rows["deposit_accounts"].append({"account_no": f"K-{contract}", "contract_no": contract,
                                         "deposit_amount": Decimal("2400.00"), "opened_on": start})  # fmt: skip
    person_keys = ("first_name", "last_name", "company_name", "city")
    rows["persons"] = [
        {**dict.fromkeys(person_keys), **p} for p in rows["persons"]
    ]  # one shape for executemany
    with engine.begin() as conn:
        for table in (
            "persons",
            "objects",
            "object_groups",
            "units",
            "contracts",
            "deposit_accounts",
            "bank_accounts",
        ):
            for k in range(0, len(rows[table]), 20_000):
                conn.execute(insert(s.metadata.tables[table]), rows[table][k : k + 20_000])
    del rows
    booking_id = 0
    with engine.begin() as conn:
        chunk: list[dict[str, Any]] = []
        for j in range(per_account):
            kind = KINDS[j % len(KINDS)]
            amount = (
                Decimal("2400.00")
                if kind == "PAYMENT_IN"
                else Decimal("1.25")
                if kind == "INTEREST"
                else Decimal("-0.33")
            )
            for i in range(accounts):
                booking_id += 1
                contract = f"{10000 + i % n_objects}-{i:06d}-01"
                chunk.append({"booking_id": booking_id, "account_no": f"K-{contract}", "booking_type": kind,
                              "amount": amount, "booking_date": BUSINESS_DATE - timedelta(days=per_account - j),
                              "text": f"Buchung {j}"})  # fmt: skip
                if len(chunk) >= 20_000:
                    conn.execute(insert(s.deposit_bookings), chunk)
                    chunk = []
        if chunk:
            conn.execute(insert(s.deposit_bookings), chunk)
    engine.dispose()


def payloads(erp_url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The account and booking payloads the flows send, built by the same rules."""
    from connectors.erp.database import make_engine
    from connectors.erp.extract import extract_deposit_bookings, extract_deposit_master_rows
    from tasks.deposit_rules import booking_payload, build_master
    from tasks.deposit_tasks import rows

    engine = make_engine(erp_url)
    tables = extract_deposit_master_rows(engine, "KM_Kautionen")
    master = build_master(rows(tables["accounts"]), rows(tables["objects"]), rows(tables["persons"]),
                          rows(tables["joint_tenants"]))  # fmt: skip
    bookings = [
        booking_payload(r)
        for r in rows(extract_deposit_bookings(engine, "KM_Kautionen"))
        if str(r["contract_no"]) in master.records  # the held accounts' bookings wait
    ]
    engine.dispose()
    return list(master.records.values()), bookings


async def raw_loop(
    base_url: str, user: str, password: str, path: str, items: list[dict[str, Any]], n: int
) -> float:
    """PUT ``items`` with a plain concurrent httpx loop, an ``httpx.AsyncClient`` per worker; records/s."""
    import httpx

    timeout = httpx.Timeout(60.0)
    async with httpx.AsyncClient(base_url=base_url + "/", timeout=timeout) as auth:
        token = (await auth.post("v1/login", json={"clientUsername": user, "password": password})).json()[
            "token"
        ]
    queue = list(reversed(items))

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=base_url + "/", timeout=timeout) as client:
            while queue:
                item = queue.pop()
                r = await client.put(f"{path}/{item['id']}", json=item, headers={"token": token})
                if r.status_code >= 400:
                    raise RuntimeError(f"raw loop: {r.status_code} {r.text[:200]}")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(n)))
    return len(items) / (time.perf_counter() - start)


def raw_worker(erp_url: str, base_url: str, user: str, password: str, concurrency: int) -> None:
    """The yardstick in a process of its own: accounts, then bookings; prints the bookings' rate.

    Why a process of its own: its 500,000 payloads would otherwise count in the flow's peak memory.
    """
    accounts, bookings = payloads(erp_url)
    asyncio.run(raw_loop(base_url, user, password, "v1/deposit-accounts", accounts, concurrency))
    rate = asyncio.run(raw_loop(base_url, user, password, "v1/bookings", bookings, concurrency))
    print(json.dumps({"accounts": len(accounts), "bookings": len(bookings), "rate": rate}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=50_000)
    parser.add_argument("--bookings-per-account", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--keep", action="store_true", help="keep the work folder (ERP, state, sandbox database)"
    )
    parser.add_argument("--raw-worker", nargs=4, metavar=("ERP_URL", "BASE_URL", "USER", "PASSWORD"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.raw_worker:
        raw_worker(*args.raw_worker, args.concurrency)
        return
    work = Path(tempfile.mkdtemp(prefix="hausflow-deposit-bench-"))
    try:
        run(args, work)
    finally:
        if args.keep:
            print(f"work folder kept: {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    """Generate, measure the yardstick in a child process, then the flows in this one."""
    erp_url, state_url = f"sqlite:///{work}/erp.sqlite", f"sqlite:///{work}/state.sqlite"
    t = time.perf_counter()
    generate(erp_url, args.accounts, args.bookings_per_account)
    print(f"ERP generated in {time.perf_counter() - t:.1f} s", flush=True)

    from sandbox.deposit.server import DepositSandboxServer

    sandbox = DepositSandboxServer(db_path=str(work / "deposit.sqlite"))
    sandbox.start()
    try:
        sandbox.reset()
        worker = [sys.executable, __file__, "--concurrency", str(args.concurrency), "--raw-worker",
                  erp_url, sandbox.base_url, sandbox.key, sandbox.secret]  # fmt: skip
        done = subprocess.run(worker, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"the raw httpx loop failed:\n{done.stderr[-3000:]}")
        yardstick = json.loads(done.stdout.strip().splitlines()[-1])
        raw, n_accounts, n_bookings = yardstick["rate"], yardstick["accounts"], yardstick["bookings"]
        print(f"raw httpx loop: {n_bookings:,} bookings at {raw:,.0f}/s", flush=True)
        sandbox.reset()
        os.environ.update(
            {
                "HAUSFLOW_PROFILE": "test",
                "HAUSFLOW_ERP_URL": erp_url,
                "HAUSFLOW_STATE_URL": state_url,
                "HAUSFLOW_BUSINESS_DATE": BUSINESS_DATE.isoformat(),
                "HAUSFLOW_LICENCES__DEPOSIT": "true",
                "HAUSFLOW_DEPOSIT__ENABLED": "true",
                "HAUSFLOW_DEPOSIT__BASE_URL": sandbox.base_url,
                "HAUSFLOW_DEPOSIT__CLIENT_USERNAME": sandbox.key,
                "HAUSFLOW_DEPOSIT__PASSWORD": sandbox.secret,
                "HAUSFLOW_DEPOSIT__CONCURRENCY": str(args.concurrency),
                "PREFECT_LOGGING_LEVEL": "WARNING",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            }
        )
        from prefect.testing.utilities import prefect_test_harness

        from flows.deposit_sync import run_deposit_bookings, run_deposit_master_data

        with prefect_test_harness(server_startup_timeout=60):
            t = time.perf_counter()
            master = run_deposit_master_data(profile="test")
            master_s = time.perf_counter() - t
            t = time.perf_counter()
            first = run_deposit_bookings(profile="test")
            bookings_s = time.perf_counter() - t
            print(
                f"master data {master_s:.1f} s, bookings {bookings_s:.1f} s ({first['confirmed']:,})",
                flush=True,
            )
            noops = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                a = run_deposit_master_data(profile="test")
                b = run_deposit_bookings(profile="test")
                noops.append(time.perf_counter() - t)
                assert a["planned_writes"] == 0 and b["planned_writes"] == 0, (a, b)
                print(f"no-change run of both flows: {noops[-1]:.2f} s", flush=True)
        counters = sandbox.counters()
    finally:
        sandbox.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rate = first["confirmed"] / bookings_s
    result = {
        "accounts": n_accounts,
        "bookings": n_bookings,
        "master_s": round(master_s, 2),
        "bookings_s": round(bookings_s, 2),
        "bookings_per_s": round(rate, 1),
        "raw_bookings_per_s": round(raw, 1),
        "bookings_vs_raw": round(rate / raw, 3),
        "noop_s": round(statistics.median(noops), 2),
        "peak_rss_mb": round(peak, 1),
        "master_confirmed": master["confirmed"],
        "held_accounts": master["quarantined"],
        "waiting_bookings": b["waiting"],
        "duplicate_writes": counters["duplicate_writes"],
        "targets_met": {
            "rate_80pct": rate >= 0.8 * raw,
            "noop_3s": statistics.median(noops) <= 3.0,
            "peak_1gb": peak < 1024,
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
