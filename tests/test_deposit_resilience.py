"""The deposit bookings flow under faults and crashes: injected 5xx, 429 and lost answers, and the
flow's process killed with SIGKILL in the middle of the bookings load. No booking lost, none sent
twice (the sandbox's write counters)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from connectors.erp import demo
from connectors.erp.database import make_engine
from connectors.state_store import StateStore
from flows.deposit_sync import run_deposit_bookings, run_deposit_master_data
from sandbox.deposit.server import DepositSandboxServer
from tests.deposit_env import BUSINESS_DATE, deposit_env, deposit_view

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parent.parent


def _confirmed_bookings(state_url: str) -> set[str]:
    return {
        rid
        for rid, e in StateStore(state_url).load_state("deposit", "bookings").items()
        if e.status == "active"
    }


def _until_converged(runs: int = 6) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for _ in range(runs):
        try:
            results.append(run_deposit_bookings(profile="test"))
        except RuntimeError as exc:  # some writes ran out of retries: the next run takes them
            results.append({"error": str(exc)})
            continue
        if results[-1]["planned_writes"] == 0:
            break
    return results


def _world(tmp_path: Path, persons: int, seed: int) -> tuple[str, str]:
    erp_url, state_url = f"sqlite:///{tmp_path}/erp.sqlite", f"sqlite:///{tmp_path}/state.sqlite"
    demo.generate_erp(make_engine(erp_url), persons=persons, seed=seed, business_date=BUSINESS_DATE)
    return erp_url, state_url


def test_faults_neither_lose_nor_duplicate_bookings(
    deposit_sandbox: DepositSandboxServer, tmp_path: Path
) -> None:
    erp_url, state_url = _world(tmp_path, 300, 4)
    deposit_sandbox.reset()
    with deposit_env(deposit_sandbox, erp_url, state_url):
        run_deposit_master_data(profile="test")
        deposit_sandbox.set_faults(
            status_rates={"500": 0.06, "502": 0.04, "503": 0.04, "429": 0.06}, retry_after_s=0,
            drop_rate=0.04, apply_then_drop_rate=0.06, latency_ms=[1, 5], seed=8,
        )  # fmt: skip
        try:
            results = _until_converged()
        finally:
            deposit_sandbox.clear_faults()
        final = run_deposit_bookings(profile="test")
    assert final["planned_writes"] == 0, results
    counters = deposit_sandbox.counters()
    assert sum(counters["faults_injected"].values()) > 20, counters
    assert set(deposit_view(deposit_sandbox)["bookings"]) == _confirmed_bookings(state_url)
    assert counters["duplicate_writes"] == 0


def test_sigkill_mid_bookings_load_neither_loses_nor_duplicates(
    deposit_sandbox: DepositSandboxServer, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    erp_url, state_url = _world(tmp_path, 900, 33)
    deposit_sandbox.reset()
    log = open(tmp_path / "processes.log", "wb")  # noqa: SIM115 - read on failure
    kills = 0
    with deposit_env(deposit_sandbox, erp_url, state_url, HAUSFLOW_DEPOSIT__BATCH_SIZE="40") as env:
        run_deposit_master_data(profile="test")
        deposit_sandbox.set_faults(latency_ms=[5, 15], apply_then_drop_rate=0.02, methods=["PUT"], seed=9)
        try:
            for threshold in (30, 120, 200):  # new booking writes of this process before it is killed
                start = deposit_sandbox.counters()["writes"]
                child_env = {**os.environ, **env, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
                proc = subprocess.Popen(
                    [sys.executable, "-m", "flows.deposit_sync", "bookings"],
                    cwd=ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and proc.poll() is None:
                    if deposit_sandbox.counters()["writes"] - start >= threshold:
                        os.kill(proc.pid, signal.SIGKILL)
                        kills += 1
                        break
                    time.sleep(0.02)
                proc.wait(timeout=30)
            log.flush()
            assert kills == 3, (tmp_path / "processes.log").read_text()[-3000:]
            results = _until_converged()
        finally:
            deposit_sandbox.clear_faults()
        final = run_deposit_bookings(profile="test")
    assert final["planned_writes"] == 0, results
    assert set(deposit_view(deposit_sandbox)["bookings"]) == _confirmed_bookings(state_url)
    assert deposit_sandbox.counters()["duplicate_writes"] == 0
    assert not StateStore(state_url).load_pending("deposit")
