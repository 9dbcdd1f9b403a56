"""Every flow module's command line: ``--help`` describes the flow's parameters, an unknown argument
ends with exit code 2, and the options given reach the flow run as its parameters."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from flows import bank_reconciliation, portal_sync, resync, scale_out, sepa_debit, serve

ROOT = Path(__file__).resolve().parent.parent

# module -> the options its --help must describe
MODULES = {
    "flows.portal_sync": [
        "--dry-run",
        "--full-resync",
        "--objects",
        "--entities",
        "--profile",
        "--partition",
    ],
    "flows.scale_out": ["portal", "deposit", "--partitions", "--full-resync", "--attempts", "--profile"],
    "flows.resync": ["portal", "deposit", "--objects", "--entities", "--full", "--dry-run", "--profile"],
    "flows.sepa_debit": ["--collection-date", "--batch-booking", "--no-batch-booking", "--dry-run"],
    "flows.bank_reconciliation": ["FILE", "--dry-run"],
    "flows.serve": ["--persons", "--prefect-port", "--sandbox-port", "--no-first-run"],
}


def _env() -> dict[str, str]:
    """No Prefect API: a command line that started a flow would have to start a server and be slow."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HAUSFLOW_"))}


def test_every_flow_module_has_help_and_refuses_unknown_arguments_with_exit_code_2() -> None:
    """As processes (each imports Prefect, 3-4 s): ``--help`` of every module, and the unknown
    argument where it used to start a sync; the other modules' refusals are checked in-process below."""
    cases = {(module, "--help"): ["--help"] for module in MODULES}
    cases[("flows.portal_sync", "unknown")] = ["--dry-rn"]
    started = {
        key: subprocess.Popen(
            [sys.executable, "-m", key[0], *args],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for key, args in cases.items()
    }
    done = {key: (proc.wait(timeout=120), *proc.communicate()) for key, proc in started.items()}
    for module, options in MODULES.items():
        code, out, err = done[(module, "--help")]
        assert code == 0, (module, err)
        assert out.startswith("usage: "), (module, out)
        for option in options:
            assert option in out, (module, option, out)
    code, out, err = done[("flows.portal_sync", "unknown")]
    assert code == 2, (out, err)
    assert "unrecognized arguments: --dry-rn" in err
    assert out == ""


@pytest.mark.parametrize(
    "command_line",
    [
        portal_sync.command_line,
        resync.command_line,
        sepa_debit.command_line,
        bank_reconciliation.command_line,
        serve.main,
    ],
)
def test_an_unknown_argument_ends_with_exit_code_2(command_line: Any) -> None:
    with pytest.raises(SystemExit) as stop:
        command_line(["--no-such-option", "x.xml"])
    assert stop.value.code == 2


@pytest.mark.parametrize(
    ("flow", "command_line", "argv"),
    [
        (
            portal_sync.portal_sync,
            portal_sync.command_line,
            [
                *("--dry-run", "--full-resync", "--objects", "1001,1002", "--objects", "1003"),
                *("--entities", "units", "contacts", "--profile", "demo", "--partition", "2/3:1001..1050"),
            ],
        ),
        (
            resync.resync,
            resync.command_line,
            [
                "portal",
                "--objects",
                "1001",
                "--entities",
                "contacts",
                "--full",
                "--dry-run",
                "--profile",
                "demo",
            ],
        ),
        (
            sepa_debit.sepa_debit_run,
            sepa_debit.command_line,
            ["--collection-date", "2026-12-01", "--no-batch-booking", "--dry-run"],
        ),
        (bank_reconciliation.import_bank_statement, bank_reconciliation.command_line, ["a.xml", "b.xml"]),
    ],
)
def test_the_options_are_the_flows_parameters(flow: Any, command_line: Any, argv: list[str]) -> None:
    parameters = command_line(argv)
    assert set(parameters) == set(inspect.signature(flow.fn).parameters)
    flow.validate_parameters(parameters)


def test_the_options_mean_what_they_say() -> None:
    assert portal_sync.command_line([]) == {"dry_run": False, "full_resync": False}  # as before
    assert portal_sync.command_line(
        ["--dry-run", "--objects", "1001, 1002", "1003", "--entities", "units"]
    ) == {
        "dry_run": True,
        "full_resync": False,
        "objects": ["1001", "1002", "1003"],
        "entities": ["units"],
    }
    assert portal_sync.command_line(["--partition", "2/3:1001..1050"])["partition"] == {
        "index": 1, "count": 3, "first": "1001", "last": "1050"
    }  # fmt: skip
    for wrong in ("3/2:1..9", "0/2:1..9", "1/2:1001"):
        with pytest.raises(SystemExit):
            portal_sync.command_line(["--partition", wrong])
    for partner, parent in (
        ("portal", scale_out.portal_sync_partitioned),
        ("deposit", scale_out.deposit_sync_partitioned),
    ):
        chosen, parameters = scale_out.command_line([partner, "--partitions", "3", "--profile", "demo"])
        assert chosen == partner and parameters["partitions"] == 3 and parameters["profile"] == "demo"
        parent.validate_parameters(parameters)
    assert scale_out.command_line([])[0] == "portal"
    with pytest.raises(SystemExit):
        scale_out.command_line(["--partitions", "0"])
    assert resync.command_line(["deposit"]) == {"partner": "deposit", "full": False, "dry_run": False}
    assert resync.command_line(["portal", "--objects", "1001,1002", "--entities", "units", "--dry-run"]) == {
        "partner": "portal",
        "full": False,
        "dry_run": True,
        "objects": ["1001", "1002"],
        "entities": ["units"],
    }
    assert sepa_debit.command_line([]) == {"dry_run": False}
    assert sepa_debit.command_line(["--collection-date", "2026-12-01", "--batch-booking"]) == {
        "dry_run": False,
        "collection_date": date(2026, 12, 1),
        "batch_booking": True,
    }
    assert bank_reconciliation.command_line(["a.xml"]) == {"paths": ["a.xml"], "dry_run": False}
    assert bank_reconciliation.command_line(["a.xml", "--dry-run"]) == {"paths": ["a.xml"], "dry_run": True}


@pytest.mark.parametrize(
    ("command_line", "argv"),
    [
        (
            portal_sync.command_line,
            ["--objects", ","],
        ),  # no object would mean all of them, archiving included
        (portal_sync.command_line, ["--entities", "owners"]),
        (portal_sync.command_line, ["--profile", "staging"]),
        (resync.command_line, []),  # which partner: no default
        (resync.command_line, ["casavi"]),
        (resync.command_line, ["portal", "--objects", ","]),
        (sepa_debit.command_line, ["--collection-date", "01.12.2026"]),
        (bank_reconciliation.command_line, []),
    ],
)
def test_wrong_values_end_with_exit_code_2(command_line: Any, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        command_line(argv)
    assert stop.value.code == 2


def test_the_portal_sync_command_line_runs_the_flow_with_those_parameters(
    prefect_harness: None, sandbox: Any, tmp_path: Path
) -> None:
    """``python -m flows.portal_sync`` as a process: the flow run has the options as parameters, and
    the summary is the JSON line printed last (``bench/portal_sync.py`` reads it)."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL

    from connectors.erp import demo
    from connectors.erp.database import make_engine
    from tests.portal_env import BUSINESS_DATE, portal_env

    erp_url, state_url = f"sqlite:///{tmp_path}/erp.sqlite", f"sqlite:///{tmp_path}/state.sqlite"
    demo.generate_erp(make_engine(erp_url), persons=100, seed=5, business_date=BUSINESS_DATE)
    sandbox.reset()
    with portal_env(sandbox, erp_url, state_url) as values:
        env = {**_env(), **values, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
        env["HAUSFLOW_CACHE_DIR"] = str(tmp_path / "cache")
    argv = ["--dry-run", "--objects", "1001", "--entities", "units", "contacts", "--profile", "test"]
    done = subprocess.run(
        [sys.executable, "-m", "flows.portal_sync", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["planned_writes"] > 0 and summary["confirmed"] == 0
    assert sandbox.counters()["writes"] == 0

    async def parameters() -> dict[str, Any]:
        async with get_client() as client:
            return dict((await client.read_flow_run(UUID(summary["run_id"]))).parameters)

    assert asyncio.run(parameters()) == {
        "dry_run": True,
        "full_resync": False,
        "objects": ["1001"],
        "entities": ["units", "contacts"],
        "profile": "test",
        "partition": None,
    }
