"""Never twice, under a crash: SIGKILL the debit run at different points, run again, check everything.

The run happens in a child process (the plain steps of ``tasks/sepa_run.py``, no Prefect, about
1 s); ``HAUSFLOW_SEPA_FAULT`` makes it kill itself with SIGKILL at the named point. Then a normal
run recovers and finishes. Afterwards every collectable claim is in exactly one written file, every
file on disk is complete and valid, and no half-written file is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.sepa.ledger import SepaLedger
from connectors.sepa.pain008 import scan_pain008
from tests.sepa_support import EXPECTED, claim_states, debit_run, make_scenario, sepa_env

ROOT = Path(__file__).resolve().parent.parent
DEBITED = {c for c, (outcome, _) in EXPECTED.items() if outcome == "debit"}

CHILD = """
from tests.sepa_support import debit_run
debit_run(run_id="crashrun")
"""


@pytest.mark.parametrize(
    ("fault", "xml_after_crash", "part_after_crash", "file_statuses"),
    [
        ("after_begin", 0, 0, ["prepared"]),  # file 1 recorded, nothing written yet
        ("after_tx:3", 1, 1, ["written", "prepared"]),  # file 1 published; file 2 half-written
        ("before_publish:2", 1, 1, ["written", "prepared"]),  # file 2 complete as .part, not renamed
        ("after_publish", 1, 0, ["publishing"]),  # file 1 renamed, the ledger not yet told
        ("after_written:3", 3, 0, ["written", "written", "written"]),  # file 3 recorded, ERP not updated
    ],
)
def test_crash_then_rerun_collects_every_claim_exactly_once(
    tmp_path: Path, fault: str, xml_after_crash: int, part_after_crash: int, file_statuses: list[str]
) -> None:
    s = make_scenario(tmp_path)
    with sepa_env(s.erp_url, s.state_url, str(s.output_dir), max_transactions_per_file=2) as env:
        child_env = {**os.environ, **env, "HAUSFLOW_SEPA_FAULT": fault, "PYTHONPATH": str(ROOT)}
        child = subprocess.run(
            [sys.executable, "-c", CHILD], cwd=ROOT, env=child_env, capture_output=True, timeout=120
        )
        assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
        assert len(list(s.output_dir.glob("*.xml"))) == xml_after_crash
        assert len(list(s.output_dir.glob("*.part"))) == part_after_crash
        assert [f["status"] for f in SepaLedger(s.state_url).files()] == file_statuses

        debit_run(run_id="rerun001", created_at=datetime(2026, 3, 2, 9, 30, tzinfo=UTC))

    ledger = SepaLedger(s.state_url)
    rows = ledger.rows_of_claims(sorted(DEBITED))
    written = [r for r in rows if r["status"] == "written"]
    assert Counter(r["claim_no"] for r in written) == Counter(DEBITED)  # each claim exactly once
    assert all(r["status"] == "written" for r in rows)  # nothing left prepared
    files = {f["msg_id"]: f for f in ledger.files()}
    on_disk = sorted(s.output_dir.glob("*.xml"))
    assert not list(s.output_dir.glob("*.part")) and not list(s.output_dir.glob("*.rejected"))
    assert {p.stem for p in on_disk} == {m for m, f in files.items() if f["status"] == "written"}
    for path in on_disk:
        totals = scan_pain008(path, collect_ids=True)
        assert totals.problems() == []
        assert sorted(totals.end_to_end_ids) == sorted(
            r["end_to_end_id"] for r in written if r["msg_id"] == path.stem
        )
        assert files[path.stem]["erp_synced_at"] is not None
    states = claim_states(s.erp_url)
    assert {c for c in DEBITED if states[c][0] == "IN_COLLECTION"} == DEBITED
