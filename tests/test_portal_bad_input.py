"""Bad ERP input: every record the rules cannot take is refused on its own, with a reason naming it,
and the rest of the run goes on.

The first half are rule tables (pure functions, one row per case): dates that are no dates, text
with control characters or longer than allowed, contracts pointing at nothing, contracts that end
before they start, values the cleaning changes, and refusals of the portal that hold their record
while it is unchanged. The second half runs the flow against the sandbox with one bad row of each
kind planted in a small ERP.
"""

from __future__ import annotations

import math
from datetime import date, datetime
from typing import Any

import httpx
import pandas as pd
import pytest
from sqlalchemy import Engine, insert, select, text, update

from config.settings import load_settings
from connectors.erp import demo, schema
from connectors.erp.database import make_engine
from connectors.erp.extract import extract_portal_rows
from connectors.state_store import QuarantineItem, StateStore, record_json
from flows.portal_sync import run_portal_sync
from sandbox.portal.server import SandboxServer
from tasks.portal_rules import (
    ContactRules,
    DesiredState,
    UnreadableDate,
    build_desired_state,
    clean_text,
    parse_date,
    text_changes,
)
from tasks.portal_tasks import desired_state_from_rows, known_failures
from tasks.validation import record_rule, text_problems, validate_records
from tests.portal_env import BUSINESS_DATE, portal_env, portal_view

TODAY = date(2026, 11, 21)
RULES = ContactRules(
    person_types=frozenset({"MIETER", "MITBEWOHNER"}),
    access_days_before_start=14,
    archive_days_after_move_out=30,
    owner_licence=True,
    caretaker_licence=True,
)


# ---- dates ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (date(2026, 1, 31), date(2026, 1, 31)),
        (datetime(2026, 1, 31, 8, 15), date(2026, 1, 31)),
        (pd.Timestamp("2026-01-31"), date(2026, 1, 31)),
        ("2026-01-31", date(2026, 1, 31)),
        (" 2026-01-31 ", date(2026, 1, 31)),
        ("2026-01-31 00:00:00", date(2026, 1, 31)),
        ("2026-01-31T08:15:00+01:00", date(2026, 1, 31)),
        (None, None),
        (math.nan, None),
        (pd.NaT, None),
    ],
)
def test_a_date_column_gives_a_date_or_null(value: Any, expected: date | None) -> None:
    assert parse_date(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "   ", "31.02.2026", "2026-02-31", "31.12.2026", "2026-01-31x", "morgen", 20260131],
)
def test_a_value_that_is_no_date_is_refused_by_name(value: Any) -> None:
    with pytest.raises(UnreadableDate) as caught:
        parse_date(value)
    assert repr(value) in str(caught.value)


# ---- text cleaning -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("case", "value", "expected"),
    [
        ("clean text stays", "Lindenstraße 5", "Lindenstraße 5"),
        ("spaces around removed", "  anna@example.de ", "anna@example.de"),
        ("e-mail not lower-cased", "Anna@Example.de", "Anna@Example.de"),
        ("tab becomes a space", "Haupt\tstr. 5", "Haupt str. 5"),
        ("line break with spaces becomes one space", "c/o Meier \r\n Hauptstr. 5", "c/o Meier Hauptstr. 5"),
        ("line separator becomes a space", "a\u2028b", "a b"),
        ("only breaks: no value", "\n\t ", None),
        ("no-break space inside stays", "a\u00a0b", "a\u00a0b"),
        ("NUL is left for the validation to refuse", "Haupt\x00str", "Haupt\x00str"),
        ("ESC is left for the validation to refuse", "\x1b[31mrot", "\x1b[31mrot"),
        ("C1 control is left for the validation to refuse", " a\x9bb ", " a\x9bb "),
    ],
)
def test_text_cleaning(case: str, value: str, expected: str | None) -> None:
    assert clean_text(value) == expected, case


