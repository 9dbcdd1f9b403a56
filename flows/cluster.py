"""The scale-out setup on one machine (``./hausflow cluster up | down | status``), for tests and trials.

``up`` starts, and records in ``<dir>/cluster.json`` (default ``var/cluster``):

- a Prefect server on PostgreSQL (the server named by ``--database-url``, else
  ``HAUSFLOW_CLUSTER_DATABASE_URL``, else ``postgresql://127.0.0.1:5432/test``), in a database of
  its own on that server (``hausflow_prefect``, created with the ``pg_trgm`` extension Prefect
  needs). Never the database the URL names: the ERP and the state store keep their tables there,
  and both Prefect and they track their schema in Alembic's ``alembic_version``;
- the ``process`` work pool ``hausflow`` with the queues ``partitions`` (one partition of a
  partitioned run each) and ``default`` (everything else);
- the deployments of :data:`DEPLOYMENTS`, from this checkout, without schedules;
- N partition workers (``hausflow-worker-<i>``, one run at a time each) and one control worker
  (``hausflow-control``, up to four runs: the parents of partitioned runs, which mostly wait);
- the automation that marks a run Crashed when its heartbeats stop (its worker or host died:
  Prefect's zombie-run detection), and a Prefect global concurrency limit per partner whose
  settings name one (``shared_rate_limit`` with ``rate_limit_per_s``).

Every process runs in a session (and process group) of its own, and a worker's flow runs stay in
its group: killing that group (``kill -9 -- -PGID``) kills the worker and its runs at once, as a
host that dies would; the automation then marks those runs Crashed. ``down`` stops the workers'
groups, then the server's (SIGTERM, SIGKILL after 20 s). ``status`` says what still runs and what
the API thinks of the workers (exit code 1 when something is down).

From Python (the tests): :func:`start_cluster` returns a :class:`Cluster` whose ``stop()`` does
what ``down`` does; ``tests/cluster_env.py`` wraps both for a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil

from flows.serve import ROOT, VAR, log_tail

DEFAULT_DIR = VAR / "cluster"
RECORD = "cluster.json"
DATABASE_URL_ENV = "HAUSFLOW_CLUSTER_DATABASE_URL"
DEFAULT_DATABASE_URL = "postgresql://127.0.0.1:5432/test"
PREFECT_DATABASE = "hausflow_prefect"
DEFAULT_PORT = 4300
DEFAULT_WORKERS = 2
DEFAULT_CRASH_AFTER_S = 90

POOL = "hausflow"
PARTITION_QUEUE = "partitions"
CONTROL_QUEUE = "default"
PARTITION_WORKER = "hausflow-worker-{i}"
CONTROL_WORKER = "hausflow-control"
CONTROL_LIMIT = 4
CRASH_AUTOMATION = "hausflow cluster: crash runs whose heartbeats stopped"
# Pick-up within 2 s; worker heartbeats every 5 s; a flow run's heartbeat every 30 s (Prefect's minimum).
WORKER_ENV = {
    "PREFECT_WORKER_QUERY_SECONDS": "2",
    "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
}
SERVER_TIMEOUT_S = 180.0
WORKER_TIMEOUT_S = 120.0
STOP_GRACE_S = 20.0
LOG_TAIL_LINES = 15


@dataclass(frozen=True)
class ClusterDeployment:
    """A deployment ``up`` registers on the work pool, from this checkout."""

    flow: str
    name: str
    entrypoint: str
    queue: str
    description: str

    @property
    def full_name(self) -> str:
        """``flow/deployment``, as ``run_deployment`` takes it."""
        return f"{self.flow}/{self.name}"

    @property
    def path(self) -> Path:
        """The flow's file in this checkout."""
        return ROOT / self.entrypoint.split(":", 1)[0]


