"""Reads of the ERP for each sync: chunked, dialect-neutral selects, as plain rows or DataFrames."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import pandas as pd
from sqlalchemy import Dialect, Engine, Select, String, TypeDecorator, select, type_coerce

from connectors.erp import schema
from connectors.erp.database import frame_from_rows

PORTAL_PERSON_COLUMNS = (
    "person_no",
    "person_type",
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
    "anonymised",
)


class LenientDate(TypeDecorator[Any]):
    """A date column read as a ``datetime.date`` when it holds one, else as the text it holds.

    Why: an ERP view (or SQLite, which stores what it is given) can hand over ``''`` or
    ``'31.02.2026'`` in a date column. SQLAlchemy's own date type raises on such a value, and one
    bad row would end the whole read; the portal rules instead refuse that row's record, with the
    contract number, the column and the value. The SQL is the column's own (only the Python side
    of the type is replaced), so PostgreSQL still returns its dates as dates.
    """

    impl = String
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        """``date`` for ISO text, the text itself for anything else; other values as they come."""
        if isinstance(value, str):
            try:
                return date.fromisoformat(value)
            except ValueError:
                return value
        return value


class LenientFlag(TypeDecorator[Any]):
    """A flag column read as a ``bool`` when it holds one (or 0/1), else as the value it holds.

    Why: SQLite's boolean type turns any text into ``True``, so an ERP view handing over ``'N'``
    in ``persons.anonymised`` would anonymise that person in the portal, for good. The rules
    instead hold such a person in quarantine, naming the column and the value.
    """

    impl = String
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        """``bool`` for a bool or 0/1, other values as they come."""
        if value.__class__ is int and value in (0, 1):
            return bool(value)
        return value


@dataclass
class TableRows:
    """The rows of one extracted table as plain tuples, in a stable order, with their column names."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    def frame(self, rows: list[tuple[Any, ...]] | None = None) -> pd.DataFrame:
        """These rows (or a subset of them) as a DataFrame of ``object`` columns."""
        return frame_from_rows(list(self.columns), self.rows if rows is None else rows)


def portal_queries() -> dict[str, Select[Any]]:
    """Everything the portal rules read: objects, groups, units, persons, contracts, partners, caretakers.

    Every query has a total order, so two reads of unchanged data give identical row lists.
    """
    o, u, p, c = schema.objects, schema.units, schema.persons, schema.contracts
    g, cp, ca = schema.object_groups, schema.contract_partners, schema.caretaker_assignments
    return {
        "objects": select(
            o.c.object_no, o.c.name, o.c.street, o.c.postal_code, o.c.city, o.c.country, o.c.owner_person_no
        ).order_by(o.c.object_no),
        "object_groups": select(g.c.group_name, g.c.object_no).order_by(g.c.group_name, g.c.object_no),
        "units": select(u.c.unit_no, u.c.object_no, u.c.name, u.c.unit_type, u.c.floor).order_by(u.c.unit_no),
        "persons": select(
            *[
                type_coerce(p.c[name], LenientFlag()).label(name) if name == "anonymised" else p.c[name]
                for name in PORTAL_PERSON_COLUMNS
            ]
        ).order_by(p.c.person_no),
        "contracts": select(
            c.c.contract_no,
            c.c.unit_no,
            c.c.person_no,
            c.c.contract_type,
            type_coerce(c.c.start_date, LenientDate()).label("start_date"),
            type_coerce(c.c.move_out_date, LenientDate()).label("move_out_date"),
        ).order_by(c.c.contract_no),
        "partners": select(cp.c.contract_no, cp.c.person_no, cp.c.role).order_by(
            cp.c.contract_no, cp.c.person_no, cp.c.role
        ),
        "caretakers": select(ca.c.object_no, ca.c.person_no, ca.c.role_name, ca.c.role_type).order_by(
            ca.c.object_no, ca.c.person_no, ca.c.role_name, ca.c.role_type
        ),
    }


def extract_portal_rows(engine: Engine, chunk_rows: int = 20_000) -> dict[str, TableRows]:
    """Read every table the portal rules need as plain row tuples.

    Each select runs through SQLAlchemy (bound parameters, the engine's events and statement
    cache) and is streamed in chunks of ``chunk_rows`` (a server-side cursor where the dialect has
    one), so the driver never holds a whole table at once. Values are SQLAlchemy's for the column
    types, the same on every dialect: dates as ``datetime.date``, flags as ``bool``; a contract
    date column that holds text which is no ISO date is handed over as that text
    (:class:`LenientDate`), and so is a flag that is no flag (:class:`LenientFlag`), for the
    rules to refuse that one record. Rows are
    turned into real tuples, which the memo compares and stores (:mod:`tasks.portal_memo`). The
    price of SQLAlchemy's rows: at 100,000 persons on SQLite the read takes about 1.05 s instead
    of the driver cursor's 0.43 s; chunk size and ``Result.tuples()`` do not change that.

    Returns:
        Per table name, its columns and rows in the query's total order.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the read failed; the extract is complete or it raises,
            because archives are planned only from a complete extract.
    """
    out: dict[str, TableRows] = {}
    with engine.connect() as conn:
        streaming = conn.execution_options(stream_results=True, yield_per=chunk_rows)
        for name, query in portal_queries().items():
            rows: list[tuple[Any, ...]] = []
            with streaming.execute(query) as result:
                for partition in result.partitions():
                    rows.extend(map(tuple, partition))
            out[name] = TableRows(tuple(c.name for c in query.selected_columns), rows)
        conn.rollback()
    return out


def extract_portal_frames(engine: Engine, chunk_rows: int = 20_000) -> dict[str, pd.DataFrame]:
    """:func:`extract_portal_rows` as DataFrames of ``object`` columns."""
    return {name: table.frame() for name, table in extract_portal_rows(engine, chunk_rows).items()}
