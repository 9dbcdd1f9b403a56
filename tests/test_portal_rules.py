"""Rule tables for the portal rules of seed 001 (pure functions, no I/O)."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from connectors.portal.streams import STREAMS, payload_hash
from connectors.state_store import StateEntry
from tasks.portal_rules import (
    ContactRules,
    Relation,
    build_desired_state,
    build_responsibilities,
    decide_contact,
    released_objects,
)
from tasks.sync.plan import plan_changes
from tasks.validation import validate_records

TODAY = date(2026, 11, 21)
RULES = ContactRules(
    person_types=frozenset({"MIETER", "EIGENTUEMER", "MITBEWOHNER"}),
    access_days_before_start=14,
    archive_days_after_move_out=30,
    owner_licence=True,
    caretaker_licence=True,
)
NO_LICENCES = ContactRules(RULES.person_types, 14, 30, owner_licence=False, caretaker_licence=False)


def person(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "person_no": "P1",
        "person_type": "MIETER",
        "salutation": "Frau",
        "first_name": "Anna",
        "last_name": "Schmidt",
        "email": "anna.schmidt@example.de",
        "anonymised": False,
    }
    base.update(kw)
    return base


def renter(
    start: date, move_out: date | None = None, unit: str = "1001-01", contract: str = "V1"
) -> Relation:
    return Relation("RENTER", "1001", unit, start, move_out, contract)


@pytest.mark.parametrize(
    ("case", "p", "relations", "rules", "action", "portal_user", "reason_part"),
    [
        ("active tenant goes over", person(), [renter(date(2020, 1, 1))], RULES, "send", True, None),
        (
            "access opens 14 days before start",
            person(),
            [renter(date(2026, 12, 5))],
            RULES,
            "send",
            True,
            None,
        ),
        (
            "15 days before start: not yet",
            person(),
            [renter(date(2026, 12, 6))],
            RULES,
            "wait",
            None,
            "opens on 22.11.2026",
        ),
        (
            "moved out 30 days ago: still there",
            person(),
            [renter(date(2020, 1, 1), date(2026, 10, 22))],
            RULES,
            "send",
            True,
            None,
        ),
        (
            "moved out 31 days ago: deleted",
            person(),
            [renter(date(2020, 1, 1), date(2026, 10, 21))],
            RULES,
            "withdraw",
            None,
            "reported deleted after 30 days",
        ),
        (
            "type not enabled: portalUser False",
            person(person_type="INTERESSENT"),
            [renter(date(2020, 1, 1))],
            RULES,
            "send",
            False,
            None,
        ),
        (
            "co-resident goes over",
            person(person_type="MITBEWOHNER"),
            [Relation("PARTNER", "1001", "1001-01", date(2020, 1, 1), None, "V1")],
            RULES,
            "send",
            True,
            None,
        ),
        (
            "contract partner type not enabled",
            person(person_type="VERTRAGSPARTNER"),
            [Relation("PARTNER", "1001", "1001-01", date(2020, 1, 1), None, "V1")],
            RULES,
            "send",
            False,
            None,
        ),
        (
            "anonymised: anonymise, no data",
            person(anonymised=True),
            [renter(date(2020, 1, 1))],
            RULES,
            "anonymise",
            None,
            "anonymised",
        ),
        (
            "owner with licence",
            person(person_type="EIGENTUEMER"),
            [Relation("OWNER", "1001")],
            RULES,
            "send",
            True,
            None,
        ),
        (
            "owner without licence",
            person(person_type="EIGENTUEMER"),
            [Relation("OWNER", "1001")],
            NO_LICENCES,
            "withdraw",
            None,
            "owner licence is off",
        ),
        (
            "caretaker with licence",
            person(person_type="HAUSMEISTER"),
            [Relation("CARETAKER", "1001")],
            RULES,
            "send",
            False,
            None,
        ),
        (
            "caretaker without licence",
            person(person_type="HAUSMEISTER"),
            [Relation("CARETAKER", "1001")],
            NO_LICENCES,
            "withdraw",
            None,
            "caretaker licence is off",
        ),
    ],
)
def test_decide_contact(
    case: str,
    p: dict[str, object],
    relations: list[Relation],
    rules: ContactRules,
    action: str,
    portal_user: bool | None,
    reason_part: str | None,
) -> None:
    decision = decide_contact(p, relations, rules, TODAY)
    assert decision.action == action, case
    if portal_user is not None:
        assert decision.payload is not None
        assert decision.payload["portalUser"] is portal_user
    if reason_part:
        assert decision.reason and reason_part in decision.reason, decision.reason
    if action == "anonymise":
        assert decision.payload is None


def test_flat_and_garage_make_one_contact_with_two_contracts() -> None:
    decision = decide_contact(
        person(),
        [
            renter(date(2021, 1, 1), unit="1001-09", contract="V2"),
            renter(date(2020, 1, 1), unit="1001-01", contract="V1"),
        ],
        RULES,
        TODAY,
    )
    assert decision.action == "send" and decision.payload is not None
    assert [c["unitId"] for c in decision.payload["contracts"]] == ["1001-01", "1001-09"]


def test_moved_out_of_one_contract_keeps_the_other() -> None:
    decision = decide_contact(
        person(),
        [
            renter(date(2010, 1, 1), date(2025, 1, 31)),
            renter(date(2024, 1, 1), unit="1001-02", contract="V2"),
        ],
        RULES,
        TODAY,
    )
    assert decision.action == "send" and decision.payload is not None
    assert [c["unitId"] for c in decision.payload["contracts"]] == ["1001-02"]


def test_released_objects_from_range_and_group() -> None:
    groups = pd.DataFrame({"group_name": ["CASAVI", "CASAVI", "KM_Kautionen"], "object_no": ["1", "2", "3"]})
    assert released_objects(["1", "2", "3", "4"], groups, ["4", "9"], "CASAVI") == {"1", "2", "4"}
    assert released_objects(["1", "2", "3", "4"], groups, [], None) == set()


def _frames() -> dict[str, pd.DataFrame]:
    return {
        "objects": pd.DataFrame(
            [
                {
                    "object_no": "1001",
                    "name": "Lindenstr. 5",
                    "street": "Lindenstr. 5",
                    "postal_code": "10115",
                    "city": "Berlin",
                    "country": "DE",
                    "owner_person_no": "E1",
                },
                {
                    "object_no": "2002",
                    "name": "Hinterhaus",
                    "street": "Hofweg 1",
                    "postal_code": "20095",
                    "city": "Hamburg",
                    "country": "DE",
                    "owner_person_no": "E2",
                },
            ]
        ),
        "units": pd.DataFrame(
            [
                {
                    "unit_no": "1001-01",
                    "object_no": "1001",
                    "name": "Whg 1",
                    "unit_type": "WOHNUNG",
                    "floor": "0",
                },
                {
                    "unit_no": "1001-G1",
                    "object_no": "1001",
                    "name": "Garage 1",
                    "unit_type": "GARAGE",
                    "floor": None,
                },
                {
                    "unit_no": "2002-01",
                    "object_no": "2002",
                    "name": "Whg 1",
                    "unit_type": "WOHNUNG",
                    "floor": "1",
                },
            ]
        ),
        "persons": pd.DataFrame(
            [
                person(person_no="M1"),
                person(person_no="M2", last_name=None, first_name="Ohne"),
                person(person_no="MB", person_type="MITBEWOHNER", first_name="Ben"),
                person(person_no="X1"),
                person(person_no="E1", person_type="EIGENTUEMER"),
                person(person_no="E2", person_type="EIGENTUEMER"),
                person(person_no="H1", person_type="HAUSMEISTER", email="hm@"),
            ]
        ),
        "contracts": pd.DataFrame(
            [
                {
                    "contract_no": "V1",
                    "unit_no": "1001-01",
                    "person_no": "M1",
                    "contract_type": "RENTER",
                    "start_date": date(2020, 1, 1),
                    "move_out_date": None,
                },
                {
                    "contract_no": "V2",
                    "unit_no": "1001-G1",
                    "person_no": "M1",
                    "contract_type": "RENTER",
                    "start_date": date(2021, 1, 1),
                    "move_out_date": None,
                },
                {
                    "contract_no": "V3",
                    "unit_no": "2002-01",
                    "person_no": "X1",
                    "contract_type": "RENTER",
                    "start_date": date(2020, 1, 1),
                    "move_out_date": None,
                },
                {
                    "contract_no": "V4",
                    "unit_no": "1001-01",
                    "person_no": "M2",
                    "contract_type": "RENTER",
                    "start_date": date(2020, 1, 1),
                    "move_out_date": None,
                },
            ]
        ),
        "partners": pd.DataFrame([{"contract_no": "V1", "person_no": "MB", "role": "MITBEWOHNER"}]),
        "caretakers": pd.DataFrame(
            [{"object_no": "1001", "person_no": "H1", "role_name": "Hausmeister", "role_type": "external"}]
        ),
    }


def test_desired_state_only_released_objects_and_their_people() -> None:
    f = _frames()
    desired = build_desired_state(released={"1001"}, rules=RULES, today=TODAY, **{k: f[k] for k in f})
    assert set(desired.records["properties"]) == {"1001"}
    assert set(desired.records["units"]) == {"1001-01", "1001-G1"}
    assert set(desired.records["contacts"]) == {
        "M1",
        "M2",
        "MB",
        "E1",
        "H1",
    }  # X1 lives in an unreleased object
    assert len(desired.records["contacts"]["M1"]["contracts"]) == 2
    assert desired.records["properties"]["1001"] == {  # the portal's public read shape
        "id": "1001",
        "name": "Lindenstr. 5",
        "number": "1001",
        "postalCode": "10115",
        "city": "Berlin",
        "country": "DE",
        "addresses": [{"street": "Lindenstr. 5", "units": ["1001-01", "1001-G1"]}],
        "customFields": {},
    }
    assert desired.caretakers == {
        "1001": [{"contactId": "H1", "roleName": "Hausmeister", "roleType": "external"}]
    }


def test_validation_reports_no_last_name_and_bad_email_and_responsibility_drops_them() -> None:
    f = _frames()
    desired = build_desired_state(released={"1001"}, rules=RULES, today=TODAY, **{k: f[k] for k in f})
    failures = validate_records("contacts", desired.records["contacts"])
    by_id = {x.ref_id: x for x in failures}
    assert set(by_id) == {"M2", "H1"}
    assert "neither last name nor company name" in by_id["M2"].reason
    assert "'hm@'" in by_id["H1"].reason
    sendable = set(desired.records["contacts"]) - set(by_id)
    records, skips = build_responsibilities(desired, sendable)
    assert records["1001"]["responsibilities"] == []
    assert skips and "caretaker H1" in skips[0].reason


def _state(
    entity: str, payloads: dict[str, dict[str, object]], status: str = "active"
) -> dict[str, StateEntry]:
    return {rid: StateEntry(payload_hash(STREAMS[entity], p), status) for rid, p in payloads.items()}


def test_plan_creates_updates_archives_and_is_empty_when_in_step() -> None:
    a = {"id": "P1", "lastName": "A", "contracts": []}
    b = {"id": "P2", "lastName": "B", "contracts": []}
    b2 = {"id": "P2", "lastName": "B-neu", "contracts": []}
    state = {"contacts": _state("contacts", {"P1": a, "P2": b, "P3": {"id": "P3"}})}
    plan = plan_changes(
        tuple(STREAMS.values()), {"contacts": {"P1": a, "P2": b2, "P4": {"id": "P4", "lastName": "D"}}}, state
    )
    assert [(w.ref_id, w.outcome) for w in plan.writes] == [
        ("P2", "updated"),
        ("P4", "created"),
        ("P3", "archived"),
    ]
    in_step = {"contacts": _state("contacts", {"P1": a, "P2": b2, "P4": {"id": "P4", "lastName": "D"}})}
    assert (
        plan_changes(
            tuple(STREAMS.values()),
            {"contacts": {"P1": a, "P2": b2, "P4": {"id": "P4", "lastName": "D"}}},
            in_step,
        ).writes
        == []
    )


def test_plan_holds_quarantined_and_partial_runs_never_archive() -> None:
    a = {"id": "P1", "lastName": "A"}
    state = {"contacts": _state("contacts", {"P1": a, "P9": {"id": "P9"}})}
    plan = plan_changes(
        tuple(STREAMS.values()),
        {"contacts": {"P1": {"id": "P1", "lastName": "changed"}}},
        state,
        held={("contacts", "P1"), ("contacts", "P9")},
    )
    assert plan.writes == []
    plan = plan_changes(tuple(STREAMS.values()), {"contacts": {}}, state, allow_archive=False)
    assert plan.writes == [] and plan.notes


def test_plan_anonymises_once_and_restores_archived() -> None:
    state = {
        "contacts": {
            "P1": StateEntry("x", "active"),
            "P2": StateEntry("y", "anonymised"),
            "P3": StateEntry("z", "archived"),
        }
    }
    plan = plan_changes(
        tuple(STREAMS.values()),
        {"contacts": {"P3": {"id": "P3", "lastName": "C"}}},
        state,
        anonymise={"P1", "P2", "P7"},
    )
    assert [(w.ref_id, w.op, w.outcome) for w in plan.writes] == [
        ("P3", "upsert", "restored"),
        ("P1", "anonymize", "anonymised"),
    ]


def test_plan_orders_phases_parents_first_and_batches_never_mix_phases() -> None:
    desired = {
        "properties": {"1": {"id": "1", "name": "x"}},
        "units": {f"1-{i}": {"id": f"1-{i}", "propertyId": "1"} for i in range(5)},
        "contacts": {"P1": {"id": "P1", "lastName": "A"}},
    }
    plan = plan_changes(tuple(STREAMS.values()), desired, {"contacts": {"OLD": StateEntry("h", "active")}})
    assert [w.entity for w in plan.writes][:2] == ["properties", "units"]
    batches = list(plan.batches(2))
    assert [len(b) for b in batches] == [1, 2, 2, 1, 1, 1]
    assert all(len({(w.entity, w.op) for w in b}) == 1 for b in batches)
