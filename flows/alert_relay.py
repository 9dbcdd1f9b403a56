"""The alert relay: Prefect's automations call it, it e-mails the failure alerts.

Open-source Prefect has no e-mail action (``send-email-notification`` is Prefect Cloud's); it
calls webhooks. The automations that ``./hausflow up`` and ``./hausflow alerts install`` create
(``flows/alerts.py``) post one JSON document per alert to this relay (``POST /alerts``); the relay
adds what only hausflow knows (how many records the run quarantined, from the state store) and
sends the mail through hausflow's own SMTP client (``connectors/mail.py``, the ``[mail]``
settings) to every address of ``alerts.recipients``.

    python -m flows.alert_relay [--host 127.0.0.1] [--port 8790] [--profile production]

It answers ``202`` as soon as an alert is understood (Prefect's webhook call waits 5 s at most)
and sends in the background, up to three attempts; every alert, sent or not, is one log line that
names the run, and ``GET /alerts`` lists the last ones with their outcome. An alert Prefect
delivers twice (the same event id) is mailed once. With ``alerts.relay_token`` set, a call without
``Authorization: Bearer <token>`` is refused (401); without a token the relay only listens on
loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import BackgroundTasks, FastAPI, Header, HTTPException
from pydantic import BaseModel, Field

from config.settings import HausflowSettings, load_settings

logger = logging.getLogger("hausflow.alert_relay")

AlertKind = Literal["failed", "not_started", "blocked"]
SEND_ATTEMPTS = 3
RETRY_DELAY_S = 2.0
REMEMBERED = 500  # alerts kept for de-duplication and GET /alerts


class Alert(BaseModel):
    """One alert as the automations' payload template renders it (``flows/alerts.py``)."""

    kind: AlertKind
    event_id: str = Field(min_length=1, description="the Prefect event that fired the automation")
    flow_run_id: str = Field(min_length=1)
    flow_run: str | None = None
    flow: str | None = None
    deployment: str | None = None
    state: str | None = None
    state_message: str | None = None
    ui_url: str | None = None
    profile: str | None = None
    threshold_s: int | None = None
    expected_start: str | None = None
    start_time: str | None = None
    occurred: str | None = None


@dataclass(frozen=True)
class QuarantineCount:
    """How many records a run quarantined, and where that number comes from."""

    count: int
    # "summary": the run's protocol counted them; "held": the run ended before its protocol,
    # these are the open quarantine entries it wrote
    source: Literal["summary", "held"]


