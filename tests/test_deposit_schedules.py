"""The deposit jobs' schedules: Europe/Berlin business times from the settings, the same in
prefect.yaml, and a scheduled run with the daily schedules off does nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from config.settings import DepositSettings
from flows.serve import build_deployments

ROOT = Path(__file__).resolve().parent.parent


def test_served_deposit_crons_are_the_settings_in_europe_berlin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAUSFLOW_DEPOSIT__MASTER_DATA_CRON", "15 4 * * *")
    deployments = {d.flow_name: d for d in build_deployments("demo")}
    (master,) = deployments["deposit-master-data"].schedules
    (bookings,) = deployments["deposit-bookings"].schedules
    assert (master.schedule.cron, master.schedule.timezone) == ("15 4 * * *", "Europe/Berlin")
    assert (bookings.schedule.cron, bookings.schedule.timezone) == ("30 5 * * *", "Europe/Berlin")


def test_prefect_yaml_crons_match_the_default_settings() -> None:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    by_name: dict[str, Any] = {d["name"]: d for d in config["deployments"]}
    defaults = DepositSettings()
    for name, cron in (
        ("deposit-master-data-daily", defaults.master_data_cron),
        ("deposit-bookings-daily", defaults.bookings_cron),
    ):
        (schedule,) = by_name[name]["schedules"]
        assert (schedule["cron"], schedule["timezone"]) == (cron, "Europe/Berlin")
