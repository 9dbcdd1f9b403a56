"""Payouts by SEPA credit transfer: rules, the pain.001 writer, the run, the ledger (never twice)."""

from __future__ import annotations

import stat
from collections import Counter
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from lxml import etree

from connectors.sepa.pain001 import CreditTransfer, TransferBlock, scan_pain001, write_pain001
from connectors.sepa.payout_ledger import PaidPayout, PayoutLedger
from connectors.sepa.schemas import NAMESPACES, load_schema
from connectors.sepa.writing import atomic_output
from tasks.sepa_payout_rules import (
    PAYOUT_FIELDS,
    PayoutBlockPlan,
    PayoutDecision,
    check_payout,
    execution_date_for,
    plan_payouts,
)
from tests.payout_support import (
    CREATED,
    EXECUTION,
    PAYOUTS,
    TRUST_A,
    TRUST_B,
    payout,
    payout_env,
    run_payouts,
)
from tests.sepa_support import IBAN_BYLA, IBAN_PBNK

NS = {"p": NAMESPACES["pain.001"]}
UMLAUT_NAME = "Müller" * 11  # 66 characters, 77 once transliterated


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------------------------------------
# Rules, one row per case
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "outcome", "rule", "text"),
    [
        ({}, "pay", None, None),
        ({"creditor_iban": "de50 1203 0000 1234 5678 97", "creditor_bic": "byladem1001"}, "pay", None, None),
        ({"payout_id": "BK_1001"}, "skip", "payout.id", "EndToEndId"),
        ({"payout_id": "B" * 36}, "skip", "payout.id", "1-35 characters"),
        ({"payout_id": "BK-Ü1"}, "skip", "payout.id", "never changed"),
        # EPC id rules the schema does not check
        ({"payout_id": " BK-1001"}, "skip", "payout.id", "must not start or end with a space"),
        ({"payout_id": "BK-1001 "}, "skip", "payout.id", "must not start or end with a space"),
        ({"payout_id": "   "}, "skip", "payout.id", "spaces only"),
        ({"payout_id": "/BK-1001"}, "skip", "payout.id", "must not start or end with '/'"),
        ({"payout_id": "BK-1001/"}, "skip", "payout.id", "must not start or end with '/'"),
        ({"payout_id": "BK//1001"}, "skip", "payout.id", "must not contain '//'"),
        ({"payout_id": "BK/1001 A"}, "pay", None, None),
        ({"amount": Decimal("0")}, "skip", "payout.amount", "outside 0.01"),
        ({"amount": Decimal("-5.00")}, "skip", "payout.amount", "outside 0.01"),
        ({"amount": Decimal("1.005")}, "skip", "payout.amount", "more than two decimals"),
        ({"amount": Decimal("1000000000.00")}, "skip", "payout.amount", "outside"),
        ({"creditor_iban": "DE45120300001234567891"}, "skip", "payout.creditor_iban", "not valid"),
        ({"creditor_bic": "COBADEFFXXX"}, "skip", "payout.creditor_bic", "does not belong"),
        ({"creditor_bic": "XYZ"}, "skip", "payout.creditor_bic", "not valid"),
        ({"creditor_bic": "BNPAFRPPXXX"}, "skip", "payout.creditor_bic", "is from FR"),
        ({"debtor_iban": "DE02120300000000202052"}, "skip", "payout.debtor_iban", "trust account"),
        ({"debtor_bic": "INGDDEFFXXX"}, "skip", "payout.debtor_bic", "does not belong"),
        ({"creditor_iban": TRUST_A, "creditor_bic": None}, "skip", "payout.same_account", TRUST_A),
        ({"creditor_name": ""}, "skip", "payout.creditor_name", "empty"),
        ({"creditor_name": "☺ ☺"}, "skip", "payout.creditor_name", "empty"),
        ({"creditor_name": UMLAUT_NAME}, "skip", "payout.creditor_name", "77 characters"),
        ({"debtor_name": "T" * 71}, "skip", "payout.debtor_name", "shorten it in the ERP"),
        # any whitespace (no-break space, tab) is taken out of IBAN and BIC, not sent to the bank
        (
            {"creditor_iban": IBAN_BYLA[:4] + "\u00a0" + IBAN_BYLA[4:], "creditor_bic": "BYLA\tDEM1001"},
            "pay",
            None,
            None,
        ),
        # the German account check digit (IBAN check digits alone are right)
        ({"creditor_iban": "DE08700901001234567890"}, "skip", "payout.creditor_iban", "national checksum"),
        ({"debtor_iban": "DE08700901001234567890"}, "skip", "payout.debtor_iban", "national checksum"),
        # valid IBANs outside the SEPA zone
        (
            {"creditor_iban": "BR1500000000000010932840814P2"},
            "skip",
            "payout.creditor_iban",
            "outside the SEPA zone",
        ),
        (
            {"creditor_iban": "SA0380000000608010167519"},
            "skip",
            "payout.creditor_iban",
            "outside the SEPA zone",
        ),
        # SEPA but outside the EEA: the BIC is required
        (
            {"creditor_iban": "CH9300762011623852957", "creditor_bic": None},
            "skip",
            "payout.creditor_bic",
            "outside the EEA",
        ),
        (
            {"creditor_iban": "GB33BUKB20201555555555", "creditor_bic": None},
            "skip",
            "payout.creditor_bic",
            "add it",
        ),
        ({"creditor_iban": "GB33BUKB20201555555555", "creditor_bic": "BUKBGB22"}, "pay", None, None),
    ],
)
def test_payout_rules(changes: dict[str, object], outcome: str, rule: str | None, text: str | None) -> None:
    decision = check_payout(replace(payout("BK-1001"), **changes))  # type: ignore[arg-type]
    assert (decision.outcome, decision.rule) == (outcome, rule)
    if text is None:
        assert decision.reason is None and decision.transfer is not None
    else:
        assert decision.reason is not None and text in decision.reason
        assert (
            decision.reason.startswith(f"payout {decision.payout.payout_id!r}") and decision.transfer is None
        )