# ---- what the mail says (pure) -------------------------------------------------------------------
def _when(text: str | None) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM:SS UTC`` (Prefect renders them in UTC); '-' when unknown."""
    if not text or text == "None":
        return "-"
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def deployment_name(alert: Alert) -> str:
    """``flow/deployment`` as ``./hausflow run`` takes it, or the flow alone for a run without one."""
    flow = alert.flow or "(unknown flow)"
    return f"{flow}/{alert.deployment}" if alert.deployment else flow


def compose(alert: Alert, quarantined: QuarantineCount | None) -> tuple[str, str]:
    """The subject and text of the mail for ``alert``.

    It names the flow (and deployment), the run with its id, its state and the link to it in
    the Prefect UI, says what happened in one sentence and what to do; for a failed run also how
    many records it quarantined when the state store knows. Plain text, no personal data.
    """
    name = deployment_name(alert)
    run = alert.flow_run or alert.flow_run_id
    state = alert.state or "unknown"
    if alert.kind == "failed":
        subject = f"hausflow: {name} - run {run} {state}"
        what = f"The run {run} of {name} ended {state}."
        again = f"Retry in the UI, or ./hausflow run {name}" if alert.deployment else "Retry in the UI"
        todo = (
            f"Read the run's last log lines in the Prefect UI (link below). Re-running it ({again}) is "
            "safe: what a sync sent is not sent twice."
        )
    elif alert.kind == "not_started":
        subject = f"hausflow: {name} - run {run} has not started"
        what = (
            f"The run {run} of {name} was due at {_when(alert.expected_start)} and has not started "
            f"{alert.threshold_s} s after Prefect marked it late (alerts.not_started_after_s)."
        )
        todo = (
            "Check that something serves this deployment: ./hausflow up on one host, or a worker of the "
            "work pool (prefect worker start --pool hausflow); ./hausflow status shows both."
        )
    else:
        subject = f"hausflow: {name} - run {run} blocked"
        what = (
            f"The run {run} of {name} started at {_when(alert.start_time)} and is still running "
            f"{alert.threshold_s} s later (alerts.blocked_after_s), far longer than usual."
        )
        todo = (
            "Read its log in the Prefect UI: a partner that does not answer, or a large first run? Cancel it "
            "there if it hangs; while it runs, the deployment's next runs are cancelled (concurrency 1)."
        )
    lines = [
        what,
        "",
        f"Flow:        {alert.flow or '-'}",
        f"Deployment:  {alert.deployment or '- (run without a deployment)'}",
        f"Run:         {run} (id {alert.flow_run_id})",
        f"State:       {state}" + (f": {alert.state_message}" if alert.state_message else ""),
    ]
    if alert.occurred:
        lines.append(f"Reported:    {_when(alert.occurred)}")
    if alert.kind == "failed":
        if quarantined is None:
            lines.append(
                "Quarantine:  not known (this flow records no quarantine, or the state store is elsewhere)"
            )
        elif quarantined.source == "summary":
            lines.append(
                f"Quarantine:  {_records(quarantined.count)} quarantined in this run (./hausflow quarantine lists them)"
            )
        else:
            lines.append(
                f"Quarantine:  {_records(quarantined.count)} held in quarantine by this run before it ended "
                "(./hausflow quarantine lists them)"
            )
    lines.append(
        f"Link:        {alert.ui_url}"
        if alert.ui_url
        else f"Link:        not known (set PREFECT_UI_URL for the Prefect server); the run's id is {alert.flow_run_id}"
    )
    lines += [
        "",
        f"What to do: {todo}",
        "",
        "-- hausflow's failure alerts (docs/operations.md, Failure alerts)",
    ]
    return subject, "\n".join(lines) + "\n"


def _records(n: int) -> str:
    return f"{n:,} record" + ("" if n == 1 else "s")


# ---- what the state store knows -----------------------------------------------------------------
def quarantined_in_run(state_url: str, run_id: str) -> QuarantineCount | None:
    """How many records the run ``run_id`` quarantined, from the state store at ``state_url``.

    The run's summary (``sync_runs``, written with its protocol) when it has one; else, for a run
    that ended before its protocol, the open quarantine entries it wrote; None when the state
    store has no record of the run (a flow that keeps none, another state store) or cannot be
    read. A missing SQLite file is not created.
    """
    from sqlalchemy import func, select

    from connectors.sqlutil import sqlite_file
    from connectors.state_store import quarantine, state_engine, sync_runs

    file = sqlite_file(state_url)
    if file is not None and not Path(file).exists():
        return None
    try:
        engine = state_engine(state_url)
        with engine.connect() as conn:
            row = conn.execute(select(sync_runs.c.summary_json).where(sync_runs.c.run_id == run_id)).first()
            if row is None:
                return None
            summary = json.loads(row.summary_json or "{}")
            if isinstance(summary, dict) and isinstance(summary.get("quarantined"), int):
                return QuarantineCount(summary["quarantined"], "summary")
            held = conn.execute(
                select(func.count())
                .select_from(quarantine)
                .where(quarantine.c.run_id == run_id, quarantine.c.resolved_at.is_(None))
            ).scalar_one()
            return QuarantineCount(int(held), "held")
    except Exception as exc:  # the mail goes out without the number rather than not at all
        logger.warning("The state store cannot be read for run %s (%s: %s).", run_id, type(exc).__name__, exc)
        return None


# ---- the relay -----------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What became of one alert (``GET /alerts``)."""

    alert: Alert
    received: str
    status: Literal["sending", "sent", "failed"] = "sending"
    detail: str = ""


class AlertRelay:
    """Turns alerts into mails: the state store's quarantine count, then one mail per recipient.

    Args:
        settings: the relay's settings: ``alerts.recipients`` and ``[mail]``; the state store of
            the alert's ``profile`` (the flow run's parameter), else of these settings.
        retry_delay_s: the pause between attempts at the mail server.
    """

    def __init__(self, settings: HausflowSettings, retry_delay_s: float = RETRY_DELAY_S) -> None:
        self.settings = settings
        self.retry_delay_s = retry_delay_s
        self.outcomes: OrderedDict[str, Outcome] = OrderedDict()

    def accept(self, alert: Alert) -> Outcome | None:
        """Remember ``alert``; None when its event was seen before (Prefect delivered it twice)."""
        if alert.event_id in self.outcomes:
            return None
        outcome = Outcome(alert, datetime.now(UTC).isoformat(timespec="seconds"))
        self.outcomes[alert.event_id] = outcome
        while len(self.outcomes) > REMEMBERED:
            self.outcomes.popitem(last=False)
        return outcome

    def state_url(self, profile: str | None) -> str:
        """The state store of the run's profile, else the relay's."""
        if profile and profile != self.settings.profile:
            try:
                return load_settings(profile).state_url
            except (FileNotFoundError, ValueError):
                pass
        return self.settings.state_url

    async def deliver(self, outcome: Outcome) -> None:
        """Compose and send ``outcome``'s alert to every recipient; record and log what happened."""
        from connectors.mail import EMAILS, MailClient
        from connectors.sync.client import WriteOp
        from connectors.sync.errors import PartnerError, is_retriable

        alert = outcome.alert
        recipients = self.settings.alerts.recipients
        where = f"{alert.kind} alert of run {alert.flow_run or alert.flow_run_id} ({deployment_name(alert)})"
        if not recipients:
            outcome.status, outcome.detail = "failed", "alerts.recipients is empty"
            logger.error(
                "The %s was not mailed: alerts.recipients is empty; set the two addresses "
                "(HAUSFLOW_ALERTS__RECIPIENTS or [alerts] recipients in the profile).",
                where,
            )
            return
        quarantined = None
        if alert.kind == "failed":
            quarantined = await asyncio.to_thread(
                quarantined_in_run, self.state_url(alert.profile), alert.flow_run_id
            )
        subject, text = compose(alert, quarantined)
        todo = list(enumerate(recipients))
        errors: list[str] = []
        for attempt in range(1, SEND_ATTEMPTS + 1):
            ops = [
                WriteOp(
                    EMAILS.name,
                    "upsert",
                    f"alert-{alert.event_id}-{n}",
                    {"to": to, "subject": subject, "text": text},
                )
                for n, to in todo
            ]
            try:
                results = await MailClient.from_settings(self.settings.mail).awrite_many(ops)
            except PartnerError as exc:
                results, errors = [], [str(exc)]
                retriable = is_retriable(exc)
            else:
                failed = {r.op.ref_id for r in results if not r.ok}
                errors = [
                    f"{r.op.payload['to'] if r.op.payload else '?'}: {r.error}" for r in results if not r.ok
                ]
                retriable = any(r.retriable for r in results if not r.ok)
                todo = [(n, to) for n, to in todo if f"alert-{alert.event_id}-{n}" in failed]
            if not todo or not errors:
                outcome.status, outcome.detail = "sent", ", ".join(recipients)
                logger.info("Mailed the %s to %s.", where, ", ".join(recipients))
                return
            if not retriable or attempt == SEND_ATTEMPTS:
                break
            await asyncio.sleep(self.retry_delay_s * attempt)
        outcome.status, outcome.detail = "failed", "; ".join(errors)
        logger.error(
            "The %s was not mailed to %s after %d attempts: %s. Check the [mail] settings "
            "(./hausflow alerts install prints them); the run itself is in the Prefect UI.",
            where,
            ", ".join(to for _n, to in todo),
            attempt,
            "; ".join(errors),
        )


