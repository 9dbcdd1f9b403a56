"""The main command (``./hausflow up``): everything on embedded defaults, on one machine.

Starts a local Prefect server (SQLite, UI at http://127.0.0.1:4200), the portal sandbox, an SMTP
server whose mails land in var/demo/mail, the alert relay (failure alerts by e-mail), seeds
a SQLite ERP with deterministic demo data (once), creates the failure alerts (Prefect automations, flows/alerts.py), serves the
deployments (portal sync every 5 minutes, concurrency 1, an overlapping run is cancelled) and
triggers a first portal sync.
Ctrl-C stops everything cleanly; so does SIGTERM. When one of the servers dies, the command says
which, shows the end of its log and stops everything else with exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from unittest import mock
from zoneinfo import ZoneInfo

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
# Where the demo databases, the Prefect server's home and the logs live (HAUSFLOW_VAR_DIR: elsewhere).
VAR = Path(os.environ.get("HAUSFLOW_VAR_DIR") or ROOT / "var").resolve()
# What a running main command started, for ``./hausflow status`` and the other admin commands.
UP_RECORD = "up.json"
LOG_TAIL_LINES = 20
# Where the demo's failure alerts go (the demo SMTP server keeps them in var/demo/mail) when the
# profile names no recipients.
DEMO_ALERT_RECIPIENTS = '["betrieb@hausverwaltung.localhost", "bereitschaft@hausverwaltung.localhost"]'
# How long the served runner may take to stop cleanly after a server died, before everything is
# stopped without it (see ServerWatch).
RUNNER_STOP_GRACE_S = 15.0
# The daily credential-expiry check (Europe/Berlin, as in prefect.yaml).
EXPIRY_CRON = "0 7 * * *"


@dataclass(frozen=True)
class Server:
    """A server the main command started as a child process, with the log it writes."""

    what: str
    proc: subprocess.Popen[bytes]
    log: Path
    # the served runner cannot stop cleanly without it (it pauses its schedules through the API)
    runner_needs_it: bool = False


class ServerDied(Exception):
    """A server the main command started has exited while it should be running."""

    def __init__(self, server: Server) -> None:
        super().__init__(f"{server.what} stopped ({exit_description(server.proc.returncode)})")
        self.server = server


def exit_description(returncode: int | None) -> str:
    """``exit code 3`` or ``killed by signal SIGKILL``, as a person reads it."""
    if returncode is not None and returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a log file that are not blank (nothing if it is missing)."""
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 64 * 1024))
            text = log.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def _report_death(server: Server) -> None:
    """Say which server died, how, and the end of its log; then what to do."""
    tail = log_tail(server.log)
    print(
        f"\n{server.what} stopped unexpectedly ({exit_description(server.proc.returncode)}).",
        file=sys.stderr,
    )
    if tail:
        print(f"Last lines of {_shown(server.log)}:", file=sys.stderr)
        for line in tail:
            print(f"  {line}", file=sys.stderr)
        what_to_do = "Fix what its log names, then start ./hausflow up again."
    else:
        what_to_do = (
            f"Its log {_shown(server.log)} names no cause (a process killed from outside, e.g. by the "
            "kernel when memory ran out, leaves none); start ./hausflow up again."
        )
    print(f"hausflow stops everything else. {what_to_do}", file=sys.stderr, flush=True)


class ServerWatch:
    """Watches the servers while the deployments are served, so a dead API is not served on.

    When a server exits, the watch remembers it and sends the main command SIGTERM, which ends
    the served runner as a service manager's stop does; the main command then reports the death,
    stops the other servers and exits with code 1. The runner's clean stop needs the Prefect API
    (it pauses its schedules there, retrying for over a minute when the API is gone); so when the
    Prefect server died, or the runner has not stopped within ``grace_s``, the watch calls
    ``stop_now`` instead, which stops everything from this thread and ends the process.
    Once :meth:`stop` has been called (the main command stops the servers itself) the watch
    reports nothing more.
    """

    def __init__(
        self,
        servers: list[Server],
        stop_now: Callable[[Server], None],
        interval_s: float = 1.0,
        grace_s: float = RUNNER_STOP_GRACE_S,
    ) -> None:
        self.servers = servers
        self.stop_now = stop_now
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.died: Server | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="hausflow-server-watch", daemon=True)

    def start(self) -> None:
        """Start watching in a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (before the servers are stopped on purpose).

        Blocks while the watch is stopping everything itself (that ends the process).
        """
        with self._lock:
            self._stopping.set()

    def _watch(self) -> None:
        dead: Server | None = None
        while dead is None:
            if self._stopping.wait(self.interval_s):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                dead = next((s for s in self.servers if s.proc.poll() is not None), None)
                if dead is not None:
                    self.died = dead
                    if not dead.runner_needs_it:
                        os.kill(os.getpid(), signal.SIGTERM)
        if not dead.runner_needs_it and self._stopping.wait(self.grace_s):
            return  # the main command stops the rest and reports
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            self.stop_now(dead)


