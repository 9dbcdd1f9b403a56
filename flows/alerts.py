"""Failure alerts as Prefect automations, created from hausflow's settings (idempotently).

What :func:`install_alerts` puts on a Prefect server (``./hausflow up`` at every start,
``./hausflow alerts install`` for a real server):

- the Webhook block ``hausflow-alert-relay``: the alert relay's address (``alerts.relay_host``,
  ``alerts.relay_port``) and, with ``alerts.relay_token``, its ``Authorization`` header;
- ``hausflow alert: failed``: a reactive trigger on every flow run whose state becomes of type
  FAILED or CRASHED (Failed, Crashed, TimedOut, ...), whatever its flow or deployment;
- per deployment ``hausflow alert: FLOW/DEPLOYMENT not started``: a proactive trigger: after
  ``prefect.flow-run.Late`` (Prefect marks a scheduled run late 15 s past its time) the run must
  start running (or end, or be cancelled) within ``alerts.not_started_after_s``;
- per deployment ``hausflow alert: FLOW/DEPLOYMENT blocked``: a proactive trigger: after
  ``prefect.flow-run.Running`` (or ``Retrying``) the run must reach another state within
  ``alerts.blocked_after_s``.

Each calls the block (Prefect's ``call-webhook`` action) with a JSON payload rendered by Prefect
from the event and the flow run: flow, deployment, run name and id, state and message, the run's
link in the UI, the threshold. The relay (``flows/alert_relay.py``) mails it.

Idempotent: automations are found by their name (prefix ``hausflow alert: ``) and updated in
place; a name that appears twice is reduced to one; a hausflow alert whose deployment is gone
(or whose threshold is now 0) is deleted. Automations of other names are never touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from config.settings import AlertSettings, HausflowSettings

RELAY_BLOCK = "hausflow-alert-relay"
PREFIX = "hausflow alert: "
FAILED_NAME = f"{PREFIX}failed"
# every state a late run may reach that is not "still waiting" (Pending counts as waiting: a
# runner that cannot start the process leaves it there)
STARTED_OR_ENDED = {
    "prefect.flow-run.Running",
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Crashed",
    "prefect.flow-run.TimedOut",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Cancelling",
    "prefect.flow-run.Paused",
    "prefect.flow-run.Suspended",
}
RUNNING = {"prefect.flow-run.Running", "prefect.flow-run.Retrying"}
LEFT_RUNNING = {
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Crashed",
    "prefect.flow-run.TimedOut",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Cancelling",
    "prefect.flow-run.Paused",
    "prefect.flow-run.Suspended",
    "prefect.flow-run.AwaitingRetry",
    "prefect.flow-run.AwaitingConcurrencySlot",
}


def relay_url(alerts: AlertSettings) -> str:
    """Where the Prefect server reaches the relay (a wildcard listen address means this host)."""
    host = "127.0.0.1" if alerts.relay_host in ("0.0.0.0", "") else alerts.relay_host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{alerts.relay_port}/alerts"


def payload_template(kind: str, threshold_s: int | None) -> str:
    """The Jinja template Prefect renders into the JSON the relay takes (``flows.alert_relay.Alert``).

    Identity and state come from the event (as they were when it happened); times, parameters and
    the UI link from the flow run Prefect reads when it acts. Every text goes through ``tojson``,
    so a quote in a state message cannot break the document.
    """
    threshold = "null" if threshold_s is None else str(int(threshold_s))
    return (
        "{"
        f'"kind": "{kind}", '
        '"event_id": "{{ event.id }}", '
        '"occurred": "{{ event.occurred }}", '
        '"flow_run_id": {{ event.resource.id | replace("prefect.flow-run.", "") | tojson }}, '
        '"flow_run": {{ event.resource.name | default(none) | tojson }}, '
        '"flow": {{ event.resource_in_role["flow"].name | default(none) | tojson }}, '
        '"deployment": {{ event.resource_in_role["deployment"].name | default(none) | tojson }}, '
        '"state": {{ event.resource["prefect.state-name"] | default(none) | tojson }}, '
        '"state_message": {{ event.resource["prefect.state-message"] | default(none) | tojson }}, '
        '"ui_url": {{ flow_run | ui_url | default(none) | tojson }}, '
        '"profile": {{ flow_run.parameters["profile"] | default(none) | tojson }}, '
        '"expected_start": "{{ flow_run.expected_start_time }}", '
        '"start_time": "{{ flow_run.start_time }}", '
        f'"threshold_s": {threshold}'
        "}"
    )


def _of_deployment(flow: str, deployment: str) -> list[Any]:
    """``match_related`` for the runs of one deployment: its flow's name and its own (both must match)."""
    return [
        {"prefect.resource.role": "flow", "prefect.resource.name": flow},
        {"prefect.resource.role": "deployment", "prefect.resource.name": deployment},
    ]


