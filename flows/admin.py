"""The admin commands of ``./hausflow``: ``status``, ``quarantine``, ``run``, ``mail-test``, ``licence``
and ``alerts install``.

What an operator reaches for without opening the UI: what is running and how the last runs went
(``status``), which records are held back and why (``quarantine``), starting a deployment's
run while reading its log lines as they arrive (``run``), whether the mail settings work
(``mail-test ADDRESS``), which modules the licence covers until when (``licence``), and putting
the failure alerts on a Prefect server (``alerts install``).

Where they look: the Prefect API of ``PREFECT_API_URL``, else the one a running ``./hausflow up``
started (its record ``var/up.json``), else the API of Prefect's own profile; the state store of
the settings profile (``--profile``, else ``HAUSFLOW_PROFILE``, else the running
``./hausflow up``'s profile, else ``test``), with ``HAUSFLOW_STATE_URL`` winning as everywhere.
Without any Prefect API these commands say so; they never start a throw-away one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, get_args
from uuid import UUID

import httpx

from config.settings import ProfileName, load_settings
from flows.serve import VAR, absolute_sqlite_url, read_up_record

# Exit codes: 0 done (a run Completed), 1 something failed or is not reachable, 2 a wrong command line
OK, FAILED, USAGE = 0, 1, 2
LAST_RUNS = 5
# A run still waiting after this long gets one hint that nothing may be serving its deployment.
NOT_STARTED_HINT_S = 30.0


# ---- where to look -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PrefectApi:
    """The Prefect API the admin commands talk to, and where its address came from."""

    url: str | None  # None: no Prefect API is configured
    source: str


def find_prefect_api(up: dict[str, Any] | None, read_profile: bool = True) -> PrefectApi:
    """``PREFECT_API_URL``, else the running ``./hausflow up``'s API, else Prefect's profile's.

    Sets ``PREFECT_API_URL`` for this process when it comes from the ``./hausflow up`` record, so
    the Prefect client talks to that server. Without ``read_profile`` Prefect's profile is not
    read (importing Prefect costs over a second).
    """
    if os.environ.get("PREFECT_API_URL"):
        return PrefectApi(os.environ["PREFECT_API_URL"], "PREFECT_API_URL")
    if up:
        os.environ["PREFECT_API_URL"] = up["prefect_api"]
        return PrefectApi(up["prefect_api"], "./hausflow up")
    if read_profile:
        from prefect.settings import PREFECT_API_URL

        return PrefectApi(PREFECT_API_URL.value() or None, "the Prefect profile")
    return PrefectApi(None, "")


@dataclass(frozen=True)
class StateStoreUrl:
    """The state store the admin commands read, and the settings profile it belongs to."""

    profile: str
    url: str


def find_state_store(profile: str | None, up: dict[str, Any] | None) -> StateStoreUrl:
    """The state store of ``profile``, else ``HAUSFLOW_PROFILE``, else the running ``up``'s profile.

    For the running ``up``'s profile its own state store is used (it may have come from
    ``HAUSFLOW_STATE_URL`` in ``up``'s environment) unless ``HAUSFLOW_STATE_URL`` is set here.

    Raises:
        SystemExit: the profile has no settings file (the message names the known ones).
    """
    name = profile or os.environ.get("HAUSFLOW_PROFILE") or (up or {}).get("profile")
    if up and up.get("state_url") and name == up["profile"] and not os.environ.get("HAUSFLOW_STATE_URL"):
        return StateStoreUrl(name, up["state_url"])
    try:
        settings = load_settings(name)
    except FileNotFoundError as exc:
        raise SystemExit(f"{exc}; use one of {', '.join(get_args(ProfileName))} (HAUSFLOW_PROFILE).") from exc
    return StateStoreUrl(settings.profile, absolute_sqlite_url(settings.state_url))


def shown_url(url: str) -> str:
    """A database URL as it may be printed: the password hidden."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy knows: print nothing of it
        return "(unreadable URL)"


