"""Portal rules of seed 001 as pure functions over plain records and DataFrames (no I/O).

The desired portal state is derived from the ERP alone; the plan step compares it with what the
portal last confirmed. Each rule is one small function so the rule tables in the tests can name
the seed's cases one by one.

Bad input is decided per record, never for the whole run (ERPs expose their tables as views,
without types or foreign keys that hold):

- **Text** is cleaned by one stated rule (:func:`clean_text`): whitespace around a value is
  removed, and tabs and line breaks inside it (TAB, LF, VT, FF, CR, NEL, U+2028, U+2029) become
  one space. Every other control character (NUL and the rest of C0, DEL, C1) is not cleaned: the
  value is kept as it is and the validation (:mod:`tasks.validation`) refuses the record, naming
  the field. A record whose value the cleaning changed gets a note in the run's protocol
  (:func:`text_changes`); e-mail addresses are trimmed like any value, never lower-cased.
- **A contract date that is no date** (text such as ``''`` or ``'31.02.2026'``) holds the
  contract's tenant and partners in quarantine, with the contract number, column and value.
- **A contract whose unit, or whose unit's object, is not in the ERP** holds its tenant and
  partners in quarantine (it cannot be told whether the object is released); so does a partner
  record naming a contract that is not in the ERP.
- **A person referred to but not in the ERP** (tenant, partner, owner, caretaker of a released
  object) cannot be held, as no record of ours is theirs: the run reports it as a skip.
- **A contract that ends before it starts** is not sent (the portal refuses it): its tenant and
  partners are held in quarantine with both dates.
- **A flag that is no flag** (``persons.anonymised`` holding ``'N'``, which SQLite would read
  as true) holds the person in quarantine: anonymising is for good, so it is never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
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

    action: str  # send, anonymise, withdraw (no valid relation any more), wait (not yet due), quarantine
    payload: dict[str, Any] | None = None
    reason: str | None = None
    rule: str | None = None


@dataclass
class DesiredState:
    """The portal as the ERP says it should be, plus everything the rules held back and why.

    ``skipped`` are records not sent in this run for a reason of the rules (a protocol line
    each); ``quarantine`` are records whose ERP data the rules cannot take (held: neither written
    nor archived, and written to the quarantine table by the validation task); ``notes`` say, per
    built record, which values the text cleaning changed (a protocol line when it is written).
    """

    records: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)
    quarantine: list[Skip] = field(default_factory=list)
    notes: dict[tuple[str, str], str] = field(default_factory=dict)
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


# Tabs and line breaks: inside a value they become one space (with the spaces around them).
_BREAK_CHARS = "\t\n\x0b\x0c\r\x85\u2028\u2029"
_BREAKS = re.compile(f"[ {_BREAK_CHARS}]*[{_BREAK_CHARS}][ {_BREAK_CHARS}]*")
# Control characters no cleaning removes: the validation refuses a record that holds one.
REFUSED_CONTROLS = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff]")


def clean_text(value: str) -> str | None:
    """``value`` as the portal gets it: no whitespace around it, tabs and line breaks inside it
    replaced by one space; ``None`` if nothing is left.

    A value that holds another control character (NUL, ESC, DEL, C1, ...) is returned as it is:
    cleaning it would change data silently, so the validation refuses the record instead.
    """
    if value.isprintable():  # the common case: no control character, no break
        return value.strip() or None
    if REFUSED_CONTROLS.search(value):
        return value
    return _BREAKS.sub(" ", value).strip() or None


def _text(value: Any) -> str | None:
    """Cleaned text (:func:`clean_text`) or ``None`` for empty values and NULLs (hot path)."""
    if isinstance(value, str):
        if value.isprintable():
            return value.strip() or None
        return clean_text(value)
    if _missing(value):
        return None
    return clean_text(str(value))


def text_changes(row: dict[str, Any], columns: Iterable[str]) -> list[str]:
    """The ``columns`` of an ERP row whose text :func:`clean_text` changes, each with what it did.

    Empty values (``None`` after cleaning) and values the validation will refuse are not
    listed: the first are no value, the second are never sent.
    """
    changes: list[str] = []
    for column in columns:
        value = row.get(column)
        if value.__class__ is not str or (value.isprintable() and value.strip() == value):
            continue
        cleaned = clean_text(value)
        if cleaned is None or cleaned == value:
            continue
        what = []
        if value.strip() != value:
            what.append("spaces around it removed")
        if _BREAKS.search(value.strip()):
            what.append("tabs or line breaks replaced by a space")
        changes.append(f"{column} ({', '.join(what)})")
    return changes


def note_for(changes: list[str]) -> str:
    """The protocol note of a record whose ``changes`` (from :func:`text_changes`) were made."""
    return "sent with values cleaned by hausflow: " + "; ".join(changes)


class UnreadableDate(ValueError):
    """A value in a date column that is no date (the message quotes it)."""


def parse_date(value: Any) -> date | None:
    """A date from a date, a timestamp or ISO text (``YYYY-MM-DD``, optionally with a time).

    Returns ``None`` for NULL. Raises :class:`UnreadableDate` for anything else: empty or
    blank text, ``31.02.2026``, ``2026-02-31``, a number.
    """
    if _missing(value):
        return None
    if isinstance(value, datetime):  # a pandas Timestamp too
        return value.date()
    if isinstance(value, date):
        return value
    text = value.strip() if isinstance(value, str) else None
    if text:
        try:
            if len(text) == 10:
                return date.fromisoformat(text)
            if len(text) > 10 and text[10] in "T ":
                return datetime.fromisoformat(text).date()
        except ValueError:
            pass
    raise UnreadableDate(repr(value))


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
    - several contracts (flat and garage) make one contact with several contracts;
    - a contract that would go over but ends before it starts is not sent (the portal refuses
      it): the person is held in quarantine with both dates (action ``quarantine``).
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
    backwards = [r for r in active if r.start and r.move_out and r.move_out < r.start]
    if backwards:
        return ContactDecision(
            "quarantine",
            reason="; ".join(
                f"contract {r.contract_no} in unit {r.unit_id} ends (move-out {r.move_out:%d.%m.%Y}) before it "
                f"starts ({r.start:%d.%m.%Y}); the portal refuses such a contract: correct the dates in the ERP contract"
                for r in sorted(set(backwards), key=lambda r: r.contract_no or "")
                if r.move_out and r.start
            ),
            rule="contract_ends_before_start",
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


def _contract_problems(
    contract: str, unit_no: Any, object_no: Any, known_objects: set[Any], start: Any, move_out: Any
) -> list[tuple[str, str]]:
    """Why a contract cannot be placed: (rule, reason) pairs; empty when it can."""
    if object_no is None:
        where = f"unit {unit_no}, which is not in the ERP" if _text(unit_no) else "no unit"
        return [
            (
                "contract_unit_missing",
                f"contract {contract} points at {where}: correct the contract's unit in the ERP",
            )
        ]
    if object_no not in known_objects:
        return [
            (
                "contract_object_missing",
                f"contract {contract} is for unit {unit_no} of object {object_no}, which is not in the ERP: "
                "correct the unit's object in the ERP",
            )
        ]
    problems = []
    for column, value in (("start_date", start), ("move_out_date", move_out)):
        try:
            parse_date(value)
        except UnreadableDate:
            problems.append(
                (
                    f"contract_date_unreadable({column})",
                    f"contract {contract}: {column} holds {value!r}, which is not a date (YYYY-MM-DD): "
                    "correct it in the ERP contract",
                )
            )
    return problems


def collect_relations(
    released: set[str],
    objects: pd.DataFrame,
    units: pd.DataFrame,
    contracts: pd.DataFrame,
    partners: pd.DataFrame,
    caretakers: pd.DataFrame,
) -> tuple[dict[str, list[Relation]], list[Skip]]:
    """Every person's relations to released objects, and the contracts the rules cannot place.

    Returns the relations per person number, and a ``Skip`` (entity ``contacts``, the tenant's or
    partner's person number) for each contract that cannot be placed: its unit or its unit's
    object is not in the ERP (then nobody can tell whether the object is released), or, in a
    released object, a date column holds text that is no date; and for each partner record that
    names a contract not in the ERP. The caller holds these persons in quarantine.
    """
    unit_object = dict(_columns(units, "unit_no", "object_no"))
    known_objects = set(objects["object_no"].tolist())
    relations: dict[str, list[Relation]] = {}
    by_contract: dict[str, Relation] = {}
    refused: dict[str, list[tuple[str, str]]] = {}
    problems: list[Skip] = []
    for contract_no, unit_no, person_no, contract_type, start, move_out in _columns(
        contracts, "contract_no", "unit_no", "person_no", "contract_type", "start_date", "move_out_date"
    ):
        object_no = unit_object.get(unit_no)
        if object_no in released:
            try:
                first, last = parse_date(start), parse_date(move_out)
            except UnreadableDate:
                first = last = None
            else:
                relation = Relation(
                    "OWNER" if contract_type == "OWNER" else "RENTER",
                    str(object_no),
                    str(unit_no),
                    first,
                    last,
                    str(contract_no),
                )
                by_contract[str(contract_no)] = relation
                relations.setdefault(str(person_no), []).append(relation)
                continue
        elif object_no in known_objects:
            continue  # an object that is not released: not the portal's
        found = _contract_problems(str(contract_no), unit_no, object_no, known_objects, start, move_out)
        refused[str(contract_no)] = found
        problems.extend(Skip("contacts", str(person_no), rule, reason) for rule, reason in found)
    contract_nos = set(map(str, contracts["contract_no"].tolist()))
    for contract_no, person_no in _columns(partners, "contract_no", "person_no"):
        lead = by_contract.get(str(contract_no))
        if lead is None:
            if str(contract_no) in refused:
                problems.extend(
                    Skip("contacts", str(person_no), rule, reason)
                    for rule, reason in refused[str(contract_no)]
                )
            elif str(contract_no) not in contract_nos:
                problems.append(
                    Skip(
                        "contacts",
                        str(person_no),
                        "partner_contract_missing",
                        f"a partner record names contract {contract_no}, which is not in the ERP: "
                        "correct or remove the partner record in the ERP",
                    )
                )
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
    return relations, problems


PERSON_TEXT_COLUMNS = (
    "salutation",
    "title",
    "first_name",
    "last_name",
    "company_name",
    "email",
    "phone",
    "mobile",
    "street",
    "postal_code",
    "city",
    "country",
    "person_type",
)
OBJECT_TEXT_COLUMNS = ("name", "street", "postal_code", "city", "country")
UNIT_TEXT_COLUMNS = ("name", "floor")
_ROLE = {"RENTER": "tenant of contract", "PARTNER": "partner of contract"}


def _referred_by(relations: list[Relation]) -> str:
    """How the ERP refers to a person, for a reason: 'tenant of contract V1, owner of object 1001'."""
    refs = [
        f"{_ROLE[r.kind]} {r.contract_no}"
        if r.kind in _ROLE
        else f"{r.kind.lower()} of object {r.property_id}"
        for r in relations
    ]
    if len(refs) > 3:
        refs = [*refs[:3], f"{len(refs) - 3} more"]
    return ", ".join(refs)


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
    persons_for: Collection[str] | None = None,
) -> DesiredState:
    """The desired portal state of properties, units and contacts, and what is withheld and why.

    Contacts are built for every person in ``persons`` that has a relation in the other frames.
    ``properties_for`` and ``units_for`` narrow the properties and units built (an incremental
    run passes the frames it needs for some persons, objects and units, and these sets; a
    property names its units, so ``units`` holds every unit of the properties built);
    ``persons_for`` names the persons such a run rebuilds: only of these is a person missing
    from ``persons`` taken as not in the ERP (the others are merely not read).
    Responsibilities (caretakers) are built later by :func:`build_responsibilities`, once the
    validation has settled which caretaker contacts the portal will hold.

    A person with a contract the rules cannot place (see :func:`collect_relations`) goes to
    ``quarantine`` with one entry per rule, unless anonymised in the ERP (then anonymised as
    always); a person referred to but not in ``persons`` is reported in ``skipped``.
    """
    desired = DesiredState(records={"properties": {}, "units": {}, "contacts": {}})
    wanted_objects = released if properties_for is None else released & properties_for
    units_of = units_by_object(units, wanted_objects)
    for obj in _records(objects[objects["object_no"].isin(wanted_objects)]):
        payload = property_payload(obj, units_of.get(str(obj["object_no"]), []))
        desired.records["properties"][payload["id"]] = payload
        changes = text_changes(obj, OBJECT_TEXT_COLUMNS)
        if changes:
            desired.notes[("properties", payload["id"])] = note_for(changes)
    unit_rows = units[units["object_no"].isin(released)]
    if units_for is not None:
        unit_rows = unit_rows[unit_rows["unit_no"].isin(units_for)]
    for unit in _records(unit_rows):
        payload = unit_payload(unit)
        desired.records["units"][payload["id"]] = payload
        changes = text_changes(unit, UNIT_TEXT_COLUMNS)
        unit_type = _text(unit.get("unit_type"))
        if unit_type and unit_type not in UNIT_TYPES:
            changes.append(f"unit_type ({unit_type!r} is no portal unit type: sent as OTHER)")
        if changes:
            desired.notes[("units", payload["id"])] = note_for(changes)
    relations, problems = collect_relations(released, objects, units, contracts, partners, caretakers)
    held: dict[str, dict[str, list[str]]] = {}
    for problem in problems:
        reasons = held.setdefault(problem.ref_id, {}).setdefault(problem.rule, [])
        if problem.reason not in reasons:
            reasons.append(problem.reason)
    candidates = persons[persons["person_no"].isin(relations.keys() | held.keys())]
    names = list(candidates.columns)
    seen: set[str] = set()
    for values in _columns(candidates, *names):
        person = dict(zip(names, values, strict=True))
        person_no = str(person["person_no"])
        seen.add(person_no)
        flag = person.get("anonymised")
        if not (_missing(flag) or (flag.__class__ in (bool, int) and flag in (0, 1))):
            desired.quarantine.append(
                Skip(
                    "contacts",
                    person_no,
                    "person_flag_unreadable(anonymised)",
                    f"person {person_no}: anonymised holds {flag!r}, which is no flag (true/false, 1/0); nothing "
                    "of the person is sent, nor anonymised, until it is corrected in the ERP person record",
                )
            )
            continue
        if person_no in held and not bool(flag):
            for rule, reasons in held[person_no].items():
                desired.quarantine.append(Skip("contacts", person_no, rule, "; ".join(reasons)))
            continue
        decision = decide_contact(person, relations.get(person_no, []), rules, today)
        if decision.action == "send" and decision.payload is not None:
            desired.records["contacts"][person_no] = decision.payload
            changes = text_changes(person, PERSON_TEXT_COLUMNS)
            if changes:
                desired.notes[("contacts", person_no)] = note_for(changes)
        elif decision.action == "anonymise":
            desired.anonymise.add(person_no)
        elif decision.action == "wait":
            desired.skipped.append(
                Skip("contacts", person_no, decision.rule or "wait", decision.reason or "")
            )
        elif decision.action == "withdraw":
            desired.withdraw_reasons[("contacts", person_no)] = decision.reason or "no valid contract"
        elif decision.action == "quarantine":
            desired.quarantine.append(
                Skip("contacts", person_no, decision.rule or "quarantine", decision.reason or "")
            )
    for person_no in sorted((relations.keys() | held.keys()) - seen):
        if persons_for is not None and person_no not in persons_for:
            continue
        named = [_referred_by(relations[person_no])] if person_no in relations else []
        named += [r for reasons in held.get(person_no, {}).values() for r in reasons]
        desired.skipped.append(
            Skip(
                "contacts",
                person_no,
                "person_missing",
                f"person {person_no} is not in the ERP's persons, but named by: {'; '.join(named)}: "
                "enter the person or correct the reference in the ERP",
            )
        )
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