def desired_automations(
    alerts: AlertSettings, deployments: Iterable[tuple[str, str]], block_id: Any
) -> list[Any]:
    """The automations the settings ask for, by name: one for failures, two per deployment.

    Args:
        alerts: recipients do not matter here (the relay reads them); the thresholds do.
        deployments: ``(flow name, deployment name)`` pairs.
        block_id: the Webhook block's document id.
    """
    from prefect.automations import AutomationCore, CallWebhook, EventTrigger, Posture

    def call(kind: str, threshold_s: int | None) -> list[Any]:
        return [CallWebhook(block_document_id=block_id, payload=payload_template(kind, threshold_s))]

    wanted = [
        AutomationCore(
            name=FAILED_NAME,
            description="hausflow: e-mail when any flow run fails or crashes (flows/alerts.py).",
            trigger=EventTrigger(
                match={
                    "prefect.resource.id": "prefect.flow-run.*",
                    "prefect.state-type": ["FAILED", "CRASHED"],
                },
                expect={"prefect.flow-run.*"},
                for_each={"prefect.resource.id"},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=call("failed", None),
        )
    ]
    for flow, deployment in sorted(set(deployments)):
        name = f"{flow}/{deployment}"
        not_started, blocked = alerts.thresholds(name)
        if not_started:
            wanted.append(
                AutomationCore(
                    name=f"{PREFIX}{name} not started",
                    description=f"hausflow: e-mail when a late run of {name} has not started within "
                    f"{not_started} s (alerts.not_started_after_s).",
                    trigger=EventTrigger(
                        match={"prefect.resource.id": "prefect.flow-run.*"},
                        match_related=_of_deployment(flow, deployment),
                        after={"prefect.flow-run.Late"},
                        expect=STARTED_OR_ENDED,
                        for_each={"prefect.resource.id"},
                        posture=Posture.Proactive,
                        threshold=1,
                        within=timedelta(seconds=not_started),
                    ),
                    actions=call("not_started", not_started),
                )
            )
        if blocked:
            wanted.append(
                AutomationCore(
                    name=f"{PREFIX}{name} blocked",
                    description=f"hausflow: e-mail when a run of {name} is still running {blocked} s after "
                    "it started (alerts.blocked_after_s).",
                    trigger=EventTrigger(
                        match={"prefect.resource.id": "prefect.flow-run.*"},
                        match_related=_of_deployment(flow, deployment),
                        after=RUNNING,
                        expect=LEFT_RUNNING,
                        for_each={"prefect.resource.id"},
                        posture=Posture.Proactive,
                        threshold=1,
                        within=timedelta(seconds=blocked),
                    ),
                    actions=call("blocked", blocked),
                )
            )
    return wanted


@dataclass
class InstallReport:
    """What :func:`install_alerts` did, for the command's output and the tests."""

    relay_url: str
    block_id: str
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    deployments: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The report as lines a person reads."""
        return [
            f"Webhook block {RELAY_BLOCK} -> {self.relay_url}",
            f"Deployments watched: {', '.join(self.deployments) or 'none (failures of every run are watched)'}",
            f"Automations: {len(self.created)} created, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged, {len(self.deleted)} deleted",
            *(f"  created  {n}" for n in self.created),
            *(f"  updated  {n}" for n in self.updated),
            *(f"  deleted  {n}" for n in self.deleted),
        ]


def _same(existing: Any, wanted: Any) -> bool:
    """Whether an automation on the server already is what the settings ask for.

    An unchanged automation is left alone: an update gives its trigger a new id on the server,
    and the open windows of a proactive trigger (a run late or running right now) belong to the
    old id, so updating it for nothing would lose an alert that is due.
    """
    return _comparable(existing) == _comparable(wanted)


def _comparable(automation: Any) -> dict[str, Any]:
    """An automation's settings as JSON, its event sets sorted (their order means nothing)."""
    fields = {
        "name",
        "description",
        "enabled",
        "tags",
        "trigger",
        "actions",
        "actions_on_trigger",
        "actions_on_resolve",
    }
    dumped: dict[str, Any] = automation.model_dump(mode="json", include=fields)
    trigger = dumped.get("trigger") or {}
    for key in ("after", "expect", "for_each"):
        if isinstance(trigger.get(key), list):
            trigger[key] = sorted(trigger[key])
    return dumped


async def save_relay_block(alerts: AlertSettings) -> str:
    """Create or update the Webhook block that points at the relay; its document id."""
    from prefect.blocks.webhook import Webhook

    headers = {"Content-Type": "application/json"}
    token = alerts.relay_token.get_secret_value()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    block = Webhook(method="POST", url=relay_url(alerts), headers=headers)  # type: ignore[arg-type]
    block_id = await block.asave(RELAY_BLOCK, overwrite=True)
    return str(block_id)


async def server_deployments(client: Any) -> list[tuple[str, str]]:
    """Every ``(flow name, deployment name)`` the Prefect server knows."""
    flows = {f.id: f.name for f in await client.read_flows()}
    return [(flows.get(d.flow_id, "?"), d.name) for d in await client.read_deployments()]


async def install_alerts(
    settings: HausflowSettings, deployments: Sequence[tuple[str, str]] | None = None
) -> InstallReport:
    """Create or update the relay's block and the alert automations on the Prefect API in use.

    Args:
        settings: ``alerts`` gives the relay's address and the thresholds.
        deployments: ``(flow, deployment)`` pairs to watch; None: every deployment on the server.

    Returns:
        What was created, updated and deleted.
    """
    from prefect import get_client

    block_id = await save_relay_block(settings.alerts)
    report = InstallReport(relay_url(settings.alerts), block_id)
    async with get_client() as client:
        if deployments is None:
            deployments = await server_deployments(client)
        report.deployments = sorted(f"{f}/{d}" for f, d in set(deployments))
        wanted = {a.name: a for a in desired_automations(settings.alerts, deployments, block_id)}
        existing: dict[str, list[Any]] = {}
        for automation in await client.read_automations():
            if automation.name.startswith(PREFIX):
                existing.setdefault(automation.name, []).append(automation)
        for name, automation in wanted.items():
            found = existing.pop(name, [])
            if found and _same(found[0], automation):
                report.unchanged.append(name)
            elif found:
                await client.update_automation(found[0].id, automation)
                report.updated.append(name)
                for extra in found[1:]:
                    await client.delete_automation(extra.id)
                    report.deleted.append(name)
            else:
                await client.create_automation(automation)
                report.created.append(name)
        for name, stale in existing.items():
            for automation in stale:
                await client.delete_automation(automation.id)
                report.deleted.append(name)
    return report
