"""The admin commands (``./hausflow status``, ``quarantine``, ``run``) and the script's own command
line, each run as a process against a real state database, a real Prefect API and a served
deployment."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from connectors.state_store import QuarantineItem, StateStore
from flows.serve import write_up_record

ROOT = Path(__file__).resolve().parent.parent
LONG_REASON = (
    "neither last name nor company name: the portal needs one of them; enter the last name in the ERP "
    "person record (person P0000007, object 1001, contract V-1001-07); " + "see the rules of seed 001. " * 4
)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no Prefect API, no settings but ``extra``, an empty var folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HAUSFLOW_"))}
    env.update(
        {
            "HAUSFLOW_VAR_DIR": str(tmp_path / "var"),
            "PREFECT_HOME": str(tmp_path / "prefect-home"),  # no Prefect profile with an API URL
            "COLUMNS": "150",
        }
    )
    env.update(extra)
    return env


def _admin(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.admin", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _harness_api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


# ---- the script's own command line ---------------------------------------------------------------
def test_the_script_prints_its_usage_for_help_and_refuses_an_unknown_command() -> None:
    for args in ([], ["help"], ["--help"]):
        done = subprocess.run(["./hausflow", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, (args, done.stderr)
        for command in (
            "up",
            "test",
            "status",
            "quarantine",
            "run FLOW/DEPLOYMENT",
            "cluster up|down|status",
        ):
            assert f"./hausflow {command}" in done.stdout, (args, done.stdout)
    wrong = subprocess.run(["./hausflow", "stauts"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert wrong.returncode == 2
    assert wrong.stdout == ""
    assert "unknown command 'stauts'" in wrong.stderr
    assert (
        "usage: ./hausflow {up|test|check|status|quarantine|run|mail-test|licence|alerts|cluster|help}"
        in wrong.stderr
    )


# ---- quarantine ----------------------------------------------------------------------------------
@pytest.fixture
def held(tmp_path: Path) -> str:
    """A state database holding three open quarantine entries of two partners and a resolved one."""
    url = f"sqlite:///{tmp_path}/state.sqlite"
    store = StateStore(url)
    store.quarantine(
        "portal",
        [
            QuarantineItem(
                "contacts", "P0000007", "expect_column_values_to_not_be_null(displayName)", LONG_REASON
            ),
            QuarantineItem(
                "contacts",
                "P0000023",
                "expect_column_values_to_match_regex(email)",
                "the e-mail address 'max.mustermann@' is not valid: correct or remove it in the ERP person record",
                {"email": "max.mustermann@"},
            ),
            QuarantineItem("units", "U-1001-03", "portal_rejected", "422: the unit number is taken"),
        ],
        "run-1",
    )
    store.resolve_quarantine(
        "portal", {("contacts", "P0000007"), ("contacts", "P0000023")}
    )  # U-1001-03 fixed
    store.quarantine(
        "sepa",
        [QuarantineItem("claims", "FO-202506-0000112", "sepa.iban", "IBAN 'DE94' is not valid")],
        "run-2",
    )
    return url


def test_quarantine_lists_the_open_entries_in_columns_with_a_count(tmp_path: Path, held: str) -> None:
    done = _admin(_env(tmp_path, HAUSFLOW_STATE_URL=held), "quarantine")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["PARTNER", "ENTITY", "RECORD", "RULE", "SINCE", "LAST", "SEEN", "REASON"]
    reason_at = lines[0].index("REASON")
    rows = {line.split()[2]: line for line in lines[1:4]}
    assert set(rows) == {"P0000007", "P0000023", "FO-202506-0000112"}  # U-1001-03 left quarantine
    assert "U-1001-03" not in done.stdout
    assert rows["FO-202506-0000112"].split()[:2] == ["sepa", "claims"]
    assert "IBAN 'DE94' is not valid" in rows["FO-202506-0000112"]
    today = datetime.now().strftime("%Y-%m-%d")
    assert rows["P0000023"].count(today) == 2  # since, last seen
    # fixed-width columns: every reason starts under its title; the long one is cut to the width
    assert all(line[reason_at - 2 : reason_at] == "  " for line in lines[1:4])
    assert rows["P0000007"].endswith("...") and len(rows["P0000007"]) <= 150
    assert rows["P0000007"][reason_at:].startswith("neither last name nor company name")
    assert "3 records held in quarantine; state store" in done.stdout
    assert "max.mustermann@" in done.stdout  # the reason quotes it; the held record itself is not shown
    assert '"email"' not in done.stdout


def test_quarantine_filters_by_partner_and_rule(tmp_path: Path, held: str) -> None:
    env = _env(tmp_path, HAUSFLOW_STATE_URL=held)
    sepa = _admin(env, "quarantine", "--partner", "sepa")
    assert sepa.returncode == 0, sepa.stderr
    assert "FO-202506-0000112" in sepa.stdout and "P0000007" not in sepa.stdout
    assert "1 record held in quarantine (partner sepa)" in sepa.stdout
    email = _admin(env, "quarantine", "--rule", "regex(email)", "--partner", "portal")
    assert "P0000023" in email.stdout and "P0000007" not in email.stdout
    assert "1 record held in quarantine (partner portal, rule regex(email))" in email.stdout
    nothing = _admin(env, "quarantine", "--rule", "no_such_rule")
    assert nothing.returncode == 0
    assert "PARTNER" not in nothing.stdout
    assert "0 records held in quarantine (rule no_such_rule)" in nothing.stdout


def test_quarantine_json_has_the_full_reasons_for_scripts(tmp_path: Path, held: str) -> None:
    done = _admin(_env(tmp_path, HAUSFLOW_STATE_URL=held), "quarantine", "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["count"] == 3
    entries = {e["record"]: e for e in document["entries"]}
    assert set(entries) == {"P0000007", "P0000023", "FO-202506-0000112"}
    assert entries["P0000007"]["reason"] == LONG_REASON
    assert entries["P0000007"]["rule"] == "expect_column_values_to_not_be_null(displayName)"
    assert entries["P0000007"]["partner"] == "portal" and entries["P0000007"]["entity"] == "contacts"
    assert datetime.fromisoformat(entries["P0000007"]["first_seen"]).tzinfo is not None
    assert "record_json" not in entries["P0000023"] and "mustermann@" not in json.dumps(
        entries["P0000023"]["rule"]
    )


def test_quarantine_without_a_state_database_says_where_it_looked_and_creates_none(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.sqlite"
    done = _admin(_env(tmp_path, HAUSFLOW_STATE_URL=f"sqlite:///{missing}"), "quarantine")
    assert done.returncode == 1
    assert f"No state database at sqlite:///{missing} (profile test)" in done.stderr
    assert "--profile" in done.stderr
    assert not missing.exists()


@pytest.mark.skipif(
    not (ROOT / ".venv" / "bin" / "python").exists(), reason="./hausflow needs its .venv: run ./hausflow once"
)
def test_the_script_dispatches_quarantine(tmp_path: Path, held: str) -> None:
    done = subprocess.run(
        ["./hausflow", "quarantine", "--partner", "sepa", "--json"],
        cwd=ROOT,
        env=_env(tmp_path, HAUSFLOW_STATE_URL=held),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert [e["record"] for e in json.loads(done.stdout)["entries"]] == ["FO-202506-0000112"]


# ---- status --------------------------------------------------------------------------------------
def test_status_with_nothing_running_says_so_plainly(tmp_path: Path) -> None:
    # a record left by a main command that was killed, its process id now another process's (this
    # one): the start time tells them apart, so the record counts for nothing
    write_up_record(
        tmp_path / "var",
        {
            "pid": os.getpid(),
            "process_started": psutil.Process().create_time() - 60,
            "profile": "demo",
            "prefect_api": "http://127.0.0.1:9/api",
            "sandbox": "http://127.0.0.1:9",
            "logs": str(tmp_path / "var" / "logs"),
            "started_at": "2026-11-21T10:00:00+00:00",
        },
    )
    missing = tmp_path / "state.sqlite"
    done = _admin(_env(tmp_path, HAUSFLOW_STATE_URL=f"sqlite:///{missing}"), "status")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "./hausflow up     not running" in out
    assert (
        "Prefect API       not running (./hausflow up is not running and PREFECT_API_URL is not set)" in out
    )
    assert "Portal sandbox    not running" in out
    assert "Deployments and runs: the Prefect API is not running; start ./hausflow up" in out
    assert f"No state database at sqlite:///{missing} (profile test)" in out
    assert not missing.exists()


@pytest.fixture
def recorded_stack(prefect_harness: None, sandbox: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A deployment with a 5-minute schedule, a Completed and a Failed run of it in the Prefect API,
    a state store with a run's summary, and the record of a running ``./hausflow up`` pointing at
    the harness's API and a running sandbox."""
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.states import Completed, Failed, Running

    async def build() -> dict[str, Any]:
        async with get_client() as client:
            flow_id = await client.create_flow_from_name("status-check")
            deployment_id = await client.create_deployment(
                flow_id=flow_id, name="every-5-minutes", entrypoint="flows/portal_sync.py:portal_sync"
            )
            await client.create_deployment_schedules(
                deployment_id,
                [DeploymentScheduleCreate(schedule=IntervalSchedule(interval=300), active=True)],
            )
            response = await client._client.post(f"/deployments/{deployment_id}/schedule", json={})
            response.raise_for_status()
            names = {}
            for final in (Completed(), Failed(message="2 portal writes failed")):
                run = await client.create_flow_run_from_deployment(deployment_id)
                await client.set_flow_run_state(run.id, Running(), force=True)
                await client.set_flow_run_state(run.id, final, force=True)
                names[final.name] = run.name
            return names

    runs = asyncio.run(build())
    state_url = f"sqlite:///{tmp_path}/state.sqlite"
    store = StateStore(state_url)
    store.start_run("run-7", "portal-sync", "portal", False)
    store.finish_run("run-7", "COMPLETED", {"planned_writes": 7, "confirmed": 7, "failed": 0, "mode": "full"})
    store.quarantine("portal", [QuarantineItem("contacts", "P1", "rule", "reason")], "run-7")
    write_up_record(
        tmp_path / "var",
        {
            "pid": os.getpid(),
            "process_started": psutil.Process().create_time(),
            "started_at": "2026-11-21T10:00:00+00:00",
            "profile": "test",
            "prefect_ui": _harness_api_url().removesuffix("/api"),
            "prefect_api": _harness_api_url(),
            "sandbox": sandbox.base_url,
            "logs": str(tmp_path / "var" / "logs"),
            "state_url": state_url,
        },
    )
    yield {"runs": runs, "state_url": state_url}


