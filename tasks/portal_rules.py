"""Portal rules of seed 001 as pure functions over plain records and DataFrames (no I/O).

The desired portal state is derived from the ERP alone; the plan step compares it with what the
portal last confirmed. Each rule is one small function so the rule tables in the tests can name
the seed's cases one by one.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import pandas as pd

UNIT_TYPES = {"WOHNUNG": "APARTMENT", "GARAGE": "GARAGE", "GEWERBE": "COMMERCIAL", "STELLPLATZ": "PARKING"}


@dataclass(frozen=True)
class ContactRules:
    """The data configuration of the portal interface that the contact rules need."""

    person_types: frozenset[str]
    access_days_before_start: int
    archive_days_after_move_out: int
    owner_licence: bool
    caretaker_licence: bool


@dataclass(frozen=True)
class Relation:
    """Why a person belongs in the portal: a contract (lead tenant or partner), ownership or care."""

    kind: str  # RENTER, PARTNER, OWNER, CARETAKER
    property_id: str
    unit_id: str | None = None
    start: date | None = None
    move_out: date | None = None
    contract_no: str | None = None


@dataclass(frozen=True)
class Skip:
    """A record that is not sent in this run, with the rule and a reason a person can act on."""

    entity: str
    ref_id: str
    rule: str
    reason: str


@dataclass
class ContactDecision:
    """What the rules want for one person."""

    action: str  # send, anonymise, withdraw (no valid relation any more), wait (not yet due), none
    payload: dict[str, Any] | None = None
    reason: str | None = None
    rule: str | None = None


@dataclass
class DesiredState:
    """The portal as the ERP says it should be, plus everything the rules held back and why."""

    records: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)
    withdraw_reasons: dict[tuple[str, str], str] = field(default_factory=dict)
    anonymise: set[str] = field(default_factory=set)
    caretakers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # Set by an incremental run: ``records`` then holds only the recomputed records, and ``keys``
    # every desired reference id per entity (recomputed or carried over unchanged).
    keys: dict[str, set[str]] | None = None

    def present(self, entity: str) -> Collection[str]:
        """Reference ids of every desired record of ``entity``, recomputed in this run or not."""
        if self.keys is not None and entity in self.keys:
            return self.keys[entity]
        return self.records.get(entity, {}).keys()


def _missing(value: Any) -> bool:
    """``None``, NaN, ``pd.NA`` or ``NaT`` (what a DataFrame holds for SQL NULL)."""
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value)


def _text(value: Any) -> str | None:
    """Stripped text or ``None`` for empty values and NULLs (hot path: called per field and row)."""
    if isinstance(value, str):
        return value.strip() or None
    if _missing(value):
        return None
    return str(value).strip() or None


def _date(value: Any) -> date | None:
    """A date from a date, a timestamp or an ISO string (SQLite returns dates as text)."""
    if isinstance(value, str):
        return date.fromisoformat(value[:10])
    if _missing(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def released_objects(
    objects: Iterable[str], groups: pd.DataFrame, object_range: Iterable[str], object_group: str | None
) -> set[str]:
    """Objects released for the portal: the configured object range plus every object of the group.

    Args:
        objects: all object numbers of the ERP (a released number that does not exist is ignored).
        groups: ``object_groups`` rows (``group_name``, ``object_no``).
        object_range: explicitly configured object numbers (Objektbereich).
        object_group: name of an object group whose members are released, or ``None``.
    """
    known = set(objects)
    released = set(object_range) & known
    if object_group and not groups.empty:
        released |= set(groups.loc[groups["group_name"] == object_group, "object_no"]) & known
    return released


def contract_window(relation: Relation, rules: ContactRules) -> tuple[date | None, date | None]:
    """First and last day on which a contract gives portal access.

    Access starts ``access_days_before_start`` days before the contract start and ends
    ``archive_days_after_move_out`` days after the move-out (then the person is reported deleted).
    """
    first = relation.start - timedelta(days=rules.access_days_before_start) if relation.start else None
    last = (
        relation.move_out + timedelta(days=rules.archive_days_after_move_out) if relation.move_out else None
    )
    return first, last


def relation_state(relation: Relation, rules: ContactRules, today: date) -> tuple[str, str | None]:
    """``active``, ``wait`` (access not yet due) or ``expired`` (past move-out grace), with the reason."""
    if relation.kind in ("OWNER", "CARETAKER"):
        return "active", None
    first, last = contract_window(relation, rules)
    if first and today < first:
        return "wait", (
            f"contract {relation.contract_no} starts on {relation.start:%d.%m.%Y}; portal access opens on "
            f"{first:%d.%m.%Y} ({rules.access_days_before_start} days before)"
        )
    if last and today > last:
        return "expired", (
            f"moved out of unit {relation.unit_id} on {relation.move_out:%d.%m.%Y} (contract {relation.contract_no}); "
            f"reported deleted after {rules.archive_days_after_move_out} days"
        )
    return "active", None


def contact_payload(
    person: dict[str, Any], contracts: list[dict[str, Any]], portal_user: bool
) -> dict[str, Any]:
    """The portal contact for one ERP person (one contact per person, whatever the number of contracts)."""
    return {
        "id": str(person["person_no"]),
        "salutation": _text(person.get("salutation")),
        "title": _text(person.get("title")),
        "firstName": _text(person.get("first_name")),
        "lastName": _text(person.get("last_name")),
        "companyName": _text(person.get("company_name")),
        "email": _text(person.get("email")),
        "telephone": _text(person.get("phone")),
        "mobile": _text(person.get("mobile")),
        "street": _text(person.get("street")),
        "postalCode": _text(person.get("postal_code")),
        "city": _text(person.get("city")),
        "country": _text(person.get("country")) or "DE",
        "portalUser": portal_user,
        "customFields": {"personType": _text(person.get("person_type"))},
        "contracts": contracts,
    }


def decide_contact(
    person: dict[str, Any], relations: list[Relation], rules: ContactRules, today: date
) -> ContactDecision:
    """Apply the person rules of seed 001 to one person.

    - anonymised in the ERP: anonymise in the portal, send no personal data;
    - every active person (valid contract, co-resident or contract partner) goes over; the access
      window opens ``access_days_before_start`` before the start and closes
      ``archive_days_after_move_out`` after the move-out;
    - owners only with the owner licence, caretakers only with the caretaker licence;
    - person types that are not enabled go over with ``portalUser=False``;
    - several contracts (flat and garage) make one contact with several contracts.
    """
    if bool(person.get("anonymised")):
        return ContactDecision("anonymise", reason="anonymised in the ERP", rule="anonymised")
    usable = [
        r
        for r in relations
        if (r.kind != "OWNER" or rules.owner_licence) and (r.kind != "CARETAKER" or rules.caretaker_licence)
    ]
    if not usable:
        kinds = sorted({r.kind for r in relations})
        reason = "no relation to a released object"
        if kinds == ["OWNER"]:
            reason = "owner, but the owner licence is off"
        elif kinds == ["CARETAKER"]:
            reason = "caretaker, but the caretaker licence is off"
        elif set(kinds) <= {"OWNER", "CARETAKER"} and kinds:
            reason = "owner/caretaker, but the licences are off"
        return ContactDecision("withdraw", reason=reason, rule="licence")
    active: list[Relation] = []
    waiting: list[str] = []
    expired: list[str] = []
    for relation in usable:
        state, why = relation_state(relation, rules, today)
        if state == "active":
            active.append(relation)
        elif state == "wait" and why:
            waiting.append(why)
        elif why:
            expired.append(why)
    if not active:
        if waiting:
            return ContactDecision("wait", reason=waiting[0], rule="access_days_before_start")
        return ContactDecision(
            "withdraw",
            reason=expired[0] if expired else "no valid contract",
            rule="archive_days_after_move_out",
        )
    contracts = [
        {
            "type": "OWNER" if r.kind == "OWNER" else "RENTER",
            "propertyId": r.property_id,
            "unitId": r.unit_id,
            "startDate": r.start.isoformat() if r.start else None,
            "endDate": r.move_out.isoformat() if r.move_out else None,
        }
        for r in active
        if r.kind != "CARETAKER"
    ]
    if len(contracts) > 1:
        contracts.sort(key=lambda c: (c["propertyId"], c["unitId"] or "", c["type"], c["startDate"] or ""))
    portal_user = _text(person.get("person_type")) in rules.person_types
    return ContactDecision("send", payload=contact_payload(person, contracts, portal_user))


def property_payload(obj: dict[str, Any], unit_ids: list[str]) -> dict[str, Any]:
    """The portal property (Liegenschaft) for one ERP object, in the portal's public shape.

    Postal code, city and country sit at the top; the one address of an ERP object names the
    street and the object's units (``unit_ids``, sorted), which places them at that address.
    """
    return {
        "id": str(obj["object_no"]),
        "name": _text(obj.get("name")),
        "number": str(obj["object_no"]),
        "postalCode": _text(obj.get("postal_code")),
        "city": _text(obj.get("city")),
        "country": _text(obj.get("country")) or "DE",
        "addresses": [{"street": _text(obj.get("street")), "units": unit_ids}],
        "customFields": {},
    }


def units_by_object(units: pd.DataFrame, objects: set[str]) -> dict[str, list[str]]:
    """Object number -> the unit numbers of its units, sorted, for the objects in ``objects``."""
    out: dict[str, list[str]] = {}
    for unit_no, object_no in _columns(units[units["object_no"].isin(objects)], "unit_no", "object_no"):
        out.setdefault(str(object_no), []).append(str(unit_no))
    return {object_no: sorted(unit_nos) for object_no, unit_nos in out.items()}


def unit_payload(unit: dict[str, Any]) -> dict[str, Any]:
    """The portal unit (Einheit) for one ERP unit."""
    return {
        "id": str(unit["unit_no"]),
        "propertyId": str(unit["object_no"]),
        "name": _text(unit.get("name")) or str(unit["unit_no"]),
        "type": UNIT_TYPES.get(_text(unit.get("unit_type")) or "", "OTHER"),
        "floor": _text(unit.get("floor")),
        "customFields": {},
    }


def _records(frame: pd.DataFrame) -> Iterable[dict[str, Any]]:
    """Rows as plain dicts (``DataFrame.to_dict`` boxes every value and is several times slower)."""
    names = list(frame.columns)
    return (dict(zip(names, values, strict=True)) for values in _columns(frame, *names))


def _columns(frame: pd.DataFrame, *names: str) -> Iterable[tuple[Any, ...]]:
    """Rows of some columns as plain tuples (fast: no per-row Series or namedtuple)."""
    return zip(*(frame[name].tolist() for name in names), strict=True)


def collect_relations(
    released: set[str],
    objects: pd.DataFrame,
    units: pd.DataFrame,
    contracts: pd.DataFrame,
    partners: pd.DataFrame,
    caretakers: pd.DataFrame,
) -> dict[str, list[Relation]]:
    """Every person's relations to released objects (contracts, partner records, ownership, care)."""
    unit_object = dict(_columns(units, "unit_no", "object_no"))
    relations: dict[str, list[Relation]] = {}
    by_contract: dict[str, Relation] = {}
    for contract_no, unit_no, person_no, contract_type, start, move_out in _columns(
        contracts, "contract_no", "unit_no", "person_no", "contract_type", "start_date", "move_out_date"
    ):
        object_no = unit_object.get(unit_no)
        if object_no not in released:
            continue
        relation = Relation(
            "OWNER" if contract_type == "OWNER" else "RENTER",
            str(object_no),
            str(unit_no),
            _date(start),
            _date(move_out),
            str(contract_no),
        )
        by_contract[str(contract_no)] = relation
        relations.setdefault(str(person_no), []).append(relation)
    for contract_no, person_no in _columns(partners, "contract_no", "person_no"):
        lead = by_contract.get(str(contract_no))
        if lead is None:
            continue
        partner = Relation(
            "PARTNER", lead.property_id, lead.unit_id, lead.start, lead.move_out, lead.contract_no
        )
        relations.setdefault(str(person_no), []).append(partner)
    for object_no, owner in _columns(objects, "object_no", "owner_person_no"):
        if object_no in released and _text(owner):
            relations.setdefault(str(owner), []).append(Relation("OWNER", str(object_no)))
    for object_no, person_no in _columns(caretakers, "object_no", "person_no"):
        if object_no in released:
            relations.setdefault(str(person_no), []).append(Relation("CARETAKER", str(object_no)))
    return relations


