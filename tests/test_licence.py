"""The licence file: signature (Ed25519), modules, end date, the command line, and every flow's gate."""

from __future__ import annotations

import asyncio
import logging
import tomllib
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from config.settings import load_settings
from connectors.licence import (
    MODULES,
    LicenceError,
    generate_key_pair,
    licence_from_settings,
    load_private_key,
    load_public_key,
    main,
    read_licence,
    sign_licence,
    write_licence,
)

CONTENT: dict[str, Any] = {
    "number": "HF-2026-0042",
    "customer": "Hausverwaltung Müller GmbH",
    "issued": date(2026, 1, 15),
    "valid_until": date(2027, 12, 31),
    "users": 25,
    "modules": ["portal", "owner", "sepa"],
}


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, str]:
    pem, public = generate_key_pair()
    private = tmp_path / "vendor.pem"
    private.write_bytes(pem)
    return private, public


@pytest.fixture
def signed(tmp_path: Path, keys: tuple[Path, str]) -> Path:
    return write_licence(tmp_path / "hausflow.lic.toml", CONTENT, load_private_key(keys[0]))


def test_a_signed_licence_reads_back_with_its_modules_users_and_end_date(
    signed: Path, keys: tuple[Path, str]
) -> None:
    licence = read_licence(signed, load_public_key(keys[1]))
    assert licence.number == "HF-2026-0042" and licence.customer == "Hausverwaltung Müller GmbH"
    assert licence.modules == {"portal", "owner", "sepa"} and licence.users == 25
    assert licence.valid_until == date(2027, 12, 31) and licence.signature.startswith("valid")
    assert licence.has("sepa", date(2027, 12, 31))  # the end date itself is still valid
    assert not licence.has("sepa", date(2028, 1, 1))
    assert "expired on 31.12.2027" in (licence.why_not("sepa", date(2028, 1, 1)) or "")
    assert "deposit interface (deposit) is not licensed" in (
        licence.why_not("deposit", date(2026, 6, 1)) or ""
    )


def test_layout_and_comments_do_not_matter_but_every_value_does(signed: Path, keys: tuple[Path, str]) -> None:
    public = load_public_key(keys[1])
    lines = signed.read_text(encoding="utf-8").splitlines()
    body = [line for line in lines if "=" in line and not line.startswith(("algorithm", "value"))]
    signature = [line for line in lines if line.startswith(("algorithm", "value"))]
    reordered = "# installed by the admin\n[licence]\n" + "\n".join(reversed(body)) + "\n\n[signature]\n"
    signed.write_text(reordered + "\n".join(signature) + "\n", encoding="utf-8")
    assert read_licence(signed, public).users == 25
    for old, new in (
        ("users = 25", "users = 250"),
        ('"sepa"]', '"sepa", "deposit"]'),
        ("valid_until = 2027-12-31", "valid_until = 2099-12-31"),
        ("Müller", "Mueller"),
    ):
        text = signed.read_text(encoding="utf-8")
        assert old in text
        signed.write_text(text.replace(old, new), encoding="utf-8")
        with pytest.raises(LicenceError, match="does not match its signature"):
            read_licence(signed, public)
        signed.write_text(text, encoding="utf-8")


def test_unsigned_or_foreign_signed_licences_are_refused_where_a_vendor_key_is_configured(
    tmp_path: Path, keys: tuple[Path, str], signed: Path
) -> None:
    unsigned = write_licence(tmp_path / "unsigned.toml", CONTENT)
    with pytest.raises(LicenceError, match="carries no \\[signature\\]"):
        read_licence(unsigned, load_public_key(keys[1]))
    assert read_licence(unsigned).signature.startswith("none")  # no vendor key: accepted, and said so
    _other_pem, other_public = generate_key_pair()
    with pytest.raises(LicenceError, match="another key"):
        read_licence(signed, load_public_key(other_public))
    assert read_licence(signed).signature.startswith("not checked")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[licence]\nnumber = 'X'\nusers = 3\n", "lacks a valid 'modules'"),
        ("[licence]\nnumber = 'X'\nmodules = []\nusers = 0\n", "users = 0"),
        ("[licence]\nnumber = 'X'\nmodules = []\nusers = 3\nvalid_until = 'soon'\n", "is not a date"),
        ("number = 'X'\n", "no \\[licence\\] table"),
        ("[licence\n", "cannot be read"),
    ],
)
def test_incomplete_files_are_refused_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(LicenceError, match=message):
        read_licence(path)