def _wait_http(url: str, what: str, timeout_s: float, servers: list[Server]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for server in servers:
            if server.proc.poll() is not None:
                raise ServerDied(server)
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{what} did not answer at {url} within {timeout_s:.0f} s; see {_shown(VAR / 'logs')}/")


def _start(
    what: str, cmd: list[str], log_name: str, env: dict[str, str], runner_needs_it: bool = False
) -> Server:
    (VAR / "logs").mkdir(parents=True, exist_ok=True)
    log_path = VAR / "logs" / log_name
    log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    return Server(what, proc, log_path, runner_needs_it)


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a server and whatever it started (its process group), also when it died itself."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:  # the group is gone with its leader
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def absolute_sqlite_url(url: str) -> str:
    """A relative SQLite URL (``sqlite:///var/...``) made absolute against the repository.

    Why: the main command's processes (servers, flow runs) and the admin commands must all open the
    same file, whatever their working directory. Other URLs are returned unchanged.
    """
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return f"sqlite:///{ROOT / url.removeprefix('sqlite:///')}"
    return url


def _has_password(url: str) -> bool:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password is not None
    except Exception:  # not a URL SQLAlchemy knows: keep it out of the record
        return True


def write_up_record(var: Path, record: dict[str, Any]) -> Path:
    """Leave what the main command started in ``var/up.json`` (replaced atomically)."""
    var.mkdir(parents=True, exist_ok=True)
    path = var / UP_RECORD
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_up_record(var: Path | None = None) -> dict[str, Any] | None:
    """What a running ``./hausflow up`` of ``var`` started, or None when none is running.

    A record whose process has ended (killed without a chance to remove it) counts as none;
    the process is recognised by its id and its start time, so a reused process id does not fool it.
    """
    path = (var or VAR) / UP_RECORD
    try:
        record: dict[str, Any] = json.loads(path.read_text())
        proc = psutil.Process(int(record["pid"]))
        if abs(proc.create_time() - float(record["process_started"])) > 1:
            return None
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None
    return record


def _remove_up_record() -> None:
    path = VAR / UP_RECORD
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _shown(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _terminate(_runner: Any, *_args: Any, **_kwargs: Any) -> None:
    """SIGTERM while the deployments are served: stop the runner as on Ctrl-C."""
    from prefect.exceptions import TerminationSignal

    raise TerminationSignal(signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    """Start the local stack and serve the deployments until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="./hausflow up",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="HAUSFLOW_VAR_DIR puts var/ (demo databases, Prefect home, logs) elsewhere;\n"
        "HAUSFLOW_ERP_URL and HAUSFLOW_STATE_URL point at other databases.",
    )
    parser.add_argument(
        "--persons",
        type=int,
        default=2000,
        help="size of the demo ERP, seeded on the first start only (default: %(default)s)",
    )
    parser.add_argument(
        "--prefect-port",
        type=int,
        default=int(os.environ.get("HAUSFLOW_PREFECT_PORT", "4200")),
        help="port of the Prefect server and UI on 127.0.0.1 (default: %(default)s, or HAUSFLOW_PREFECT_PORT)",
    )
    parser.add_argument(
        "--sandbox-port",
        type=int,
        default=8765,
        help="port of the portal sandbox on 127.0.0.1 (default: %(default)s)",
    )
    parser.add_argument(
        "--deposit-port",
        type=int,
        default=8766,
        help="port of the rent-deposit partner's sandbox on 127.0.0.1 (default: %(default)s)",
    )
    parser.add_argument(
        "--mail-port",
        type=int,
        default=8025,
        help="port of the demo's SMTP server on 127.0.0.1; its mails land in var/demo/mail (default: %(default)s)",
    )
    parser.add_argument(
        "--alert-port",
        type=int,
        default=8790,
        help="port of the alert relay on 127.0.0.1, which Prefect's failure alerts call (default: %(default)s)",
    )
    parser.add_argument("--no-first-run", action="store_true", help="do not trigger a portal sync at start")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    env.setdefault("HAUSFLOW_PROFILE", "demo")
    env["HAUSFLOW_PORTAL__BASE_URL"] = f"http://127.0.0.1:{args.sandbox_port}"
    env["HAUSFLOW_DEPOSIT__BASE_URL"] = f"http://127.0.0.1:{args.deposit_port}/ws"
    env.setdefault("HAUSFLOW_MAIL__HOST", "127.0.0.1")
    env.setdefault("HAUSFLOW_MAIL__PORT", str(args.mail_port))
    env["PREFECT_HOME"] = str(VAR / "prefect")
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{args.prefect_port}/api"
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"] = "events,flow_runs"
    env["PREFECT_UI_API_URL"] = env["PREFECT_API_URL"]
    env["GX_ANALYTICS_ENABLED"] = "false"
    os.environ.update(env)

    from config.settings import load_settings

    settings = load_settings(env["HAUSFLOW_PROFILE"])
    env["HAUSFLOW_ALERTS__RELAY_HOST"] = "127.0.0.1"
    env["HAUSFLOW_ALERTS__RELAY_PORT"] = str(args.alert_port)
    # a new shared secret per start: the relay requires it, the Webhook block sends it
    env.setdefault("HAUSFLOW_ALERTS__RELAY_TOKEN", secrets.token_urlsafe(24))
    if not settings.alerts.recipients:
        env["HAUSFLOW_ALERTS__RECIPIENTS"] = DEMO_ALERT_RECIPIENTS
    for key, url in (("HAUSFLOW_ERP_URL", settings.erp_url), ("HAUSFLOW_STATE_URL", settings.state_url)):
        env[key] = absolute_sqlite_url(url)  # the same file for every process
    os.environ.update(env)
    settings = load_settings(env["HAUSFLOW_PROFILE"])
    licence_text = _demo_licence(env, settings)
    os.environ.update(env)
    settings = load_settings(env["HAUSFLOW_PROFILE"])
    servers: list[Server] = []

    def stop_now(died: Server) -> None:
        """A server died and the runner cannot stop cleanly: stop everything from here and exit."""
        _report_death(died)
        for each in reversed(servers):
            _stop(each.proc)
        for child in psutil.Process().children(recursive=True):  # the runner's flow runs
            with contextlib.suppress(psutil.Error):
                child.kill()
        _remove_up_record()
        print("Stopped.", flush=True)
        sys.stderr.flush()
        os._exit(1)

    watch = ServerWatch(servers, stop_now)
    prefect_ui = f"http://127.0.0.1:{args.prefect_port}"
    sandbox_url = f"http://127.0.0.1:{args.sandbox_port}"
    deposit_url = f"http://127.0.0.1:{args.deposit_port}"
    relay_url = f"http://127.0.0.1:{args.alert_port}"

    def shutdown(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, shutdown)
    died: Server | None = None
    try:
        print(f"Starting the Prefect server on port {args.prefect_port} ...", flush=True)
        server = _start(
            "The Prefect server",
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
            runner_needs_it=True,
        )
        servers.append(server)
        print(f"Starting the portal sandbox on port {args.sandbox_port} ...", flush=True)
        sandbox = _start(
            "The portal sandbox",
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
        servers.append(sandbox)
        print(f"Starting the deposit partner's sandbox on port {args.deposit_port} ...", flush=True)
        deposit = _start(
            "The deposit sandbox",
            [
                sys.executable,
                "-m",
                "sandbox.deposit",
                "--host",
                "127.0.0.1",
                "--port",
                str(args.deposit_port),
                "--db",
                str(VAR / "demo" / "deposit-sandbox.sqlite"),
                "--key",
                settings.deposit.client_username,
                "--secret",
                settings.deposit.password.get_secret_value(),
            ],
            "deposit-sandbox.log",
            env,
        )
        servers.append(deposit)
        print(f"Starting the demo's SMTP server on port {args.mail_port} ...", flush=True)
        mail = _start(
            "The demo's SMTP server",
            [
                sys.executable,
                "-m",
                "sandbox.mail",
                "--port",
                str(args.mail_port),
                "--maildir",
                str(VAR / "demo" / "mail"),
            ],
            "mail.log",
            env,
        )
        servers.append(mail)
        print(f"Starting the alert relay on port {args.alert_port} ...", flush=True)
        relay = _start(
            "The alert relay",
            [
                sys.executable,
                "-m",
                "flows.alert_relay",
                "--host",
                "127.0.0.1",
                "--port",
                str(args.alert_port),
                "--profile",
                env["HAUSFLOW_PROFILE"],
            ],
            "alert-relay.log",
            env,
        )
        servers.append(relay)
        write_up_record(
            VAR,
            {
                "pid": os.getpid(),
                "process_started": psutil.Process().create_time(),
                "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "profile": env["HAUSFLOW_PROFILE"],
                "prefect_ui": prefect_ui,
                "prefect_api": env["PREFECT_API_URL"],
                "sandbox": sandbox_url,
                "deposit_sandbox": deposit_url,
                "alert_relay": relay_url,
                "logs": str(VAR / "logs"),
                "licence_file": env.get("HAUSFLOW_LICENCES__FILE"),
                "licence_public_key_file": env.get("HAUSFLOW_LICENCES__PUBLIC_KEY_FILE"),
                # the admin commands read the same state store; a URL with a password stays out
                "state_url": None if _has_password(settings.state_url) else settings.state_url,
            },
        )

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

        _wait_http(f"{sandbox_url}/openapi.json", "The portal sandbox", 60, servers)
        _wait_http(f"{deposit_url}/openapi.json", "The deposit sandbox", 60, servers)
        _wait_http(f"{relay_url}/health", "The alert relay", 60, servers)
        _wait_http(f"{prefect_ui}/api/health", "The Prefect server", 180, servers)
        watch.start()

        from prefect import serve
        from prefect.deployments import run_deployment
        from prefect.runner import Runner

        deployments = build_deployments(env["HAUSFLOW_PROFILE"])
        alerts_line = _install_alerts(settings, [(d.flow_name, d.name) for d in deployments])

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
            f"  Prefect UI (flow runs, logs, protocol artifacts): {prefect_ui}\n"
            f"  Portal sandbox (what arrived):                  {sandbox_url}/\n"
            f"  Sandbox API spec:                                {sandbox_url}/docs\n"
            f"  Deposit partner's sandbox (API spec):            {deposit_url}/docs\n"
            f"  E-mails to contacts not in the portal:           {_shown(VAR / 'demo' / 'mail')}/new/\n"
            f"  Logs of the servers:                             {_shown(VAR / 'logs')}/\n"
            f"  Licence:                                         {licence_text}\n"
            f"  {alerts_line}\n"
            "Ctrl-C stops everything; ./hausflow status shows what runs.\n",
            flush=True,
        )
        # Prefect's runner puts its own SIGTERM handler in place when it starts; in prefect 3.8.8
        # that handler leaves the runner's stop unawaited (a RuntimeWarning) and exits past this
        # function's report. Raising Prefect's own termination signal instead makes SIGTERM
        # (a service manager's stop, or the server watch) end the served runner as Ctrl-C does.
        with mock.patch.object(Runner, "handle_sigterm", _terminate):
            serve(*deployments, print_starting_message=False)  # type: ignore[arg-type]
    except ServerDied as exc:
        died = exc.server
    except KeyboardInterrupt:
        print("\nStopping ...", flush=True)
    finally:
        watch.stop()
        died = died or watch.died
        if died is not None:
            _report_death(died)
        for each in reversed(servers):
            _stop(each.proc)
        _remove_up_record()
    print("Stopped.", flush=True)
    return 0 if died is None else 1


def _demo_licence(env: dict[str, str], settings: Any) -> str:
    """Make (or keep) the demo licence in ``var/demo/licence`` and point ``env`` at it, unless the
    profile or the environment names a licence file already. Returns a line for the start message."""
    if settings.licences.file:
        return f"{settings.licences.file} (licences.file; ./hausflow licence shows it)"
    from connectors.licence import demo_licence

    today = settings.business_date or datetime.now(ZoneInfo("Europe/Berlin")).date()
    path, public, made = demo_licence(VAR / "demo" / "licence", today)
    env["HAUSFLOW_LICENCES__FILE"] = str(path)
    env["HAUSFLOW_LICENCES__PUBLIC_KEY_FILE"] = str(public)
    print(
        f"{'Made' if made else 'Using'} the demo licence {_shown(path)} (every module, signed).", flush=True
    )
    return f"{_shown(path)} (demo: every module; ./hausflow licence shows it)"


DEPOSIT_TIMEZONE = "Europe/Berlin"
"""The deposit jobs' crons are business times (``deposit.master_data_cron``/``bookings_cron``):
Europe/Berlin, not the server's UTC."""


def _install_alerts(settings: Any, deployments: list[tuple[str, str]]) -> str:
    """Create or update the failure alerts for the served deployments; one line saying so.

    A failure here does not stop the main command (the flows run without alerts); the line says
    what went wrong and how to install them later.
    """
    import asyncio

    from flows.alerts import install_alerts

    try:
        report = asyncio.run(install_alerts(settings, deployments))
    except Exception as exc:
        return (
            f"Failure alerts NOT installed ({type(exc).__name__}: {exc}); "
            "./hausflow alerts install tries again."
        )
    recipients = ", ".join(settings.alerts.recipients)
    total = len(report.created) + len(report.updated)
    return f"Failure alerts (mailed to {recipients}): {total} Prefect automations, relay {report.relay_url}"


def build_deployments(profile: str) -> list[Any]:
    """The served deployments: the portal sync every 5 minutes, the SEPA flows and the resync on
    demand, the deposit partner's two daily jobs (scheduled unless ``deposit.daily_schedules`` is
    off in ``profile``), the credential-expiry check daily.

    Each has a concurrency limit of 1 that cancels a run overlapping a running one. The SEPA
    flows take their profile from ``HAUSFLOW_PROFILE``; a debit run defaults to a dry run, which
    stops after the control listing.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    from config.settings import load_settings
    from flows.bank_reconciliation import import_bank_statement
    from flows.credential_expiry import credential_expiry
    from flows.deposit_sync import deposit_bookings, deposit_master_data
    from flows.portal_sync import portal_sync
    from flows.resync import resync
    from flows.sepa_debit import sepa_debit_run

    once = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    deposit = load_settings(profile).deposit
    daily = deposit.daily_schedules  # off: an outside scheduler triggers the deposit flows
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
        deposit_master_data.to_deployment(
            name="daily",
            schedules=[Cron(deposit.master_data_cron, timezone=DEPOSIT_TIMEZONE)] if daily else [],
            concurrency_limit=once,
            parameters={"profile": profile},
            tags=["deposit"],
            description="Deposit partner, daily job 1 of 2: deposit accounts of the object group.",
        ),
        deposit_bookings.to_deployment(
            name="daily",
            schedules=[Cron(deposit.bookings_cron, timezone=DEPOSIT_TIMEZONE)] if daily else [],
            concurrency_limit=once,
            parameters={"profile": profile},
            tags=["deposit"],
            description="Deposit partner, daily job 2 of 2: every booking since the last confirmed one.",
        ),
        resync.to_deployment(
            name="on-demand",
            concurrency_limit=once,
            parameters={"profile": profile},
            tags=["portal", "deposit"],
            description="Repairs the state store's record of a partner from what it holds, then syncs it "
            "(partner, objects, entities, full, dry_run).",
        ),
        credential_expiry.to_deployment(
            name="daily",
            schedule=Cron(EXPIRY_CRON, timezone="Europe/Berlin"),
            concurrency_limit=once,
            parameters={"profile": profile},
            tags=["operations"],
            description="E-mails the admins 30, 7 and 1 days before a secret, token or the licence expires.",
        ),
    ]


if __name__ == "__main__":
    raise SystemExit(main())