@pytest.mark.parametrize(
    ("case", "row", "expected"),
    [
        ("nothing changed: no note", {"email": "a@b.de", "street": "Weg 1"}, []),
        ("e-mail trimmed", {"email": " a@b.de"}, ["email (spaces around it removed)"]),
        ("tab in street", {"street": "Weg\t1"}, ["street (tabs or line breaks replaced by a space)"]),
        (
            "both",
            {"street": "Weg\n1 "},
            ["street (spaces around it removed, tabs or line breaks replaced by a space)"],
        ),
        ("blank is no value, not a change", {"email": "   "}, []),
        ("refused value is never sent: no note", {"street": " Weg\x001"}, []),
        ("not text", {"email": None, "street": 5}, []),
    ],
)
def test_a_note_names_each_value_the_cleaning_changed(
    case: str, row: dict[str, Any], expected: list[str]
) -> None:
    assert text_changes(row, ("email", "street")) == expected, case


# ---- text checks before sending ------------------------------------------------------------------
CONTACT = {
    "id": "P1",
    "salutation": "Frau",
    "firstName": "Anna",
    "lastName": "Schmidt",
    "email": "anna@example.de",
    "street": "Lindenstr. 5",
    "city": "Berlin",
    "country": "DE",
    "portalUser": True,
    "customFields": {"personType": "MIETER"},
    "contracts": [{"type": "RENTER", "propertyId": "1001", "unitId": "1001-01", "startDate": "2020-01-01"}],
}
PROPERTY = {
    "id": "1001",
    "name": "Lindenhof",
    "addresses": [{"street": "Lindenstr. 5", "postalCode": "10115", "city": "Berlin", "country": "DE"}],
}


@pytest.mark.parametrize(
    ("case", "entity", "record", "rules", "reason_parts"),
    [
        ("clean contact", "contacts", CONTACT, [], []),
        ("clean property", "properties", PROPERTY, [], []),
        (
            "NUL in street",
            "contacts",
            {**CONTACT, "street": "Lindenstr.\x005"},
            ["text_control_character(street)"],
            ["street", "U+0000 (NUL)", "position 11", "ERP person record"],
        ),
        (
            "ESC in last name",
            "contacts",
            {**CONTACT, "lastName": "Sch\x1bmidt"},
            ["text_control_character(lastName)"],
            ["U+001B (ESC)"],
        ),
        (
            "C1 control in city",
            "contacts",
            {**CONTACT, "city": "Ber\x85lin"},
            ["text_control_character(city)"],
            ["U+0085"],
        ),
        (
            "tab in a contract's unit number (not cleaned)",
            "contacts",
            {**CONTACT, "contracts": [{**CONTACT["contracts"][0], "unitId": "1001\t01"}]},  # type: ignore[dict-item]
            ["text_control_character(contracts[0].unitId)"],
            ["contracts[0].unitId", "U+0009 (TAB)"],
        ),
        (
            "street longer than the ERP declares",
            "contacts",
            {**CONTACT, "street": "x" * 121},
            ["text_too_long(street)"],
            ["121 characters", "120 the ERP declares for persons.street"],
        ),
        (
            "street exactly as long as declared",
            "contacts",
            {**CONTACT, "street": "x" * 120},
            [],
            [],
        ),
        (
            "country code of three letters",
            "contacts",
            {**CONTACT, "country": "DEU"},
            ["text_too_long(country)"],
            ["3 characters", "2 the ERP declares for persons.country"],
        ),
        (
            "property street nested in its address",
            "properties",
            {**PROPERTY, "addresses": [{**PROPERTY["addresses"][0], "street": "y" * 130}]},  # type: ignore[dict-item]
            ["text_too_long(addresses[0].street)"],
            ["130 characters", "objects.street"],
        ),
        (
            "a field the ERP does not declare: the portal's limit",
            "contacts",
            {**CONTACT, "customFields": {"note": "z" * 256}},
            ["text_too_long(customFields.note)"],
            ["256 characters", "255 the portal accepts"],
        ),
        (
            "unit floor",
            "units",
            {"id": "U1", "propertyId": "1001", "name": "Whg 1", "type": "APARTMENT", "floor": "1" * 21},
            ["text_too_long(floor)"],
            ["units.floor", "ERP unit record"],
        ),
    ],
)
def test_text_checks_name_the_field_and_the_limit(
    case: str, entity: str, record: dict[str, Any], rules: list[str], reason_parts: list[str]
) -> None:
    problems = text_problems(entity, record)
    assert [rule for rule, _ in problems] == rules, case
    reason = " ".join(r for _, r in problems)
    for part in reason_parts:
        assert part in reason, (case, reason)
    assert "\x00" not in reason and "\x1b" not in reason, "a reason never quotes the control character"
    assert all(record_rule(rule) for rule in rules), "text checks depend on the record alone"


