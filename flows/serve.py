"""The main command (``./hausflow up``): everything on embedded defaults, on one machine.

Starts a local Prefect server (SQLite, UI at http://127.0.0.1:4200), the portal sandbox, seeds
a SQLite ERP with deterministic demo data (once), serves the deployments (portal sync every
5 minutes, concurrency 1, an overlapping run is cancelled) and triggers a first portal sync.
Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from unittest import mock

import httpx

ROOT = Path(__file__).resolve().parent.parent
# Where the demo databases, the Prefect server's home and the logs live (HAUSFLOW_VAR_DIR: elsewhere).
VAR = Path(os.environ.get("HAUSFLOW_VAR_DIR") or ROOT / "var").resolve()


def _wait_http(url: str, what: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} stopped at start (exit code {proc.returncode}); see {VAR}/logs")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{what} did not answer at {url} within {timeout_s:.0f} s; see {VAR}/logs")


def _start(cmd: list[str], log_name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    (VAR / "logs").mkdir(parents=True, exist_ok=True)
    log = open(VAR / "logs" / log_name, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _shown(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _terminate(_runner: Any, *_args: Any, **_kwargs: Any) -> None:
    """SIGTERM while the deployments are served: stop the runner as on Ctrl-C."""
    from prefect.exceptions import TerminationSignal

    raise TerminationSignal(signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    """Start the local stack and serve the deployments until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="./hausflow up", description=__doc__)
    parser.add_argument("--persons", type=int, default=2000, help="size of the demo ERP (first start only)")
    parser.add_argument(
        "--prefect-port", type=int, default=int(os.environ.get("HAUSFLOW_PREFECT_PORT", "4200"))
    )
    parser.add_argument("--sandbox-port", type=int, default=8765)
    parser.add_argument("--no-first-run", action="store_true", help="do not trigger a portal sync at start")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    env.setdefault("HAUSFLOW_PROFILE", "demo")
    env["HAUSFLOW_PORTAL__BASE_URL"] = f"http://127.0.0.1:{args.sandbox_port}"
    env["PREFECT_HOME"] = str(VAR / "prefect")
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{args.prefect_port}/api"
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"] = "events,flow_runs"
    env["PREFECT_UI_API_URL"] = env["PREFECT_API_URL"]
    env["GX_ANALYTICS_ENABLED"] = "false"
    os.environ.update(env)

    from config.settings import load_settings

    settings = load_settings(env["HAUSFLOW_PROFILE"])
    for key, url in (("HAUSFLOW_ERP_URL", settings.erp_url), ("HAUSFLOW_STATE_URL", settings.state_url)):
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            env[key] = f"sqlite:///{ROOT / url.removeprefix('sqlite:///')}"  # absolute for every process
    os.environ.update(env)
    settings = load_settings(env["HAUSFLOW_PROFILE"])
    procs: list[subprocess.Popen[bytes]] = []

    def shutdown(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, shutdown)
    try:
        print(f"Starting the Prefect server on port {args.prefect_port} ...", flush=True)
        server = _start(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(args.prefect_port),
            ],
            "prefect-server.log",
            env,
        )
        procs.append(server)
        print(f"Starting the portal sandbox on port {args.sandbox_port} ...", flush=True)
        sandbox = _start(
            [
                sys.executable,
                "-m",
                "sandbox.portal",
                "--host",
                "127.0.0.1",
                "--port",
                str(args.sandbox_port),
                "--db",
                f"sqlite:///{VAR}/demo/portal-sandbox.sqlite",
                "--key",
                settings.portal.api_key.get_secret_value(),
                "--secret",
                settings.portal.api_secret.get_secret_value(),
            ],
            "portal-sandbox.log",
            env,
        )
        procs.append(sandbox)

        from connectors.erp.database import make_engine
        from connectors.sqlutil import sqlite_file

        erp_file = sqlite_file(settings.erp_url)
        erp_path = Path(erp_file or ".").resolve()
        if erp_file and not erp_path.exists():
            from connectors.erp.demo import generate_erp

            print(
                f"Seeding the demo ERP ({args.persons:,} persons) at {_shown(erp_path)} ...",
                flush=True,
            )
            engine = make_engine(settings.erp_url)
            generate_erp(engine, persons=args.persons, seed=42)
            engine.dispose()

        _wait_http(f"http://127.0.0.1:{args.sandbox_port}/openapi.json", "The portal sandbox", 60, sandbox)
        _wait_http(f"http://127.0.0.1:{args.prefect_port}/api/health", "The Prefect server", 180, server)

        from prefect import serve
        from prefect.deployments import run_deployment
        from prefect.runner import Runner

        deployments = build_deployments(env["HAUSFLOW_PROFILE"])

        if not args.no_first_run:

            def first_run() -> None:
                for _ in range(60):
                    try:
                        run: Any = run_deployment("portal-sync/every-5-minutes", timeout=0)
                        print(f"First portal sync started: flow run {run.name} ({run.id}).", flush=True)
                        return
                    except Exception:
                        time.sleep(1)

            threading.Thread(target=first_run, daemon=True).start()

        print(
            "\nhausflow is up.\n"
            f"  Prefect UI (flow runs, logs, protocol artifacts): http://127.0.0.1:{args.prefect_port}\n"
            f"  Portal sandbox (what arrived):                  http://127.0.0.1:{args.sandbox_port}/\n"
            f"  Sandbox API spec:                                http://127.0.0.1:{args.sandbox_port}/docs\n"
            f"  Logs of the servers:                             {_shown(VAR / 'logs')}/\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        # Prefect's runner puts its own SIGTERM handler in place when it starts; in prefect 3.8.8
        # that handler leaves the runner's stop unawaited (a RuntimeWarning) and exits past this
        # function's report. Raising Prefect's own termination signal instead makes SIGTERM
        # (a service manager's stop) end the served runner as Ctrl-C does.
        with mock.patch.object(Runner, "handle_sigterm", _terminate):
            serve(*deployments, print_starting_message=False)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        print("\nStopping ...", flush=True)
    finally:
        for proc in reversed(procs):
            _stop(proc)
    print("Stopped.", flush=True)
    return 0


def build_deployments(profile: str) -> list[Any]:
    """The served deployments: the portal sync every 5 minutes, the SEPA flows on demand.

    Each has a concurrency limit of 1 that cancels a run overlapping a running one. The SEPA
    flows take their profile from ``HAUSFLOW_PROFILE``; a debit run defaults to a dry run, which
    stops after the control listing.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    from flows.bank_reconciliation import import_bank_statement
    from flows.portal_sync import portal_sync
    from flows.sepa_debit import sepa_debit_run

    once = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    return [
        portal_sync.to_deployment(
            name="every-5-minutes",
            interval=timedelta(minutes=5),
            concurrency_limit=once,
            parameters={"profile": profile},
            tags=["portal"],
            description="Tenant-portal sync of master data (objects, units, persons, owners, caretakers).",
        ),
        sepa_debit_run.to_deployment(
            name="on-demand", parameters={"dry_run": True}, concurrency_limit=once, tags=["sepa"]
        ),
        import_bank_statement.to_deployment(name="on-demand", concurrency_limit=once, tags=["sepa"]),
    ]


if __name__ == "__main__":
    raise SystemExit(main())
