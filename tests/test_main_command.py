"""The main command (``./hausflow up``) as a process: it comes up, and SIGTERM, as a service
manager sends it, stops it and everything it started, with its closing report; ``./hausflow
status`` sees what it started; when one of its servers dies it says which and stops everything."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from connectors.licence import MODULES, load_public_key, read_licence
from flows.serve import RUNNER_STOP_GRACE_S
from sandbox.portal.server import free_port

ROOT = Path(__file__).resolve().parent.parent


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class MainCommand:
    """``python -m flows.serve`` as a process, with its output as it arrives."""

    proc: subprocess.Popen[str]
    prefect_port: int
    sandbox_port: int
    deposit_port: int
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)


@contextmanager
def main_command(tmp_path: Path) -> Iterator[MainCommand]:
    """Start the main command (no first run, 100 persons) on free ports; yield it once it is up."""
    prefect_port, sandbox_port, deposit_port, mail_port = free_port(), free_port(), free_port(), free_port()
    alert_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HAUSFLOW_"))}
    env.update(
        {
            "HAUSFLOW_VAR_DIR": str(tmp_path / "var"),
            "HAUSFLOW_ERP_URL": f"sqlite:///{tmp_path}/erp.sqlite",
            "HAUSFLOW_STATE_URL": f"sqlite:///{tmp_path}/state.sqlite",
        }
    )
    command = [sys.executable, "-m", "flows.serve", "--no-first-run", "--persons", "100"]
    command += ["--prefect-port", str(prefect_port), "--sandbox-port", str(sandbox_port)]
    command += [
        "--deposit-port",
        str(deposit_port),
        "--mail-port",
        str(mail_port),
        "--alert-port",
        str(alert_port),
    ]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    main = MainCommand(proc, prefect_port, sandbox_port, deposit_port, env)
    reader = threading.Thread(target=lambda: main.lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not any("hausflow is up" in line for line in main.lines):
            assert proc.poll() is None, main.output
            assert time.monotonic() < deadline, main.output
            time.sleep(0.5)
        time.sleep(3)  # the runner serves the deployments by now
        assert _listening(prefect_port) and _listening(sandbox_port) and _listening(deposit_port)
        yield main
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for child in _leftovers(prefect_port, sandbox_port, deposit_port, mail_port, alert_port):
            child.kill()
        reader.join(timeout=10)


def _leftovers(*ports: int) -> list[psutil.Process]:
    """Processes still listening on the main command's ports (none, when it stopped them)."""
    found = []
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port in ports and conn.pid:
            found.append(psutil.Process(conn.pid))
    return found


def test_sigterm_stops_the_main_command_and_what_it_started(tmp_path: Path) -> None:
    with main_command(tmp_path) as main:
        # the demo licence: every module, signed with the demo vendor key, shown by ./hausflow licence
        folder = tmp_path / "var" / "demo" / "licence"
        licence = read_licence(
            folder / "hausflow-demo.lic.toml", load_public_key((folder / "demo-vendor.pub").read_text())
        )
        assert licence.modules == set(MODULES) and licence.signature.startswith("valid")
        assert "Made the demo licence" in main.output
        shown = subprocess.run(
            [sys.executable, "-m", "flows.admin", "licence"],
            cwd=ROOT,
            env=main.env,
            capture_output=True,
            text=True,
        )
        assert shown.returncode == 0 and licence.number in shown.stdout, shown.stdout + shown.stderr
        assert "valid (Ed25519" in shown.stdout and "yes  sepa" in shown.stdout
        main.proc.send_signal(signal.SIGTERM)
        assert main.proc.wait(timeout=90) == 0
    output = main.output
    assert "Stopped." in output, output
    # the failure alerts are on the Prefect server: one for failures, two per served deployment
    assert (
        "Failure alerts (mailed to admin@hv-demo.de, vertretung@hv-demo.de): " in output  # the demo profile's
    ), output
    assert "15 Prefect automations, relay http://127.0.0.1:" in output, output  # seven served deployments
    assert "never awaited" not in output, output
    assert "stopped unexpectedly" not in output, output
    assert not _listening(main.prefect_port) and not _listening(main.sandbox_port)
    assert not _listening(main.deposit_port)
    assert (tmp_path / "var" / "logs" / "prefect-server.log").exists()
    assert not (tmp_path / "var" / "up.json").exists()


@pytest.mark.parametrize(
    ("server", "what", "log"),
    [
        ("sandbox.portal", "The portal sandbox", "portal-sandbox.log"),
        ("sandbox.deposit", "The deposit sandbox", "deposit-sandbox.log"),
        ("prefect", "The Prefect server", "prefect-server.log"),
    ],
)
def test_a_dead_server_is_reported_and_everything_stops_with_exit_code_1(
    tmp_path: Path, server: str, what: str, log: str
) -> None:
    with main_command(tmp_path) as main:
        if server == "sandbox.portal":
            # while everything runs, ./hausflow status finds it all from the main command's record
            status = subprocess.run(
                [sys.executable, "-m", "flows.admin", "status"],
                cwd=ROOT,
                env={k: v for k, v in main.env.items() if k != "HAUSFLOW_STATE_URL"},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert status.returncode == 0, status.stderr
            assert f"./hausflow up     running (process {main.proc.pid}" in status.stdout
            assert f"http://127.0.0.1:{main.prefect_port}/api (./hausflow up): running" in status.stdout
            assert f"Portal sandbox    http://127.0.0.1:{main.sandbox_port}: running" in status.stdout
            assert f"Deposit sandbox   http://127.0.0.1:{main.deposit_port}: running" in status.stdout
            assert "portal-sync/every-5-minutes" in status.stdout and "every 5 minutes" in status.stdout
            assert f"State store sqlite:///{tmp_path}/state.sqlite (profile demo)" in status.stdout
        record = json.loads((tmp_path / "var" / "up.json").read_text())
        assert record["pid"] == main.proc.pid
        children = psutil.Process(main.proc.pid).children()
        (victim,) = [c for c in children if c.cmdline()[2] == server]
        with (tmp_path / "var" / "logs" / log).open("a") as server_log:  # as if the server said why
            server_log.write(f"last words of {server}\n\n")
        killed = time.monotonic()
        victim.kill()
        assert main.proc.wait(timeout=60) == 1, main.output
        took = time.monotonic() - killed
    if server == "prefect":  # the runner cannot stop cleanly without its API: no grace period is waited
        assert took < RUNNER_STOP_GRACE_S - 3, (took, main.output)
    output = main.output
    assert f"{what} stopped unexpectedly (killed by signal SIGKILL)." in output, output
    report = output[output.index(f"{what} stopped unexpectedly") :]
    assert f"Last lines of {tmp_path}/var/logs/{log}:\n" in report, output
    assert f"\n  last words of {server}\nhausflow stops everything else." in report, output
    assert "start ./hausflow up again" in report
    assert output.rstrip().endswith("Stopped."), output
    assert not _listening(main.prefect_port) and not _listening(main.sandbox_port)
    assert not _listening(main.deposit_port)
    assert not (tmp_path / "var" / "up.json").exists()
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
