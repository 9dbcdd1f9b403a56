"""Failure alerts end to end: a real Prefect server with its services, the automations hausflow
installs, the alert relay as its own process, and a real SMTP server (aiosmtpd) whose mails are read.

Each alert kind: a failing run (the portal sync, refused by the portal, with records in quarantine),
a run that never starts (a deployment nothing serves), a run that blocks (a served flow that sleeps
past the threshold); and a run that completed with records in quarantine, which is no alert.

The Prefect server runs with its late-runs service at 1 s (a run is late 1 s past its time; 15 s in
production) and proactive triggers evaluated every second (5 s in production), thresholds at
Prefect's minimum of 10 s. Measured on 2 shared cores: the failure mail arrives about 1 s after the
run failed; "not started" 11-13 s after the run became late; "blocked" 10-13 s after it started.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import update

from config.settings import load_settings
from connectors.erp import demo, schema
from connectors.erp.database import make_engine
from connectors.state_store import StateStore
from flows.alerts import FAILED_NAME, PREFIX, install_alerts
from flows.portal_sync import run_portal_sync
from sandbox.portal.server import SandboxServer, free_port
from tests.portal_env import BUSINESS_DATE, portal_env
from tests.test_portal_bad_input import BAD, GOOD_BUT_CLEANED, _plant_bad_rows

ROOT = Path(__file__).resolve().parent.parent
RECIPIENTS = ["betrieb@hv-mueller.example", "bereitschaft@hv-mueller.example"]
TOKEN = "relay-token-for-tests"
THRESHOLD_S = 10  # Prefect's minimum for a proactive trigger
WATCHED = [("greet", "never-served"), ("sleepy", "alert-test")]

pytestmark = pytest.mark.slow


@dataclass
class Inbox:
    """What the SMTP server received: (arrival as a Unix time, envelope recipients, message)."""

    mails: list[tuple[float, list[str], EmailMessage]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.arrived:
            self.mails.append((time.time(), list(envelope.rcpt_tos), message))
            self.arrived.notify_all()
        return "250 OK"

    def about(self, text: str) -> list[tuple[float, list[str], EmailMessage]]:
        """The mails whose text names ``text`` (a run's id)."""
        with self.arrived:
            return [m for m in self.mails if text in m[2].get_content()]

    def wait(self, text: str, count: int, timeout_s: float) -> list[tuple[float, list[str], EmailMessage]]:
        """Wait until ``count`` mails name ``text``; fail with what arrived when they do not."""
        deadline = time.monotonic() + timeout_s
        with self.arrived:
            while len(self.about(text)) < count:
                left = deadline - time.monotonic()
                assert left > 0, (
                    f"{count} mails naming {text} expected; arrived: {[m[2]['Subject'] for m in self.mails]}"
                )
                self.arrived.wait(min(left, 1.0))
        return self.about(text)


@dataclass
class Stack:
    api_url: str
    relay_url: str
    inbox: Inbox
    env: dict[str, str]
    folder: Path
    logs: dict[str, Path]
    started: dict[str, Any] = field(default_factory=dict)


def _wait_http(
    url: str, what: str, procs: list[subprocess.Popen[bytes]], logs: list[Path], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs, strict=True):
            assert proc.poll() is None, f"{what}: a process ended; {log.read_text()[-3000:]}"
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} did not answer at {url}")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _run_state(api_url: str, run_id: str) -> dict[str, Any]:
    response = httpx.get(f"{api_url}/flow_runs/{run_id}", timeout=10)
    response.raise_for_status()
    state: dict[str, Any] = response.json()["state"]
    return state