def create_app(settings: HausflowSettings | None = None, retry_delay_s: float = RETRY_DELAY_S) -> FastAPI:
    """The relay's web application (``POST /alerts``, ``GET /alerts``, ``GET /health``)."""
    relay = AlertRelay(settings or load_settings(), retry_delay_s)
    token = relay.settings.alerts.relay_token.get_secret_value()
    app = FastAPI(title="hausflow alert relay", version="1", docs_url="/docs")
    app.state.relay = relay

    def check(authorization: str | None) -> None:
        if token and not secrets.compare_digest(authorization or "", f"Bearer {token}"):
            raise HTTPException(401, "a valid Authorization: Bearer <alerts.relay_token> is required")

    @app.post("/alerts", status_code=202)
    async def post_alert(
        alert: Alert, background: BackgroundTasks, authorization: str | None = Header(default=None)
    ) -> dict[str, Any]:
        """Take one alert; the mail goes out in the background."""
        check(authorization)
        outcome = relay.accept(alert)
        if outcome is None:
            return {"status": "duplicate", "event_id": alert.event_id}
        background.add_task(relay.deliver, outcome)
        return {"status": "accepted", "event_id": alert.event_id}

    @app.get("/alerts")
    async def list_alerts(authorization: str | None = Header(default=None)) -> list[dict[str, Any]]:
        """The last alerts, newest first, with what became of them."""
        check(authorization)
        return [
            {
                "event_id": o.alert.event_id,
                "kind": o.alert.kind,
                "flow_run": o.alert.flow_run,
                "deployment": deployment_name(o.alert),
                "received": o.received,
                "status": o.status,
                "detail": o.detail,
            }
            for o in reversed(relay.outcomes.values())
        ]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Alive, and whether it has anyone to mail."""
        return {"status": "ok", "recipients": len(relay.settings.alerts.recipients)}

    return app


def main(argv: list[str] | None = None) -> int:
    """Serve the relay until SIGTERM or Ctrl-C."""
    import uvicorn

    from connectors.mail import is_loopback

    parser = argparse.ArgumentParser(prog="python -m flows.alert_relay", description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="address to listen on (default: alerts.relay_host)")
    parser.add_argument("--port", type=int, help="port (default: alerts.relay_port)")
    parser.add_argument("--profile", help="settings profile (default: HAUSFLOW_PROFILE)")
    args = parser.parse_args(argv)
    settings = load_settings(args.profile)
    host = args.host or settings.alerts.relay_host
    port = args.port or settings.alerts.relay_port
    if not settings.alerts.relay_token.get_secret_value() and not is_loopback(host):
        parser.error(
            f"without alerts.relay_token the relay listens on loopback only, not {host}: "
            "set HAUSFLOW_ALERTS__RELAY_TOKEN (and run ./hausflow alerts install again)"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.alerts.recipients:
        logger.warning("alerts.recipients is empty: alerts are received but mailed to nobody.")
    logger.info(
        "Alert relay on http://%s:%s/alerts, mails via %s:%s to %s.",
        host,
        port,
        settings.mail.host,
        settings.mail.port,
        ", ".join(settings.alerts.recipients) or "nobody",
    )
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