DEPLOYMENTS: tuple[ClusterDeployment, ...] = (
    ClusterDeployment(
        flow="portal-sync",
        name="partition",
        entrypoint="flows/portal_sync.py:portal_sync",
        queue=PARTITION_QUEUE,
        description="One partition of a partitioned portal sync, started by portal-sync-partitioned.",
    ),
    ClusterDeployment(
        flow="portal-sync-partitioned",
        name="on-demand",
        entrypoint="flows/scale_out.py:portal_sync_partitioned",
        queue=CONTROL_QUEUE,
        description="The portal sync split into partitions, each a run of portal-sync/partition on a worker.",
    ),
    ClusterDeployment(
        flow="deposit-master-data",
        name="partition",
        entrypoint="flows/deposit_sync.py:deposit_master_data",
        queue=PARTITION_QUEUE,
        description="One partition of a partitioned deposit sync's master data, or its closing run.",
    ),
    ClusterDeployment(
        flow="deposit-bookings",
        name="partition",
        entrypoint="flows/deposit_sync.py:deposit_bookings",
        queue=PARTITION_QUEUE,
        description="One partition of a partitioned deposit sync's bookings, or its closing run (payouts).",
    ),
    ClusterDeployment(
        flow="deposit-sync-partitioned",
        name="on-demand",
        entrypoint="flows/scale_out.py:deposit_sync_partitioned",
        queue=CONTROL_QUEUE,
        description="The deposit partner's master data and bookings split into partitions, then closing runs.",
    ),
)


class ClusterError(RuntimeError):
    """The cluster could not be started, or a cluster is running where one was to start."""


@dataclass(frozen=True)
class ClusterProcess:
    """A process the cluster started: the server or a worker, leader of its own process group."""

    name: str
    role: str  # server, partition or control
    pid: int
    pgid: int
    started: float  # the process's start time: a reused process id is not taken for it
    log: str

    def alive(self) -> bool:
        """Whether the process still runs (a zombie waiting for its parent does not)."""
        try:
            proc = psutil.Process(self.pid)
            return abs(proc.create_time() - self.started) < 1 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


@dataclass
class Cluster:
    """A running cluster, as :func:`start_cluster` returns it and ``cluster.json`` records it."""

    directory: Path
    api_url: str
    database: str  # the PostgreSQL server, without password
    prefect_database: str
    server: ClusterProcess
    processes: list[ClusterProcess]  # the workers
    started_at: str
    deployments: list[str] = field(default_factory=list)
    concurrency_limits: dict[str, dict[str, float]] = field(default_factory=dict)
    automation: str = CRASH_AUTOMATION
    _children: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @property
    def workers(self) -> list[tuple[str, int, int]]:
        """``(name, pid, pgid)`` of every worker, the partition workers first."""
        return [(p.name, p.pid, p.pgid) for p in self.processes]

    def record(self) -> dict[str, Any]:
        """What ``cluster.json`` holds."""
        return {
            "api_url": self.api_url,
            "ui_url": self.api_url.removesuffix("/api"),
            "database": self.database,
            "prefect_database": self.prefect_database,
            "work_pool": POOL,
            "queues": [PARTITION_QUEUE, CONTROL_QUEUE],
            "deployments": self.deployments,
            "concurrency_limits": self.concurrency_limits,
            "automation": self.automation,
            "started_at": self.started_at,
            "server": _process_json(self.server),
            "workers": [_process_json(p) for p in self.processes],
        }

    def save(self) -> Path:
        """Write ``cluster.json`` (replaced atomically)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / RECORD
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record(), indent=2) + "\n")
        tmp.replace(path)
        return path

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the workers (and their flow runs), then the server; remove ``cluster.json``."""
        stop_groups(self.processes, self._children, grace_s)
        stop_groups([self.server], self._children, grace_s)
        (self.directory / RECORD).unlink(missing_ok=True)


def _process_json(process: ClusterProcess) -> dict[str, Any]:
    return {
        "name": process.name,
        "role": process.role,
        "pid": process.pid,
        "pgid": process.pgid,
        "started": process.started,
        "log": process.log,
    }