def _seconds_after(mail_time: float, iso: str) -> float:
    """Seconds from a time the Prefect API reported to a mail's arrival (one machine, one clock)."""
    return mail_time - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _wait_state(api_url: str, run_id: str, name: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        state = _run_state(api_url, run_id)
        if state["name"] == name or time.monotonic() > deadline:
            assert state["name"] == name, state
            return state
        time.sleep(0.5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, sandbox: SandboxServer) -> Iterator[Stack]:
    """Prefect server, SMTP server, alert relay, a served 'sleepy' deployment, the alerts installed."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    folder = tmp_path_factory.mktemp("alerts")
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    prefect_port, relay_port = free_port(), free_port()
    api_url = f"http://127.0.0.1:{prefect_port}/api"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HAUSFLOW_"))}
    env = {
        **base,
        "PREFECT_HOME": str(folder / "prefect"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS": "PT1S",
        "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "1",
        "PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY": "PT1S",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "HAUSFLOW_PROFILE": "test",
        "HAUSFLOW_STATE_URL": f"sqlite:///{folder}/state.sqlite",
        "HAUSFLOW_MAIL__HOST": "127.0.0.1",
        "HAUSFLOW_MAIL__PORT": str(smtp.port),
        "HAUSFLOW_MAIL__SENDER": "hausflow@hv-mueller.example",
        "HAUSFLOW_ALERTS__RECIPIENTS": f'["{RECIPIENTS[0]}", "{RECIPIENTS[1]}"]',
        "HAUSFLOW_ALERTS__RELAY_PORT": str(relay_port),
        "HAUSFLOW_ALERTS__RELAY_TOKEN": TOKEN,
        "HAUSFLOW_ALERTS__NOT_STARTED_AFTER_S": f'{{"default": {THRESHOLD_S}}}',
        "HAUSFLOW_ALERTS__BLOCKED_AFTER_S": f'{{"default": {THRESHOLD_S}}}',
    }
    logs = {name: folder / f"{name}.log" for name in ("prefect", "relay", "served")}
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        with logs[name].open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        procs.append(proc)
        return proc

    try:
        start(
            "prefect", "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)
        )
        start("relay", "-m", "flows.alert_relay", "--profile", "test")
        relay_url = f"http://127.0.0.1:{relay_port}"
        _wait_http(f"{relay_url}/health", "the alert relay", procs, [logs["prefect"], logs["relay"]], 60)
        _wait_http(f"{api_url}/health", "the Prefect server", procs, [logs["prefect"], logs["relay"]], 180)
        start("served", "-m", "tests.alert_flows", "120")
        stack = Stack(api_url, relay_url, inbox, env, folder, logs)
        saved = {k: os.environ.get(k) for k in env if k.startswith("HAUSFLOW_ALERTS__")}
        os.environ.update({k: env[k] for k in saved})
        try:
            with temporary_settings(updates={PREFECT_API_URL: api_url}):
                stack.started["install"] = asyncio.run(install_alerts(load_settings("test"), WATCHED))
                yield stack
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    finally:
        _drain_prefect_workers()  # while this server still answers: else a later harness waits on it
        _stop(procs)
        smtp.stop()


def _drain_prefect_workers() -> None:
    """Send what Prefect's log and event workers still hold for this module's server, now.

    The flows run here in-process against this server's API; their workers keep the events. Left
    for the session's end, the test harness would drain them against a server that is gone and
    wait for ever.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30, at_exit=False)
    EventsWorker.drain_all(timeout=30, at_exit=False)


