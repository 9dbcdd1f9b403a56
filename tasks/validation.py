"""Validation of outgoing records: text checks in plain Python, then great-expectations suites
defined in code, one per entity.

Why GX: the suites are declarative, their results name the expectation that failed and the rows
that broke it, and the same suites can be rendered as data docs. Failing rows are quarantined
with the expectation and a plain reason; the rest of the batch goes on.

The text checks (:func:`text_failures`) look at every text value of a record before it is sent:

- **control characters**: the rules already turned tabs and line breaks into spaces
  (:func:`tasks.portal_rules.clean_text`); any control character still there (NUL and the
  rest of C0, DEL, C1, in any field, reference ids of contracts included) refuses the record,
  naming the field and the character, never quoting the value;
- **lengths**: a value longer than the ERP declares for its column
  (``connectors/erp/schema.py``, e.g. ``persons.street`` 120) or than the portal accepts
  (``PORTAL_MAX_LENGTH``: 254 for an e-mail address, 255 for any other text) refuses the
  record, naming the field, its length and the limit. The portal's public documentation names
  no limits; these are hausflow's, chosen as the common ones of such APIs.

``great_expectations`` is imported lazily: it costs 2-3 s, paid only by the task that validates.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import Column

from connectors.erp import schema
from tasks.portal_rules import Skip

EMAIL_REGEX = r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,}$"


@dataclass(frozen=True)
class Check:
    """One expectation with the reason a person reads when a record fails it."""

    expectation: str  # GX class name
    column: str
    kwargs: tuple[tuple[str, Any], ...]
    reason: str


CONTACT_CHECKS = (
    Check("ExpectColumnValuesToNotBeNull", "id", (), "the person has no person number"),
    Check("ExpectColumnValuesToBeUnique", "id", (), "the person number occurs twice"),
    Check(
        "ExpectColumnValuesToNotBeNull",
        "displayName",
        (),
        "neither last name nor company name: the portal needs one of them; enter the last name in the ERP person record",
    ),
    Check(
        "ExpectColumnValuesToMatchRegex",
        "email",
        (("regex", EMAIL_REGEX),),
        "the e-mail address {value!r} is not valid: correct or remove it in the ERP person record",
    ),
)
PROPERTY_CHECKS = (
    Check("ExpectColumnValuesToBeUnique", "id", (), "the object number occurs twice"),
    Check(
        "ExpectColumnValuesToNotBeNull",
        "name",
        (),
        "the object has no name: enter it in the ERP object record",
    ),
    Check(
        "ExpectColumnValuesToNotBeNull",
        "city",
        (),
        "the object address has no city: complete the address in the ERP",
    ),
    Check(
        "ExpectColumnValuesToNotBeNull",
        "street",
        (),
        "the object address has no street: complete the address in the ERP",
    ),
)
UNIT_CHECKS = (
    Check("ExpectColumnValuesToBeUnique", "id", (), "the unit number occurs twice"),
    Check("ExpectColumnValuesToNotBeNull", "propertyId", (), "the unit belongs to no object"),
)
CHECKS: dict[str, tuple[Check, ...]] = {
    "contacts": CONTACT_CHECKS,
    "properties": PROPERTY_CHECKS,
    "units": UNIT_CHECKS,
}


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def rule_name(expectation_type: str, column: str) -> str:
    """The rule a failed check is quarantined under, e.g. ``expect_column_values_to_not_be_null(email)``."""
    return f"{expectation_type}({column})"


REFUSED_BY_PORTAL = "portal_rejected"
"""The rule of a record the portal refused (4xx other than 408/429), see ``tasks/sync/load.py``."""

# Rules whose outcome depends on the record alone (uniqueness depends on the other records too).
# A refusal by the portal counts as one: the portal gives the same answer to the same record.
RECORD_RULES = frozenset(
    {
        *(
            rule_name(_snake(check.expectation), check.column)
            for checks in CHECKS.values()
            for check in checks
            if check.expectation != "ExpectColumnValuesToBeUnique"
        ),
        REFUSED_BY_PORTAL,
    }
)
CONTROL_RULE = "text_control_character"
LENGTH_RULE = "text_too_long"


def record_rule(rule: str) -> bool:
    """Whether a quarantine entry of ``rule`` depends on the record alone (see ``RECORD_RULES``);
    the text checks' rules name their field, e.g. ``text_too_long(street)``."""
    return rule in RECORD_RULES or rule.split("(", 1)[0] in (CONTROL_RULE, LENGTH_RULE)