def test_status_shows_servers_deployments_last_runs_and_the_state_stores_summary(
    tmp_path: Path, recorded_stack: dict[str, Any], sandbox: Any
) -> None:
    done = _admin(_env(tmp_path), "status")  # no PREFECT_API_URL: the API comes from the record
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"./hausflow up     running (process {os.getpid()}" in out
    assert f"Prefect API       {_harness_api_url()} (./hausflow up): running" in out
    assert f"Portal sandbox    {sandbox.base_url}: running" in out
    deployment = next(line for line in out.splitlines() if "status-check/every-5-minutes" in line)
    assert "every 5 minutes; next run 20" in deployment
    section = out[out.index("  status-check\n") :]
    completed = next(line for line in section.splitlines() if recorded_stack["runs"]["Completed"] in line)
    failed = next(line for line in section.splitlines() if recorded_stack["runs"]["Failed"] in line)
    assert "Completed" in completed and "(every-5-minutes)" in completed
    assert "Failed" in failed
    assert section.index(failed) < section.index(completed)  # newest first
    assert f"State store {recorded_stack['state_url']} (profile test)" in out
    assert "portal-sync: last run" in out and "COMPLETED" in out
    assert "planned_writes 7, confirmed 7, failed 0, mode full" in out
    assert "quarantine: 1 record held (portal 1)" in out