@pytest.mark.parametrize(
    ("field", "given", "in_file", "warned"),
    [
        ("creditor_name", "Jürgen Müller & Söhne", "Juergen Mueller + Soehne", False),
        ("creditor_name", "Élodie Nuñez-Øster", "Elodie Nunez-Oster", False),
        ("creditor_name", "Ä" * 35, "Ae" * 35, False),  # exactly 70 once transliterated: kept whole
        ("debtor_name", "Treuhandsammelkonto Straße_1; Haus!", "Treuhandsammelkonto Strasse-1, Haus.", False),
        (
            "remittance",
            "Kaution Vertrag 4711\nEinbehalt Schäden",
            "Kaution Vertrag 4711 Einbehalt Schaeden",
            False,
        ),
        ("remittance", "ü" * 70, "ue" * 70, False),  # exactly 140 once transliterated
        ("remittance", "Kautionseinbehalt " + "Schadensersatz " * 9, None, True),  # 153: shortened, warned
        ("remittance", "", None, False),  # no remittance: no RmtInf
    ],
)
def test_transliteration_and_lengths(field: str, given: str, in_file: str | None, warned: bool) -> None:
    decision = check_payout(replace(payout("BK-1001"), **{field: given}))
    assert decision.outcome == "pay" and decision.transfer is not None
    value = decision.debtor_name if field == "debtor_name" else getattr(decision.transfer, field)
    if warned:
        assert len(value) <= 140 and given.startswith(value)
        (warning,) = decision.warnings
        assert "BK-1001" in warning and "V-4711/O100" in warning and "dropped: 'Schadensersatz'" in warning
    else:
        assert value == in_file and decision.warnings == ()


def test_a_character_left_out_is_a_warning_naming_the_payout_and_the_field() -> None:
    given = replace(payout("BK-1001"), creditor_name="Hans ☺ Meier", remittance="Kaution 100€ Nr ✓")
    decision = check_payout(given)
    assert decision.outcome == "pay" and decision.transfer is not None
    assert decision.transfer.creditor_name == "Hans Meier"
    assert decision.transfer.remittance == "Kaution 100 EUR Nr"
    creditor, remittance = decision.warnings
    assert creditor.startswith("payout BK-1001 (V-4711/O100): creditor name") and "U+263A" in creditor
    assert remittance.startswith("payout BK-1001 (V-4711/O100): remittance") and "U+2713" in remittance
    # through the plan (texts transliterated a batch at a time): the same warnings, none for the others
    plan = plan_payouts([payout("BK-1002"), given], {}, EXECUTION)
    assert plan.warnings == list(decision.warnings)