# ---- text checks -------------------------------------------------------------------------------
PORTAL_MAX_LENGTH = 255
PORTAL_MAX_LENGTHS = {"email": 254}  # RFC 5321: a path holds at most 254 characters
# The ERP column each text field comes from, per entity and field name (wherever it is nested).
ERP_COLUMNS: dict[str, dict[str, Column[Any]]] = {
    "contacts": {
        "salutation": schema.persons.c.salutation,
        "title": schema.persons.c.title,
        "firstName": schema.persons.c.first_name,
        "lastName": schema.persons.c.last_name,
        "companyName": schema.persons.c.company_name,
        "email": schema.persons.c.email,
        "telephone": schema.persons.c.phone,
        "mobile": schema.persons.c.mobile,
        "street": schema.persons.c.street,
        "postalCode": schema.persons.c.postal_code,
        "city": schema.persons.c.city,
        "country": schema.persons.c.country,
        "personType": schema.persons.c.person_type,
    },
    "properties": {
        "name": schema.objects.c.name,
        "street": schema.objects.c.street,
        "postalCode": schema.objects.c.postal_code,
        "city": schema.objects.c.city,
        "country": schema.objects.c.country,
    },
    "units": {"name": schema.units.c.name, "floor": schema.units.c.floor},
}
RECORD_KIND = {"contacts": "person", "properties": "object", "units": "unit"}
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_NAMES = {0: "NUL", 9: "TAB", 10: "LF", 13: "CR", 27: "ESC", 127: "DEL"}


@dataclass(frozen=True)
class TextLimit:
    """The most characters a field may have, and who sets that limit (for the reason)."""

    length: int
    source: str


def text_limit(entity: str, key: str) -> TextLimit:
    """The tighter of the ERP column's declared length and the portal's limit for a field."""
    portal = TextLimit(PORTAL_MAX_LENGTHS.get(key, PORTAL_MAX_LENGTH), "the portal accepts")
    column = ERP_COLUMNS.get(entity, {}).get(key)
    length = getattr(column.type, "length", None) if column is not None else None
    if column is not None and length is not None and length <= portal.length:
        return TextLimit(length, f"the ERP declares for {column.table.name}.{column.name}")
    return portal


_LIMITS: dict[str, dict[str, int]] = {}


def _limits(entity: str) -> dict[str, int]:
    """Field name -> most characters, for the fields the ERP declares or the portal limits."""
    if entity not in _LIMITS:
        keys = set(ERP_COLUMNS.get(entity, {})) | set(PORTAL_MAX_LENGTHS)
        _LIMITS[entity] = {key: text_limit(entity, key).length for key in keys}
    return _LIMITS[entity]


def _scan(value: Any, path: str, key: str, limits: dict[str, int], out: list[tuple[str, str, str]]) -> None:
    """Collect (path, field name, text) of the texts of a nested value that fail a check (fast:
    called for every text of every record written)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if v.__class__ is str:
                if len(v) > limits.get(k, PORTAL_MAX_LENGTH) or not v.isprintable():
                    out.append((f"{path}.{k}" if path else k, k, v))
            elif isinstance(v, dict | list):
                _scan(v, f"{path}.{k}" if path else k, k, limits, out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if v.__class__ is str:
                if len(v) > limits.get(key, PORTAL_MAX_LENGTH) or not v.isprintable():
                    out.append((f"{path}[{i}]", key, v))
            elif isinstance(v, dict | list):
                _scan(v, f"{path}[{i}]", key, limits, out)


def text_problems(entity: str, record: dict[str, Any]) -> list[tuple[str, str]]:
    """(rule, reason) for each text field of ``record`` that holds a control character or is too
    long; the record's own ``id`` is not checked (a quarantine entry is keyed by it)."""
    suspects: list[tuple[str, str, str]] = []
    _scan(record, "", "", _limits(entity), suspects)
    problems: list[tuple[str, str]] = []
    for path, key, text in suspects:
        if path == "id":
            continue
        where = f"the ERP {RECORD_KIND.get(entity, entity.rstrip('s'))} record" if path == key else "the ERP"
        limit = text_limit(entity, key)
        if len(text) > limit.length:
            problems.append(
                (
                    f"{LENGTH_RULE}({path})",
                    f"{path} has {len(text)} characters, more than the {limit.length} {limit.source}: "
                    f"shorten it in {where}",
                )
            )
        found = _CONTROL.search(text)
        if found:
            code = ord(found.group())
            name = f"U+{code:04X}" + (f" ({_CONTROL_NAMES[code]})" if code in _CONTROL_NAMES else "")
            problems.append(
                (
                    f"{CONTROL_RULE}({path})",
                    f"{path} holds the control character {name} at position {found.start() + 1}, which is "
                    f"never sent to the portal: remove it in {where}",
                )
            )
    return problems


