"""The shared rate limit (setting ``shared_rate_limit``): several processes, each with its own
client, keep the sum of their requests within one Prefect global concurrency limit."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from connectors.portal import PortalClient
from connectors.sync.http import SharedLimitMissingError
from sandbox.portal.server import SandboxServer

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parent.parent
RATE = 10  # requests per second, and as many at once (the limit's slots)
EACH = 20  # requests per process

WORKER = """
import asyncio, json, sys, time
from connectors.portal import PortalClient
base, key, secret, limit, start = sys.argv[1:6]
client = PortalClient(base, key, secret, shared_rate_limit=limit, concurrency=4)
ids = [f"P{n}" for n in range(int(sys.argv[6]))]
times = []
async def main():
    async def one(ref):
        await client.aread_many("contacts", [ref])
        times.append(time.time())
    while time.time() < float(start):
        await asyncio.sleep(0.01)
    await asyncio.gather(*(one(r) for r in ids))
asyncio.run(main())
print(json.dumps(times))
"""


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


def _create_limit(name: str, rate: int) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    async def create() -> None:
        async with get_client() as client:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=rate, slot_decay_per_second=rate)
            )

    asyncio.run(create())


def test_two_processes_share_one_limit(sandbox: SandboxServer) -> None:
    """Two processes send 20 reads each at once through a limit of 10 slots refilled at 10 a
    second: together they take at least (40 - 10) / 10 = 3 s, and no second sees more than the
    slots plus one second's refill. Without the limit the same reads take well under a second."""
    sandbox.reset()
    name = f"portal-requests-{uuid.uuid4().hex[:6]}"
    _create_limit(name, RATE)
    env = {**os.environ, "PREFECT_API_URL": _api_url(), "PYTHONPATH": str(ROOT)}
    start = time.time() + 4  # both processes begin together, once imported
    args = [sandbox.base_url, sandbox.key, sandbox.secret, name, str(start), str(EACH)]
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, *args], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    times = sorted(t for out in outputs for t in json.loads(out.strip().splitlines()[-1]))
    assert len(times) == 2 * EACH
    assert times[0] >= start
    took = times[-1] - start
    assert took >= (2 * EACH - RATE) / RATE - 0.5, (
        f"{2 * EACH} requests in {took:.2f} s: the limit did not hold"
    )
    busiest = max(sum(1 for t in times if s <= t < s + 1) for s in times)
    assert busiest <= 2 * RATE + 1, f"{busiest} requests within one second"


def test_without_the_limit_the_same_reads_take_under_a_second(sandbox: SandboxServer) -> None:
    client = PortalClient(sandbox.base_url, sandbox.key, sandbox.secret, concurrency=4)
    began = time.monotonic()
    client.read_many("contacts", [f"P{n}" for n in range(2 * EACH)])
    assert time.monotonic() - began < 1.0


def test_a_shared_limit_missing_on_the_server_stops_the_call_with_its_name(sandbox: SandboxServer) -> None:
    client = PortalClient(sandbox.base_url, sandbox.key, sandbox.secret, shared_rate_limit="no-such-limit")
    with pytest.raises(SharedLimitMissingError, match=r"'no-such-limit'.*not on the Prefect server"):
        client.check()