def _api(api: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST to the Prefect API; a busy SQLite server (503) is asked again, anything else fails loudly."""
    for _ in range(10):
        response = api.post(path, json=body)
        if response.status_code != 503:
            break
        time.sleep(1)
    assert response.status_code < 300, (path, response.status_code, response.text)
    answer: dict[str, Any] = response.json()
    return answer


def _deployment_id(api_url: str, name: str, timeout_s: float = 90) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.get(f"{api_url}/deployments/name/{name}", timeout=10)
        if response.status_code == 200:
            return str(response.json()["id"])
        assert time.monotonic() < deadline, f"deployment {name} never appeared"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def proactive_runs(stack: Stack) -> dict[str, str]:
    """A run of a deployment nothing serves, due now, and a run of the served 'sleepy' that blocks.

    Both start before the tests that wait for their mails, so the two waits overlap.
    """
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        flow_id = _api(api, "/flows/", {"name": "greet"})["id"]
        never = _api(
            api,
            "/deployments/",
            {"name": "never-served", "flow_id": flow_id, "entrypoint": "tests/admin_flows.py:greet"},
        )["id"]
        late = _api(api, f"/deployments/{never}/create_flow_run", {"state": {"type": "SCHEDULED"}})
        sleepy = _deployment_id(stack.api_url, "sleepy/alert-test")
        blocked = _api(api, f"/deployments/{sleepy}/create_flow_run", {})
    return {
        "late": late["id"],
        "late_name": late["name"],
        "blocked": blocked["id"],
        "blocked_name": blocked["name"],
    }


def _subject(message: EmailMessage) -> str:
    """The subject as one line (a long one arrives folded)."""
    return " ".join(str(message["Subject"]).split())


def _check_mails(
    mails: list[tuple[float, list[str], EmailMessage]], run_id: str, run_name: str, stack: Stack
) -> list[str]:
    """One mail per recipient, each naming the run and its link; their texts."""
    assert sorted(to for _t, rcpt, _m in mails for to in rcpt) == sorted(RECIPIENTS)
    texts = []
    for _t, _rcpt, message in mails:
        text = message.get_content().replace("\r\n", "\n")
        assert run_name in _subject(message) and run_name in text
        link = f"{stack.api_url.removesuffix('/api')}/runs/flow-run/{run_id}"
        assert f"Link:        {link}" in text, text
        texts.append(text)
    assert texts[0] == texts[1], "both recipients read the same alert"
    return texts


def test_the_alerts_are_installed_once_and_updated_in_place(stack: Stack) -> None:
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    first = stack.started["install"]
    expected = {FAILED_NAME} | {
        f"{PREFIX}{f}/{d} {kind}" for f, d in WATCHED for kind in ("not started", "blocked")
    }

    async def installed() -> list[str]:
        async with get_client() as client:
            return [a.name for a in await client.read_automations() if a.name.startswith(PREFIX)]

    with temporary_settings(updates={PREFECT_API_URL: stack.api_url}):
        assert set(first.created) == expected and not first.updated and not first.deleted
        again = asyncio.run(install_alerts(load_settings("test"), WATCHED))
        assert set(again.unchanged) == expected and not (again.created or again.updated or again.deleted)
        # a threshold changed and one deployment gone: updated and deleted, never duplicated
        os.environ["HAUSFLOW_ALERTS__BLOCKED_AFTER_S"] = f'{{"default": {THRESHOLD_S + 5}}}'
        try:
            changed = asyncio.run(install_alerts(load_settings("test"), [*WATCHED, ("greet", "extra")]))
            assert set(changed.updated) == {f"{PREFIX}{f}/{d} blocked" for f, d in WATCHED}
            assert set(changed.created) == {
                f"{PREFIX}greet/extra not started",
                f"{PREFIX}greet/extra blocked",
            }
        finally:
            os.environ["HAUSFLOW_ALERTS__BLOCKED_AFTER_S"] = f'{{"default": {THRESHOLD_S}}}'
        back = asyncio.run(install_alerts(load_settings("test"), WATCHED))
        assert set(back.deleted) == {f"{PREFIX}greet/extra not started", f"{PREFIX}greet/extra blocked"}
        names = asyncio.run(installed())
    assert sorted(names) == sorted(expected), "each alert once"


def test_the_relay_refuses_calls_without_its_token_and_mails_an_event_once(
    stack: Stack, proactive_runs: dict[str, str]
) -> None:
    """(Also starts the late and the blocking run, after the install test changed no more triggers.)"""
    alert = {
        "kind": "failed",
        "event_id": "evt-relay-test",
        "flow_run_id": "run-relay-test",
        "state": "Crashed",
    }
    assert httpx.post(f"{stack.relay_url}/alerts", json=alert, timeout=10).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bad = httpx.post(f"{stack.relay_url}/alerts", json={"kind": "exploded"}, headers=auth, timeout=10)
    assert bad.status_code == 422
    for expected in ("accepted", "duplicate"):  # Prefect delivering the same event twice
        answer = httpx.post(f"{stack.relay_url}/alerts", json=alert, headers=auth, timeout=10)
        assert answer.status_code == 202 and answer.json()["status"] == expected
    mails = stack.inbox.wait("run-relay-test", 2, 30)
    time.sleep(1)
    assert len(stack.inbox.about("run-relay-test")) == 2, "one mail per recipient, once"
    assert "Quarantine:  not known" in mails[0][2].get_content()  # no such run in the state store
    listed = httpx.get(f"{stack.relay_url}/alerts", headers=auth, timeout=10).json()
    assert [a["status"] for a in listed if a["event_id"] == "evt-relay-test"] == ["sent"]


@pytest.fixture(scope="module")
def portal_runs(
    stack: Stack, sandbox: SandboxServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Two portal syncs on this Prefect server: one completes with records in quarantine, the next
    fails (the portal refuses a contact) with records in quarantine."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    folder = tmp_path_factory.mktemp("alert-erp")
    erp_url = f"sqlite:///{folder}/erp.sqlite"
    engine = make_engine(erp_url)
    demo.generate_erp(engine, persons=100, seed=7, business_date=BUSINESS_DATE)
    _plant_bad_rows(engine)
    sandbox.reset()
    state_url = stack.env["HAUSFLOW_STATE_URL"]
    with (
        temporary_settings(updates={PREFECT_API_URL: stack.api_url}),
        portal_env(sandbox, erp_url, state_url),
    ):
        completed = run_portal_sync(profile="test")
        # someone anonymised a contact in the portal; a change of it in the ERP is then refused
        person_no = GOOD_BUT_CLEANED["email"]
        with httpx.Client(base_url=sandbox.base_url) as api:
            token = api.post("/v2/authenticate", json={"key": sandbox.key, "secret": sandbox.secret}).json()[
                "token"
            ]
            assert (
                api.post(f"/v2/contacts/{person_no}/anonymize", headers={"token": token}).status_code == 200
            )
        with engine.begin() as conn:
            conn.execute(
                update(schema.persons).where(schema.persons.c.person_no == person_no).values(phone="+49 1")
            )
        with pytest.raises(RuntimeError, match="portal writes failed"):
            run_portal_sync(profile="test")
    store = StateStore(state_url)
    with store.engine.connect() as conn:
        from sqlalchemy import select

        from connectors.state_store import sync_runs

        runs = conn.execute(
            select(sync_runs.c.run_id, sync_runs.c.status).order_by(sync_runs.c.started_at)
        ).all()
    failed_run = runs[-1].run_id
    assert runs[-1].status == "COMPLETED_WITH_FAILURES" and failed_run != completed["run_id"]
    return {"completed": completed, "failed_run": failed_run, "store": store}


def test_a_failed_run_is_mailed_to_both_recipients_with_its_quarantine_count(
    stack: Stack, portal_runs: dict[str, Any]
) -> None:
    run_id = portal_runs["failed_run"]
    mails = stack.inbox.wait(run_id, 2, 30)
    run = httpx.get(f"{stack.api_url}/flow_runs/{run_id}", timeout=10).json()
    print(f"failure mail {_seconds_after(mails[-1][0], run['end_time']):.1f} s after the run failed")
    assert run["state"]["type"] == "FAILED"
    (text, _) = _check_mails(mails, run_id, run["name"], stack)
    assert _subject(mails[0][2]) == f"hausflow: portal-sync - run {run['name']} Failed"
    assert f"The run {run['name']} of portal-sync ended Failed." in text
    assert "Flow:        portal-sync\n" in text
    assert f"Run:         {run['name']} (id {run_id})" in text
    assert "State:       Failed: " in text and "portal writes failed" in text
    # the count the run's protocol recorded (the planted bad rows and the refused contact)
    summary = portal_runs["store"].engine
    with summary.connect() as conn:
        from sqlalchemy import text as sql

        quarantined = conn.execute(
            sql("SELECT count(*) FROM protocol WHERE run_id = :r AND outcome = 'quarantined'"), {"r": run_id}
        ).scalar_one()
    assert quarantined >= len(BAD)
    assert f"Quarantine:  {quarantined} records quarantined in this run" in text, text


def test_a_completed_run_with_records_in_quarantine_is_no_alert(
    stack: Stack, portal_runs: dict[str, Any]
) -> None:
    completed = portal_runs["completed"]
    assert completed["quarantined"] >= len(BAD) and completed["failed"] == 0, (
        "the run completed, holding records"
    )
    stack.inbox.wait(portal_runs["failed_run"], 2, 30)  # the later run's alert arrived: this one's would have
    time.sleep(2)
    assert stack.inbox.about(completed["run_id"]) == []
    assert _run_state(stack.api_url, completed["run_id"])["type"] == "COMPLETED"


def test_a_run_that_never_starts_is_mailed_as_not_started(
    stack: Stack, proactive_runs: dict[str, str]
) -> None:
    run_id = proactive_runs["late"]
    late = _wait_state(stack.api_url, run_id, "Late", 30)
    mails = stack.inbox.wait(run_id, 2, THRESHOLD_S + 30)
    print(
        f"'not started' mail {_seconds_after(mails[-1][0], late['timestamp']):.1f} s after the run became late"
    )
    (text, _) = _check_mails(mails, run_id, proactive_runs["late_name"], stack)
    assert (
        _subject(mails[0][2])
        == f"hausflow: greet/never-served - run {proactive_runs['late_name']} has not started"
    )
    assert f"has not started {THRESHOLD_S} s after Prefect marked it late" in text
    assert "Deployment:  never-served\n" in text and "State:       Late" in text
    assert _run_state(stack.api_url, run_id)["name"] == "Late", "still waiting: nothing serves it"
    assert late["type"] == "SCHEDULED"


def test_a_run_that_blocks_is_mailed_as_blocked(stack: Stack, proactive_runs: dict[str, str]) -> None:
    run_id = proactive_runs["blocked"]
    _wait_state(stack.api_url, run_id, "Running", 60)
    mails = stack.inbox.wait(run_id, 2, THRESHOLD_S + 30)
    started = httpx.get(f"{stack.api_url}/flow_runs/{run_id}", timeout=10).json()["start_time"]
    print(f"'blocked' mail {_seconds_after(mails[-1][0], started):.1f} s after the run started")
    (text, _) = _check_mails(mails, run_id, proactive_runs["blocked_name"], stack)
    assert (
        _subject(mails[0][2]) == f"hausflow: sleepy/alert-test - run {proactive_runs['blocked_name']} blocked"
    )
    assert f"is still running {THRESHOLD_S} s later (alerts.blocked_after_s)" in text
    assert "State:       Running" in text
    assert _run_state(stack.api_url, run_id)["name"] == "Running"
    # the served runs that went as they should were no alert of any kind
    assert all("has not started" not in _subject(m[2]) for m in stack.inbox.about(run_id))


def test_alerts_install_command_reports_what_it_did(stack: Stack) -> None:
    env = {**stack.env, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "flows.admin", "alerts", "install", "--profile", "test"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    # every deployment on the server: the two watched ones are as they were
    assert f"Webhook block hausflow-alert-relay -> {stack.relay_url}/alerts" in done.stdout
    assert "Deployments watched: greet/never-served, sleepy/alert-test" in done.stdout
    assert "0 created, 0 updated, 5 unchanged, 0 deleted" in done.stdout, done.stdout
    assert f"Recipients (alerts.recipients, read by the relay): {', '.join(RECIPIENTS)}" in done.stdout
    assert done.stderr == "", "the relay answers and recipients are set: no warning"
