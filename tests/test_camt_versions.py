"""Bank statements as banks send them: camt.052/053/054 in .001.02, .001.04 and .001.08, refused files
reported with their line while the others are imported, intraday reports counted once, the command line.

Every camt file here is written by ``tests/camt_builder.py`` and checked against its own schema.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from lxml import etree

from connectors.sepa.camt import (
    CamtRejected,
    iter_entries,
    layout_of,
    open_camt,
    schema_error_line,
    validate_camt,
)
from connectors.sepa.ledger import SepaLedger
from connectors.sepa.schemas import CAMT_VERSIONS, SCHEMA_FILES, XSD_DIR
from tasks.sepa_run import describe_file, import_statement, reconcile_statement
from tests.camt_builder import Entry, Tx, camt_document, write_camt
from tests.sepa_support import Scenario, claim_states, debit_run, make_scenario, sepa_env

ROOT = Path(__file__).resolve().parent.parent
BLOCK = "HF20260302090000-testrun0-001-003"  # the RCUR block of the standard debit run: 1195.50
BLOCK_CLAIMS = {"C1001", "C1002", "C3001", "C1010"}

BLOCK_ENTRY = Entry("1195.50", bank_ref="B-1", batch_pmt_inf_id=BLOCK, batch_nb_of_txs=4, info="SEPA-SAMMEL")
SINGLE_ENTRY = Entry(
    "620.00",
    bank_ref="B-2",
    txs=[
        Tx(
            "620.00",
            end_to_end_id="O100-P002/C2001",
            pmt_inf_id="HF20260302090000-testrun0-001-001",
            mandate_id="M-P002",
            debtor="Mieterin Zwei",
            debtor_iban="DE50120300001234567897",
            remittance="Miete Maerz",
        )
    ],
)
RETURN_ENTRY = Entry(
    "750.00",
    bank_ref="B-9",
    credit_debit="DBIT",
    code=("PMNT", "IDDT", "UPDD"),
    txs=[
        Tx(
            "750.00",
            end_to_end_id="O100-P001/C1001",
            mandate_id="M-P001",
            credit_debit="DBIT",
            creditor="Hausverwaltung Muster",
            return_reason="AC04",
            return_info="Konto erloschen",
        )
    ],
)
PENDING_ENTRY = Entry("99.99", status="PDNG", booked=None, txs=[Tx("99.99", end_to_end_id="O100-P004/C4001")])
TRANSFER_ENTRY = Entry(
    "250.00",
    bank_ref="B-3",
    code=("PMNT", "RCDT", "ESCT"),
    txs=[Tx("250.00", end_to_end_id="NOTPROVIDED", debtor="Max Mustermann", remittance="Kaution Whg 3")],
)
ALL_ENTRIES = [BLOCK_ENTRY, SINGLE_ENTRY, RETURN_ENTRY, PENDING_ENTRY, TRANSFER_ENTRY]


@pytest.fixture
def collected(tmp_path: Path) -> Iterator[Scenario]:
    """The standard scenario after one debit run (file HF20260302090000-testrun0-001)."""
    s = make_scenario(tmp_path)
    with sepa_env(s.erp_url, s.state_url, str(s.output_dir)):
        debit_run()
        yield s


def _schema(name: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(XSD_DIR / SCHEMA_FILES[name])))


def _ledger(s: Scenario, claim_no: str) -> tuple[str, Decimal | None]:
    rows = SepaLedger(s.state_url).rows_of_claims([claim_no])
    assert len(rows) == 1
    paid = rows[0]["paid_amount"]
    return str(rows[0]["status"]), None if paid is None else Decimal(str(paid))


# ---- the files and the version mapping ----------------------------------------------------------
@pytest.mark.parametrize("name", CAMT_VERSIONS)
def test_each_test_file_is_valid_against_its_own_schema_and_only_that(name: str) -> None:
    document = etree.fromstring(camt_document(name, "M-1", ALL_ENTRIES))
    schema = _schema(name)
    assert schema.validate(document), schema.error_log
    other = next(v for v in CAMT_VERSIONS if v[:8] == name[:8] and v != name)
    assert not _schema(other).validate(document)  # each version is checked by its own schema


_PLAIN = Entry(
    "620.00",
    bank_ref="B-2",
    txs=[Tx("620.00", end_to_end_id="O100-P002/C2001", debtor="Mieterin Zwei")],
)


def _instructed(entry: Entry) -> Entry:
    return replace(entry, txs=[replace(t, instructed_only=True) for t in entry.txs])


#: How banks write the same booking, per version, and what the reader must make of it.
#: Columns of ``expected``: status, booking date, transaction amount, its direction, debtor.
VARIANTS = [
    ("camt.052.001.02", _instructed(_PLAIN), ("BOOK", "2026-03-04", "620.00", "CRDT", "Mieterin Zwei")),
    (
        "camt.052.001.08",
        replace(_instructed(_PLAIN), status_proprietary=True),
        ("BOOK", "2026-03-04", "620.00", "CRDT", "Mieterin Zwei"),
    ),
    (
        "camt.053.001.02",
        replace(_PLAIN, booked_tag="DtTm"),
        ("BOOK", "2026-03-04", "620.00", "CRDT", "Mieterin Zwei"),
    ),
    (
        "camt.053.001.02",
        replace(_PLAIN, booked_text="2026-03-04+01:00"),
        ("BOOK", "2026-03-04", "620.00", "CRDT", "Mieterin Zwei"),
    ),
    (
        "camt.053.001.04",
        replace(_instructed(_PLAIN), booked_text="2026-03-04Z"),
        ("BOOK", "2026-03-04", "620.00", "CRDT", "Mieterin Zwei"),
    ),
    (
        "camt.053.001.08",
        replace(_PLAIN, booked_tag="DtTm", booked_text="2026-03-04T23:30:00Z"),  # 00:30 in Berlin
        ("BOOK", "2026-03-05", "620.00", "CRDT", "Mieterin Zwei"),
    ),
    (
        "camt.053.001.08",
        replace(_instructed(_PLAIN), booked_tag="DtTm", booked_text="2026-03-04T23:30:00+01:00"),
        ("BOOK", "2026-03-04", "620.00", "CRDT", "Mieterin Zwei"),
    ),
    (
        "camt.054.001.02",
        replace(_PLAIN, booked_tag="DtTm", booked_text="2026-03-04T24:00:00"),  # the end of the 4th
        ("BOOK", "2026-03-05", "620.00", "CRDT", "Mieterin Zwei"),
    ),
    (
        "camt.054.001.04",
        replace(_PLAIN, booked_tag="DtTm", booked_text="2026-03-04T10:15:00.123456789+01:00"),
        ("BOOK", "2026-03-04", "620.00", "CRDT", "Mieterin Zwei"),
    ),
    (
        "camt.054.001.08",
        replace(_instructed(_PLAIN), status="PDNG", status_proprietary=True, booked=None),
        ("PDNG", None, "620.00", "CRDT", "Mieterin Zwei"),
    ),
]


@pytest.mark.parametrize(("name", "entry", "expected"), VARIANTS)
def test_version_mapping_rule_table(
    tmp_path: Path, name: str, entry: Entry, expected: tuple[str | None, ...]
) -> None:
    """Each row is a file the way a bank may write it, valid against its own schema, read back."""
    path = write_camt(tmp_path, "variant.xml", name, "M-1", [entry])
    schema = _schema(name)
    assert schema.validate(etree.parse(str(path))), schema.error_log
    (read,) = list(iter_entries(open_camt(path)))
    tx = read.transactions[0]
    got = (
        read.status,
        read.booking_date.isoformat() if read.booking_date else None,
        str(tx.amount),
        tx.credit_debit,
        tx.debtor_name,
    )
    assert got == expected


def test_camt_052_001_04_has_no_layout() -> None:
    with pytest.raises(KeyError):
        layout_of("camt.052.001.04")


def test_every_version_reads_to_the_same_records(tmp_path: Path) -> None:
    read = {}
    for name in CAMT_VERSIONS:
        path = write_camt(tmp_path, f"{name}.xml", name, "M-1", ALL_ENTRIES)
        camt = open_camt(path)
        assert (camt.kind, camt.version, camt.name, camt.msg_id) == (name[:8], name[9:], name, "M-1")
        read[name] = list(iter_entries(camt))
    first = read["camt.053.001.08"]
    for name, entries in read.items():
        assert entries == first, name
    block, single, ret, pending, transfer = first
    assert (block.status, block.amount, block.batch_pmt_inf_id, block.batch_nb_of_txs) == (
        "BOOK",
        Decimal("1195.50"),
        BLOCK,
        4,
    )
    assert block.account_iban == "DE02120300000000202051" and block.identity == "DE02120300000000202051/B-1"
    tx = single.transactions[0]
    assert (tx.end_to_end_id, tx.mandate_id, tx.amount, tx.debtor_name, tx.debtor_iban, tx.remittance) == (
        "O100-P002/C2001",
        "M-P002",
        Decimal("620.00"),
        "Mieterin Zwei",
        "DE50120300001234567897",
        "Miete Maerz",
    )
    assert (ret.credit_debit, ret.bank_code, ret.transactions[0].return_reason) == (
        "DBIT",
        "PMNT/IDDT/UPDD",
        "AC04",
    )
    assert ret.transactions[0].creditor_name == "Hausverwaltung Muster"
    assert (pending.status, pending.booking_date) == ("PDNG", None)
    assert pending.identity.startswith("DE02120300000000202051/sha256:")  # no bank reference: a digest
    assert pending.identity.endswith("#1")
    assert transfer.transactions[0].debtor_name == "Max Mustermann"


@pytest.mark.parametrize("name", CAMT_VERSIONS)
def test_every_version_goes_into_the_same_matching(collected: Scenario, name: str) -> None:
    path = write_camt(collected.output_dir.parent, f"in-{name}.xml", name, f"M-{name}", ALL_ENTRIES)
    result = reconcile_statement(path, collected.erp_url, collected.state_url, collected.output_dir)
    assert result.counts == {"paid": 2, "returned": 1, "pending": 1, "unmatched": 1}
    states = claim_states(collected.erp_url)
    assert states["C2001"][0] == "PAID" and states["C3001"][0] == "PAID"
    assert states["C1001"] == ("RETURNED", Decimal("750.00"), "AC04")
    assert states["C4001"][0] == "IN_COLLECTION"
    assert result.unmatched[0]["debtor"] == "Max Mustermann"  # who sent the money nobody expected
    assert result.unmatched[0]["remittance"] == "Kaution Whg 3"


# ---- refused files ------------------------------------------------------------------------------
def _other_version(tmp_path: Path, name: str) -> Path:
    text = camt_document("camt.053.001.08", "M-1", [SINGLE_ENTRY]).decode()
    path = tmp_path / f"{name}.xml"
    path.write_text(text.replace("camt.053.001.08", name), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("make", "reason", "advice"),
    [
        (
            lambda d: _other_version(d, "camt.052.001.04"),
            "camt.052.001.04 (intraday account report) is not supported (no schema",
            "ask the bank for camt.052.001.08 or .02",
        ),
        (
            lambda d: _other_version(d, "camt.053.001.10"),
            "camt.053.001.10 (end-of-day account statement) is not supported; supported: camt.053 001.02, "
            "001.04, 001.08",
            "ask the bank for camt.053.001.08 or .02",
        ),
        (
            lambda d: _other_version(d, "camt.054.001.06"),
            "camt.054.001.06 (debit/credit notification) is not supported",
            "ask the bank for camt.054.001.08 or .02",
        ),
        (
            lambda d: _other_version(d, "pain.008.001.08"),
            "not a bank statement: a pain.008.001.08 file",
            "import the bank's account statements (camt.053)",
        ),
        (lambda d: _write(d / "empty.xml", ""), "not a well-formed XML file", "download it again"),
        (
            lambda d: _write(d / "mt940.sta", ":20:STARTUMSE\n:25:12030000/202051\n"),
            "not a well-formed",
            "again",
        ),
        (lambda d: d / "missing.xml", "cannot be read (No such file or directory)", "check the path"),
    ],
)
def test_refused_files_say_why_and_what_to_ask_the_bank_for(
    tmp_path: Path, make: object, reason: str, advice: str
) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(CamtRejected) as refused:
        validate_camt(open_camt(path))
    assert refused.value.file == path.name
    assert reason in refused.value.reason
    assert advice in refused.value.advice
    assert str(refused.value).startswith(path.name)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _line_of(text: str, needle: str) -> int:
    lines = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(lines) == 1, needle
    return lines[0]


@pytest.mark.parametrize("name", ["camt.053.001.02", "camt.052.001.08", "camt.054.001.04", "camt.053.001.08"])
@pytest.mark.parametrize(
    ("broken", "needle", "message"),
    [
        ("<Sts>", "<Unexpected>x</Unexpected>", "Element 'Unexpected': This element is not expected"),
        (
            "<AcctSvcrRef>B-3</AcctSvcrRef>",
            "<AcctSvcrRef>B-3-and-far-too-long-for-the-35-characters-it-may-have</AcctSvcrRef>",
            "AcctSvcrRef",
        ),
        ('<Amt Ccy="EUR">620.00</Amt>', '<Amt Ccy="EUR">6x20</Amt>', "'6x20' is not a valid value"),
    ],
)
def test_a_schema_error_names_the_file_and_the_real_line(
    tmp_path: Path, name: str, broken: str, needle: str, message: str
) -> None:
    text = camt_document(name, "M-1", ALL_ENTRIES).decode()
    if broken == "<Sts>":  # an element the schema does not know, on a line of its own, before Sts
        lines = text.splitlines()
        at = next(i for i, line in enumerate(lines) if "<Sts>" in line and "PDNG" not in line)
        lines.insert(at, " " * 8 + needle)
        text = "\n".join(lines) + "\n"
    else:
        assert text.count(broken) >= 1
        text = text.replace(broken, needle, 1)
    path = _write(tmp_path / f"broken-{name}.xml", text)
    expected = _line_of(text, needle)
    with pytest.raises(CamtRejected) as refused:
        validate_camt(open_camt(path))
    error = refused.value
    assert error.line == expected
    assert str(error).startswith(f"{path.name} line {expected}: not valid against {name}.xsd")
    assert message in error.reason and "line 0" not in str(error) and "{urn:" not in str(error)
    tree = _schema(name)  # a whole-tree validation (the memory-hungry way) finds the same line
    assert not tree.validate(etree.parse(str(path)))
    assert tree.error_log.last_error.line == expected
    assert schema_error_line(path, name) == expected


def test_the_line_of_an_error_in_a_file_on_one_line(tmp_path: Path) -> None:
    text = camt_document("camt.053.001.02", "M-1", ALL_ENTRIES).decode().replace("\n", "")
    path = _write(tmp_path / "one-line.xml", text.replace("<Sts>PDNG</Sts>", ""))
    with pytest.raises(CamtRejected) as refused:
        validate_camt(open_camt(path))
    assert refused.value.line == 1


def test_a_truncated_file_names_its_last_line(tmp_path: Path) -> None:
    text = camt_document("camt.053.001.02", "M-1", ALL_ENTRIES).decode()
    cut = text[: text.index("<Sts>PDNG</Sts>")]
    path = _write(tmp_path / "cut.xml", cut)
    with pytest.raises(CamtRejected) as refused:
        validate_camt(open_camt(path))
    assert "not a well-formed XML file" in refused.value.reason
    assert refused.value.line == cut.count("\n") + 1
    assert "download it again" in refused.value.advice


# ---- a run with one bad file among good ones ----------------------------------------------------
def _mixed_files(folder: Path) -> list[Path]:
    statement = write_camt(folder, "1-statement.xml", "camt.053.001.02", "STMT-1", [SINGLE_ENTRY])
    text = camt_document("camt.053.001.08", "STMT-2", [BLOCK_ENTRY]).decode()
    broken = _write(folder / "2-broken.xml", text.replace("<Cd>BOOK</Cd>", "<Cd>BOOKED-TOO-LONG</Cd>"))
    unsupported = _other_version(folder, "camt.052.001.04")
    notice = write_camt(
        folder,
        "4-notice.xml",
        "camt.054.001.04",
        "NTFC-1",
        [
            Entry(
                "1150.00",
                bank_ref="B-101",
                batch_pmt_inf_id=BLOCK,
                txs=[
                    Tx("750.00", end_to_end_id="O100-P001/C1001", pmt_inf_id=BLOCK),
                    Tx("100.00", end_to_end_id="O100-P003/C3001", pmt_inf_id=BLOCK),
                    Tx("300.00", end_to_end_id="O100-P010/C1010", pmt_inf_id=BLOCK),
                ],
            )
        ],
    )
    return [statement, broken, unsupported, notice]


def test_one_bad_file_does_not_stop_the_others(collected: Scenario) -> None:
    paths = _mixed_files(collected.output_dir.parent / "in")
    results = [
        import_statement(p, collected.erp_url, collected.state_url, collected.output_dir) for p in paths
    ]
    assert [r.accepted for r in results] == [True, False, False, True]
    assert results[0].counts == {"paid": 1} and results[3].counts == {"paid": 3}
    states = claim_states(collected.erp_url)
    assert {c for c in BLOCK_CLAIMS | {"C2001"} if states[c][0] == "PAID"} == {
        "C2001",
        "C1001",
        "C3001",
        "C1010",
    }
    broken, unsupported = results[1], results[2]
    assert broken.line == _line_of(paths[1].read_text(), "BOOKED-TOO-LONG")
    assert "camt.053.001.08.xsd" in (broken.rejected or "")
    assert describe_file(unsupported) == (
        "rejected  camt.052.001.04.xml: camt.052.001.04 (intraday account report) is not supported (no "
        "schema for it is available to check it against); supported: camt.052 001.02, 001.08; ask the bank "
        "for camt.052.001.08 or .02"
    )
    assert describe_file(results[0]).startswith(
        "accepted  1-statement.xml: camt.053.001.02 (end-of-day account statement) STMT-1, 1 entries; booked: paid 1"
    )


def test_the_flow_imports_the_rest_then_ends_failed(prefect_harness: None, tmp_path: Path) -> None:
    from flows.bank_reconciliation import import_bank_statement
    from tasks.sepa_run import StatementFilesRejected

    s = make_scenario(tmp_path)
    paths = _mixed_files(tmp_path / "in")
    with sepa_env(s.erp_url, s.state_url, str(s.output_dir)):
        debit_run()
        with pytest.raises(StatementFilesRejected) as failed:
            import_bank_statement([str(p) for p in paths])
    summary = failed.value.summary
    assert [f["accepted"] for f in summary["files"]] == [True, False, False, True]
    assert summary["totals"] == {"paid": 4}
    assert "2-broken.xml" in str(failed.value) and "camt.052.001.04.xml" in str(failed.value)
    assert claim_states(s.erp_url)["C1010"][0] == "PAID"  # the file after the bad ones was imported


# ---- intraday reports and the statement of the same day -------------------------------------------
def test_intraday_reports_then_the_statement_count_each_booking_once(collected: Scenario) -> None:
    folder = collected.output_dir.parent / "in"
    part = replace(SINGLE_ENTRY, amount="600.00", txs=[replace(SINGLE_ENTRY.txs[0], amount="600.00")])
    rest = replace(
        SINGLE_ENTRY, bank_ref="B-4", amount="20.00", txs=[replace(SINGLE_ENTRY.txs[0], amount="20.00")]
    )
    morning = write_camt(folder, "0900.xml", "camt.052.001.08", "RPT-0900", [BLOCK_ENTRY, part])
    noon = write_camt(
        folder, "1200.xml", "camt.052.001.02", "RPT-1200", [BLOCK_ENTRY, part, rest]
    )  # cumulative
    evening = write_camt(folder, "eod.xml", "camt.053.001.02", "STMT-EOD", [BLOCK_ENTRY, part, rest])

    def run(path: Path) -> dict[str, int]:
        return reconcile_statement(path, collected.erp_url, collected.state_url, collected.output_dir).counts

    assert run(morning) == {"paid": 1, "partly_paid": 1}
    assert _ledger(collected, "C2001") == ("partly_paid", Decimal("600.00"))
    assert run(noon) == {"duplicate": 2, "paid": 1}
    assert _ledger(collected, "C2001") == ("paid", Decimal("620.00"))
    assert run(evening) == {"duplicate": 3}
    assert _ledger(collected, "C2001") == ("paid", Decimal("620.00"))  # not 1,220: counted once
    assert claim_states(collected.erp_url)["C2001"][:2] == ("PAID", Decimal("0"))
    report = (
        collected.output_dir / next(p.name for p in collected.output_dir.glob("reconciliation-STMT-EOD*"))
    ).read_text()
    assert "booked before from camt.052.001.08 RPT-0900 (0900.xml)" in report


def test_a_pending_intraday_entry_is_booked_by_the_statement(collected: Scenario) -> None:
    folder = collected.output_dir.parent / "in"
    pending = replace(SINGLE_ENTRY, status="PDNG", booked=None)
    intraday = write_camt(folder, "rpt.xml", "camt.052.001.02", "RPT-1", [pending])
    statement = write_camt(folder, "eod.xml", "camt.053.001.08", "STMT-1", [SINGLE_ENTRY])
    args = (collected.erp_url, collected.state_url, collected.output_dir)
    assert reconcile_statement(intraday, *args).counts == {"pending": 1}
    assert reconcile_statement(statement, *args).counts == {"paid": 1}


# ---- dry run and the command line -------------------------------------------------------------------
def _state_snapshot(s: Scenario) -> tuple[object, ...]:
    """Ledger rows, ERP claims and the files recorded as imported: what a dry run must not change."""
    from sqlalchemy import func, select

    from connectors.sepa.ledger import sepa_statements

    ledger = SepaLedger(s.state_url)
    rows = ledger.rows_of_claims(sorted(BLOCK_CLAIMS | {"C2001", "C4001"}))
    with ledger.engine.connect() as conn:
        imported = conn.execute(select(func.count()).select_from(sepa_statements)).scalar_one()
    return (
        sorted((r["claim_no"], r["status"], str(r["paid_amount"])) for r in rows),
        sorted(claim_states(s.erp_url).items()),
        imported,
    )


def test_a_dry_run_matches_but_writes_nothing(collected: Scenario) -> None:
    path = write_camt(collected.output_dir.parent, "stmt.xml", "camt.053.001.04", "STMT-1", ALL_ENTRIES)
    before = _state_snapshot(collected)
    args = (collected.erp_url, collected.state_url, collected.output_dir)
    dry = reconcile_statement(path, *args, dry_run=True)
    assert dry.counts == {"paid": 2, "returned": 1, "pending": 1, "unmatched": 1} and dry.dry_run
    assert _state_snapshot(collected) == before
    assert "would book" in describe_file(dry)
    real = reconcile_statement(path, *args)  # not recorded as imported by the dry run
    assert not real.skipped and real.counts == dry.counts
    assert _state_snapshot(collected) != before


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.bank_reconciliation", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_command_line_prints_a_line_per_file_and_exits_non_zero_on_a_rejected_one(
    prefect_harness: None, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    s = make_scenario(tmp_path)
    paths = [str(p) for p in _mixed_files(tmp_path / "in")]
    with sepa_env(s.erp_url, s.state_url, str(s.output_dir)) as values:
        debit_run()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HAUSFLOW_"))}
        env.update(values, PREFECT_API_URL=str(PREFECT_API_URL.value()))
    before = _state_snapshot(s)

    dry = _cli([*paths, "--dry-run"], env)
    assert dry.returncode == 1, dry.stderr[-3000:]
    lines = dry.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[:4]] == ["accepted", "rejected", "rejected", "accepted"]
    assert (
        lines[0].startswith("accepted  1-statement.xml: camt.053.001.02") and "would book: paid 1" in lines[0]
    )
    assert lines[1].startswith(
        f"rejected  2-broken.xml line {_line_of(Path(paths[1]).read_text(), 'BOOKED-TOO')}:"
    )
    assert "ask the bank for camt.052.001.08 or .02" in lines[2]
    assert json.loads(lines[-1])["dry_run"] is True
    assert _state_snapshot(s) == before  # nothing written

    good = _cli([paths[0], paths[3]], env)
    assert good.returncode == 0, good.stderr[-3000:]
    assert [line.split()[0] for line in good.stdout.strip().splitlines()[:2]] == ["accepted", "accepted"]
    assert claim_states(s.erp_url)["C2001"][0] == "PAID"


# ---- a file is imported whole or refused whole ------------------------------------------------------
def _statement_recorded(s: Scenario) -> int:
    from sqlalchemy import func, select

    from connectors.sepa.ledger import sepa_statements

    with SepaLedger(s.state_url).engine.connect() as conn:
        query = select(func.count()).select_from(sepa_statements)
        return int(
            conn.execute(query.where(~sepa_statements.c.statement_key.startswith("entry:"))).scalar_one()
        )


def test_a_booking_date_with_a_time_zone_is_read_and_the_whole_file_booked(collected: Scenario) -> None:
    later = replace(BLOCK_ENTRY, bank_ref="B-7", booked_text="2026-03-04+01:00")
    path = write_camt(
        collected.output_dir.parent, "tz.xml", "camt.053.001.02", "STMT-TZ", [SINGLE_ENTRY, later]
    )
    result = import_statement(path, collected.erp_url, collected.state_url, collected.output_dir)
    assert result.accepted and result.counts == {"paid": 2}
    states = claim_states(collected.erp_url)
    assert {c for c in BLOCK_CLAIMS | {"C2001"} if states[c][0] == "PAID"} == BLOCK_CLAIMS | {"C2001"}


def test_a_value_that_does_not_convert_refuses_the_file_before_anything_is_booked(
    collected: Scenario,
) -> None:
    later = replace(BLOCK_ENTRY, bank_ref="B-7", booked_text="12026-03-04")  # a valid xs:date, year 12026
    path = write_camt(
        collected.output_dir.parent, "y12k.xml", "camt.053.001.08", "STMT-Y", [SINGLE_ENTRY, later]
    )
    assert _schema("camt.053.001.08").validate(etree.parse(str(path)))  # the schema lets it through
    before = _state_snapshot(collected)
    result = import_statement(path, collected.erp_url, collected.state_url, collected.output_dir)
    assert not result.accepted
    assert "entry 2 has a value the import cannot read" in (result.rejected or "")
    assert "nothing of the file is booked" in (result.rejected or "")
    assert _state_snapshot(collected) == before  # entry 1 (C2001) was not booked either
    assert claim_states(collected.erp_url)["C2001"][0] == "IN_COLLECTION"


# ---- bookings without the bank's reference ----------------------------------------------------------
def _half(**changes: object) -> Entry:
    half = replace(
        SINGLE_ENTRY, bank_ref=None, amount="310.00", txs=[replace(SINGLE_ENTRY.txs[0], amount="310.00")]
    )
    return replace(half, **changes)


@pytest.mark.parametrize("entry_ref", [None, "0000042"], ids=["no reference at all", "NtryRef only"])
def test_a_booking_without_acctsvcrref_counts_once_in_the_report_and_the_statement(
    collected: Scenario, entry_ref: str | None
) -> None:
    folder = collected.output_dir.parent / "in"
    intraday = write_camt(folder, "rpt.xml", "camt.052.001.08", "RPT-1", [_half(entry_ref=entry_ref)])
    statement = write_camt(folder, "eod.xml", "camt.053.001.02", "STMT-1", [_half(entry_ref=entry_ref)])
    args = (collected.erp_url, collected.state_url, collected.output_dir)
    assert reconcile_statement(intraday, *args).counts == {"partly_paid": 1}
    assert reconcile_statement(statement, *args).counts == {"duplicate": 1}
    assert _ledger(collected, "C2001") == ("partly_paid", Decimal("310.00"))
    assert claim_states(collected.erp_url)["C2001"][:2] == ("IN_COLLECTION", Decimal("310.00"))


def test_two_equal_bookings_without_reference_in_one_file_are_two(collected: Scenario) -> None:
    path = write_camt(collected.output_dir.parent, "eod.xml", "camt.053.001.04", "STMT-2", [_half(), _half()])
    result = reconcile_statement(path, collected.erp_url, collected.state_url, collected.output_dir)
    assert result.counts == {"partly_paid": 1, "paid": 1}
    assert claim_states(collected.erp_url)["C2001"][:2] == ("PAID", Decimal("0"))


def test_an_entry_and_its_record_are_booked_in_one_transaction(collected: Scenario) -> None:
    """The state database refuses the entry's record (a real trigger): the ledger keeps nothing of
    the entry either, and the file imported again books it once."""
    from sqlalchemy import text

    folder = collected.output_dir.parent / "in"
    intraday = write_camt(folder, "rpt.xml", "camt.052.001.02", "RPT-1", [_half()])
    statement = write_camt(folder, "eod.xml", "camt.053.001.08", "STMT-1", [_half()])
    args = (collected.erp_url, collected.state_url, collected.output_dir)
    engine = SepaLedger(collected.state_url).engine
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER refuse_entry BEFORE INSERT ON sepa_statements "
                "WHEN NEW.statement_key LIKE 'entry:%' BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
        )
    with pytest.raises(Exception, match="disk full"):
        reconcile_statement(intraday, *args)
    assert _ledger(collected, "C2001") == ("written", None)  # the ledger change went with the record
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER refuse_entry"))
    assert reconcile_statement(intraday, *args).counts == {"partly_paid": 1}  # not recorded: imported again
    assert reconcile_statement(statement, *args).counts == {"duplicate": 1}
    assert _ledger(collected, "C2001") == ("partly_paid", Decimal("310.00"))
    assert claim_states(collected.erp_url)["C2001"][:2] == ("IN_COLLECTION", Decimal("310.00"))


# ---- personal data and dry runs ---------------------------------------------------------------------
def test_the_reconciliation_report_is_readable_by_its_owner_only(collected: Scenario) -> None:
    path = write_camt(collected.output_dir.parent, "stmt.xml", "camt.053.001.08", "STMT-1", ALL_ENTRIES)
    result = reconcile_statement(path, collected.erp_url, collected.state_url, collected.output_dir)
    report = Path(result.report_path or "")
    assert report.parent == collected.output_dir
    assert "Max Mustermann" in report.read_text(encoding="utf-8")  # names: personal data
    assert report.stat().st_mode & 0o777 == 0o600


def test_a_dry_run_creates_nothing_in_the_state_or_the_output_folder(tmp_path: Path) -> None:
    s = make_scenario(tmp_path)  # no debit run yet: the state database does not exist
    path = write_camt(tmp_path / "in", "stmt.xml", "camt.053.001.02", "STMT-1", ALL_ENTRIES)
    state_file = Path(s.state_url.split("///", 1)[1])
    result = reconcile_statement(path, s.erp_url, s.state_url, s.output_dir, dry_run=True)
    assert result.counts == {"unmatched": 4, "pending": 1}  # an empty ledger expects nothing
    assert not state_file.exists() and not s.output_dir.exists()
    report = Path(result.report_path or "")
    try:
        assert report.parent != s.output_dir and report.name.startswith("reconciliation-dryrun-STMT-1-")
        assert describe_file(result).endswith(f"would book: pending 1, unmatched 4; report {report}")
        assert report.stat().st_mode & 0o777 == 0o600
        assert "Max Mustermann" in report.read_text(encoding="utf-8")
    finally:
        report.unlink()


def test_a_dry_run_leaves_existing_state_without_tables_as_it_is(tmp_path: Path) -> None:
    from sqlalchemy import inspect

    from connectors.erp.database import make_engine

    s = make_scenario(tmp_path)
    engine = make_engine(s.state_url)
    with engine.begin() as conn:  # another part of the state store exists, the SEPA tables not yet
        conn.exec_driver_sql("CREATE TABLE other (id INTEGER)")
    path = write_camt(tmp_path / "in", "stmt.xml", "camt.053.001.08", "STMT-1", [SINGLE_ENTRY])
    result = reconcile_statement(path, s.erp_url, s.state_url, s.output_dir, dry_run=True)
    Path(result.report_path or "").unlink()
    assert result.counts == {"unmatched": 1}
    assert inspect(engine).get_table_names() == ["other"]


def test_a_dry_run_over_several_files_agrees_with_the_real_run(collected: Scenario) -> None:
    folder = collected.output_dir.parent / "in"
    part = replace(SINGLE_ENTRY, amount="600.00", txs=[replace(SINGLE_ENTRY.txs[0], amount="600.00")])
    rest = replace(
        SINGLE_ENTRY, bank_ref="B-4", amount="20.00", txs=[replace(SINGLE_ENTRY.txs[0], amount="20.00")]
    )
    files = [
        write_camt(folder, "0900.xml", "camt.052.001.08", "RPT-0900", [BLOCK_ENTRY, part, RETURN_ENTRY]),
        write_camt(folder, "eod.xml", "camt.053.001.02", "STMT-EOD", [BLOCK_ENTRY, part, rest, RETURN_ENTRY]),
    ]
    files.append(files[1])  # the same statement again
    args = (collected.erp_url, collected.state_url, collected.output_dir)
    before = _state_snapshot(collected)
    carry = None
    dry = []
    for path in files:
        result = import_statement(path, *args, dry_run=True, carry=carry)
        carry = result.carry
        dry.append((result.skipped, result.counts))
        if result.report_path:
            Path(result.report_path).unlink()
    assert _state_snapshot(collected) == before
    real = [(r.skipped, r.counts) for r in (import_statement(p, *args) for p in files)]
    assert dry == real
    assert real[0] == (False, {"paid": 1, "partly_paid": 1, "returned": 1})
    assert real[1] == (False, {"duplicate": 3, "paid": 1})  # only the rest of C2001 is new
    assert real[2] == (True, {})  # the same file again


def test_the_flow_carries_a_dry_run_from_file_to_file(prefect_harness: None, tmp_path: Path) -> None:
    from flows.bank_reconciliation import import_bank_statement

    s = make_scenario(tmp_path)
    folder = tmp_path / "in"
    intraday = write_camt(folder, "rpt.xml", "camt.052.001.02", "RPT-1", [_half()])
    statement = write_camt(folder, "eod.xml", "camt.053.001.08", "STMT-1", [_half()])
    with sepa_env(s.erp_url, s.state_url, str(s.output_dir)):
        debit_run()
        before = _state_snapshot(s)
        summary = import_bank_statement([str(intraday), str(statement)], dry_run=True)
    assert [f["counts"] for f in summary["files"]] == [{"partly_paid": 1}, {"duplicate": 1}]
    assert _state_snapshot(s) == before
    assert not list(s.output_dir.glob("reconciliation-*"))  # the reports went to temporary files
    for record in summary["files"]:
        Path(record["report"]).unlink()
