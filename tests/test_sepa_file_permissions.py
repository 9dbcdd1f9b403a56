"""Files with names and full IBANs are the owner's only: SEPA files, control listings, spools."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from connectors.sepa.spool import SpoolWriter, remove_stale_spools
from connectors.sepa.writing import make_private_dir, open_private
from tests.sepa_support import debit_run, make_scenario, sepa_env


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A permissive umask (022 is common; 000 shows that the code does not rely on it)."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_debit_run_files_and_folders_are_owner_only(tmp_path: Path, open_umask: None) -> None:
    s = make_scenario(tmp_path)
    out = s.output_dir / "nested"
    with sepa_env(s.erp_url, s.state_url, str(out)):
        _run, plan, files = debit_run()
    assert files and _mode(plan.listing_path) == 0o600
    assert all(_mode(Path(f["path"])) == 0o600 for f in files)
    assert _mode(out) == _mode(s.output_dir) == 0o700  # both created by the run


def test_existing_folders_keep_their_mode_but_files_in_them_do_not(tmp_path: Path, open_umask: None) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    make_private_dir(shared / "a" / "b")
    assert _mode(shared) == 0o755 and _mode(shared / "a") == _mode(shared / "a" / "b") == 0o700
    old = shared / "listing.csv"
    old.write_text("old")
    old.chmod(0o644)
    with open_private(old, "w", encoding="utf-8") as fh:
        fh.write("new")
    assert _mode(old) == 0o600 and old.read_text() == "new"


def test_an_existing_output_folder_is_closed_when_used(tmp_path: Path, open_umask: None) -> None:
    """Files written before the owner-only change stay 0644; the folder they are in is closed (0700)."""
    parent = tmp_path / "srv"
    out = parent / "sepa-out"
    out.mkdir(parents=True, mode=0o755)
    parent.chmod(0o755)
    old = out / "HF20250101000000-old00000-001.xml"
    old.write_text("<old/>")
    old.chmod(0o644)
    assert make_private_dir(out) == out
    assert _mode(out) == 0o700 and _mode(parent) == 0o755  # the folder used, not its parents


def test_spool_is_owner_only_and_a_crashed_runs_spool_is_deleted(tmp_path: Path, open_umask: None) -> None:
    out = tmp_path / "out"
    spool = SpoolWriter(out / ".work-crashed", max_per_file=10)
    row = dict.fromkeys(
        ("claim_no", "person_no", "end_to_end_id", "mandate_id", "debtor_name", "debtor_iban"), "x"
    )
    row.update(attempt=1, object_no=None, amount_cents=100, mandate_signed_on="2024-01-01", debtor_bic=None)
    row.update(remittance=None, original_debtor_iban=None, original_agent_smnda="")
    spool.add(date(2026, 3, 4), "RCUR", row)
    spool.close()
    (spool_file,) = (out / ".work-crashed").iterdir()
    assert _mode(out / ".work-crashed") == 0o700 and _mode(spool_file) == 0o600
    mine = out / ".work-current"
    mine.mkdir()
    assert remove_stale_spools(out, keep=mine) == [out / ".work-crashed"]
    assert not (out / ".work-crashed").exists() and mine.exists()


def test_next_debit_run_deletes_a_spool_left_by_a_crash(tmp_path: Path) -> None:
    s = make_scenario(tmp_path)
    left = s.output_dir / ".work-deadbeef"
    left.mkdir(parents=True)
    (left / "0000_2026-03-04_RCUR.csv").write_text(
        "C1;1;P1;O1;E;100;M;2024-01-01;Name;DE50120300001234567897\n"
    )
    with sepa_env(s.erp_url, s.state_url, str(s.output_dir)):
        debit_run()
    assert not left.exists() and not list(s.output_dir.glob(".work-*"))
