"""Rule tables of the SEPA debit run: one row per case the seeds (003, 004) and the SEPA rules describe."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from connectors.sepa.writing import (
    ID_ALLOWED,
    blanked_characters,
    is_valid_sepa_id,
    transliterate_many,
)
from tasks.sepa_rules import (
    NOTPROVIDED,
    Amendment,
    ClaimRecord,
    Mandate,
    MandateHistory,
    ReleaseBudget,
    RunContext,
    Way,
    add_months,
    amendment,
    check_amount,
    check_bic,
    check_creditor_id,
    check_iban,
    choose_recurrent_mandate,
    claim_collection_date,
    debtor_name,
    decide_claim,
    earliest_collection_date,
    effective_collection_date,
    end_to_end_id,
    is_target2_business_day,
    make_msg_id,
    mandate_lapsed,
    remittance_text,
    selection_way,
    sequence_type,
    transliterate,
)

IBAN_BYLA = "DE50120300001234567897"
IBAN_BYLA_2 = "DE23120300000532013000"
IBAN_PBNK = "DE84100100101234567898"


# ---- selection (seed 004: three ways) ------------------------------------------------------
@pytest.mark.parametrize(
    ("single_mandate", "auto_debit", "release", "expected"),
    [
        (None, True, None, Way.AUTO_DEBIT),  # 1: payment type is an automatic-debit type
        (None, True, Decimal("50"), Way.AUTO_DEBIT),  # payment type wins over the budget
        (None, False, Decimal("0.01"), Way.RELEASE_BUDGET),  # 2: released amount above 0
        (None, False, Decimal("0"), None),  # released amount 0: no debit
        (None, False, None, None),  # transfer payer
        ("SM-1", False, None, Way.SINGLE_MANDATE),  # 3: explicit single mandate
        ("SM-1", True, Decimal("10"), Way.SINGLE_MANDATE),  # the single mandate wins
    ],
)
def test_selection_way(
    single_mandate: str | None, auto_debit: bool, release: Decimal | None, expected: Way | None
) -> None:
    assert selection_way(single_mandate, auto_debit, release) == expected


def test_release_budget_takes_oldest_claims_and_stops_at_first_that_does_not_fit() -> None:
    budget = ReleaseBudget()
    assert budget.take("P1", Decimal("150"), 10000)
    assert not budget.take("P1", Decimal("150"), 8000)  # 180 > 150
    assert not budget.take("P1", Decimal("150"), 1000)  # would fit, but an older claim is waiting
    assert budget.take("P2", Decimal("150"), 15000)  # exactly the budget; new person, fresh budget
    assert not budget.take("P2", Decimal("150"), 1)


# ---- EndToEndId (seed 003: Kundenreferenz) ---------------------------------------------------
@pytest.mark.parametrize(
    ("template", "object_no", "person_no", "claim_no", "expected", "warns"),
    [
        ("[OBJEKTNUMMER]-[MIETERNUMMER]", "O100", "P001", "C1", "O100-P001/C1", False),
        ("[MIETERNUMMER]", "O100", "P001", "C1", "P001/C1", False),
        ("MIETE [OBJEKTNUMMER]", "O100", "P001", "C1", "MIETE O100/C1", False),
        ("Hausgeld", "O100", "P001", "C77", "Hausgeld/C77", False),  # fixed text
        ("", "O100", "P001", "C1", NOTPROVIDED, False),  # empty -> NOTPROVIDED
        ("   ", "O100", "P001", "C1", NOTPROVIDED, False),
        ("Grün_[OBJEKTNUMMER]", "Ö1", "P1", "C1", "Gruen-Oe1/C1", False),  # transliterated, _ -> -
        # EPC: no '//', no '/' or space at either end, whatever the template and numbers hold
        ("/[OBJEKTNUMMER]/", "O100", "P001", "C1", "O100/C1", False),
        ("[OBJEKTNUMMER]//[MIETERNUMMER]", "O100", "P001", "/C1/", "O100/P001/C1", False),
        (
            "[OBJEKTNUMMER]-[MIETERNUMMER]",
            "OBJ-0000000000001",
            "PERS-00000000000001",
            "C123456",
            "OBJ-0000000000001-PERS-0000/C123456",
            True,
        ),
    ],
)
def test_end_to_end_id(
    template: str, object_no: str, person_no: str, claim_no: str, expected: str, warns: bool
) -> None:
    value, warnings = end_to_end_id(template, object_no, person_no, claim_no)
    assert value == expected
    assert len(value) <= 35 and is_valid_sepa_id(value)
    assert bool(warnings) == warns


def test_end_to_end_id_is_unique_for_claims_of_the_same_tenant_and_object() -> None:
    ids = {end_to_end_id("[OBJEKTNUMMER]-[MIETERNUMMER]", "O1", "P1", f"C{i}")[0] for i in range(50)}
    assert len(ids) == 50
    fixed = {end_to_end_id("Miete", "O1", "P1", f"C{i}")[0] for i in range(50)}
    assert len(fixed) == 50


# ---- remittance text (seed 004: Ueberweisungstexte) -----------------------------------------
def test_remittance_order_fixed_lines_system_line_booking_text() -> None:
    text, warnings = remittance_text(
        ("TIERPRAXIS MUSTER", "2. ZEILE", None),
        "102927",
        date(2010, 2, 10),
        "Nebenkostennachzahlung\nMonat November\n",
    )
    assert (
        text
        == "TIERPRAXIS MUSTER 2. ZEILE RECHNUNG 102927 VOM 10.02.10 Nebenkostennachzahlung Monat November"
    )
    assert warnings == []


TRANSLITERATIONS = [
    ("Müller", "Mueller"),
    ("Straße", "Strasse"),
    ("ÄÖÜ äöü", "AeOeUe aeoeue"),
    ("Café Crème", "Cafe Creme"),
    ("Schmidt & Söhne", "Schmidt + Soehne"),
    ("Miete_März", "Miete-Maerz"),
    ("Preis: 5€ ; *Rabatt*", "Preis: 5 EUR , Rabatt"),
    ("Mu\u0308ller", "Mueller"),  # decomposed umlaut: composed first, then spelt out
    ("STRAẞE 5", "STRASSE 5"),
    ("Einbehalt 50% = 500€", "Einbehalt 50 Prozent gleich 500 EUR"),
    ("info@muster.de", "info(at)muster.de"),
    ("Rechnung #12", "Rechnung Nr. 12"),
    ("„Zitat“ – Ende", "'Zitat' - Ende"),
    ("a+b/c-d?e:f(g).h,i'j", "a+b/c-d?e:f(g).h,i'j"),  # the SEPA set stays as it is
    ("Zeile1\nZeile2", "Zeile1 Zeile2"),
    ("  Ørsted  æ ł  ", "Orsted ae l"),
    ("", ""),
]


@pytest.mark.parametrize(("raw", "expected"), TRANSLITERATIONS)
def test_transliterate(raw: str, expected: str) -> None:
    assert transliterate(raw) == expected


@pytest.mark.parametrize(
    ("raw", "blanked"),
    [
        ("Müller & Söhne 50%", ""),
        ("Hans ☺ Meier", "☺"),
        ("*Rabatt*", "*"),
        ("Иван", "Иавн"),
        ("a\tb\u00a0c", ""),
    ],
)
def test_blanked_characters_are_named(raw: str, blanked: str) -> None:
    assert blanked_characters(raw) == blanked


def test_debit_texts_warn_when_a_character_is_left_out() -> None:
    _text, warnings = remittance_text((), "1", date(2026, 3, 1), "Miete ☺ März")
    assert any("remittance" in w and "U+263A" in w for w in warnings)
    name, warnings = debtor_name("Hans ☺ Meier")
    assert name == "Hans Meier" and len(warnings) == 1 and "debtor name" in warnings[0]
    assert debtor_name("Jürgen Müller")[1] == []


def test_transliterating_many_texts_at_once_gives_each_its_own_result() -> None:
    raws = [raw for raw, _ in TRANSLITERATIONS]
    assert transliterate_many(raws) == [expected for _, expected in TRANSLITERATIONS]
    # spaces at the joints, and a text that holds the joining character itself
    edges = ["ä ", " ü", "  ", "a\x00b", "ß"]
    assert transliterate_many(edges) == [transliterate(text) for text in edges]
    assert transliterate_many(["ä ", " ü", "x"]) == ["ae", "ue", "x"]


def test_remittance_too_long_is_shortened_at_a_word_with_a_warning_naming_the_dropped_words() -> None:
    booking = "Nebenkostennachzahlung 2025 fuer die Wohnung im dritten Obergeschoss links\nMonat November"
    text, warnings = remittance_text(
        ("HAUSVERWALTUNG MUSTER", "Mietkonto"), "1002", date(2026, 2, 10), booking
    )
    assert len(text) <= 140
    assert text.endswith("Monat")
    assert len(warnings) == 1 and "'November'" in warnings[0]


def test_remittance_umlauts_are_transliterated_not_dropped() -> None:
    text, _ = remittance_text((), "1", date(2026, 3, 1), "Miete März für Müller")
    assert text == "RECHNUNG 1 VOM 01.03.26 Miete Maerz fuer Mueller"


# ---- sequence type, amendment, lapse -------------------------------------------------------
def _mandate(**kw: object) -> Mandate:
    base: dict[str, object] = {
        "mandate_id": "M1",
        "person_no": "P1",
        "mandate_type": "RECURRENT",
        "iban": IBAN_BYLA,
        "bic": None,
        "account_holder": "A",
        "signed_on": date(2024, 1, 1),
    }
    base.update(kw)
    return Mandate(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mandate", "history", "expected"),
    [
        (_mandate(), MandateHistory(), "FRST"),  # never used
        (_mandate(first_collection_on=date(2024, 2, 1)), MandateHistory(), "RCUR"),  # used (ERP)
        (_mandate(), MandateHistory(last_collection_on=date(2026, 2, 3)), "RCUR"),  # used (our ledger)
        (_mandate(mandate_type="SINGLE"), MandateHistory(), "OOFF"),
    ],
)
def test_sequence_type(mandate: Mandate, history: MandateHistory, expected: str) -> None:
    assert sequence_type(mandate, history) == expected


@pytest.mark.parametrize(
    ("mandate", "history", "expected"),
    [
        (_mandate(), MandateHistory(), None),  # no change
        (_mandate(original_iban=IBAN_BYLA), MandateHistory(), None),  # same account
        (
            _mandate(iban=IBAN_BYLA_2, original_iban=IBAN_BYLA),
            MandateHistory(),
            Amendment(IBAN_BYLA, False),
        ),  # same bank
        (_mandate(original_iban=IBAN_PBNK), MandateHistory(), Amendment(None, True)),  # other bank: SMNDA
        (
            _mandate(original_iban=IBAN_PBNK),
            MandateHistory(ibans_collected=frozenset({IBAN_BYLA})),
            None,
        ),  # sent already
    ],
)
def test_amendment(mandate: Mandate, history: MandateHistory, expected: Amendment | None) -> None:
    assert amendment(mandate, history) == expected


@pytest.mark.parametrize(
    ("mandate", "history", "collection", "lapsed"),
    [
        (_mandate(last_collection_on=date(2023, 3, 4)), MandateHistory(), date(2026, 3, 3), False),
        (
            _mandate(last_collection_on=date(2023, 3, 4)),
            MandateHistory(),
            date(2026, 3, 4),
            True,
        ),  # exactly 36 months
        (
            _mandate(last_collection_on=date(2022, 1, 1)),
            MandateHistory(date(2025, 1, 1)),
            date(2026, 3, 4),
            False,
        ),
        (_mandate(signed_on=date(2022, 1, 1)), MandateHistory(), date(2026, 3, 4), True),  # never used, old
        (_mandate(signed_on=date(2025, 1, 1)), MandateHistory(), date(2026, 3, 4), False),
    ],
)
def test_mandate_lapse(mandate: Mandate, history: MandateHistory, collection: date, lapsed: bool) -> None:
    assert mandate_lapsed(mandate, history, collection, 36) is lapsed


def test_add_months_clamps_to_month_end() -> None:
    assert add_months(date(2023, 1, 31), 1) == date(2023, 2, 28)
    assert add_months(date(2023, 3, 4), 36) == date(2026, 3, 4)


def test_choose_recurrent_mandate_prefers_newest_active() -> None:
    old = _mandate(mandate_id="A", signed_on=date(2020, 1, 1))
    new_revoked = _mandate(mandate_id="B", signed_on=date(2024, 1, 1), revoked_on=date(2025, 1, 1))
    single = _mandate(mandate_id="S", mandate_type="SINGLE", signed_on=date(2025, 1, 1))
    assert choose_recurrent_mandate([old, new_revoked, single], date(2026, 3, 4)) == old
    assert choose_recurrent_mandate([new_revoked], date(2026, 3, 4)) == new_revoked
    assert choose_recurrent_mandate([single], date(2026, 3, 4)) is None


# ---- dates: TARGET2 and lead time ----------------------------------------------------------
@pytest.mark.parametrize(
    ("day", "open_"),
    [
        (date(2026, 3, 4), True),
        (date(2026, 3, 7), False),  # Saturday
        (date(2026, 4, 3), False),  # Good Friday
        (date(2026, 4, 6), False),  # Easter Monday
        (date(2026, 5, 1), False),
        (date(2026, 12, 24), True),  # Christmas Eve: TARGET2 is open
        (date(2026, 12, 25), False),
        (date(2026, 12, 26), False),
        (date(2027, 1, 1), False),
        (date(2026, 10, 3), False),  # German unity day is a Saturday in 2026 (and not a TARGET2 holiday)
        (date(2025, 10, 3), True),  # a Friday: German holiday, TARGET2 open
    ],
)
def test_target2_calendar(day: date, open_: bool) -> None:
    assert is_target2_business_day(day) is open_


@pytest.mark.parametrize(
    ("today", "earliest"),
    [
        (date(2026, 3, 2), date(2026, 3, 3)),  # Monday -> Tuesday
        (date(2026, 3, 6), date(2026, 3, 9)),  # Friday -> Monday
        (date(2026, 3, 7), date(2026, 3, 10)),  # Saturday: counts from Monday -> Tuesday
        (date(2026, 4, 2), date(2026, 4, 7)),  # Thursday before Easter -> Tuesday after
    ],
)
def test_earliest_collection_date(today: date, earliest: date) -> None:
    assert earliest_collection_date(today, 1) == earliest


@pytest.mark.parametrize(
    ("requested", "today", "effective", "n_warnings"),
    [
        (date(2026, 3, 4), date(2026, 3, 2), date(2026, 3, 4), 0),
        (date(2026, 3, 2), date(2026, 3, 2), date(2026, 3, 3), 1),  # today: too early
        (date(2026, 2, 20), date(2026, 3, 2), date(2026, 3, 3), 1),  # in the past
        (date(2026, 3, 7), date(2026, 3, 2), date(2026, 3, 9), 1),  # Saturday -> Monday
        (date(2026, 4, 3), date(2026, 3, 30), date(2026, 4, 7), 1),  # Good Friday -> Tuesday after Easter
    ],
)
def test_effective_collection_date(requested: date, today: date, effective: date, n_warnings: int) -> None:
    chosen = effective_collection_date(requested, today)
    assert chosen.effective == effective
    assert len(chosen.warnings) == n_warnings


def test_collection_date_too_far_ahead_is_refused() -> None:
    with pytest.raises(ValueError, match="14 days"):
        effective_collection_date(date(2026, 3, 20), date(2026, 3, 2))


@pytest.mark.parametrize(
    ("due", "expected"),
    [
        (date(2026, 2, 1), date(2026, 3, 4)),  # overdue: the run's date
        (date(2026, 3, 7), date(2026, 3, 9)),  # due on a Saturday (horizon): next business day
        (date(2026, 3, 20), None),  # too far ahead
    ],
)
def test_claim_collection_date(due: date, expected: date | None) -> None:
    assert claim_collection_date(due, date(2026, 3, 4), date(2026, 3, 2), 14) == expected


# ---- checks ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("DE98ZZZ09999999999", True),  # Bundesbank test id
        ("DE99ZZZ09999999999", False),  # wrong check digits (the XSD would accept it)
        ("DE98ABC09999999999", True),  # business code is not part of the check
        ("DE98ZZZ0999999999", False),  # too short
    ],
)
def test_creditor_id(value: str, ok: bool) -> None:
    assert (check_creditor_id(value) is None) is ok


@pytest.mark.parametrize(
    ("iban", "ok"),
    [
        (IBAN_BYLA, True),
        ("DE45120300001234567891", False),
        ("DE4512030000123456789", False),
        ("XX00", False),
        ("DE08700901001234567890", False),  # IBAN check digits right, account check digit wrong
        ("BR1500000000000010932840814P2", False),  # valid, outside the SEPA zone
        ("SA0380000000608010167519", False),
        ("CH9300762011623852957", True),  # SEPA zone (its BIC is required: see test_bic)
    ],
)
def test_iban(iban: str, ok: bool) -> None:
    assert (check_iban(iban) is None) is ok


@pytest.mark.parametrize(
    ("bic", "iban", "ok"),
    [
        (None, IBAN_BYLA, True),  # IBAN only is allowed
        ("BYLADEM1001", IBAN_BYLA, True),
        ("BYLADEMMXXX", IBAN_BYLA, True),  # same institution, other branch code
        ("COBADEFFXXX", IBAN_BYLA, False),  # another bank
        ("BYLAATM1", IBAN_BYLA, False),  # another country
        ("BYLA", IBAN_BYLA, False),  # malformed
        (None, "CH9300762011623852957", False),  # outside the EEA: BIC required
        (None, "MC5811222000010123456789030", False),
        (None, "GB33BUKB20201555555555", False),
        ("BUKBGB22", "GB33BUKB20201555555555", True),
    ],
)
def test_bic(bic: str | None, iban: str, ok: bool) -> None:
    assert (check_bic(bic, iban) is None) is ok


@pytest.mark.parametrize(
    ("amount", "ok"),
    [
        (Decimal("0.01"), True),
        (Decimal("999999999.99"), True),
        (Decimal("0"), False),
        (Decimal("-5"), False),
        (Decimal("1000000000.00"), False),
        (Decimal("10.005"), False),  # three decimals
        (None, False),
    ],
)
def test_amount(amount: Decimal | None, ok: bool) -> None:
    assert (check_amount(amount) is None) is ok


def test_msg_id_is_24_hour_utc_and_fits_with_block_suffix() -> None:
    created = datetime(2026, 3, 2, 15, 4, 5, tzinfo=UTC)
    msg = make_msg_id(created, "a1b2c3d4-ffff", 0)
    assert msg == "HF20260302150405-a1b2c3d4-001"
    assert len(msg + "-001") <= 35 and ID_ALLOWED.match(msg + "-001")
    with pytest.raises(ValueError):
        make_msg_id(datetime(2026, 3, 2, 15, 4, 5), "x", 0)  # naive


# ---- one decision per claim ------------------------------------------------------------------
def _claim(**kw: object) -> ClaimRecord:
    base: dict[str, object] = {
        "claim_no": "C1",
        "person_no": "P1",
        "object_no": "O1",
        "invoice_no": "102927",
        "invoice_date": date(2010, 2, 10),
        "due_date": date(2026, 3, 1),
        "open_amount": Decimal("10.00"),
    }
    base.update(kw)
    return ClaimRecord(**base)  # type: ignore[arg-type]


CTX = RunContext("[OBJEKTNUMMER]-[MIETERNUMMER]")
DAY = date(2026, 3, 4)


@pytest.mark.parametrize(
    ("claim", "mandate", "outcome", "rule"),
    [
        (_claim(), _mandate(person_no="P1", last_collection_on=date(2026, 1, 1)), "debit", None),
        (_claim(), None, "quarantine", "sepa.mandate.missing"),
        (_claim(), _mandate(person_no="P2"), "quarantine", "sepa.mandate.person"),
        (_claim(), _mandate(mandate_id="M_1"), "quarantine", "sepa.mandate.id"),
        (_claim(), _mandate(mandate_id="M//1"), "quarantine", "sepa.mandate.id"),
        (_claim(), _mandate(mandate_id="M1 "), "quarantine", "sepa.mandate.id"),
        (_claim(), _mandate(revoked_on=date(2026, 3, 4)), "quarantine", "sepa.mandate.revoked"),
        (_claim(), _mandate(signed_on=date(2026, 3, 5)), "quarantine", "sepa.mandate.not_signed"),
        (_claim(), _mandate(signed_on=date(2020, 1, 1)), "quarantine", "sepa.mandate.lapsed"),
        (_claim(), _mandate(iban="DE45120300001234567891"), "quarantine", "sepa.iban"),
        (_claim(), _mandate(bic="COBADEFFXXX"), "quarantine", "sepa.bic"),
        (
            _claim(),
            _mandate(iban=IBAN_BYLA[:4] + "\u00a0" + IBAN_BYLA[4:], bic="BYLA\tDEM1001"),
            "debit",
            None,
        ),
        (_claim(), _mandate(iban="DE08700901001234567890"), "quarantine", "sepa.iban"),  # account check digit
        (_claim(), _mandate(iban="BR1500000000000010932840814P2"), "quarantine", "sepa.iban"),  # not SEPA
        (_claim(), _mandate(iban="CH9300762011623852957"), "quarantine", "sepa.bic"),  # outside EEA, no BIC
        (_claim(open_amount=Decimal("10.001")), _mandate(), "quarantine", "sepa.amount"),
        (_claim(open_amount=Decimal("2000000000")), _mandate(), "quarantine", "sepa.amount"),
    ],
)
def test_decide_claim(claim: ClaimRecord, mandate: Mandate | None, outcome: str, rule: str | None) -> None:
    decision = decide_claim(claim, Way.AUTO_DEBIT, mandate, MandateHistory(), CTX, DAY)
    assert decision.outcome == outcome
    assert decision.rule == rule
    if outcome == "quarantine":
        assert claim.claim_no in (decision.reason or "") and claim.person_no in (decision.reason or "")


def test_single_mandate_can_be_used_once() -> None:
    single = _mandate(mandate_type="SINGLE", signed_on=date(2020, 1, 1))
    first = decide_claim(_claim(), Way.SINGLE_MANDATE, single, MandateHistory(), CTX, DAY)
    assert first.outcome == "debit" and first.sequence_type == "OOFF"  # single mandates do not lapse
    again = decide_claim(
        _claim(), Way.SINGLE_MANDATE, single, MandateHistory(), CTX, DAY, single_mandate_used=True
    )
    assert again.rule == "sepa.mandate.single_used"


def test_debit_decision_carries_transaction_fields() -> None:
    m = _mandate(account_holder="Jürgen Müller", iban="de50 1203 0000 1234 5678 97", bic="byladem1001")
    d = decide_claim(_claim(booking_text="Miete März"), Way.AUTO_DEBIT, m, MandateHistory(), CTX, DAY)
    assert d.outcome == "debit"
    assert d.end_to_end_id == "O1-P1/C1"
    assert d.amount_cents == 1000
    assert d.debtor_name == "Juergen Mueller"
    assert d.mandate is not None and d.mandate.iban == IBAN_BYLA and d.mandate.bic == "BYLADEM1001"
    assert d.remittance == "RECHNUNG 102927 VOM 10.02.10 Miete Maerz"
    assert d.sequence_type == "FRST"


def test_release_budget_counts_debits_still_in_collection() -> None:
    budget = ReleaseBudget()
    assert not budget.take("P1", Decimal("150"), 8000, in_flight_cents=10000)  # 100 in flight + 80 > 150
    assert ReleaseBudget().take("P1", Decimal("150"), 5000, in_flight_cents=10000)  # exactly 150