def open_state(url: str) -> Any | None:
    """The engine of an existing state database; None when a SQLite file is not there.

    A missing SQLite file is not created: a read command must not leave an empty database behind.
    """
    from connectors.sqlutil import sqlite_file
    from connectors.state_store import state_engine

    file = sqlite_file(url)
    if file is not None and not Path(file).exists():
        return None
    return state_engine(url)


def _no_state_database(state: StateStoreUrl) -> str:
    return (
        f"No state database at {shown_url(state.url)} (profile {state.profile}): nothing has run "
        "with this profile yet. Pick the profile with --profile or HAUSFLOW_PROFILE, or the database "
        "with HAUSFLOW_STATE_URL."
    )


def local_time(value: datetime | None, seconds: bool = True) -> str:
    """A stored time in the machine's time zone (naive values are UTC, as the state store keeps them)."""
    if value is None:
        return "-"
    from connectors.sqlutil import as_utc

    return as_utc(value).astimezone().strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def clip(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with ``...`` where it was cut."""
    flat = " ".join(str(text).split())
    if len(flat) <= width:
        return flat
    return flat[: max(0, width - 3)] + "..."


# ---- quarantine --------------------------------------------------------------------------------
def read_quarantine(engine: Any, partner: str | None, rule: str | None) -> list[dict[str, Any]]:
    """The open quarantine entries (oldest first per partner), without the held record's data."""
    from sqlalchemy import ColumnElement, and_, select

    from connectors.state_store import quarantine

    conditions: list[ColumnElement[bool]] = [quarantine.c.resolved_at.is_(None)]
    if partner:
        conditions.append(quarantine.c.target == partner)
    if rule:
        conditions.append(quarantine.c.rule.contains(rule, autoescape=True))
    query = (
        select(
            quarantine.c.target,
            quarantine.c.entity,
            quarantine.c.ref_id,
            quarantine.c.rule,
            quarantine.c.reason,
            quarantine.c.first_seen,
            quarantine.c.last_seen,
            quarantine.c.run_id,
        )
        .where(and_(*conditions))
        .order_by(quarantine.c.target, quarantine.c.first_seen, quarantine.c.id)
    )
    with engine.connect() as conn:
        return [
            {
                "partner": row.target,
                "entity": row.entity,
                "record": row.ref_id,
                "rule": row.rule,
                "reason": row.reason,
                "first_seen": row.first_seen,
                "last_seen": row.last_seen,
                "run_id": row.run_id,
            }
            for row in conn.execute(query)
        ]


def quarantine_table(entries: Sequence[dict[str, Any]], width: int) -> list[str]:
    """The entries as fixed-width columns fitting ``width``; the reason is cut to the room left."""
    columns = [
        ("PARTNER", "partner", 10),
        ("ENTITY", "entity", 16),
        ("RECORD", "record", 24),
        ("RULE", "rule", 36),
        ("SINCE", "since", 16),
        ("LAST SEEN", "last", 16),
    ]
    rows = [
        {
            **entry,
            "since": local_time(entry["first_seen"], seconds=False),
            "last": local_time(entry["last_seen"], seconds=False),
        }
        for entry in entries
    ]
    widths = [min(cap, max(len(title), *(len(str(row[key])) for row in rows))) for title, key, cap in columns]
    reason_width = max(24, width - sum(widths) - 2 * len(widths))
    lines = ["  ".join(t.ljust(w) for (t, _k, _c), w in zip(columns, widths, strict=True)) + "  REASON"]
    for row in rows:
        cells = [clip(str(row[key]), w).ljust(w) for (_t, key, _c), w in zip(columns, widths, strict=True)]
        lines.append("  ".join(cells) + "  " + clip(row["reason"], reason_width))
    return lines


def command_quarantine(args: argparse.Namespace) -> int:
    """``./hausflow quarantine``: the records held in the state store's quarantine."""
    state = find_state_store(args.profile, read_up_record())
    engine = open_state(state.url)
    if engine is None:
        print(_no_state_database(state), file=sys.stderr)
        return FAILED
    entries = read_quarantine(engine, args.partner, args.rule)
    filters = ", ".join(f"{k} {v}" for k, v in (("partner", args.partner), ("rule", args.rule)) if v)
    if args.json:
        document = {
            "state_store": shown_url(state.url),
            "profile": state.profile,
            "filters": {"partner": args.partner, "rule": args.rule},
            "count": len(entries),
            "entries": [
                {
                    **entry,
                    "first_seen": _iso(entry["first_seen"]),
                    "last_seen": _iso(entry["last_seen"]),
                }
                for entry in entries
            ],
        }
        print(json.dumps(document, indent=2))
        return OK
    if entries:
        width = shutil.get_terminal_size((120, 24)).columns
        for line in quarantine_table(entries, width):
            print(line)
        print()
    count = f"{_records(len(entries))} held in quarantine"
    print(
        f"{count}{f' ({filters})' if filters else ''}; state store {shown_url(state.url)} "
        f"(profile {state.profile})."
    )
    if entries:
        print(
            "A record leaves quarantine by itself once it is fixed in the ERP and the next run sees it; "
            "full reasons: ./hausflow quarantine --json."
        )
    return OK


def _records(n: int) -> str:
    return f"{n} record" if n == 1 else f"{n} records"


def _iso(value: datetime | None) -> str | None:
    from connectors.sqlutil import as_utc

    return as_utc(value).isoformat() if value is not None else None


# ---- status ------------------------------------------------------------------------------------
def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=3).status_code < 500
    except httpx.HTTPError:
        return False