def read_record(directory: Path) -> dict[str, Any] | None:
    """``cluster.json`` of ``directory``, or None when there is none (or it cannot be read)."""
    try:
        record: dict[str, Any] = json.loads((directory / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record


def recorded_processes(record: Mapping[str, Any]) -> list[ClusterProcess]:
    """The server and the workers a record names, the server first."""
    entries = [record["server"], *record.get("workers", [])] if record.get("server") else []
    return [
        ClusterProcess(
            e["name"], e["role"], int(e["pid"]), int(e["pgid"]), float(e["started"]), str(e["log"])
        )
        for e in entries
    ]


# ---- PostgreSQL -------------------------------------------------------------------------------------


def safe_url(database_url: str) -> str:
    """The URL without its password (for the record and messages)."""
    from sqlalchemy.engine import make_url

    return make_url(database_url).render_as_string(hide_password=True)


def _libpq_url(database_url: str, database: str | None = None) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(database_url).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


def prefect_database_url(database_url: str, prefect_database: str) -> str:
    """The asyncpg URL of the Prefect server's database on the server ``database_url`` names."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url).set(drivername="postgresql+asyncpg", database=prefect_database)
    return url.render_as_string(hide_password=False)


def ensure_prefect_database(database_url: str, prefect_database: str = PREFECT_DATABASE) -> bool:
    """Create the Prefect server's database (and its ``pg_trgm`` extension) when missing.

    Args:
        database_url: any database on the PostgreSQL server (only used to connect).
        prefect_database: the name of the Prefect server's own database.

    Returns:
        True when the database was created now.

    Raises:
        ClusterError: the name is the URL's own database (the ERP's or state store's: both they and
            Prefect track their schema in ``alembic_version``), the server cannot be reached, or
            the database or extension cannot be created; the message says what to do.
    """
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    if make_url(database_url).database == prefect_database:
        raise ClusterError(
            f"The Prefect server needs a database of its own, not {prefect_database!r}, the one "
            f"{safe_url(database_url)} names: the ERP and the state store keep their tables there, and "
            "Prefect's schema and theirs are both tracked in alembic_version. Choose another name."
        )
    created = False
    try:
        with psycopg.connect(_libpq_url(database_url), autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (prefect_database,)
            ).fetchone()
            if not exists:
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # created meanwhile
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(prefect_database)))
                    created = True
        with psycopg.connect(
            _libpq_url(database_url, prefect_database), autocommit=True, connect_timeout=5
        ) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except psycopg.Error as exc:
        raise ClusterError(
            f"Could not prepare the Prefect database {prefect_database!r} on {safe_url(database_url)} "
            f"({type(exc).__name__}: {str(exc).strip()}). The role needs CREATEDB (or the database must "
            f"exist) and the pg_trgm extension must be installable there (CREATE EXTENSION pg_trgm, "
            f"as a superuser, in {prefect_database}); --database-url or {DATABASE_URL_ENV} names the server."
        ) from exc
    return created


def drop_prefect_database(database_url: str, prefect_database: str) -> None:
    """Drop the Prefect server's database (tests: each session uses one of its own)."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    if make_url(database_url).database == prefect_database:
        raise ClusterError(f"Refusing to drop {prefect_database!r}: it is the database the URL names.")
    with psycopg.connect(_libpq_url(database_url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(prefect_database))
        )


def database_exists(database_url: str, name: str) -> bool:
    """Whether the PostgreSQL server holds a database of that name."""
    import psycopg

    with psycopg.connect(_libpq_url(database_url), autocommit=True, connect_timeout=5) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


# ---- processes --------------------------------------------------------------------------------------


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies nobody reaped yet do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False


def stop_groups(
    processes: Sequence[ClusterProcess],
    children: Mapping[int, subprocess.Popen[bytes]] | None = None,
    grace_s: float = STOP_GRACE_S,
) -> list[str]:
    """SIGTERM the process groups, SIGKILL what still runs after ``grace_s``; the names killed.

    A group is signalled when its leader is the recorded process, or when the leader is gone but
    members are left (flow runs of a worker that died). ``children`` are the Popen objects of the
    processes this process started: they are reaped so no zombie is left behind.
    """
    children = children or {}
    groups = [p for p in processes if p.alive() or (not _leader_reused(p) and _group_alive(p.pgid))]
    for process in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        for process in groups:
            if process.pid in children:
                children[process.pid].poll()
        if not any(_group_alive(p.pgid) for p in groups):
            break
        time.sleep(0.2)
    killed = []
    for process in groups:
        if _group_alive(process.pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pgid, signal.SIGKILL)
            killed.append(process.name)
    for process in groups:
        if process.pid in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                children[process.pid].wait(timeout=5)
    return killed


def _leader_reused(process: ClusterProcess) -> bool:
    """Whether another process now has the leader's id (its group is then not ours)."""
    try:
        return abs(psutil.Process(process.pid).create_time() - process.started) >= 1
    except psutil.Error:
        return False


def _died(process: ClusterProcess, proc: subprocess.Popen[bytes]) -> ClusterError:
    tail = "\n".join(f"  {line}" for line in log_tail(Path(process.log), LOG_TAIL_LINES))
    return ClusterError(
        f"{process.name} exited while starting (exit code {proc.returncode}); its log is {process.log}"
        + (f":\n{tail}" if tail else ".")
    )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as the server binds: connections of a server just stopped (TIME_WAIT) do not count
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _spawn(
    name: str, role: str, cmd: list[str], log: Path, env: Mapping[str, str]
) -> tuple[ClusterProcess, subprocess.Popen[bytes]]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a group of its own: killing it kills the flow runs too
        )
    started = psutil.Process(proc.pid).create_time()
    return ClusterProcess(name, role, proc.pid, os.getpgid(proc.pid), started, str(log)), proc