def test_validation_quarantines_each_bad_field_and_passes_the_rest() -> None:
    records = {
        "P1": dict(CONTACT),
        "P2": {**CONTACT, "id": "P2", "street": "a\x00b", "city": "c" * 81},
        "P3": {**CONTACT, "id": "P3", "email": "kein-at-zeichen.de"},
    }
    failures = validate_records("contacts", records)
    assert sorted((f.ref_id, f.rule) for f in failures) == [
        ("P2", "text_control_character(street)"),
        ("P2", "text_too_long(city)"),
        ("P3", "expect_column_values_to_match_regex(email)"),
    ]


# ---- contracts the rules cannot place ------------------------------------------------------------
def _person(person_no: str, **kw: Any) -> dict[str, Any]:
    row = {
        "person_no": person_no,
        "person_type": "MIETER",
        "salutation": "Frau",
        "title": None,
        "first_name": "Anna",
        "last_name": f"Muster-{person_no}",
        "company_name": None,
        "email": f"{person_no.lower()}@example.de",
        "phone": None,
        "mobile": None,
        "street": "Lindenstr. 5",
        "postal_code": "10115",
        "city": "Berlin",
        "country": "DE",
        "anonymised": False,
    }
    row.update(kw)
    return row


def _contract(
    contract_no: str, unit_no: str, person_no: str, start: Any, move_out: Any = None
) -> dict[str, Any]:
    return {
        "contract_no": contract_no,
        "unit_no": unit_no,
        "person_no": person_no,
        "contract_type": "RENTER",
        "start_date": start,
        "move_out_date": move_out,
    }


def _world(
    contracts: list[dict[str, Any]],
    partners: list[tuple[str, str]] | None = None,
    persons: list[dict[str, Any]] | None = None,
) -> DesiredState:
    """Object 1001 (released, units 1001-01 and 1001-02), object 2002 (not released, unit 2002-01),
    and unit 9999-01 of object 9999, which is not in the ERP; person GOOD has a clean contract."""
    objects = pd.DataFrame(
        [
            {"object_no": o, "name": f"Haus {o}", "street": "Weg 1", "postal_code": "10115", "city": "Berlin"}
            | {"country": "DE", "owner_person_no": None}
            for o in ("1001", "2002")
        ]
    )
    units = pd.DataFrame(
        [
            {"unit_no": u, "object_no": u[:4], "name": f"Whg {u}", "unit_type": "WOHNUNG", "floor": "0"}
            for u in ("1001-01", "1001-02", "2002-01", "9999-01")
        ]
    )
    people = persons or [_person(p) for p in ("GOOD", "BAD", "MB", "OTHER")]
    frame = pd.DataFrame(
        [_contract("V1", "1001-01", "GOOD", date(2020, 1, 1)), *contracts],
        columns=list(_contract("x", "x", "x", None)),
    )
    return build_desired_state(
        released={"1001"},
        objects=objects,
        units=units,
        persons=pd.DataFrame(people),
        contracts=frame,
        partners=pd.DataFrame(partners or [], columns=["contract_no", "person_no"]).assign(
            role="MITBEWOHNER"
        ),
        caretakers=pd.DataFrame(columns=["object_no", "person_no", "role_name", "role_type"]),
        rules=RULES,
        today=TODAY,
    )