def test_missing_file_and_unknown_modules(tmp_path: Path) -> None:
    with pytest.raises(LicenceError, match="is missing"):
        read_licence(tmp_path / "none.toml")
    path = write_licence(tmp_path / "newer.toml", {**CONTENT, "modules": ["portal", "telephony"]})
    licence = read_licence(path)
    assert licence.modules == {"portal"} and licence.unknown_modules == ("telephony",)


def test_the_command_line_makes_keys_signs_and_shows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = tmp_path / "v.pem", tmp_path / "v.pub"
    assert main(["keygen", "--private", str(private), "--public", str(public)]) == 0
    assert private.stat().st_mode & 0o777 == 0o600
    serialization.load_pem_private_key(private.read_bytes(), password=None)
    path = write_licence(tmp_path / "l.toml", CONTENT)
    assert main(["sign", str(path), "--key", str(private)]) == 0
    assert tomllib.loads(path.read_text())["signature"]["algorithm"] == "ed25519"
    capsys.readouterr()
    assert main(["show", str(path), "--public-key-file", str(public)]) == 0
    shown = capsys.readouterr().out
    assert "HF-2026-0042" in shown and "valid (Ed25519" in shown and "31.12.2027" in shown
    assert "yes  owner" in shown and "no   deposit" in shown
    path.write_text(path.read_text().replace("users = 25", "users = 26"))
    assert main(["show", str(path), "--public-key-file", str(public)]) == 1
    assert "does not match its signature" in capsys.readouterr().err
    resigned = sign_licence(path, load_private_key(private), tmp_path / "re.toml")
    assert read_licence(resigned, load_public_key(public.read_text())).users == 26


def test_the_demo_licence_is_made_once_and_again_when_it_expired(tmp_path: Path) -> None:
    from connectors.licence import demo_licence

    path, public, made = demo_licence(tmp_path / "licence", date(2026, 12, 1))
    licence = read_licence(path, load_public_key(public.read_text()))
    assert made and licence.modules == set(MODULES) and licence.valid_until == date(2027, 12, 1)
    assert demo_licence(tmp_path / "licence", date(2027, 6, 1)) == (path, public, False)
    _path, _public, made = demo_licence(tmp_path / "licence", date(2027, 12, 2))  # expired: a new one
    assert made and read_licence(path, load_public_key(public.read_text())).valid_until == date(2028, 12, 1)


def test_without_a_file_the_settings_booleans_are_the_licence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAUSFLOW_LICENCES__DEPOSIT", "false")
    licence = licence_from_settings(load_settings("test").licences)
    assert not licence.from_file and "deposit" not in licence.modules and "portal" in licence.modules
    assert "licences.deposit = false" in (licence.why_not("deposit", date(2026, 1, 1)) or "")


# ---- the flows' gate ---------------------------------------------------------------------------
class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def run_log() -> Iterator[list[str]]:
    """The flow runs' log lines (Prefect's run logger does not reach pytest's caplog reliably)."""
    from prefect.logging import configuration

    if not configuration.PROCESS_LOGGING_CONFIG:  # the first run would configure it, dropping our handler
        configuration.setup_logging()
    handler = _Lines()
    logger = logging.getLogger("prefect.flow_runs")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


