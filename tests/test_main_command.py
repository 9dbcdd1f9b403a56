"""The main command (``./hausflow up``) as a process: it comes up, and SIGTERM, as a service
manager sends it, stops it and everything it started, with its closing report."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from sandbox.portal.server import free_port

ROOT = Path(__file__).resolve().parent.parent


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_stops_the_main_command_and_what_it_started(tmp_path: Path) -> None:
    prefect_port, sandbox_port = free_port(), free_port()
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
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not any("hausflow is up" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.5)
        time.sleep(3)  # the runner serves the deployments by now
        assert _listening(prefect_port) and _listening(sandbox_port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    output = "".join(lines)
    assert "Stopped." in output, output
    assert "never awaited" not in output, output
    assert not _listening(prefect_port) and not _listening(sandbox_port)
    assert (tmp_path / "var" / "logs" / "prefect-server.log").exists()