def test_plan_groups_by_trust_account_and_reports_duplicates_and_paid() -> None:
    paid = PaidPayout("BK-1002", "written", "HP20260301090000-old00000-001", "/x.xml", date(2026, 3, 1))
    other_name = payout("BK-1004", debtor_name="Treuhand Musterstr. 1")
    seen: list[tuple[PayoutDecision, PayoutBlockPlan | None]] = []
    plan = plan_payouts(
        iter([*PAYOUTS, PAYOUTS[0], other_name]),
        {"BK-1002": paid},
        EXECUTION,
        lambda d, b: seen.append((d, b)),
    )
    outcomes = [(d.payout.payout_id, d.outcome, d.rule, b.number if b else None) for d, b in seen]
    assert outcomes == [
        ("BK-1001", "pay", None, 1),
        ("BK-1002", "already_paid", "payout.ledger", None),
        ("BK-2001", "pay", None, 2),
        ("BK-1003", "pay", None, 1),
        ("BK-2002", "pay", None, 2),
        ("BK-1001", "skip", "payout.duplicate", None),
        ("BK-1004", "pay", None, 1),
    ]
    assert [d.payout.payout_id for d in plan.not_paid] == ["BK-1002", "BK-1001"]
    assert (plan.count("pay"), plan.count("skip"), plan.count("already_paid")) == (5, 1, 1)
    assert "HP20260301090000-old00000-001" in (plan.not_paid[0].reason or "")
    assert [(b.debtor_iban, [t.end_to_end_id for t in b.transfers]) for b in plan.blocks] == [
        (TRUST_A, ["BK-1001", "BK-1003", "BK-1004"]),
        (TRUST_B, ["BK-2001", "BK-2002"]),
    ]
    assert plan.blocks[0].debtor_name == "Treuhandsammelkonto Musterstrasse 1"
    assert "the file uses the latter" in seen[-1][0].warnings[0] and plan.warnings == list(
        seen[-1][0].warnings
    )
    assert (plan.nb_of_txs, plan.ctrl_sum_cents) == (5, 85000 + 99999 + 1 + 4500 + 85000)


@pytest.mark.parametrize(
    ("today", "lead", "expected"),
    [
        (date(2026, 3, 2), 0, date(2026, 3, 2)),  # Monday: the same day
        (date(2026, 3, 7), 0, date(2026, 3, 9)),  # Saturday: Monday
        (date(2026, 4, 2), 1, date(2026, 4, 7)),  # Thursday + 1: Good Friday and Easter Monday are closed
        (date(2026, 12, 24), 1, date(2026, 12, 28)),  # 25/26 December closed
        (date(2026, 5, 1), 0, date(2026, 5, 4)),  # 1 May closed
    ],
)
def test_execution_date_follows_target2(today: date, lead: int, expected: date) -> None:
    assert execution_date_for(today, lead) == expected


# ---------------------------------------------------------------------------------------------
# The writer
# ---------------------------------------------------------------------------------------------


def test_every_shape_validates_against_gbic5_and_adds_up(tmp_path: Path) -> None:
    shapes = [
        CreditTransfer("E1", 100, "A", IBAN_BYLA, "BYLADEM1001", "text"),
        CreditTransfer("E2", 250, "B", IBAN_PBNK, None, "text"),  # no creditor agent
        CreditTransfer("E3", 99_999_999_999, "C", IBAN_BYLA, None, None),  # no RmtInf, maximum amount
    ]
    blocks = [
        TransferBlock("M-001", EXECUTION, "Trust A", TRUST_A, "BYLADEM1001", 2, 350),
        TransferBlock("M-002", EXECUTION, "Trust B", TRUST_B, None, 1, 99_999_999_999, batch_booking=None),
    ]
    path = tmp_path / "f.xml"
    with atomic_output(path) as fh:
        counted = write_pain001(
            fh,
            "M",
            CREATED,
            "Hausverwaltung",
            blocks,
            lambda b: shapes[:2] if b.pmt_inf_id == "M-001" else shapes[2:],
        )
    assert counted == (3, 100_000_000_349)
    tree = etree.parse(str(path))
    load_schema("pain.001").assertValid(tree)  # the whole tree, besides the streaming scan below
    totals = scan_pain001(path, collect_ids=True)
    assert totals.problems() == [] and totals.end_to_end_ids == ["E1", "E2", "E3"]
    assert totals.blocks == {
        "M-001": (2, Decimal("3.50"), 2, Decimal("3.50")),
        "M-002": (1, Decimal("999999999.99"), 1, Decimal("999999999.99")),
    }
    assert (totals.header_nb_of_txs, totals.header_ctrl_sum) == (3, Decimal("1000000003.49"))
    assert [e.text for e in tree.findall(".//p:DbtrAgt//p:Othr/p:Id", NS)] == ["NOTPROVIDED"]
    assert len(tree.findall(".//p:CdtrAgt", NS)) == 1 and len(tree.findall(".//p:RmtInf", NS)) == 2
    assert [e.text for e in tree.findall(".//p:BtchBookg", NS)] == ["false"]
    assert tree.findtext(".//p:ReqdExctnDt/p:Dt", namespaces=NS) == "2026-03-02"
    assert _mode(path) == 0o600