def describe_interval(interval: timedelta) -> str:
    """``every 5 minutes``, ``every 2 hours``, ``every day``."""
    seconds = int(interval.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"every {unit}" if n == 1 else f"every {n} {unit}s"
    return f"every {seconds} seconds"


def describe_schedule(deployment_schedule: Any) -> str:
    """A deployment schedule in a few words (interval, cron or rrule; inactive ones say so)."""
    schedule = deployment_schedule.schedule
    if getattr(schedule, "interval", None) is not None:
        text = describe_interval(schedule.interval)
    elif getattr(schedule, "cron", None) is not None:
        text = f"cron '{schedule.cron}' ({schedule.timezone or 'UTC'})"
    elif getattr(schedule, "rrule", None) is not None:
        text = f"rrule '{schedule.rrule}'"
    else:
        text = str(schedule)
    return text if deployment_schedule.active else f"{text} (inactive)"


def _duration(run: Any) -> str:
    seconds = run.total_run_time.total_seconds() if run.total_run_time else 0.0
    if not seconds:
        return ""
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


async def _prefect_status(runs_per_flow: int) -> list[str]:
    """The deployments with their schedules and each flow's last runs, as lines."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowFilter,
        FlowFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    lines: list[str] = []
    async with get_client() as client:
        flows = {f.id: f.name for f in await client.read_flows()}
        deployments = sorted(
            await client.read_deployments(), key=lambda d: (flows.get(d.flow_id, ""), d.name)
        )
        names = {d.id: d.name for d in deployments}
        lines.append("Deployments")
        if not deployments:
            lines.append(
                "  none (./hausflow up serves portal-sync, sepa-debit-run and import-bank-statement)"
            )
        full = [f"{flows.get(d.flow_id, '?')}/{d.name}" for d in deployments]
        width = max((len(n) for n in full), default=0)
        for deployment, name in zip(deployments, full, strict=True):
            schedules = "; ".join(describe_schedule(s) for s in deployment.schedules) or "on demand"
            if deployment.paused:
                schedules += " (paused)"
            upcoming = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
                ),
                sort=FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC,
                limit=1,
            )
            if upcoming and upcoming[0].expected_start_time:
                schedules += f"; next run {local_time(upcoming[0].expected_start_time)}"
            lines.append(f"  {name.ljust(width)}  {schedules}")
        lines.append(f"Last runs (newest first, at most {runs_per_flow} per flow)")
        if not flows:
            lines.append("  none yet")
        for flow_id, flow_name in sorted(flows.items(), key=lambda item: item[1]):
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(id=FlowFilterId(any_=[flow_id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=[StateType.SCHEDULED]))
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=runs_per_flow,
            )
            lines.append(f"  {flow_name}" + ("" if runs else ": no run yet"))
            for run in runs:
                state = run.state.name if run.state else "?"
                deployment_name = names.get(run.deployment_id, "") if run.deployment_id else ""
                lines.append(
                    f"    {local_time(run.start_time or run.expected_start_time)}  {state:<10}"
                    f"  {_duration(run):>8}  {run.name}"
                    + (f"  ({deployment_name})" if deployment_name else "")
                )
    return lines


def _summary_text(summary_json: str | None, width: int) -> str:
    try:
        summary = json.loads(summary_json or "{}")
    except ValueError:
        return "(unreadable summary)"
    if not isinstance(summary, dict):
        return "(unreadable summary)"
    parts = [
        f"{key} {clip(str(value), 60)}"
        for key, value in summary.items()
        if isinstance(value, str | int | float | bool) and value != "" and key not in ("run_id", "dry_run")
    ]
    return clip(", ".join(parts), width) if parts else "(no summary)"


def state_store_status(state: StateStoreUrl, width: int) -> list[str]:
    """Per flow the last run the state store recorded, and what quarantine holds, as lines."""
    from sqlalchemy import func, select

    from connectors.state_store import quarantine, sync_runs

    lines = [f"State store {shown_url(state.url)} (profile {state.profile})"]
    try:
        engine = open_state(state.url)
        if engine is None:
            return [*lines, "  " + _no_state_database(state)]
        with engine.connect() as conn:
            flows = [
                f for (f,) in conn.execute(select(sync_runs.c.flow).distinct().order_by(sync_runs.c.flow))
            ]
            for flow in flows:
                row = conn.execute(
                    select(sync_runs)
                    .where(sync_runs.c.flow == flow)
                    .order_by(sync_runs.c.started_at.desc())
                    .limit(1)
                ).one()
                dry = ", dry run" if row.dry_run else ""
                lines.append(
                    f"  {flow}: last run {local_time(row.started_at)} - {local_time(row.finished_at)}, "
                    f"{row.status}{dry}"
                )
                lines.append(f"    {_summary_text(row.summary_json, width - 4)}")
            if not flows:
                lines.append("  no run recorded yet")
            held = conn.execute(
                select(quarantine.c.target, func.count())
                .where(quarantine.c.resolved_at.is_(None))
                .group_by(quarantine.c.target)
                .order_by(quarantine.c.target)
            ).all()
    except Exception as exc:  # a database that cannot be read: say so, the rest of the status stands
        return [*lines, f"  cannot be read: {type(exc).__name__}: {clip(str(exc), 200)}"]
    if held:
        per_partner = ", ".join(f"{target} {n}" for target, n in held)
        total = sum(n for _t, n in held)
        lines.append(
            f"  quarantine: {_records(total)} held ({per_partner}); ./hausflow quarantine lists them"
        )
    else:
        lines.append("  quarantine: nothing held")
    return lines


def command_status(args: argparse.Namespace) -> int:
    """``./hausflow status``: servers, deployments, last runs, and the state store's view."""
    up = read_up_record()
    api = find_prefect_api(up)
    state = find_state_store(args.profile, up)
    width = shutil.get_terminal_size((120, 24)).columns
    lines = ["Servers"]
    if up:
        lines.append(
            f"  ./hausflow up     running (process {up['pid']}, since {local_time(_parse_time(up['started_at']))}),"
            f" logs in {up['logs']}"
        )
    else:
        lines.append(f"  ./hausflow up     not running (no running one recorded in {VAR})")
    api_running = False
    if api.url:
        api_running = _answers(api.url.rstrip("/") + "/health")
        answer = "running" if api_running else "not running (no answer)"
        lines.append(f"  Prefect API       {api.url} ({api.source}): {answer}")
    else:
        lines.append(
            "  Prefect API       not running (./hausflow up is not running and PREFECT_API_URL is not set)"
        )
    if up:
        sandbox = "running" if _answers(up["sandbox"] + "/openapi.json") else "not running (no answer)"
        lines.append(f"  Portal sandbox    {up['sandbox']}: {sandbox}")
    else:
        lines.append("  Portal sandbox    not running")
    if up and up.get("deposit_sandbox"):
        deposit = (
            "running" if _answers(up["deposit_sandbox"] + "/openapi.json") else "not running (no answer)"
        )
        lines.append(f"  Deposit sandbox   {up['deposit_sandbox']}: {deposit}")
    print("\n".join(lines), flush=True)
    if api_running:
        try:
            print("\n".join(asyncio.run(_prefect_status(args.runs))), flush=True)
        except Exception as exc:  # the API went away or refused: say so, the state store still answers
            print(f"Cannot read the Prefect API at {api.url}: {type(exc).__name__}: {clip(str(exc), 200)}")
    else:
        print(
            "Deployments and runs: the Prefect API is not running; start ./hausflow up (or set PREFECT_API_URL)."
        )
    print("\n".join(state_store_status(state, width)))
    return OK


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None


# ---- run ---------------------------------------------------------------------------------------
def parse_param(text: str) -> tuple[str, Any]:
    """``key=value``: the value as JSON when it reads as JSON (``true``, ``5``, ``["A1"]``), else text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value (for example dry_run=false)")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


async def _deployment_names(client: Any) -> list[str]:
    flows = {f.id: f.name for f in await client.read_flows()}
    return sorted(f"{flows.get(d.flow_id, '?')}/{d.name}" for d in await client.read_deployments())


def _print_log(log: Any, task_name: str | None) -> None:
    level = logging.getLevelName(log.level)
    where = f"{task_name}: " if task_name else ""
    print(f"{log.timestamp.astimezone():%H:%M:%S} {level:<7} {where}{log.message}", flush=True)


async def _run_deployment(name: str, parameters: dict[str, Any], poll_s: float) -> int:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import LogSort
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    async with get_client() as client:
        deployment = None
        if "/" in name:
            try:
                deployment = await client.read_deployment_by_name(name)
            except ObjectNotFound:
                deployment = None
        if deployment is None:
            known = await _deployment_names(client)
            print(f"Unknown deployment {name!r}. Name one as FLOW/DEPLOYMENT; known:", file=sys.stderr)
            for each in known or ["(none: is ./hausflow up serving its deployments?)"]:
                print(f"  {each}", file=sys.stderr)
            return USAGE
        try:
            run = await client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        except PrefectHTTPStatusError as exc:
            detail = exc.response.text
            with contextlib.suppress(ValueError):
                detail = exc.response.json().get("detail", detail)
            print(
                f"The Prefect API refused the run of {name} with parameters {json.dumps(parameters)}: {detail}",
                file=sys.stderr,
            )
            return USAGE
        print(
            f"Started flow run {run.name} ({run.id}) of {name}; following its log (Ctrl-C stops following)."
        )
        seen: set[UUID] = set()
        newest: datetime | None = None
        task_names: dict[UUID, str] = {}
        finished = False  # the flow run's own last line ("Finished in state ...") has been shown

        async def new_logs() -> int:
            nonlocal newest, finished
            # logs arrive in batches and not always in timestamp order: look a little back, skip what was shown
            after: Any = newest - timedelta(seconds=30) if newest else None
            count = 0
            while True:
                logs = await client.read_logs(
                    log_filter=LogFilter(
                        flow_run_id=LogFilterFlowRunId(any_=[run.id]),
                        timestamp=LogFilterTimestamp(after_=after),
                    ),
                    sort=LogSort.TIMESTAMP_ASC,
                    limit=200,
                    offset=count,
                )
                for log in logs:
                    if log.id in seen:
                        continue
                    seen.add(log.id)
                    if log.task_run_id and log.task_run_id not in task_names:
                        task_names[log.task_run_id] = (await client.read_task_run(log.task_run_id)).name
                    _print_log(log, task_names.get(log.task_run_id) if log.task_run_id else None)
                    newest = max(newest, log.timestamp) if newest else log.timestamp
                    finished = finished or (
                        log.task_run_id is None and log.message.startswith("Finished in state")
                    )
                count += len(logs)
                if len(logs) < 200:
                    return count

        started = time.monotonic()
        hinted = False
        while True:
            await new_logs()
            current = await client.read_flow_run(run.id)
            state = current.state
            if state is not None and state.is_final():
                break
            waiting = state is None or state.type in (StateType.SCHEDULED, StateType.PENDING)
            if waiting and not hinted and time.monotonic() - started > NOT_STARTED_HINT_S:
                hinted = True
                print(
                    f"The run has not started after {NOT_STARTED_HINT_S:.0f} s: is the deployment served "
                    "(./hausflow up) or a worker of its work pool running?",
                    file=sys.stderr,
                    flush=True,
                )
            await asyncio.sleep(poll_s)
        # the run's process ships its last log lines after the final state: read until they stop
        quiet_since = time.monotonic()
        deadline = time.monotonic() + 10
        shown = len(seen)
        while not finished and time.monotonic() < deadline and time.monotonic() - quiet_since < 3:
            await asyncio.sleep(0.5)
            await new_logs()
            if len(seen) != shown:
                shown, quiet_since = len(seen), time.monotonic()
        message = f": {state.message}" if state.message else ""
        print(f"Flow run {run.name} ({run.id}) of {name} ended {state.name}{message}", flush=True)
        return OK if state.type == StateType.COMPLETED else FAILED


def command_run(args: argparse.Namespace) -> int:
    """``./hausflow run DEPLOYMENT``: start a run, follow its log, exit by its final state."""
    api = find_prefect_api(read_up_record())
    if not api.url:
        print(
            "No Prefect API to start the run on: ./hausflow up is not running and PREFECT_API_URL is not set. "
            "Start ./hausflow up, or set PREFECT_API_URL to the server the deployments are on.",
            file=sys.stderr,
        )
        return FAILED
    if not _answers(api.url.rstrip("/") + "/health"):
        print(
            f"The Prefect API at {api.url} ({api.source}) does not answer; "
            "start ./hausflow up, or check PREFECT_API_URL.",
            file=sys.stderr,
        )
        return FAILED
    parameters = dict(args.param or [])
    try:
        return asyncio.run(_run_deployment(args.deployment, parameters, args.poll))
    except KeyboardInterrupt:
        print("\nStopped following; the run goes on (Prefect UI, or ./hausflow status).", file=sys.stderr)
        return 130


# ---- mail test and licence ---------------------------------------------------------------------
def _profile(profile: str | None) -> str | None:
    """The settings profile: given, else ``HAUSFLOW_PROFILE``, else the running ``./hausflow up``'s."""
    return profile or os.environ.get("HAUSFLOW_PROFILE") or (read_up_record() or {}).get("profile")


def command_mail_test(args: argparse.Namespace) -> int:
    """``./hausflow mail-test ADDRESS``: connect with the [mail] settings, log in, send a test mail
    to ADDRESS and say what each step did; exit 0 when the server accepted the mail, else 1."""
    from connectors.mail import MailClient
    from connectors.sync.errors import PartnerError

    settings = load_settings(_profile(args.profile))
    print(f"Mail test with the [mail] settings of profile {settings.profile}.")
    try:
        client = MailClient.from_settings(settings.mail)
    except (ValueError, PartnerError) as exc:
        print(f"The [mail] settings cannot be used: {exc}.", file=sys.stderr)
        return FAILED
    report = client.send_test(args.address)
    for line in report.lines:
        print(line)
    if report.ok:
        print(f"Done: the mail server accepted the test mail; check that it arrived at {args.address}.")
        return OK
    print("The mail test failed: see the step above; docs/operations.md, Mail settings.", file=sys.stderr)
    return FAILED


def command_licence(args: argparse.Namespace) -> int:
    """``./hausflow licence``: the licence in force for the profile and what it allows today;
    exit 1 when the licence file cannot be used."""
    from zoneinfo import ZoneInfo

    from connectors.licence import MODULES, LicenceError, licence_from_settings

    up = read_up_record()
    profile = _profile(args.profile)
    if (
        up
        and up.get("licence_file")
        and profile == up.get("profile")
        and "HAUSFLOW_LICENCES__FILE" not in os.environ
    ):
        os.environ["HAUSFLOW_LICENCES__FILE"] = up["licence_file"]  # the demo licence ./hausflow up made
        os.environ["HAUSFLOW_LICENCES__PUBLIC_KEY_FILE"] = up.get("licence_public_key_file") or ""
    settings = load_settings(profile)
    today = settings.business_date or datetime.now(ZoneInfo("Europe/Berlin")).date()
    try:
        licence = licence_from_settings(settings.licences)
    except LicenceError as exc:
        print(f"The licence of profile {settings.profile} cannot be used: {exc}.", file=sys.stderr)
        return FAILED
    for line in licence.describe():
        print(line)
    blocked = [m for m in MODULES if not licence.has(m, today)]
    if licence.expired(today):
        print(
            f"The licence expired on {licence.valid_until:%d.%m.%Y}: no flow runs; install the renewed file."
        )
    elif licence.valid_until is not None:
        left = (licence.valid_until - today).days
        print(f"Valid for {left} more days (business date {today:%d.%m.%Y}).")
    if blocked and not licence.expired(today):
        print(f"Flows of {', '.join(blocked)} do nothing (not licensed).")
    return OK


# ---- alerts install ----------------------------------------------------------------------------
def parse_deployment(text: str) -> tuple[str, str]:
    """``FLOW/DEPLOYMENT`` as a pair (argparse type)."""
    flow, _, deployment = text.partition("/")
    if not flow or not deployment:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not FLOW/DEPLOYMENT (e.g. portal-sync/every-5-minutes)"
        )
    return flow, deployment