@pytest.mark.parametrize(
    ("case", "contracts", "partners", "held", "reason_parts"),
    [
        (
            "start date 31.02.2026",
            [_contract("V9", "1001-02", "BAD", "31.02.2026")],
            [("V9", "MB")],
            {"BAD": "contract_date_unreadable(start_date)", "MB": "contract_date_unreadable(start_date)"},
            ["contract V9", "start_date", "'31.02.2026'", "correct it in the ERP contract"],
        ),
        (
            "empty start date",
            [_contract("V9", "1001-02", "BAD", "")],
            [],
            {"BAD": "contract_date_unreadable(start_date)"},
            ["contract V9", "start_date holds ''"],
        ),
        (
            "move-out date that is no date",
            [_contract("V9", "1001-02", "BAD", date(2020, 1, 1), "bald")],
            [],
            {"BAD": "contract_date_unreadable(move_out_date)"},
            ["contract V9", "move_out_date holds 'bald'"],
        ),
        (
            "bad date in an object that is not released: not ours",
            [_contract("V9", "2002-01", "BAD", "31.02.2026")],
            [],
            {},
            [],
        ),
        (
            "unit not in the ERP",
            [_contract("V9", "1001-77", "BAD", date(2020, 1, 1))],
            [("V9", "MB")],
            {"BAD": "contract_unit_missing", "MB": "contract_unit_missing"},
            ["contract V9 points at unit 1001-77, which is not in the ERP"],
        ),
        (
            "no unit at all",
            [_contract("V9", None, "BAD", date(2020, 1, 1))],
            [],
            {"BAD": "contract_unit_missing"},
            ["contract V9 points at no unit"],
        ),
        (
            "the unit's object not in the ERP",
            [_contract("V9", "9999-01", "BAD", date(2020, 1, 1))],
            [],
            {"BAD": "contract_object_missing"},
            ["contract V9", "unit 9999-01 of object 9999, which is not in the ERP"],
        ),
        (
            "partner record naming a contract not in the ERP",
            [],
            [("V404", "MB")],
            {"MB": "partner_contract_missing"},
            ["contract V404, which is not in the ERP"],
        ),
        (
            "contract ending before it starts, due for the portal",
            [_contract("V9", "1001-02", "BAD", date(2026, 11, 1), date(2026, 10, 31))],
            [("V9", "MB")],
            {"BAD": "contract_ends_before_start", "MB": "contract_ends_before_start"},
            ["contract V9 in unit 1001-02", "move-out 31.10.2026", "starts (01.11.2026)"],
        ),
    ],
)
def test_a_contract_the_rules_cannot_place_holds_its_people(
    case: str,
    contracts: list[dict[str, Any]],
    partners: list[tuple[str, str]],
    held: dict[str, str],
    reason_parts: list[str],
) -> None:
    desired = _world(contracts, partners)
    assert {q.ref_id: q.rule for q in desired.quarantine} == held, case
    for q in desired.quarantine:
        assert q.entity == "contacts"
        for part in reason_parts:
            assert part in q.reason, (case, q.reason)
        assert q.ref_id not in desired.records["contacts"]
        assert ("contacts", q.ref_id) not in desired.withdraw_reasons, "held, never archived"
    assert "GOOD" in desired.records["contacts"], "the rest goes on"
    assert not [s for s in desired.skipped if s.rule == "person_missing"]


def test_a_person_named_but_not_in_the_erp_is_reported_not_dropped() -> None:
    desired = _world(
        [_contract("V9", "1001-02", "GHOST", date(2020, 1, 1)), _contract("V8", "1001-77", "NOBODY", "x")],
        [("V9", "MB")],
    )
    skipped = {s.ref_id: s for s in desired.skipped}
    assert skipped["GHOST"].rule == "person_missing"
    assert "person GHOST is not in the ERP's persons" in skipped["GHOST"].reason
    assert "tenant of contract V9" in skipped["GHOST"].reason
    assert "contract V8 points at unit 1001-77" in skipped["NOBODY"].reason
    assert "MB" in desired.records["contacts"], "the partner of a contract whose tenant is missing goes over"
    assert not desired.quarantine


def test_an_anonymised_person_is_anonymised_whatever_their_contracts() -> None:
    people = [_person("GOOD"), _person("BAD", anonymised=True)]
    desired = _world([_contract("V9", "1001-02", "BAD", "31.02.2026")], persons=people)
    assert desired.anonymise == {"BAD"} and not desired.quarantine


@pytest.mark.parametrize("flag", ["N", "", "ja", 2])
def test_a_flag_that_is_no_flag_holds_the_person_never_anonymises(flag: Any) -> None:
    people = [_person("GOOD"), _person("BAD", anonymised=flag)]
    desired = _world([_contract("V9", "1001-02", "BAD", date(2020, 1, 1))], persons=people)
    assert [(q.ref_id, q.rule) for q in desired.quarantine] == [("BAD", "person_flag_unreadable(anonymised)")]
    assert f"anonymised holds {flag!r}" in desired.quarantine[0].reason
    assert not desired.anonymise and "BAD" not in desired.records["contacts"]


