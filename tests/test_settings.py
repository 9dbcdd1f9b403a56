"""Settings profiles: each load reads its own profile's TOML, the environment overrides it, and
loading never changes the process environment (flows of two profiles share worker processes)."""

from __future__ import annotations

import os
import threading
import tomllib

import pytest

from config.settings import PROFILE_DIR, HausflowSettings, load_settings


def _toml_erp_url(profile: str) -> str:
    with (PROFILE_DIR / f"{profile}.toml").open("rb") as f:
        return str(tomllib.load(f)["erp_url"])


def test_two_profiles_load_at_once_each_with_its_own_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAUSFLOW_ERP_URL", raising=False)
    monkeypatch.delenv("HAUSFLOW_CACHE_DIR", raising=False)  # one for every system would be refused
    expected = {profile: _toml_erp_url(profile) for profile in ("test", "demo", "production")}
    assert len(set(expected.values())) == 3
    environ_before = os.environ.copy()
    start = threading.Barrier(len(expected))
    wrong: list[str] = []

    def load(profile: str) -> None:
        start.wait()
        for _ in range(150):
            settings = load_settings(profile)
            if settings.profile != profile or settings.erp_url != expected[profile]:
                wrong.append(f"{profile}: got {settings.profile} with {settings.erp_url}")
            if os.environ != environ_before:
                wrong.append(f"{profile}: the environment changed while loading")

    threads = [threading.Thread(target=load, args=(profile,)) for profile in expected]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    assert os.environ.copy() == environ_before


def test_environment_overrides_the_profile_and_init_values_override_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HAUSFLOW_ERP_URL", "sqlite:///from-env.sqlite")
    monkeypatch.setenv("HAUSFLOW_PORTAL__CONCURRENCY", "3")
    demo = load_settings("demo")
    assert demo.erp_url == "sqlite:///from-env.sqlite"
    assert demo.portal.concurrency == 3
    assert demo.portal.api_key.get_secret_value() == "demo-key"  # the rest still from demo.toml
    assert load_settings("demo", erp_url="sqlite:///given.sqlite").erp_url == "sqlite:///given.sqlite"


def test_chosen_profile_wins_over_the_environments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAUSFLOW_CACHE_DIR", raising=False)  # the production system's in this process
    monkeypatch.setenv("HAUSFLOW_PROFILE", "production")
    demo = load_settings("demo")
    assert (demo.profile, demo.erp_url) == ("demo", _toml_erp_url("demo"))
    assert os.environ["HAUSFLOW_PROFILE"] == "production"


def test_settings_without_load_settings_follow_hausflow_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAUSFLOW_ERP_URL", raising=False)
    monkeypatch.setenv("HAUSFLOW_PROFILE", "demo")
    settings = HausflowSettings()
    assert (settings.profile, settings.erp_url) == ("demo", _toml_erp_url("demo"))
    monkeypatch.delenv("HAUSFLOW_PROFILE")
    settings = HausflowSettings()
    assert (settings.profile, settings.erp_url) == ("test", _toml_erp_url("test"))