def command_alerts_install(args: argparse.Namespace) -> int:
    """``./hausflow alerts install``: the relay's Webhook block and the alert automations, created or updated."""
    up = read_up_record()
    api = find_prefect_api(up)
    if not api.url:
        print(
            "No Prefect API: set PREFECT_API_URL to the Prefect server the alerts belong on, or start ./hausflow up.",
            file=sys.stderr,
        )
        return FAILED
    profile = args.profile or os.environ.get("HAUSFLOW_PROFILE") or (up or {}).get("profile")
    try:
        settings = load_settings(profile)
    except FileNotFoundError as exc:
        print(f"{exc}; use one of {', '.join(get_args(ProfileName))}.", file=sys.stderr)
        return USAGE
    from flows.alerts import install_alerts, relay_url

    try:
        report = asyncio.run(install_alerts(settings, args.deployment or None))
    except Exception as exc:  # the API refused or is gone: say which and what to check
        print(
            f"The alerts could not be installed on {api.url} ({api.source}): {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return FAILED
    print(f"Prefect API {api.url} ({api.source}), profile {settings.profile}")
    for line in report.lines():
        print(line)
    recipients = settings.alerts.recipients
    print(f"Recipients (alerts.recipients, read by the relay): {', '.join(recipients) or 'none set'}")
    health = relay_url(settings.alerts).removesuffix("/alerts") + "/health"
    if not _answers(health):
        print(
            f"The alert relay does not answer at {health}: start it (python -m flows.alert_relay --profile "
            f"{settings.profile}) on that host; until then Prefect's calls fail and no alert is mailed.",
            file=sys.stderr,
        )
    if not recipients:
        print("alerts.recipients is empty: set the two addresses, else no alert is mailed.", file=sys.stderr)
    return OK


# ---- command line ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The admin commands' parser (``./hausflow status|quarantine|run|mail-test|licence``)."""
    parser = argparse.ArgumentParser(
        prog="./hausflow",
        description="hausflow's admin commands.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    profiles = list(get_args(ProfileName))

    status = commands.add_parser(
        "status",
        help="servers, deployments with their schedules, last runs, the state store's last summaries",
        description="What runs and how the last runs went: the servers of ./hausflow up, the Prefect "
        "deployments with their schedules, each flow's last runs with state and time, and per flow "
        "the last run the state store recorded with its summary.",
    )
    status.add_argument("--profile", choices=profiles, help="settings profile (default: HAUSFLOW_PROFILE)")
    status.add_argument(
        "--runs", type=int, default=LAST_RUNS, help="runs shown per flow (default: %(default)s)"
    )
    status.set_defaults(handler=command_status)

    held = commands.add_parser(
        "quarantine",
        help="the records held in quarantine, with rule and reason",
        description="The open entries of the state store's quarantine: partner, entity, record, rule, "
        "since when and when last seen, and the reason (cut to the terminal's width; --json in full).",
    )
    held.add_argument("--partner", help="only this partner (portal, sepa)")
    held.add_argument("--rule", help="only rules containing this text (e.g. sepa.iban, displayName)")
    held.add_argument("--json", action="store_true", help="print JSON for scripts (full reasons)")
    held.add_argument("--profile", choices=profiles, help="settings profile (default: HAUSFLOW_PROFILE)")
    held.set_defaults(handler=command_quarantine)

    run = commands.add_parser(
        "run",
        help="start a deployment's run and follow its log; exit 0 when it Completed, else 1",
        description="Start a run of DEPLOYMENT (FLOW/DEPLOYMENT, e.g. sepa-debit-run/on-demand), print "
        "its log lines as they arrive and end with its final state: exit code 0 when it Completed, 1 "
        "when it Failed, Crashed or was Cancelled, 2 for an unknown deployment or refused parameters.",
    )
    run.add_argument(
        "deployment", metavar="DEPLOYMENT", help="FLOW/DEPLOYMENT, as ./hausflow status lists them"
    )
    run.add_argument(
        "--param",
        action="append",
        type=parse_param,
        metavar="KEY=VALUE",
        help='a flow parameter; VALUE as JSON when it reads as JSON (true, 5, ["A1"]), else as text; repeatable',
    )
    run.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    run.set_defaults(handler=command_run)

    mail = commands.add_parser(
        "mail-test",
        help="send a test mail with the [mail] settings; exit 0 when the server accepted it",
        description="Connect to the [mail] server as configured (TLS, basic or OAuth2 login), send a test "
        "mail to ADDRESS and print each step with the server's answers: exit code 0 when the server "
        "accepted the mail, 1 when a step failed.",
    )
    mail.add_argument("address", metavar="ADDRESS", help="where the test mail goes")
    mail.add_argument("--profile", choices=profiles, help="settings profile (default: HAUSFLOW_PROFILE)")
    mail.set_defaults(handler=command_mail_test)

    licence = commands.add_parser(
        "licence",
        help="the licence in force: modules, users, end date, signature",
        description="Show the licence of the profile (licences.file, its signature checked with the "
        "vendor's key; or the [licences] settings without a file) and which flows it allows today. "
        "Exit code 1 when the licence file cannot be used.",
    )
    licence.add_argument("--profile", choices=profiles, help="settings profile (default: HAUSFLOW_PROFILE)")
    licence.set_defaults(handler=command_licence)

    alerts = commands.add_parser(
        "alerts",
        help="failure alerts by e-mail: install them on the Prefect server",
        description="Failure alerts by e-mail (docs/operations.md, Failure alerts).",
    )
    alert_commands = alerts.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")
    install = alert_commands.add_parser(
        "install",
        help="create or update the relay's Webhook block and the alert automations (idempotent)",
        description="Create or update, on the Prefect API of PREFECT_API_URL (else the running ./hausflow "
        "up's), the Webhook block hausflow-alert-relay and the automations 'hausflow alert: ...': failed or "
        "crashed runs of any flow, and per deployment 'not started' and 'blocked' with the thresholds of "
        "alerts.not_started_after_s and alerts.blocked_after_s. Running it again updates them; alerts of "
        "deployments that are gone are deleted.",
    )
    install.add_argument("--profile", choices=profiles, help="settings profile (default: HAUSFLOW_PROFILE)")
    install.add_argument(
        "--deployment",
        action="append",
        type=parse_deployment,
        metavar="FLOW/DEPLOYMENT",
        help="watch only these deployments (repeatable; default: every deployment on the server)",
    )
    install.set_defaults(handler=command_alerts_install)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one admin command; its exit code."""
    args = build_parser().parse_args(argv)
    handler: Any = args.handler
    try:
        return int(handler(args))
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return FAILED


if __name__ == "__main__":
    raise SystemExit(main())
