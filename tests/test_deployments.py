"""The deployments (served by the main command, and in prefect.yaml) fit the flows they run."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.serve import build_deployments

ROOT = Path(__file__).resolve().parent.parent


def _flow(entrypoint: str) -> Any:
    path, name = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def _check_parameters(flow: Any, parameters: dict[str, Any]) -> None:
    """No parameter the flow does not know; full validation where the flow needs nothing at run time."""
    signature = inspect.signature(flow.fn)
    assert set(parameters) <= set(signature.parameters), (flow.name, parameters)
    required = [n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty]
    if not set(required) - set(parameters):
        flow.validate_parameters(parameters)


def test_served_deployments_have_valid_parameters_and_no_overlap() -> None:
    deployments = {d.name + "@" + d.flow_name: d for d in build_deployments("demo")}
    assert set(deployments) == {
        "every-5-minutes@portal-sync",
        "on-demand@sepa-debit-run",
        "on-demand@import-bank-statement",
        "daily@deposit-master-data",
        "daily@deposit-bookings",
        "daily@credential-expiry",
        "on-demand@resync",
    }
    for deployment in deployments.values():
        flow = _flow(deployment.entrypoint)
        _check_parameters(flow, deployment.parameters)
        assert deployment.concurrency_limit == 1
        assert deployment.concurrency_options.collision_strategy == "CANCEL_NEW"
    portal = deployments["every-5-minutes@portal-sync"]
    assert [s.schedule.interval.total_seconds() for s in portal.schedules] == [300]
    master, bookings = deployments["daily@deposit-master-data"], deployments["daily@deposit-bookings"]
    assert [s.schedule.cron for s in master.schedules] == ["0 5 * * *"]
    assert [s.schedule.cron for s in bookings.schedules] == ["30 5 * * *"]  # after the master data
    expiry = deployments["daily@credential-expiry"]
    assert [(s.schedule.cron, s.schedule.timezone) for s in expiry.schedules] == [
        ("0 7 * * *", "Europe/Berlin")
    ]


def test_one_setting_turns_the_deposit_schedules_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAUSFLOW_DEPOSIT__DAILY_SCHEDULES", "false")
    deployments = {d.flow_name: d for d in build_deployments("demo")}
    assert not deployments["deposit-master-data"].schedules and not deployments["deposit-bookings"].schedules
    assert deployments["portal-sync"].schedules  # the others stay as they are


def test_prefect_yaml_deployments_point_at_real_flows_with_valid_parameters() -> None:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for deployment in config["deployments"]:
        flow = _flow(deployment["entrypoint"])
        _check_parameters(flow, deployment.get("parameters") or {})
        if deployment["work_pool"].get("work_queue_name") != "partitions":  # those run side by side
            assert deployment["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
        for value in deployment["work_pool"]["job_variables"]["env"].values():
            assert "{{" in value or not any(word in value.lower() for word in ("secret", "key")), value


def test_the_prefect_server_creates_the_scheduled_runs(prefect_harness: None) -> None:
    """The 5-minute schedule really produces runs (the scheduler's insert breaks on SQLAlchemy 2.1)."""
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from flows.portal_sync import portal_sync

    async def scheduled_runs() -> int:
        async with get_client() as client:
            flow_id = await client.create_flow(portal_sync)
            deployment_id = await client.create_deployment(
                flow_id=flow_id,
                name="schedule-check",
                entrypoint="flows/portal_sync.py:portal_sync",
                schedules=[],
            )
            from prefect.client.schemas.actions import DeploymentScheduleCreate
            from prefect.client.schemas.schedules import IntervalSchedule

            await client.create_deployment_schedules(
                deployment_id,
                [DeploymentScheduleCreate(schedule=IntervalSchedule(interval=300), active=True)],
            )
            response = await client._client.post(f"/deployments/{deployment_id}/schedule", json={})
            response.raise_for_status()
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
            return sum(1 for r in runs if r.state_type is not None and r.state_type.value == "SCHEDULED")

    assert asyncio.run(scheduled_runs()) >= 2
