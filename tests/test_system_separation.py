"""Production and test systems never mix: every interface is off on the test system until switched
on, each system has environment variables of its own, the settings refuse a shared database, output
folder or credential, and the state store and output folders remember whose they are."""

from __future__ import annotations

import logging
import os
import stat
import threading
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from config.settings import PROFILE_DIR, SystemMixError, load_settings
from connectors.sepa.writing import SYSTEM_MARKER, claim_output_dir
from connectors.state_store import StateStore
from sandbox.deposit.server import DepositSandboxServer
from sandbox.portal.server import SandboxServer
from tests.sepa_support import COLLECTION, make_scenario, sepa_env

CAMT = Path(__file__).parent / "data" / "camt"


def _toml(profile: str) -> dict[str, Any]:
    with (PROFILE_DIR / f"{profile}.toml").open("rb") as f:
        return tomllib.load(f)


PRODUCTION = _toml("production")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """No HAUSFLOW_ variable but those a test sets (restored afterwards)."""
    for key in list(os.environ):
        if key.startswith("HAUSFLOW_"):
            monkeypatch.delenv(key)

    def set_env(**values: str) -> None:
        for key, value in values.items():
            monkeypatch.setenv(key, value)

    return set_env


# ---- the profiles as shipped ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setting", "production", "test", "demo"),
    [
        ("portal.enabled", True, False, True),
        ("portal.notify_unregistered_by_email", True, False, True),  # e-mails to tenants
        ("deposit.enabled", True, False, True),
        ("sepa.enabled", True, False, True),  # direct-debit and payout files, bank statements
    ],
)
def test_every_interface_is_off_on_the_test_system_until_switched_on(
    env: Callable[..., None], setting: str, production: bool, test: bool, demo: bool
) -> None:
    def value(profile: str) -> Any:
        found: Any = load_settings(profile)
        for part in setting.split("."):
            found = getattr(found, part)
        return found

    assert (value("production"), value("test"), value("demo")) == (production, test, demo)
    section = setting.split(".")[0].upper()
    env(**{f"HAUSFLOW_TEST__{section}__{setting.split('.')[1].upper()}": "true"})
    assert value("test") is True and value("production") is production


def test_the_profiles_as_shipped_share_nothing(env: Callable[..., None]) -> None:
    for profile in ("production", "test", "demo"):
        for home in ("production", "test", "demo"):
            env(HAUSFLOW_PROFILE=home)
            assert load_settings(profile).profile == profile


# ---- each system's own environment ------------------------------------------------------------
def test_a_systems_own_variables_win_and_reach_no_other_system(env: Callable[..., None]) -> None:
    env(
        HAUSFLOW_PORTAL__CONCURRENCY="3",
        HAUSFLOW_TEST__PORTAL__CONCURRENCY="5",
        HAUSFLOW_TEST__SEPA__PAYOUTS__LEAD_DAYS="2",
        HAUSFLOW_PRODUCTION__PORTAL__API_SECRET="production-secret-value",
        HAUSFLOW_PRODUCTION__STATE_URL="postgresql+psycopg://hausflow@db.example/state",
    )
    test = load_settings("test")
    assert (test.portal.concurrency, test.sepa.payouts.lead_days) == (5, 2)  # nested, over the process-wide
    assert test.portal.api_secret.get_secret_value() == ""
    assert test.state_url == _toml("test")["state_url"]
    production = load_settings("production")
    assert production.portal.concurrency == 3  # the process-wide value, where no own one is set
    assert production.portal.api_secret.get_secret_value() == "production-secret-value"
    assert production.state_url == "postgresql+psycopg://hausflow@db.example/state"
    assert (
        load_settings("production", state_url="sqlite:///given.sqlite").state_url == "sqlite:///given.sqlite"
    )