# ---------------------------------------------------------------------------------------------
# The run: control listing, file, ledger, re-run
# ---------------------------------------------------------------------------------------------


def _file_sums(path: Path) -> tuple[int, Decimal, dict[str, tuple[int, Decimal, int, Decimal]], list[str]]:
    totals = scan_pain001(path, collect_ids=True)  # GBIC_5 + re-count
    assert totals.problems() == []
    return totals.counted_nb_of_txs, totals.counted_ctrl_sum, totals.blocks, totals.end_to_end_ids


def test_run_writes_listing_and_file_then_rerun_pays_nothing_twice(tmp_path: Path) -> None:
    bad = payout("BK-9001", creditor_iban="DE45120300001234567891")
    with payout_env(tmp_path):
        first = run_payouts([*PAYOUTS, bad])
        out = tmp_path / "payouts" / "out"
        path = Path(first["file"])
        n, total, blocks, ids = _file_sums(path)
        assert (first["number"], first["ctrl_sum"]) == (n, str(total)) == (5, "2015.55")
        assert sorted(ids) == sorted(p.payout_id for p in PAYOUTS)
        assert [(b["nb_of_txs"], b["ctrl_sum"], b["debtor_iban"]) for b in first["blocks"]] == [
            (3, "970.56", TRUST_A),
            (2, "1044.99", TRUST_B),
        ]
        assert {k: (v[2], v[3]) for k, v in blocks.items()} == {
            b["pmt_inf_id"]: (b["nb_of_txs"], Decimal(str(b["ctrl_sum"]))) for b in first["blocks"]
        }
        assert first["execution_date"] == EXECUTION.isoformat()
        assert [(s["payout_id"], s["rule"]) for s in first["skipped"]] == [
            ("BK-9001", "payout.creditor_iban")
        ]
        listing = Path(first["control_listing"]).read_text(encoding="utf-8").splitlines()
        assert len(listing) == 7 and listing[0].startswith("outcome;payout_id")
        assert any(line.startswith("skip;BK-9001") and "payout.creditor_iban" in line for line in listing)
        assert any(
            "Juergen Mueller" in line and IBAN_BYLA in line for line in listing
        )  # full IBANs: owner-only
        assert _mode(path) == _mode(Path(first["control_listing"])) == 0o600
        assert _mode(out) == _mode(out.parent) == 0o700  # created by the run

        # the same payouts again, plus a new one: only the new one is paid, the rest reported
        new = payout("BK-1005", "10.00")
        second = run_payouts([*PAYOUTS, new], run_id="payrun02")
        assert sorted(p["payout_id"] for p in second["already_paid"]) == sorted(p.payout_id for p in PAYOUTS)
        assert all(first["msg_id"] in p["reason"] for p in second["already_paid"])
        assert (second["number"], second["ctrl_sum"]) == (1, "10.00")
        assert _file_sums(Path(second["file"]))[3] == ["BK-1005"]

        third = run_payouts([*PAYOUTS, new], run_id="payrun02")  # same run id again: a new message id
        assert third["file"] is None and third["number"] == 0 and len(third["already_paid"]) == 6
    rows = PayoutLedger(f"sqlite:///{tmp_path}/state.sqlite").rows(
        [p.payout_id for p in [*PAYOUTS, new, bad]]
    )
    assert Counter(r["payout_id"] for r in rows) == Counter([*(p.payout_id for p in PAYOUTS), "BK-1005"])
    assert {r["status"] for r in rows} == {"written"}
    assert sorted(p.name for p in out.glob("*.xml")) == sorted(
        [Path(first["file"]).name, Path(second["file"]).name]
    )