def test_cleaned_values_go_over_with_a_note_for_that_record_only() -> None:
    people = [
        _person("GOOD"),
        _person("BAD", email="  bad@example.de ", street="Lindenstr.\t5"),
    ]
    desired = _world([_contract("V9", "1001-02", "BAD", date(2020, 1, 1))], persons=people)
    contact = desired.records["contacts"]["BAD"]
    assert (contact["email"], contact["street"]) == ("bad@example.de", "Lindenstr. 5")
    assert list(desired.notes) == [("contacts", "BAD")]
    assert "email (spaces around it removed)" in desired.notes[("contacts", "BAD")]
    assert "street (tabs or line breaks replaced by a space)" in desired.notes[("contacts", "BAD")]


# ---- refusals of the portal hold their record while it is unchanged ------------------------------
def _entry(rule: str, record: dict[str, Any] | None, ref: str = "P1") -> dict[str, Any]:
    return {
        "entity": "contacts",
        "ref_id": ref,
        "rule": rule,
        "reason": f"because {rule}",
        "record_json": record_json(record),
    }


REFUSED = "portal_rejected"
EMAIL = "expect_column_values_to_match_regex(email)"
CHANGED = {**CONTACT, "street": "Neue Str. 1"}


@pytest.mark.parametrize(
    ("case", "entries", "candidate", "incremental", "held_rules", "covered"),
    [
        ("refused, unchanged, full run: held", [_entry(REFUSED, CONTACT)], CONTACT, False, [REFUSED], True),
        (
            "refused, unchanged, incremental run: held",
            [_entry(REFUSED, CONTACT)],
            CONTACT,
            True,
            [REFUSED],
            True,
        ),
        ("refused, then changed in the ERP: released", [_entry(REFUSED, CONTACT)], CHANGED, False, [], False),
        ("refused, no longer to be written: released", [_entry(REFUSED, CONTACT)], None, False, [], False),
        (
            "check failed, unchanged, full run: checked again",
            [_entry(EMAIL, CONTACT)],
            CONTACT,
            False,
            [],
            False,
        ),
        (
            "check failed, unchanged, incremental: held",
            [_entry(EMAIL, CONTACT)],
            CONTACT,
            True,
            [EMAIL],
            True,
        ),
        (
            "refused, unchanged, and a check of an older payload: held by the refusal, checked again",
            [_entry(REFUSED, CONTACT), _entry(EMAIL, CHANGED)],
            CONTACT,
            True,
            [REFUSED],
            False,
        ),
        (
            "a hold (not the record's own fault): never by payload",
            [_entry("parent_quarantined", CONTACT)],
            CONTACT,
            True,
            [],
            False,
        ),
    ],
)
def test_known_failures(
    case: str,
    entries: list[dict[str, Any]],
    candidate: dict[str, Any] | None,
    incremental: bool,
    held_rules: list[str],
    covered: bool,
) -> None:
    candidates = {"contacts": {"P1": candidate} if candidate else {}}
    skips, done = known_failures(entries, candidates, incremental)
    assert [s.rule for s in skips] == held_rules, case
    assert (("contacts", "P1") in done) is covered, case


def test_a_record_quarantined_again_is_held_with_its_latest_payload(tmp_path: Any) -> None:
    store = StateStore(f"sqlite:///{tmp_path}/state.sqlite")
    store.quarantine("portal", [QuarantineItem("contacts", "P1", REFUSED, "409", CONTACT)], "R1")
    store.resolve_quarantine("portal", [])
    store.quarantine("portal", [QuarantineItem("contacts", "P1", REFUSED, "409", CHANGED)], "R2")
    (entry,) = store.open_quarantine("portal")
    assert entry["record_json"] == record_json(CHANGED) and entry["run_id"] == "R2"