# ---- the settings refuse a mix ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("variables", "settings_named"),
    [
        # the same database whatever the driver, user or host spelling
        ({"HAUSFLOW_TEST__STATE_URL": "postgresql://tester:pw@localhost/hausflow_state"}, ["state_url"]),
        ({"HAUSFLOW_TEST__ERP_URL": "postgresql+psycopg://other@127.0.0.1/erp"}, ["erp_url"]),
        ({"HAUSFLOW_TEST__STATE_URL": PRODUCTION["erp_url"]}, ["state_url", "its erp_url"]),
        (
            {"HAUSFLOW_TEST__SEPA__OUTPUT_DIR": "var/sepa"},
            ["sepa.output_dir var/sepa is its sepa.output_dir"],
        ),
        ({"HAUSFLOW_TEST__SEPA__OUTPUT_DIR": "var/sepa/test"}, ["lies inside its sepa.output_dir var/sepa"]),
        ({"HAUSFLOW_TEST__SEPA__PAYOUTS__OUTPUT_DIR": "var/sepa/payouts"}, ["sepa.payouts.output_dir"]),
        (
            {"HAUSFLOW_TEST__CACHE_DIR": "var", "HAUSFLOW_PRODUCTION__CACHE_DIR": "var/cache"},
            ["cache_dir var holds"],
        ),
        (
            {
                "HAUSFLOW_TEST__PORTAL__ENABLED": "true",
                "HAUSFLOW_TEST__PORTAL__API_SECRET": "s3cret-of-the-portal",
                "HAUSFLOW_PRODUCTION__PORTAL__API_SECRET": "s3cret-of-the-portal",
            },
            ["portal.api_secret is its portal.api_secret"],
        ),
        (
            {
                "HAUSFLOW_TEST__DEPOSIT__ENABLED": "true",
                "HAUSFLOW_TEST__DEPOSIT__PASSWORD": "s3cret-of-the-partner",
                "HAUSFLOW_PRODUCTION__DEPOSIT__PASSWORD": "s3cret-of-the-partner",
            },
            ["deposit.password"],
        ),
        (
            {
                "HAUSFLOW_TEST__MAIL__PASSWORD": "s3cret-mail",
                "HAUSFLOW_PRODUCTION__MAIL__PASSWORD": "s3cret-mail",
            },
            ["mail.password"],
        ),
        (
            {
                "HAUSFLOW_TEST__MAIL__OAUTH2_CLIENT_SECRET": "s3cret-app",
                "HAUSFLOW_PRODUCTION__MAIL__OAUTH2_CLIENT_SECRET": "s3cret-app",
            },
            ["mail.oauth2_client_secret"],
        ),
    ],
)
def test_settings_sharing_with_the_production_system_are_refused_naming_both_and_the_setting(
    env: Callable[..., None], variables: dict[str, str], settings_named: list[str]
) -> None:
    env(**variables)
    for loading in ("test", "production"):  # either system's run refuses
        with pytest.raises(SystemMixError) as refused:
            load_settings(loading)
        message = str(refused.value)
        other = "production" if loading == "test" else "test"
        assert f"The {loading} system's settings share with the {other} system" in message
        assert "\n" not in message and "s3cret" not in message and ":pw@" not in message
        if loading == "test":
            assert all(name in message for name in settings_named), message
            assert "HAUSFLOW_TEST__" in message and "config/profiles/test.toml" in message


def test_a_credential_of_an_interface_off_on_one_system_is_not_a_mix(env: Callable[..., None]) -> None:
    env(
        HAUSFLOW_TEST__PORTAL__API_SECRET="the-same-secret",  # the test system's portal stays off
        HAUSFLOW_PRODUCTION__PORTAL__API_SECRET="the-same-secret",
    )
    assert load_settings("test").portal.api_secret.get_secret_value() == "the-same-secret"
    env(HAUSFLOW_TEST__PORTAL__ENABLED="true")
    with pytest.raises(SystemMixError, match=r"portal\.api_secret"):
        load_settings("test")