# ---- run -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served_flows(prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``greet/cli-test`` and ``fail-on-purpose/cli-test`` served by their own process."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    env = _env(tmp_path_factory.mktemp("served"), PREFECT_API_URL=_harness_api_url())
    env["PREFECT_RUNNER_POLL_FREQUENCY"] = "1"
    log = tmp_path_factory.mktemp("served-log") / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.admin_flows"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    async def served() -> bool:
        async with get_client() as client:
            try:
                for name in ("greet/cli-test", "fail-on-purpose/cli-test"):
                    await client.read_deployment_by_name(name)
            except ObjectNotFound:
                return False
            return True

    try:
        deadline = time.monotonic() + 90
        while not asyncio.run(served()):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_run_follows_the_log_and_exits_0_when_the_run_completed(served_flows: dict[str, str]) -> None:
    done = _admin(served_flows, "run", "greet/cli-test", "--param", "name=Ada")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Started flow run ") and "of greet/cli-test" in lines[0]
    greeting = next(i for i, line in enumerate(lines) if "Hello, Ada, from a served run." in line)
    assert " INFO " in lines[greeting]
    assert lines[-1].endswith("of greet/cli-test ended Completed")
    assert greeting < len(lines) - 1


def test_run_exits_1_with_the_final_state_when_the_run_failed(served_flows: dict[str, str]) -> None:
    done = _admin(served_flows, "run", "fail-on-purpose/cli-test")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "About to fail on purpose." in done.stdout
    assert "ValueError: this run fails on purpose" in done.stdout  # the run's own error log line
    assert " ended Failed" in done.stdout.splitlines()[-1]


def test_run_of_an_unknown_deployment_lists_the_known_ones_and_exits_2(served_flows: dict[str, str]) -> None:
    for name in ("greet/no-such-deployment", "greet"):
        done = _admin(served_flows, "run", name)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"Unknown deployment {name!r}" in done.stderr
        assert "  greet/cli-test\n" in done.stderr and "  fail-on-purpose/cli-test\n" in done.stderr
        assert "Started flow run" not in done.stdout


def test_run_with_parameters_the_flow_refuses_exits_2(served_flows: dict[str, str]) -> None:
    done = _admin(served_flows, "run", "greet/cli-test", "--param", "name=[1, 2]")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "The Prefect API refused the run of greet/cli-test" in done.stderr
    assert "Started flow run" not in done.stdout
    wrong = _admin(served_flows, "run", "greet/cli-test", "--param", "name")
    assert wrong.returncode == 2
    assert "'name' is not key=value" in wrong.stderr


def test_run_without_a_prefect_api_says_what_to_start(tmp_path: Path) -> None:
    done = _admin(_env(tmp_path), "run", "greet/cli-test")
    assert done.returncode == 1
    assert "No Prefect API to start the run on: ./hausflow up is not running" in done.stderr