# ---- extract ---------------------------------------------------------------------------------------
def test_the_extract_hands_a_bad_date_over_as_text_and_good_ones_as_dates(tmp_path: Any) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/erp.sqlite")
    schema.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.execute(
            insert(schema.contracts),
            [_contract("V1", "U", "P", date(2026, 1, 31)), _contract("V3", "U", "P", date(2026, 1, 1), None)],
        )
        conn.execute(
            text(
                "INSERT INTO contracts (contract_no, unit_no, person_no, contract_type, start_date, move_out_date) "
                "VALUES ('V2', 'U', 'P', 'RENTER', '31.02.2026', ''), ('V4', 'U', 'P', 'RENTER', '2026-02-31', NULL)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO persons (person_no, person_type, anonymised) "
                "VALUES ('P1', 'MIETER', 1), ('P2', 'MIETER', 0), ('P3', 'MIETER', 'N')"
            )
        )
    tables = extract_portal_rows(engine)
    assert [r[-1] for r in tables["persons"].rows] == [True, False, "N"]
    rows = {r[0]: r[4:] for r in tables["contracts"].rows}
    assert rows == {
        "V1": (date(2026, 1, 31), None),
        "V2": ("31.02.2026", ""),
        "V3": (date(2026, 1, 1), None),
        "V4": ("2026-02-31", None),
    }


# ---- the flow against the sandbox ----------------------------------------------------------------
BAD = {
    "date": "ZZ-DATE",
    "empty_date": "ZZ-EMPTY",
    "control": "ZZ-NUL",
    "too_long": "ZZ-LONG",
    "no_unit": "ZZ-NOUNIT",
    "backwards": "ZZ-BACK",
    "flag": "ZZ-FLAG",
}
GOOD_BUT_CLEANED = {"email": "ZZ-SPACE", "street": "ZZ-TAB"}
GHOST = "ZZ-GHOST"


def _plant_bad_rows(engine: Engine) -> dict[str, str]:
    """One new person per kind of bad input, each with a contract in a released unit; returns the
    contract numbers by person."""
    with engine.connect() as conn:
        unit_no = conn.execute(
            select(schema.units.c.unit_no)
            .join(schema.object_groups, schema.object_groups.c.object_no == schema.units.c.object_no)
            .where(schema.object_groups.c.group_name == "CASAVI")
            .order_by(schema.units.c.unit_no)
            .limit(1)
        ).scalar_one()
    people = {
        BAD["date"]: {},
        BAD["empty_date"]: {},
        BAD["control"]: {"street": "Hauptstr.\x005"},
        BAD["too_long"]: {"last_name": "L" * 81},
        BAD["no_unit"]: {},
        BAD["backwards"]: {},
        BAD["flag"]: {},
        GOOD_BUT_CLEANED["email"]: {"email": "  zz.space@example.de "},
        GOOD_BUT_CLEANED["street"]: {"street": "Haupt\tstr. 5"},
    }
    contracts = {no: f"V-{no}" for no in [*people, GHOST]}
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")  # ERP views have no foreign keys either
        conn.execute(
            insert(schema.persons),
            [
                {
                    **_person(no),
                    "email": f"{no.lower()}@example.de",
                    "street": "Hauptstr. 5",
                    "postal_code": "10115",
                    **changes,
                }
                for no, changes in people.items()
            ],
        )
        starts = {BAD["backwards"]: (date(2026, 11, 1), date(2026, 10, 31))}
        conn.execute(
            insert(schema.contracts),
            [
                _contract(
                    contracts[no],
                    "NO-SUCH-UNIT" if no == BAD["no_unit"] else unit_no,
                    no,
                    *starts.get(no, (date(2020, 1, 1), None)),
                )
                for no in contracts
                if no not in (BAD["date"], BAD["empty_date"])
            ],
        )
        for no, value in ((BAD["date"], "31.02.2026"), (BAD["empty_date"], "")):
            conn.execute(
                text(
                    "INSERT INTO contracts (contract_no, unit_no, person_no, contract_type, start_date) "
                    "VALUES (:c, :u, :p, 'RENTER', :d)"
                ),
                {"c": contracts[no], "u": unit_no, "p": no, "d": value},
            )
        conn.execute(text("UPDATE persons SET anonymised = 'N' WHERE person_no = :p"), {"p": BAD["flag"]})
    return contracts


