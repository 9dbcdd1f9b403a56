"""The pain.008 writer and its helpers on their own: shapes, sums, atomic output, spool, validation."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from lxml import etree

from connectors.sepa.debit_files import plan_files
from connectors.sepa.errors import SepaValidationError
from connectors.sepa.pain008 import Creditor, DebitTransaction, PaymentBlock, scan_pain008, write_pain008
from connectors.sepa.schemas import NAMESPACES, validate_file
from connectors.sepa.spool import BlockKey, SpoolWriter, read_block
from connectors.sepa.writing import atomic_output, format_cents

CREDITOR = Creditor(
    "Hausverwaltung Muster GmbH", "DE02120300000000202051", "BYLADEM1001", "DE98ZZZ09999999999"
)
NOW = datetime(2026, 3, 2, 15, 4, 5, tzinfo=UTC)
NS = {"p": NAMESPACES["pain.008"]}


def _tx(i: int, **kw: object) -> DebitTransaction:
    base: dict[str, object] = {
        "end_to_end_id": f"O1-P{i}/C{i}",
        "amount_cents": 1000 + i,
        "mandate_id": f"M{i}",
        "mandate_signed_on": date(2024, 1, 1),
        "debtor_name": "Max Mustermann",
        "debtor_iban": "DE50120300001234567897",
        "debtor_bic": "BYLADEM1001",
        "remittance": "RECHNUNG 1 VOM 01.03.26",
    }
    base.update(kw)
    return DebitTransaction(**base)  # type: ignore[arg-type]


SHAPES = [
    _tx(1),
    _tx(2, debtor_bic=None),  # NOTPROVIDED agent
    _tx(3, remittance=None),  # no RmtInf
    _tx(4, original_debtor_iban="DE23120300000532013000"),  # amendment, same bank
    _tx(5, original_agent_smnda=True),  # amendment, other bank
    _tx(6, original_debtor_iban="DE23120300000532013000", original_agent_smnda=True, debtor_bic=None),
]


@pytest.mark.parametrize(
    ("cents", "text"), [(1, "0.01"), (100, "1.00"), (123456, "1234.56"), (99_999_999_999, "999999999.99")]
)
def test_format_cents(cents: int, text: str) -> None:
    assert format_cents(cents) == text


@pytest.mark.parametrize("batch_booking", [True, False, None])
def test_every_transaction_shape_validates_and_sums(tmp_path: Path, batch_booking: bool | None) -> None:
    blocks = [
        PaymentBlock(
            "MSG-001", date(2026, 3, 4), "FRST", 3, sum(t.amount_cents for t in SHAPES[:3]), batch_booking
        ),
        PaymentBlock(
            "MSG-002", date(2026, 3, 5), "RCUR", 3, sum(t.amount_cents for t in SHAPES[3:]), batch_booking
        ),
    ]
    path = tmp_path / "f.xml"
    with atomic_output(path) as fh:
        n, cents = write_pain008(
            fh,
            "MSG",
            NOW,
            CREDITOR,
            blocks,
            lambda b: SHAPES[:3] if b.pmt_inf_id == "MSG-001" else SHAPES[3:],
        )
    assert (n, cents) == (6, sum(t.amount_cents for t in SHAPES))
    totals = scan_pain008(path, collect_ids=True)
    assert totals.problems() == [] and totals.end_to_end_ids == [t.end_to_end_id for t in SHAPES]
    assert totals.blocks == {
        "MSG-001": (3, Decimal("30.06"), 3, Decimal("30.06")),
        "MSG-002": (3, Decimal("30.15"), 3, Decimal("30.15")),
    }
    tree = etree.parse(str(path))
    assert tree.findtext(".//p:CreDtTm", namespaces=NS) == "2026-03-02T15:04:05+00:00"
    assert len(tree.findall(".//p:BtchBookg", NS)) == (0 if batch_booking is None else 2)
    assert [e.text for e in tree.findall(".//p:OrgnlDbtrAgt//p:Id", NS)] == ["SMNDA", "SMNDA"]
    assert len(tree.findall(".//p:OrgnlDbtrAcct", NS)) == 2
    assert [e.text for e in tree.findall(".//p:DbtrAgt//p:Othr/p:Id", NS)] == ["NOTPROVIDED", "NOTPROVIDED"]


def test_block_that_does_not_match_its_announcement_is_refused_and_never_published(tmp_path: Path) -> None:
    path = tmp_path / "f.xml"
    block = PaymentBlock("MSG-001", date(2026, 3, 4), "RCUR", 2, 2001)
    with pytest.raises(SepaValidationError, match="announced 2 transactions"), atomic_output(path) as fh:
        write_pain008(fh, "MSG", NOW, CREDITOR, [block], lambda b: [_tx(1)])
    assert not path.exists() and not list(tmp_path.iterdir())


def test_naive_creation_time_is_refused() -> None:
    block = PaymentBlock("MSG-001", date(2026, 3, 4), "RCUR", 1, 1001)
    with pytest.raises(ValueError, match="timezone"):
        write_pain008(io.BytesIO(), "MSG", datetime(2026, 3, 2), CREDITOR, [block], lambda b: [_tx(1)])


def test_schema_violation_is_reported_with_file_name(tmp_path: Path) -> None:
    path = tmp_path / "bad.xml"
    block = PaymentBlock("MSG_001", date(2026, 3, 4), "RCUR", 1, 1001)  # "_" is not allowed by the DK schema
    with atomic_output(path) as fh:
        write_pain008(fh, "MSG", NOW, CREDITOR, [block], lambda b: [_tx(1)])
    with pytest.raises(SepaValidationError, match=r"bad\.xml.*PmtInfId") as refused:
        validate_file(path)
    line = next(n for n, text in enumerate(path.read_text().splitlines(), start=1) if "MSG_001" in text)
    assert str(refused.value).startswith(f"bad.xml line {line}: not valid against pain.008.001.08_GBIC_5.xsd")
    assert "line 0" not in str(refused.value) and "{urn:" not in str(refused.value)


def test_spool_splits_files_and_plan_orders_blocks(tmp_path: Path) -> None:
    spool = SpoolWriter(tmp_path / "spool", max_per_file=3)
    row = {
        "claim_no": "C",
        "attempt": 1,
        "person_no": "P",
        "object_no": "O",
        "end_to_end_id": "E",
        "amount_cents": 100,
        "mandate_id": "M",
        "mandate_signed_on": "2024-01-01",
        "debtor_name": "N",
        "debtor_iban": "DE50120300001234567897",
        "debtor_bic": None,
        "remittance": 'R, with comma; and "quotes"',
        "original_debtor_iban": None,
        "original_agent_smnda": "",
    }
    keys = [
        spool.add(date(2026, 3, 4), seq, {**row, "claim_no": f"C{i}"})
        for i, seq in enumerate(["RCUR", "FRST", "RCUR", "RCUR", "OOFF"])
    ]
    spool.close()
    assert [k.file_index for k in keys] == [0, 0, 0, 1, 1]
    rows = list(read_block(tmp_path / "spool", BlockKey(0, date(2026, 3, 4), "RCUR")))
    assert [r["claim_no"] for r in rows] == ["C0", "C2"] and rows[0]["remittance"] == row["remittance"]
    assert rows[0]["debtor_bic"] == ""
    plans = plan_files(
        [(k, s.nb_of_txs, s.ctrl_sum_cents) for k, s in spool.stats.items()],
        lambda i: f"MSG{i}",
        tmp_path,
        True,
    )
    assert [[(b.pmt_inf_id, b.sequence_type, b.nb_of_txs) for _k, b in p.blocks] for p in plans] == [
        [("MSG0-001", "FRST", 1), ("MSG0-002", "RCUR", 2)],
        [("MSG1-001", "OOFF", 1), ("MSG1-002", "RCUR", 1)],
    ]


def test_validating_while_writing_matches_a_second_read_and_rejects_bad_bytes(tmp_path: Path) -> None:
    from connectors.sepa.writing import write_validated_part

    block = PaymentBlock(
        "MSG-001", date(2026, 3, 4), "RCUR", len(SHAPES), sum(t.amount_cents for t in SHAPES)
    )
    part, totals = write_validated_part(
        tmp_path / "ok.xml",
        "pain.008",
        lambda fh: write_pain008(fh, "MSG", NOW, CREDITOR, [block], lambda b: SHAPES),
    )
    again = scan_pain008(part)
    assert totals.problems() == [] and (totals.counted_nb_of_txs, totals.counted_ctrl_sum) == (
        again.counted_nb_of_txs,
        again.counted_ctrl_sum,
    )
    bad = PaymentBlock("MSG_001", date(2026, 3, 4), "RCUR", 1, 1001)
    with pytest.raises(
        SepaValidationError, match=r"^bad\.xml line \d+: not valid against .*PmtInfId"
    ) as refused:
        write_validated_part(
            tmp_path / "bad.xml",
            "pain.008",
            lambda fh: write_pain008(fh, "MSG", NOW, CREDITOR, [bad], lambda b: [_tx(1)]),
        )
    assert "line 0" not in str(refused.value)
    assert not (tmp_path / "bad.xml.part").exists() and not (tmp_path / "bad.xml").exists()