def text_failures(entity: str, records: dict[str, dict[str, Any]]) -> list[Skip]:
    """One ``Skip`` per (record, field) whose text :func:`text_problems` refuses."""
    return [
        Skip(entity, ref, rule, reason)
        for ref, record in records.items()
        for rule, reason in text_problems(entity, record)
    ]


_lock = threading.Lock()
_context: Any = None
_batch_definitions: dict[str, Any] = {}
_suites: dict[str, Any] = {}


def _frame(entity: str, records: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """The columns the suite of ``entity`` checks, one row per record, plus the row key ``_ref``."""
    rows = list(records.values())
    if entity == "contacts":
        return pd.DataFrame(
            {
                "_ref": list(records.keys()),
                "id": [r.get("id") for r in rows],
                "displayName": [r.get("lastName") or r.get("companyName") for r in rows],
                "email": [r.get("email") for r in rows],
            }
        )
    if entity == "properties":
        addresses = [(r.get("addresses") or [{}])[0] for r in rows]
        return pd.DataFrame(
            {
                "_ref": list(records.keys()),
                "id": [r.get("id") for r in rows],
                "name": [r.get("name") for r in rows],
                "city": [r.get("city") for r in rows],
                "street": [a.get("street") for a in addresses],
            }
        )
    return pd.DataFrame(
        {
            "_ref": list(records.keys()),
            "id": [r.get("id") for r in rows],
            "propertyId": [r.get("propertyId") for r in rows],
        }
    )


def _suite(entity: str) -> tuple[Any, Any]:
    """The cached batch definition and suite of ``entity`` (built once per process)."""
    global _context
    with _lock:
        if entity in _suites:
            return _batch_definitions[entity], _suites[entity]
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx

        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        if _context is None:
            _context = gx.get_context(mode="ephemeral")
            with contextlib.suppress(Exception):  # progress bars only cost noise on stderr
                _context.variables.progress_bars = {"globally": False, "metric_calculations": False}
            _context.data_sources.add_pandas("hausflow")
        source = _context.data_sources.get("hausflow")
        asset = source.add_dataframe_asset(entity)
        batch_definition = asset.add_batch_definition_whole_dataframe(f"{entity}-all")
        suite = gx.ExpectationSuite(name=f"portal-{entity}")
        for check in CHECKS[entity]:
            cls = getattr(gx.expectations, check.expectation)
            suite.add_expectation(cls(column=check.column, **dict(check.kwargs)))
        suite = _context.suites.add(suite)
        _batch_definitions[entity] = batch_definition
        _suites[entity] = suite
        return batch_definition, suite


def validate_records(entity: str, records: dict[str, dict[str, Any]]) -> list[Skip]:
    """Validate outgoing records of ``entity``; one ``Skip`` per (record, failed text check or
    expectation).

    Returns an empty list when everything passes or the entity has no suite.
    """
    if entity not in CHECKS or not records:
        return []
    failures: list[Skip] = text_failures(entity, records)
    frame = _frame(entity, records)
    batch_definition, suite = _suite(entity)
    result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(
        suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["_ref"]}
    )
    for outcome in result.results:
        if outcome.success:
            continue
        config = outcome.expectation_config
        column = config.kwargs.get("column")
        check = next(c for c in CHECKS[entity] if c.column == column and _snake(c.expectation) == config.type)
        for item in outcome.result.get("unexpected_index_list") or []:
            ref = str(item["_ref"])
            value = item.get(column)
            failures.append(
                Skip(entity, ref, rule_name(config.type, column), check.reason.format(value=value))
            )
    return failures