# ---- the Prefect side -------------------------------------------------------------------------------


def crash_automation(crash_after_s: int) -> Any:
    """Prefect's zombie-run detection: a run whose heartbeats stop is marked Crashed.

    After a flow run's heartbeat another heartbeat (or its end) must follow within
    ``crash_after_s``; runs send one every 30 s (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``), so the
    threshold must leave room for a late one.
    """
    from prefect.automations import AutomationCore, EventTrigger, Posture
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState

    return AutomationCore(
        name=CRASH_AUTOMATION,
        description="hausflow cluster: a flow run whose heartbeats stopped for "
        f"{crash_after_s} s is marked Crashed (flows/cluster.py).",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=crash_after_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                name="Crashed",
                message=f"The flow run's heartbeats stopped for {crash_after_s} s: its worker or host died.",
                force=False,
            )
        ],
    )


async def ensure_pool(client: Any) -> None:
    """The ``process`` work pool with its two queues (created when missing)."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    try:
        pool = await client.read_work_pool(POOL)
        if pool.type != "process":
            raise ClusterError(
                f"The work pool {POOL!r} exists with type {pool.type!r}; the cluster needs 'process'."
            )
    except ObjectNotFound:
        with contextlib.suppress(ObjectAlreadyExists):
            await client.create_work_pool(
                WorkPoolCreate(
                    name=POOL,
                    type="process",
                    description="hausflow workers (flows/cluster.py)",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
    queues = {q.name for q in await client.read_work_queues(work_pool_name=POOL)}
    for queue in (PARTITION_QUEUE, CONTROL_QUEUE):
        if queue not in queues:
            with contextlib.suppress(ObjectAlreadyExists):
                await client.create_work_queue(name=queue, work_pool_name=POOL)


def job_variables() -> dict[str, Any]:
    """How a worker starts a flow run of this checkout.

    An explicit engine command keeps the run in its worker's process group (Prefect 3.8's default
    start puts it in a session of its own, where it would outlive a worker killed with its group),
    started by this checkout's interpreter in this checkout.
    """
    return {"command": f"{shlex.quote(sys.executable)} -m prefect.engine", "working_dir": str(ROOT)}


async def register_deployments(
    deployments: Sequence[ClusterDeployment],
) -> tuple[list[str], list[str]]:
    """Create or update the deployments whose flow file exists; ``(registered, skipped)``.

    Raises:
        ClusterError: a flow's file exists but its flow is not the one the deployment names.
    """
    from prefect.flows import Flow

    registered, skipped = [], []
    for deployment in deployments:
        if not deployment.path.exists():
            skipped.append(
                f"{deployment.full_name} ({deployment.entrypoint.split(':')[0]} is not in this checkout)"
            )
            continue
        try:
            flow: Any = await Flow.afrom_source(source=str(ROOT), entrypoint=deployment.entrypoint)
        except Exception as exc:
            raise ClusterError(
                f"Could not load {deployment.entrypoint} for the deployment {deployment.full_name} "
                f"({type(exc).__name__}: {exc})."
            ) from exc
        if flow.name != deployment.flow:
            raise ClusterError(
                f"{deployment.entrypoint} is the flow {flow.name!r}, not {deployment.flow!r}; "
                "flows.cluster.DEPLOYMENTS must name it as it is."
            )
        with contextlib.redirect_stdout(io.StringIO()):  # Prefect's table of what it deployed
            await flow.adeploy(
                name=deployment.name,
                work_pool_name=POOL,
                work_queue_name=deployment.queue,
                job_variables=job_variables(),
                build=False,
                push=False,
                description=deployment.description,
                tags=["portal", "cluster"],
                print_next_steps=False,
                ignore_warnings=True,
            )
        registered.append(deployment.full_name)
    return registered, skipped


def wanted_concurrency_limits(settings: Any) -> dict[str, dict[str, float]]:
    """The global concurrency limits the partner settings ask for: name -> limit, slot decay.

    A partner with ``shared_rate_limit`` and ``rate_limit_per_s`` gets a rate limit (Prefect's
    form: ``limit`` slots that each free themselves at ``slot_decay_per_second``).
    """
    wanted: dict[str, dict[str, float]] = {}
    for partner in (settings.portal, settings.deposit):
        if partner.shared_rate_limit and partner.rate_limit_per_s:
            rate = float(partner.rate_limit_per_s)
            wanted[partner.shared_rate_limit] = {
                "limit": max(1, math.ceil(rate)),
                "slot_decay_per_second": rate,
            }
    return wanted


async def ensure_automation(client: Any, crash_after_s: int) -> str:
    """Create or update the crash automation, by name; ``created``, ``updated`` or ``unchanged``."""
    from flows.alerts import _same

    wanted = crash_automation(crash_after_s)
    found = [a for a in await client.read_automations() if a.name == CRASH_AUTOMATION]
    for extra in found[1:]:
        await client.delete_automation(extra.id)
    if not found:
        await client.create_automation(wanted)
        return "created"
    if _same(found[0], wanted):
        return "unchanged"
    await client.update_automation(found[0].id, wanted)
    return "updated"


async def online_workers(api_url: str) -> dict[str, str]:
    """Every worker of the pool the API knows: name -> ONLINE or OFFLINE."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        async with get_client() as client:
            workers = await client.read_workers_for_work_pool(POOL)
    return {w.name: str(getattr(w.status, "value", w.status)) for w in workers}