@pytest.fixture(scope="module")
def bad_world(sandbox: SandboxServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("bad-erp")
    erp_url, state_url = f"sqlite:///{folder}/erp.sqlite", f"sqlite:///{folder}/state.sqlite"
    engine = make_engine(erp_url)
    demo.generate_erp(engine, persons=120, seed=5, business_date=BUSINESS_DATE)
    contracts = _plant_bad_rows(engine)
    sandbox.reset()
    return {"engine": engine, "erp_url": erp_url, "state_url": state_url, "contracts": contracts}


def _sync(world: dict[str, Any], sandbox: SandboxServer) -> dict[str, Any]:
    with portal_env(sandbox, world["erp_url"], world["state_url"]):
        return run_portal_sync(profile="test")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@pytest.mark.usefixtures("prefect_harness")
def test_one_bad_row_of_each_kind_is_held_and_the_rest_arrives(
    bad_world: dict[str, Any], sandbox: SandboxServer
) -> None:
    first = _sync(bad_world, sandbox)
    assert first["failed"] == 0 and first["confirmed"] > 0, "the run completes"

    store = StateStore(bad_world["state_url"])
    held = {q["ref_id"]: q for q in store.open_quarantine("portal") if q["entity"] == "contacts"}
    contracts = bad_world["contracts"]
    expected = {
        BAD["date"]: (
            "contract_date_unreadable(start_date)",
            [contracts[BAD["date"]], "start_date", "'31.02.2026'"],
        ),
        BAD["empty_date"]: (
            "contract_date_unreadable(start_date)",
            [contracts[BAD["empty_date"]], "holds ''"],
        ),
        BAD["control"]: ("text_control_character(street)", ["street", "U+0000 (NUL)"]),
        BAD["too_long"]: ("text_too_long(lastName)", ["lastName has 81 characters", "80 the ERP declares"]),
        BAD["no_unit"]: ("contract_unit_missing", [contracts[BAD["no_unit"]], "unit NO-SUCH-UNIT"]),
        BAD["backwards"]: (
            "contract_ends_before_start",
            [contracts[BAD["backwards"]], "31.10.2026", "01.11.2026"],
        ),
        BAD["flag"]: ("person_flag_unreadable(anonymised)", ["anonymised holds 'N'"]),
    }
    for person_no, (rule, parts) in expected.items():
        assert person_no in held, person_no
        assert held[person_no]["rule"] == rule
        for part in parts:
            assert part in held[person_no]["reason"], (person_no, held[person_no]["reason"])
    run_rows = store.protocol_rows(first["run_id"], ["skipped", "quarantined", "note"], limit=100_000)
    ghost = [r for r in run_rows if r.ref_id == GHOST]
    assert ghost and ghost[0].outcome == "skipped" and contracts[GHOST] in (ghost[0].reason or "")
    notes = {r.ref_id: r.reason or "" for r in run_rows if r.outcome == "note"}
    assert set(notes) == set(GOOD_BUT_CLEANED.values()), "a note for each record cleaned, and only those"
    assert "email (spaces around it removed)" in notes[GOOD_BUT_CLEANED["email"]]
    assert "street (tabs or line breaks" in notes[GOOD_BUT_CLEANED["street"]]

    # every good record arrived, none of the bad ones nor any bad value
    view = portal_view(sandbox)
    settings = load_settings("test")
    desired, _, _ = desired_state_from_rows(settings, extract_portal_rows(bad_world["engine"]), BUSINESS_DATE)
    quarantined = {(q["entity"], q["ref_id"]) for q in store.open_quarantine("portal")}
    for entity in ("properties", "units", "contacts"):
        wanted = {rid for rid in desired.records[entity] if (entity, rid) not in quarantined}
        assert wanted and wanted <= {rid for rid, r in view[entity].items() if not r["archived"]}, entity
    contacts = view["contacts"]
    assert not set(BAD.values()) & set(contacts) and GHOST not in contacts
    assert contacts[GOOD_BUT_CLEANED["email"]]["email"] == "zz.space@example.de"
    assert contacts[GOOD_BUT_CLEANED["street"]]["street"] == "Haupt str. 5"
    for entity, records in view.items():
        for record in records.values():
            for value in _strings(record):
                assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value), (entity, record["id"])
    assert all(len(c.get("lastName") or "") <= 80 for c in contacts.values())

    # a second run neither sends nor fails anything: the bad records stay held
    before = sandbox.counters()["writes"]
    second = _sync(bad_world, sandbox)
    assert second["planned_writes"] == 0 and second["failed"] == 0 and sandbox.counters()["writes"] == before
    assert {q["ref_id"] for q in StateStore(bad_world["state_url"]).open_quarantine("portal")} >= set(
        BAD.values()
    )

    # fixed in the ERP, they go over (incrementally)
    engine = bad_world["engine"]
    with engine.begin() as conn:
        conn.execute(
            update(schema.contracts)
            .where(schema.contracts.c.contract_no.in_([contracts[BAD["date"]], contracts[BAD["backwards"]]]))
            .values(start_date=date(2026, 2, 1), move_out_date=None)
        )
        conn.execute(
            update(schema.persons)
            .where(schema.persons.c.person_no == BAD["control"])
            .values(street="Hauptstr. 5")
        )
    third = _sync(bad_world, sandbox)
    assert third["mode"] == "incremental" and third["failed"] == 0
    contacts = portal_view(sandbox)["contacts"]
    for person_no in (BAD["date"], BAD["backwards"], BAD["control"]):
        assert person_no in contacts, person_no
    still = {q["ref_id"] for q in StateStore(bad_world["state_url"]).open_quarantine("portal")}
    assert not {BAD["date"], BAD["backwards"], BAD["control"]} & still
    assert {BAD["empty_date"], BAD["too_long"], BAD["no_unit"]} <= still


