"""Validation of outgoing records with great-expectations suites defined in code, one per entity.

Why GX: the suites are declarative, their results name the expectation that failed and the rows
that broke it, and the same suites can be rendered as data docs. Failing rows are quarantined
with the expectation and a plain reason; the rest of the batch goes on.

``great_expectations`` is imported lazily: it costs 2-3 s, paid only by the task that validates.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import pandas as pd

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


# Rules whose outcome depends on the record alone (uniqueness depends on the other records too).
RECORD_RULES = frozenset(
    rule_name(_snake(check.expectation), check.column)
    for checks in CHECKS.values()
    for check in checks
    if check.expectation != "ExpectColumnValuesToBeUnique"
)

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
    """Validate outgoing records of ``entity``; one ``Skip`` per (record, failed expectation).

    Returns an empty list when everything passes or the entity has no suite.
    """
    if entity not in CHECKS or not records:
        return []
    frame = _frame(entity, records)
    batch_definition, suite = _suite(entity)
    result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(
        suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["_ref"]}
    )
    failures: list[Skip] = []
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