# ---- start ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` while the settings are read (they come from HAUSFLOW_* variables)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _live(directory: Path) -> list[ClusterProcess]:
    record = read_record(directory)
    return [p for p in recorded_processes(record) if p.alive()] if record else []


def start_cluster(
    workers: int = DEFAULT_WORKERS,
    database_url: str | None = None,
    port: int = DEFAULT_PORT,
    directory: Path | str = DEFAULT_DIR,
    env: Mapping[str, str] | None = None,
    crash_after: int = DEFAULT_CRASH_AFTER_S,
    prefect_database: str = PREFECT_DATABASE,
    deployments: Sequence[ClusterDeployment] = DEPLOYMENTS,
    say: Any = None,
) -> Cluster:
    """Start the server, configure it, start the workers; return when they are ONLINE.

    Args:
        workers: partition workers (the control worker comes on top).
        database_url: the PostgreSQL server (default ``HAUSFLOW_CLUSTER_DATABASE_URL`` or
            ``postgresql://127.0.0.1:5432/test``); the Prefect server uses ``prefect_database`` on it.
        port: the Prefect server's port on 127.0.0.1.
        directory: logs, the Prefect home and ``cluster.json``.
        env: variables on top of this process's environment for the workers and their flow runs
            (the HAUSFLOW_* settings); the partner rate limits are read from them too.
        crash_after: seconds without a heartbeat after which a flow run is marked Crashed.
        prefect_database: the Prefect server's database (tests: a name of their own, dropped after).
        deployments: what to register (those whose flow file is missing are skipped).
        say: called with each progress line (default: nothing).

    Raises:
        ClusterError: a cluster of ``directory`` is running, the port is taken, the database
            cannot be prepared, or a process did not come up (the message names its log).
            Whatever was started is stopped again.
    """
    from config.settings import load_settings

    directory = Path(directory).resolve()
    database_url = database_url or os.environ.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL
    tell = say or (lambda _line: None)
    if workers < 1:
        raise ClusterError("A cluster needs at least one partition worker (--workers 1 or more).")
    if crash_after < 30:
        raise ClusterError(
            f"--crash-after {crash_after} s would crash live runs: they send a heartbeat every 30 s."
        )
    live = _live(directory)
    if live:
        raise ClusterError(
            f"A cluster of {directory} is running ({', '.join(p.name for p in live)}); "
            "./hausflow cluster status shows it, ./hausflow cluster down stops it."
        )
    if not _port_free(port):
        raise ClusterError(f"Port {port} on 127.0.0.1 is taken; choose another with --port.")

    base = {**os.environ, **(env or {})}
    try:
        with _environment(dict(env or {})):
            settings = load_settings(base.get("HAUSFLOW_PROFILE"))
    except Exception as exc:  # the workers' runs would fail on the same settings
        raise ClusterError(
            f"The settings (profile {base.get('HAUSFLOW_PROFILE') or 'test'}) cannot be loaded: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    limits = wanted_concurrency_limits(settings)
    tell(f"Preparing the Prefect database {prefect_database} on {safe_url(database_url)} ...")
    created = ensure_prefect_database(database_url, prefect_database)
    if created:
        tell(f"  created {prefect_database} (with pg_trgm)")

    api_url = f"http://127.0.0.1:{port}/api"
    home = directory / "prefect"
    common = {
        **base,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_UI_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "GX_ANALYTICS_ENABLED": "false",
    }
    server_env = {
        **common,
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": prefect_database_url(database_url, prefect_database),
        # thousands of runs a day: old runs and events are removed
        "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
    }
    python_path = os.pathsep.join(filter(None, [str(ROOT), base.get("PYTHONPATH")]))
    worker_env = {**common, **WORKER_ENV, "HAUSFLOW_HOME": str(ROOT), "PYTHONPATH": python_path}

    children: dict[int, subprocess.Popen[bytes]] = {}
    tell(f"Starting the Prefect server on port {port} (log {directory / 'server.log'}) ...")
    server, proc = _spawn(
        "server",
        "server",
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        directory / "server.log",
        server_env,
    )
    children[server.pid] = proc
    cluster = Cluster(
        directory=directory,
        api_url=api_url,
        database=safe_url(database_url),
        prefect_database=prefect_database,
        server=server,
        processes=[],
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        _children=children,
    )
    cluster.save()  # ``down`` can stop what started even if this start is interrupted
    try:
        _wait_health(cluster, proc)
        tell(f"  API up: {api_url}")
        _run(_configure_pool(api_url))
        names = [(PARTITION_WORKER.format(i=i), "partition") for i in range(1, workers + 1)]
        names.append((CONTROL_WORKER, "control"))
        for name, role in names:
            queue, limit = (PARTITION_QUEUE, 1) if role == "partition" else (CONTROL_QUEUE, CONTROL_LIMIT)
            cmd = [
                sys.executable, "-m", "prefect", "worker", "start",
                "--pool", POOL, "--type", "process", "--work-queue", queue,
                "--limit", str(limit), "--name", name,
            ]  # fmt: skip
            worker, wproc = _spawn(name, role, cmd, directory / f"{_log_name(name)}.log", worker_env)
            children[worker.pid] = wproc
            cluster.processes.append(worker)
        cluster.save()
        tell(f"Started {workers} partition worker(s) and the control worker; registering the deployments ...")
        registered, skipped, automation = _run(_configure_rest(api_url, deployments, limits, crash_after))
        cluster.deployments = registered
        cluster.concurrency_limits = limits
        for line in skipped:
            tell(f"  deployment skipped: {line}")
        tell(f"  deployments: {', '.join(registered) or 'none'}")
        for name, wanted in limits.items():
            tell(
                f"  global concurrency limit {name}: {wanted['limit']:.0f} slot(s), "
                f"{wanted['slot_decay_per_second']} freed per second"
            )
        tell(f"  automation {CRASH_AUTOMATION!r}: {automation}")
        _wait_online(cluster)
        cluster.save()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _log_name(worker: str) -> str:
    """``worker-1`` for hausflow-worker-1, ``control`` for hausflow-control."""
    return worker.removeprefix("hausflow-")


def _run(coro: Any) -> Any:
    """Run a coroutine to its end, also when the caller is inside an event loop (in a thread then)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _configure_pool(api_url: str) -> None:
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        async with get_client() as client:
            await ensure_pool(client)


async def _configure_rest(
    api_url: str,
    deployments: Sequence[ClusterDeployment],
    limits: Mapping[str, Mapping[str, float]],
    crash_after: int,
) -> tuple[list[str], list[str], str]:
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        registered, skipped = await register_deployments(deployments)
        async with get_client() as client:
            for name, limit in limits.items():
                await client.upsert_global_concurrency_limit_by_name(
                    name, int(limit["limit"]), slot_decay_per_second=float(limit["slot_decay_per_second"])
                )
            automation = await ensure_automation(client, crash_after)
    return registered, skipped, automation


def _wait_health(cluster: Cluster, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _died(cluster.server, proc)
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{cluster.api_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise ClusterError(
        f"The Prefect server did not answer at {cluster.api_url}/health within {SERVER_TIMEOUT_S:.0f} s; "
        f"see its log {cluster.server.log}."
    )


def _wait_online(cluster: Cluster) -> None:
    names = {p.name for p in cluster.processes}
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    status: dict[str, str] = {}
    while time.monotonic() < deadline:
        for process in cluster.processes:
            child = cluster._children[process.pid]
            if child.poll() is not None:
                raise _died(process, child)
        with contextlib.suppress(httpx.HTTPError):
            status = _run(online_workers(cluster.api_url))
        if all(status.get(n) == "ONLINE" for n in names):
            return
        time.sleep(0.5)
    waiting = sorted(n for n in names if status.get(n) != "ONLINE")
    logs = ", ".join(p.log for p in cluster.processes if p.name in waiting)
    raise ClusterError(
        f"Worker(s) {', '.join(waiting)} not ONLINE after {WORKER_TIMEOUT_S:.0f} s; see {logs}."
    )


# ---- stop and status --------------------------------------------------------------------------------


def stop_cluster(directory: Path | str = DEFAULT_DIR, grace_s: float = STOP_GRACE_S) -> list[str] | None:
    """Stop the cluster ``cluster.json`` of ``directory`` records; None when none was recorded.

    Returns:
        The names of the processes that had to be killed (did not stop within ``grace_s``).
    """
    directory = Path(directory).resolve()
    record = read_record(directory)
    if record is None:
        return None
    processes = recorded_processes(record)
    killed = stop_groups([p for p in processes if p.role != "server"], None, grace_s)
    killed += stop_groups([p for p in processes if p.role == "server"], None, grace_s)
    (directory / RECORD).unlink(missing_ok=True)
    return killed


def cluster_status(directory: Path | str = DEFAULT_DIR) -> tuple[dict[str, Any] | None, list[str], bool]:
    """``(record, lines, all up)`` for ``status``: each process alive or not, the workers' API status."""
    directory = Path(directory).resolve()
    record = read_record(directory)
    if record is None:
        return (
            None,
            [f"No cluster is recorded in {directory} (no {RECORD}); ./hausflow cluster up starts one."],
            False,
        )
    lines, ok = [], True
    api_status: dict[str, str] = {}
    api_url = str(record.get("api_url", ""))
    try:
        healthy = httpx.get(f"{api_url}/health", timeout=3).status_code == 200
    except httpx.HTTPError:
        healthy = False
    if healthy:
        with contextlib.suppress(Exception):
            api_status = _run(online_workers(api_url))
    lines.append(f"API {api_url}: {'healthy' if healthy else 'NOT ANSWERING'}")
    ok &= healthy
    for process in recorded_processes(record):
        alive = process.alive()
        ok &= alive
        seen = ""
        if process.role != "server":
            state = api_status.get(process.name, "unknown" if not healthy else "not registered")
            seen = f", API: {state}"
            ok &= state == "ONLINE"
        lines.append(
            f"{process.name:<20} pid {process.pid:<8} group {process.pgid:<8} "
            f"{'running' if alive else 'NOT RUNNING'}{seen}  log {process.log}"
        )
    return record, lines, ok


# ---- command line -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``up``, ``down`` or ``status``; exit codes 0 (done, or all up) and 1 (refused, failed, or down)."""
    parser = argparse.ArgumentParser(
        prog="./hausflow cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start PostgreSQL-backed Prefect server, work pool and workers")
    up.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="partition workers (default: %(default)s)"
    )
    up.add_argument(
        "--database-url",
        default=None,
        help=f"the PostgreSQL server (default: {DATABASE_URL_ENV} or {DEFAULT_DATABASE_URL}); "
        f"the Prefect server gets a database of its own there",
    )
    up.add_argument(
        "--prefect-database",
        default=PREFECT_DATABASE,
        help="the Prefect server's database (default: %(default)s)",
    )
    up.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="Prefect server port (default: %(default)s)"
    )
    up.add_argument(
        "--crash-after",
        type=int,
        default=DEFAULT_CRASH_AFTER_S,
        help="seconds without heartbeat after which a run is marked Crashed (default: %(default)s)",
    )
    for each in (
        up,
        sub.add_parser("down", help="stop the workers, then the server"),
        sub.add_parser("status"),
    ):
        each.add_argument(
            "--dir", type=Path, default=DEFAULT_DIR, help="where the cluster lives (default: var/cluster)"
        )
    args = parser.parse_args(argv)
    directory: Path = args.dir.resolve()

    if args.command == "up":
        os.environ.setdefault("PREFECT_HOME", str(directory / "prefect"))  # this process's client too
        started = time.monotonic()
        try:
            cluster = start_cluster(
                workers=args.workers,
                database_url=args.database_url,
                port=args.port,
                directory=directory,
                crash_after=args.crash_after,
                prefect_database=args.prefect_database,
                say=lambda line: print(line, flush=True),
            )
        except ClusterError as exc:
            print(f"./hausflow cluster up: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("./hausflow cluster up: interrupted; what had started is stopped again.", file=sys.stderr)
            return 1
        print(
            f"\nThe cluster is up ({time.monotonic() - started:.1f} s).\n"
            f"  Prefect UI and API: {cluster.api_url.removesuffix('/api')}  (PREFECT_API_URL={cluster.api_url})\n"
            f"  Workers: {', '.join(n for n, _, _ in cluster.workers)}; logs in {directory}\n"
            "./hausflow cluster status shows it; ./hausflow cluster down stops it.",
            flush=True,
        )
        return 0
    if args.command == "down":
        started = time.monotonic()
        killed = stop_cluster(directory)
        if killed is None:
            print(f"No cluster is running in {directory} (no {RECORD}); nothing to stop.")
            return 0
        extra = f"; killed after {STOP_GRACE_S:.0f} s: {', '.join(killed)}" if killed else ""
        print(f"The cluster in {directory} is stopped ({time.monotonic() - started:.1f} s{extra}).")
        return 0
    record, lines, ok = cluster_status(directory)
    if record is not None:
        print(json.dumps(record, indent=2))
    for line in lines:
        print(line)
    if record is not None:
        print("All up." if ok else "Something is down: ./hausflow cluster down, then up, starts it afresh.")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