@pytest.mark.usefixtures("prefect_harness")
def test_a_refusal_of_the_portal_holds_the_record_until_it_changes(
    bad_world: dict[str, Any], sandbox: SandboxServer
) -> None:
    _sync(bad_world, sandbox)
    engine = bad_world["engine"]
    person_no = GOOD_BUT_CLEANED["email"]
    # someone anonymised the contact in the portal; the ERP still has the person: every write of
    # it is refused (409) for as long as it is sent
    with httpx.Client(base_url=sandbox.base_url) as api:
        token = api.post("/v2/authenticate", json={"key": sandbox.key, "secret": sandbox.secret}).json()[
            "token"
        ]
        assert api.post(f"/v2/contacts/{person_no}/anonymize", headers={"token": token}).status_code == 200

    def change_phone(number: str) -> None:
        with engine.begin() as conn:
            conn.execute(
                update(schema.persons).where(schema.persons.c.person_no == person_no).values(phone=number)
            )

    change_phone("+49 30 111")
    with pytest.raises(RuntimeError, match="stays in quarantine until the record changes"):
        _sync(bad_world, sandbox)
    store = StateStore(bad_world["state_url"])
    (entry,) = [q for q in store.open_quarantine("portal") if q["ref_id"] == person_no]
    assert entry["rule"] == "portal_rejected" and "anonymised" in entry["reason"]

    again = _sync(bad_world, sandbox)  # not sent again, not failed: held
    assert again["failed"] == 0 and again["planned_writes"] == 0
    rows = store.protocol_rows(again["run_id"], ["quarantined", "failed"], limit=100_000)
    assert [(r.outcome, r.ref_id) for r in rows if r.ref_id == person_no] == [("quarantined", person_no)]

    change_phone("+49 30 222")  # a changed record is sent again (and refused again, here)
    with pytest.raises(RuntimeError):
        _sync(bad_world, sandbox)
    with store.engine.connect() as conn:
        failed = conn.execute(
            text("SELECT count(*) FROM protocol WHERE ref_id = :p AND outcome = 'failed'"), {"p": person_no}
        ).scalar_one()
    assert failed == 2, "failed when first refused and when sent again after the change, not in between"


def test_every_kind_of_bad_row_leaves_an_incremental_run_equal_to_a_full_one(tmp_path: Any) -> None:
    """The rules alone: after planting the bad rows, an incremental rebuild equals a full run."""
    from tests.test_portal_incremental import Ledger

    engine = make_engine(f"sqlite:///{tmp_path}/erp.sqlite")
    demo.generate_erp(engine, persons=120, seed=5, business_date=BUSINESS_DATE)
    ledger = Ledger(engine)
    contracts = _plant_bad_rows(engine)
    ledger.step()
    held = {q.ref_id for q in ledger.full.quarantine}
    assert held == set(BAD.values()) - {BAD["control"], BAD["too_long"]}  # those two: the validation's
    ledger.step()  # nothing changed: the held ones are decided again, and held again
    with engine.begin() as conn:
        conn.execute(
            update(schema.contracts)
            .where(schema.contracts.c.contract_no == contracts[BAD["date"]])
            .values(start_date=date(2026, 2, 1))
        )
    ledger.step()
    assert BAD["date"] in ledger.full.records["contacts"]
    assert {q.ref_id for q in ledger.full.quarantine} == held - {BAD["date"]}