def test_process_wide_variables_belong_to_the_system_the_process_is_set_up_for(
    env: Callable[..., None],
) -> None:
    env(
        HAUSFLOW_PROFILE="production",
        HAUSFLOW_STATE_URL="postgresql+psycopg://hausflow@db.example/hausflow_state",
        HAUSFLOW_PORTAL__API_SECRET="production-secret-value",
    )
    assert load_settings("production").state_url.endswith("/hausflow_state")
    with pytest.raises(SystemMixError) as refused:  # a test run in this process would take them
        load_settings("test")
    message = str(refused.value)
    assert "HAUSFLOW_STATE_URL is set for the whole process" in message
    assert "set up for the production system" in message and "HAUSFLOW_TEST__STATE_URL" in message
    env(HAUSFLOW_TEST__STATE_URL="sqlite:///var/test/state.sqlite")
    test = load_settings("test")  # the secret reaches it, but its portal is off: unused
    assert test.state_url == "sqlite:///var/test/state.sqlite"
    env(HAUSFLOW_TEST__PORTAL__ENABLED="true")
    with pytest.raises(SystemMixError, match=r"HAUSFLOW_PORTAL__API_SECRET is set for the whole process"):
        load_settings("test")
    env(HAUSFLOW_TEST__PORTAL__API_SECRET="test-secret-value")
    assert load_settings("test").portal.api_secret.get_secret_value() == "test-secret-value"


def test_the_demo_system_is_kept_from_production_but_not_from_test(env: Callable[..., None]) -> None:
    env(HAUSFLOW_DEMO__STATE_URL="postgresql://demo@localhost:5432/hausflow_state")
    with pytest.raises(SystemMixError, match="The demo system's settings share with the production system"):
        load_settings("demo")
    env(HAUSFLOW_DEMO__STATE_URL=_toml("test")["state_url"])  # both work against sandboxes
    assert load_settings("demo").state_url == _toml("test")["state_url"]


# ---- the state store remembers its system -----------------------------------------------------
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.sqlite"
    make: Callable[[], str] = request.getfixturevalue("pg_database")
    return make()


def test_the_state_store_belongs_to_the_system_of_its_first_run(state_url: str) -> None:
    store = StateStore(state_url)
    assert store.system() is None
    store.claim_system("production")
    store.claim_system("production")  # its own runs go on
    assert StateStore(state_url).system() == "production"
    with pytest.raises(SystemMixError) as refused:
        StateStore(state_url).claim_system("test")
    message = str(refused.value)
    assert "belongs to the production system; this run is the test system's" in message
    assert "state_system" in message and "\n" not in message