def build_desired_state(
    *,
    released: set[str],
    objects: pd.DataFrame,
    units: pd.DataFrame,
    persons: pd.DataFrame,
    contracts: pd.DataFrame,
    partners: pd.DataFrame,
    caretakers: pd.DataFrame,
    rules: ContactRules,
    today: date,
    properties_for: set[str] | None = None,
    units_for: set[str] | None = None,
) -> DesiredState:
    """The desired portal state of properties, units and contacts, and what is withheld and why.

    Contacts are built for every person in ``persons`` that has a relation in the other frames.
    ``properties_for`` and ``units_for`` narrow the properties and units built (an incremental
    run passes the frames it needs for some persons, objects and units, and these sets; a
    property names its units, so ``units`` holds every unit of the properties built).
    Responsibilities (caretakers) are built later by :func:`build_responsibilities`, once the
    validation has settled which caretaker contacts the portal will hold.
    """
    desired = DesiredState(records={"properties": {}, "units": {}, "contacts": {}})
    wanted_objects = released if properties_for is None else released & properties_for
    units_of = units_by_object(units, wanted_objects)
    for obj in _records(objects[objects["object_no"].isin(wanted_objects)]):
        payload = property_payload(obj, units_of.get(str(obj["object_no"]), []))
        desired.records["properties"][payload["id"]] = payload
    unit_rows = units[units["object_no"].isin(released)]
    if units_for is not None:
        unit_rows = unit_rows[unit_rows["unit_no"].isin(units_for)]
    for unit in _records(unit_rows):
        payload = unit_payload(unit)
        desired.records["units"][payload["id"]] = payload
    relations = collect_relations(released, objects, units, contracts, partners, caretakers)
    candidates = persons[persons["person_no"].isin(relations.keys())]
    names = list(candidates.columns)
    for values in _columns(candidates, *names):
        person = dict(zip(names, values, strict=True))
        person_no = str(person["person_no"])
        decision = decide_contact(person, relations[person_no], rules, today)
        if decision.action == "send" and decision.payload is not None:
            desired.records["contacts"][person_no] = decision.payload
        elif decision.action == "anonymise":
            desired.anonymise.add(person_no)
        elif decision.action == "wait":
            desired.skipped.append(
                Skip("contacts", person_no, decision.rule or "wait", decision.reason or "")
            )
        elif decision.action == "withdraw":
            desired.withdraw_reasons[("contacts", person_no)] = decision.reason or "no valid contract"
    desired.caretakers = caretaker_entries(caretakers, released, rules)
    return desired