@pytest.fixture
def licence_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: tuple[Path, str]
) -> Iterator[dict[str, Any]]:
    """A signed licence file with only the portal (no owner), every boolean on as fallback."""
    path = write_licence(
        tmp_path / "hausflow.lic.toml", {**CONTENT, "modules": ["portal"]}, load_private_key(keys[0])
    )
    env = {
        "HAUSFLOW_LICENCES__FILE": str(path),
        "HAUSFLOW_LICENCES__PUBLIC_KEY": keys[1],
        "HAUSFLOW_BUSINESS_DATE": "2026-06-01",
        "HAUSFLOW_STATE_URL": f"sqlite:///{tmp_path}/state.sqlite",
        "HAUSFLOW_ERP_URL": f"sqlite:///{tmp_path}/erp.sqlite",
        "HAUSFLOW_PROFILE": "test",
        **{f"HAUSFLOW_LICENCES__{m.upper()}": "true" for m in MODULES},
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield {"path": path, "keys": keys}


def test_the_licence_file_decides_over_the_booleans_and_feeds_the_portal_rules(
    licence_env: dict[str, Any],
) -> None:
    from prefect.logging import disable_run_logger

    from tasks.licensing import licensed
    from tasks.portal_tasks import contact_rules

    settings = load_settings("test")
    assert settings.licences.owner and settings.licences.caretaker  # the fallback says yes
    with disable_run_logger():
        in_force, stop = licensed(settings, "portal")
        assert stop is None
        rules = contact_rules(in_force)
        assert not rules.owner_licence and not rules.caretaker_licence  # the file says no
        _same, stop = licensed(settings, "sepa")
    assert stop is not None and stop["status"] == "not licensed" and stop["module"] == "sepa"
    assert "HF-2026-0042" in stop["reason"] and "ask the vendor" in stop["reason"]


@pytest.mark.usefixtures("prefect_harness")
def test_each_flow_without_its_module_does_nothing_and_completes(
    licence_env: dict[str, Any], tmp_path: Path, run_log: list[str]
) -> None:
    from flows.bank_reconciliation import import_bank_statement
    from flows.deposit_sync import run_deposit_bookings, run_deposit_master_data
    from flows.sepa_debit import sepa_debit_run

    never_read = tmp_path / "statement.xml"  # does not exist: the gate stops before any file is read
    results = {
        "deposit-master-data": run_deposit_master_data(profile="test"),
        "deposit-bookings": run_deposit_bookings(profile="test"),
        "sepa-debit-run": sepa_debit_run(dry_run=True),
        "import-bank-statement": import_bank_statement(str(never_read)),
    }
    for name, summary in results.items():
        assert summary["status"] == "not licensed", (name, summary)
        assert summary["module"] in ("deposit", "sepa")
    lines = [line for line in run_log if "Not licensed" in line]
    assert len(lines) == 4 and all("nothing is read or sent" in line for line in lines)
    assert not (tmp_path / "state.sqlite").exists() and not (tmp_path / "erp.sqlite").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_portal_sync_without_the_portal_module_and_an_expired_licence(
    licence_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.portal_sync import portal_sync

    monkeypatch.setenv("HAUSFLOW_BUSINESS_DATE", "2028-01-01")  # after the end date
    state = asyncio.run(portal_sync(profile="test", return_state=True))  # type: ignore[call-arg]
    assert state.is_completed()
    summary = state.result()
    assert summary["status"] == "not licensed" and "expired on 31.12.2027" in summary["reason"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_tampered_licence_fails_the_run_with_the_reason(licence_env: dict[str, Any]) -> None:
    from flows.deposit_sync import deposit_master_data

    path: Path = licence_env["path"]
    path.write_text(path.read_text().replace('"portal"', '"portal", "deposit"'))
    state = asyncio.run(deposit_master_data(profile="test", return_state=True))  # type: ignore[call-arg]
    assert state.is_failed()
    with pytest.raises(LicenceError, match="does not match its signature"):
        state.result()