def test_runs_of_two_systems_claiming_a_new_store_at_once_leave_it_to_one(state_url: str) -> None:
    StateStore(state_url)  # migrated first: the race is the claim's, not the migration's
    start = threading.Barrier(2)
    refused: list[str] = []

    def claim(system: str) -> None:
        start.wait()
        try:
            StateStore(state_url).claim_system(system)
        except SystemMixError:
            refused.append(system)

    threads = [threading.Thread(target=claim, args=(s,)) for s in ("production", "test")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    owner = StateStore(state_url).system()
    assert owner in ("production", "test") and refused == [
        {"production": "test", "test": "production"}[owner]
    ]


# ---- output folders remember their system ------------------------------------------------------
def test_an_output_folder_is_marked_on_first_use_and_refused_to_another_system(tmp_path: Path) -> None:
    folder = tmp_path / "bank" / "out"
    assert claim_output_dir(folder, "production") == folder
    marker = folder / SYSTEM_MARKER
    assert marker.read_text() == "production\n"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(marker.stat().st_mode) == 0o600
    claim_output_dir(folder, "production")
    with pytest.raises(SystemMixError, match=r"belongs to the production system .* this run is the test"):
        claim_output_dir(folder, "test")
    marker.unlink()  # the admin's decision: the folder is the test system's now
    claim_output_dir(folder, "test")
    assert marker.read_text() == "test\n"


# ---- runs ---------------------------------------------------------------------------------------
class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def run_log() -> Iterator[list[str]]:
    """The flow runs' log lines."""
    from prefect.logging import configuration

    if not configuration.PROCESS_LOGGING_CONFIG:  # the first run would configure it, dropping our handler
        configuration.setup_logging()
    handler = _Lines()
    logger = logging.getLogger("prefect.flow_runs")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


@pytest.mark.usefixtures("prefect_harness")
def test_a_test_system_run_of_each_interface_says_it_is_off_and_sends_and_writes_nothing(
    env: Callable[..., None],
    tmp_path: Path,
    sandbox: SandboxServer,
    deposit_sandbox: DepositSandboxServer,
    run_log: list[str],
) -> None:
    from flows.bank_reconciliation import import_bank_statement
    from flows.deposit_sync import run_deposit_bookings, run_deposit_master_data
    from flows.portal_sync import run_portal_sync
    from flows.sepa_debit import sepa_debit_run

    out = tmp_path / "out"
    env(  # everything a run would need to reach the partners, but the switches as the test profile has them
        HAUSFLOW_PROFILE="test",
        HAUSFLOW_CACHE_DIR=str(tmp_path / "cache"),
        HAUSFLOW_ERP_URL=f"sqlite:///{tmp_path}/erp.sqlite",
        HAUSFLOW_STATE_URL=f"sqlite:///{tmp_path}/state.sqlite",
        HAUSFLOW_PORTAL__BASE_URL=sandbox.base_url,
        HAUSFLOW_PORTAL__API_KEY=sandbox.key,
        HAUSFLOW_PORTAL__API_SECRET=sandbox.secret,
        HAUSFLOW_DEPOSIT__BASE_URL=deposit_sandbox.base_url,
        HAUSFLOW_DEPOSIT__CLIENT_USERNAME=deposit_sandbox.key,
        HAUSFLOW_DEPOSIT__PASSWORD=deposit_sandbox.secret,
        HAUSFLOW_SEPA__OUTPUT_DIR=str(out / "sepa"),
        HAUSFLOW_SEPA__PAYOUTS__OUTPUT_DIR=str(out / "payouts"),
    )
    requests = (sandbox.counters()["requests"], deposit_sandbox.counters()["requests"])
    results = [
        ("portal", run_portal_sync(profile="test")),
        ("deposit", run_deposit_master_data(profile="test")),
        ("deposit", run_deposit_bookings(profile="test")),
        ("SEPA (bank files and statements)", sepa_debit_run(collection_date=COLLECTION)),
        ("SEPA (bank files and statements)", import_bank_statement(str(CAMT / "camt053_paid.xml"))),
    ]
    assert all(summary == {"status": "disabled", "profile": "test"} for _, summary in results), results
    off = [line for line in run_log if "switched off in profile 'test'" in line]
    assert [line.split(" interface")[0] for line in off] == [f"The {name}" for name, _ in results]
    assert all("HAUSFLOW_TEST__" in line and ("nothing is" in line or "no file is" in line) for line in off)
    assert (sandbox.counters()["requests"], deposit_sandbox.counters()["requests"]) == requests
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no database, no folder, no file


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_against_another_systems_store_or_folder_fails_at_its_start_and_writes_nothing(
    tmp_path: Path,
) -> None:
    from flows.sepa_debit import sepa_debit_run

    s = make_scenario(tmp_path)
    with sepa_env(s.erp_url, s.state_url, str(s.output_dir)):
        StateStore(s.state_url).claim_system("production")
        with pytest.raises(SystemMixError, match="belongs to the production system; this run is the test"):
            sepa_debit_run(collection_date=COLLECTION, dry_run=True)
        assert not s.output_dir.exists()
    s = make_scenario(tmp_path / "second")
    claim_output_dir(s.output_dir, "production")
    with sepa_env(s.erp_url, s.state_url, str(s.output_dir)):
        with pytest.raises(SystemMixError, match=f"folder {s.output_dir} belongs to the production system"):
            sepa_debit_run(collection_date=COLLECTION, dry_run=True)
        assert [p.name for p in s.output_dir.iterdir()] == [SYSTEM_MARKER]  # no control listing
        assert StateStore(s.state_url).system() == "test"