def caretaker_entries(
    caretakers: pd.DataFrame, released: set[str], rules: ContactRules
) -> dict[str, list[dict[str, Any]]]:
    """Object number -> its caretakers as portal responsibilities (nothing without the licence)."""
    entries: dict[str, list[dict[str, Any]]] = {}
    if not rules.caretaker_licence:
        return entries
    for row in (
        caretakers[caretakers["object_no"].isin(released)]
        .sort_values(["object_no", "person_no"])
        .itertuples(index=False)
    ):
        entries.setdefault(str(row.object_no), []).append(
            {
                "contactId": str(row.person_no),
                "roleName": _text(row.role_name) or "Hausmeister",
                "roleType": _text(row.role_type) or "external",
            }
        )
    return entries


def build_responsibilities(
    desired: DesiredState, sendable_contacts: set[str]
) -> tuple[dict[str, dict[str, Any]], list[Skip]]:
    """Property responsibilities naming only caretakers the portal holds (or will hold).

    A caretaker whose contact is quarantined is left out, with a reason, so the property's other
    responsibilities still go over.
    """
    records: dict[str, dict[str, Any]] = {}
    skipped: list[Skip] = []
    properties = desired.present("properties")
    for object_no, entries in desired.caretakers.items():
        if object_no not in properties:
            continue
        kept = [e for e in entries if e["contactId"] in sendable_contacts]
        for entry in entries:
            if entry["contactId"] not in sendable_contacts:
                skipped.append(
                    Skip(
                        "responsibilities",
                        object_no,
                        "caretaker_contact_missing",
                        f"caretaker {entry['contactId']} of object {object_no} is not in the portal (see the contact's own entry)",
                    )
                )
        records[object_no] = {"id": object_no, "responsibilities": kept}
    return records, skipped
