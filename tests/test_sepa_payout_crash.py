"""No payout paid twice, under a crash: SIGKILL the payout run at each step, run again, check.

The run happens in a child process (the plain steps of ``tasks/sepa_payouts.py``, no Prefect);
``HAUSFLOW_SEPA_FAULT`` makes it kill itself at the named point. A second run (another run id)
recovers and pays what is left. Afterwards every payout is in exactly one complete, valid file
that the ledger records as written, and nothing half-written is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from connectors.sepa.pain001 import scan_pain001
from connectors.sepa.payout_ledger import PayoutLedger
from tests.payout_support import PAYOUTS, payout_env, run_payouts

ROOT = Path(__file__).resolve().parent.parent
IDS = sorted(p.payout_id for p in PAYOUTS)

CHILD = """
from tests.payout_support import run_payouts
run_payouts(run_id="crashrun")
"""


def _crash(tmp_path: Path, fault: str) -> tuple[Path, PayoutLedger]:
    """Run the payouts in a child that kills itself at ``fault``; returns the folder and ledger."""
    out = tmp_path / "payouts" / "out"
    child_env = {**os.environ, "HAUSFLOW_SEPA_FAULT": fault, "PYTHONPATH": str(ROOT)}
    child = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, env=child_env, capture_output=True, timeout=120
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    return out, PayoutLedger(f"sqlite:///{tmp_path}/state.sqlite")


@pytest.mark.parametrize(
    ("fault", "xml_after_crash", "part_after_crash", "status_after_crash", "paid_by_rerun"),
    [
        ("after_begin", 0, 0, "prepared", 5),  # recorded, nothing written: the rerun pays all
        ("after_tx:3", 0, 1, "prepared", 5),  # half-written .part: dropped, the rerun pays all
        ("before_publish", 0, 1, "prepared", 5),  # complete .part, not renamed: dropped, paid by the rerun
        ("after_publish", 1, 0, "publishing", 0),  # renamed, not yet written: recovered, nothing again
        ("after_written", 1, 0, "written", 0),  # recorded as written: reported as already paid
    ],
)
def test_crash_then_rerun_pays_every_payout_exactly_once(
    tmp_path: Path,
    fault: str,
    xml_after_crash: int,
    part_after_crash: int,
    status_after_crash: str,
    paid_by_rerun: int,
) -> None:
    with payout_env(tmp_path):
        out, ledger = _crash(tmp_path, fault)
        assert len(list(out.glob("payout-listing-*.csv"))) == 1  # the control listing comes first
        assert len(list(out.glob("*.xml"))) == xml_after_crash
        assert len(list(out.glob("*.part"))) == part_after_crash
        assert [f["status"] for f in ledger.files()] == [status_after_crash]

        rerun = run_payouts(run_id="rerun001")
    assert rerun["number"] == paid_by_rerun
    assert sorted(p["payout_id"] for p in rerun["already_paid"]) == (IDS if paid_by_rerun == 0 else [])
    rows = ledger.rows(IDS)
    assert Counter(r["payout_id"] for r in rows) == Counter(IDS)  # each payout recorded exactly once
    assert {r["status"] for r in rows} == {"written"}
    written = {f["msg_id"] for f in ledger.files("written")}
    on_disk = sorted(out.glob("*.xml"))
    assert not list(out.glob("*.part")) and not list(out.glob("*.rejected"))
    assert {p.stem for p in on_disk} == written and len(written) == 1
    for path in on_disk:
        totals = scan_pain001(path, collect_ids=True)
        assert totals.problems() == []
        assert sorted(totals.end_to_end_ids) == sorted(
            r["end_to_end_id"] for r in rows if r["msg_id"] == path.stem
        )


def test_a_published_file_changed_before_the_ledger_knew_is_rejected_and_not_paid_again(
    tmp_path: Path,
) -> None:
    """The file had its final name: the bank may have it. Changed since, it is renamed
    ``.rejected`` so nobody sends it as it is, and its payouts are never paid a second time."""
    with payout_env(tmp_path):
        out, ledger = _crash(tmp_path, "after_publish")
        (published,) = out.glob("*.xml")
        published.write_text(published.read_text().replace("850.00", "8500.00", 1))  # tampered
        rerun = run_payouts(run_id="rerun001")
    assert (out / (published.name + ".rejected")).exists()
    assert rerun["number"] == 0 and rerun["recovered"]["unverified"] == [published.stem]
    assert sorted(p["payout_id"] for p in rerun["already_paid"]) == IDS
    (record,) = ledger.files()
    assert record["status"] == "written" and "check with the bank" in record["note"]
    assert Counter(r["payout_id"] for r in ledger.rows(IDS)) == Counter(IDS)


@pytest.mark.parametrize("gone", ["moved", "deleted"])
def test_a_published_file_taken_away_before_the_ledger_knew_is_not_paid_again(
    tmp_path: Path, gone: str
) -> None:
    """A bank client picks files up as they appear: a file moved or deleted after it got its
    final name (and before the ledger said ``written``) counts as sent, never as lost."""
    with payout_env(tmp_path):
        out, ledger = _crash(tmp_path, "after_publish")
        (published,) = out.glob("*.xml")
        if gone == "moved":
            published.rename(tmp_path / published.name)
        else:
            published.unlink()
        rerun = run_payouts(run_id="rerun001")
    assert rerun["number"] == 0 and rerun["recovered"]["unverified"] == [published.stem]
    assert [f["status"] for f in ledger.files()] == ["written"]
    assert {r["status"] for r in ledger.rows(IDS)} == {"written"}
    assert not list(out.glob("*.xml"))  # no second file