def test_dry_run_writes_only_the_listing(tmp_path: Path) -> None:
    with payout_env(tmp_path):
        dry = run_payouts(dry_run=True)
        assert dry["dry_run"] and dry["file"] is None and (dry["number"], dry["ctrl_sum"]) == (5, "2015.55")
        assert Path(dry["control_listing"]).exists()
        assert not list((tmp_path / "payouts" / "out").glob("*.xml"))
        assert PayoutLedger(f"sqlite:///{tmp_path}/state.sqlite").files() == []
        real = run_payouts()
    assert real["number"] == 5 and real["already_paid"] == []


def test_remittance_shortened_with_a_warning_naming_the_payout(tmp_path: Path) -> None:
    long_text = "Kautionseinbehalt " + "Schadensersatz " * 9
    with payout_env(tmp_path):
        result = run_payouts([payout("BK-1001", remittance=long_text)])
    (warning,) = result["warnings"]
    assert "BK-1001" in warning and "shortened to 140" in warning
    tree = etree.parse(result["file"])
    assert len(tree.findtext(".//p:Ustrd", namespaces=NS) or "") <= 140
    assert "shortened to 140" in Path(result["control_listing"]).read_text(encoding="utf-8")


def test_settings_with_unusable_initiating_party_stop_before_anything(tmp_path: Path) -> None:
    with payout_env(tmp_path), pytest.MonkeyPatch.context() as mp:
        mp.setenv("HAUSFLOW_SEPA__CREDITOR_NAME", "X" * 71)
        with pytest.raises(ValueError, match=r"sepa\.creditor_name"):
            run_payouts()
    assert not (tmp_path / "payouts").exists()


def test_write_payout_file_task_in_a_flow_and_its_summary_masks_ibans(
    prefect_harness: None, tmp_path: Path
) -> None:
    from prefect import flow

    from config.settings import load_settings
    from tasks.payout_tasks import payout_summary_markdown, write_payout_file

    bad = payout("BK-9001", creditor_iban="DE45120300001234567891")

    as_dicts = [{f: getattr(p, f) for f in PAYOUT_FIELDS} for p in PAYOUTS]  # as the deposit flow passes them
    as_dicts[0]["amount"] = "850.00"

    @flow(name="pay-retained-deposits-test")
    def pay() -> dict[str, object]:
        return write_payout_file(load_settings(), [*as_dicts, bad, {"payout_id": "BK-9002"}], "flowrun1")

    with payout_env(tmp_path):
        result = pay()
    assert result["number"] == 5 and scan_pain001(Path(str(result["file"]))).problems() == []
    markdown = payout_summary_markdown(result)
    assert [(n["payout_id"], n["rule"]) for n in result["skipped"]] == [  # type: ignore[index]
        ("BK-9001", "payout.creditor_iban"),
        ("BK-9002", "payout.amount"),
    ]
    assert "BK-9001" in markdown and "payout.creditor_iban" in markdown and "2015.55" in markdown
    assert "DE45120300001234567891" not in markdown and TRUST_A not in markdown  # masked for the UI


def test_the_run_log_shows_no_full_iban(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = payout("BK-7001", creditor_iban="DE45120300001234567891")  # check digits wrong: skipped
    renamed = payout("BK-7002", debtor_name="Treuhand anders")  # same trust account, other name: warned
    caplog.set_level("INFO", logger="hausflow.sepa")
    with payout_env(tmp_path):
        summary = run_payouts([*PAYOUTS, bad, renamed])
    assert summary["number"] == len(PAYOUTS) + 1
    log = caplog.text
    assert "BK-7001" in log and "DE45**************7891" in log and "DE45120300001234567891" not in log
    assert "BK-7002" in log and TRUST_A not in log and f"{TRUST_A[:4]}**************{TRUST_A[-4:]}" in log
    assert summary["file"] and Path(summary["file"]).stem in log  # the message id stays readable
