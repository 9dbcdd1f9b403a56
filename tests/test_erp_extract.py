"""The ERP extract of the portal sync: complete, in a stable order, as plain tuples, alike on every dialect."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select

from connectors.erp.database import make_engine
from connectors.erp.demo import generate_erp
from connectors.erp.extract import (
    DEFAULT_DOCUMENT_ROOT,
    TableRows,
    document_path,
    document_root,
    exchange_queries,
    extract_exchange_rows,
    extract_portal_rows,
    portal_queries,
)

PERSONS = 200
PLAIN_TYPES = {str, int, bool, date, type(None)}
EXCHANGE_TYPES = {*PLAIN_TYPES, datetime}


@pytest.fixture(scope="module")
def sqlite_erp(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """A 200-person demo ERP on SQLite, generated once for the module."""
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('extract')}/erp.sqlite")
    generate_erp(engine, persons=PERSONS, seed=7)
    return engine


def _assert_plain(tables: dict[str, TableRows], types: set[type] = PLAIN_TYPES) -> None:
    for name, table in tables.items():
        assert table.rows, name
        for row in table.rows:
            assert type(row) is tuple, name
            assert len(row) == len(table.columns), name
            assert {type(v) for v in row} <= types, (name, row)
            assert all(v.tzinfo is UTC for v in row if isinstance(v, datetime)), (name, row)


def test_rows_are_plain_tuples_of_every_row_in_order(sqlite_erp: Engine) -> None:
    tables = extract_portal_rows(sqlite_erp)
    _assert_plain(tables)
    assert set(tables) == set(portal_queries())
    with sqlite_erp.connect() as conn:
        for name, query in portal_queries().items():
            count = conn.execute(select(func.count()).select_from(query.subquery())).scalar_one()
            assert len(tables[name].rows) == count, name
    persons = tables["persons"]
    assert [r[0] for r in persons.rows] == sorted(r[0] for r in persons.rows)
    contracts = tables["contracts"]
    start = contracts.columns.index("start_date")
    assert all(type(r[start]) is date for r in contracts.rows)
    anonymised = persons.columns.index("anonymised")
    assert {type(r[anonymised]) for r in persons.rows} == {bool}


def test_small_chunks_read_the_same_rows(sqlite_erp: Engine) -> None:
    assert extract_portal_rows(sqlite_erp, chunk_rows=7) == extract_portal_rows(sqlite_erp)


def test_reads_run_through_the_engine_streamed(sqlite_erp: Engine) -> None:
    seen: list[dict[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        seen.append(dict(context.execution_options))

    event.listen(sqlite_erp, "before_cursor_execute", record)
    try:
        extract_portal_rows(sqlite_erp, chunk_rows=50)
    finally:
        event.remove(sqlite_erp, "before_cursor_execute", record)
    assert len(seen) == len(portal_queries())
    assert all(o.get("stream_results") is True and o.get("yield_per") == 50 for o in seen)


def test_exchange_rows_every_table_in_order_internal_note_texts_left_out(sqlite_erp: Engine) -> None:
    tables = extract_exchange_rows(sqlite_erp)
    _assert_plain(tables, EXCHANGE_TYPES)
    assert set(tables) == {"documents", "message_types", "messages", "notes", "orders"}
    with sqlite_erp.connect() as conn:
        for name, query in exchange_queries().items():
            count = conn.execute(select(func.count()).select_from(query.subquery())).scalar_one()
            assert len(tables[name].rows) == count, name
            assert [r[0] for r in tables[name].rows] == sorted(r[0] for r in tables[name].rows), name
    notes = tables["notes"].frame()
    assert notes.loc[notes["internal"], "text"].isna().all()
    assert notes.loc[~notes["internal"].astype(bool), "text"].notna().all()
    messages = tables["messages"].frame()
    assert {"created_at", "modified_at", "portal_status", "portal_changed_at", "portal_ticket_id"} <= set(
        messages.columns
    )
    documents = tables["documents"].frame()
    assert {"source", "recipient_type", "recipient_id", "content_path", "size_bytes"} <= set(
        documents.columns
    )
    modes = {r[0]: r[2] for r in tables["message_types"].rows}
    assert set(messages["message_type"]) <= set(modes)
    assert extract_exchange_rows(sqlite_erp, chunk_rows=7) == tables


def test_document_root_beside_a_sqlite_erp_else_configured_else_var(tmp_path: Path) -> None:
    assert document_root(f"sqlite:///{tmp_path}/erp.sqlite") == tmp_path
    assert document_root("sqlite:///var/demo/erp.sqlite") == Path("var/demo")
    assert document_root(f"sqlite:///{tmp_path}/erp.sqlite", "/srv/dms") == Path("/srv/dms")
    assert document_root("postgresql+psycopg://erp@db/erp") == DEFAULT_DOCUMENT_ROOT
    assert document_root("sqlite://") == DEFAULT_DOCUMENT_ROOT
    assert document_path(tmp_path, "documents/1001/0000001.pdf") == tmp_path / "documents/1001/0000001.pdf"
    assert document_path(tmp_path, "/srv/dms/a.pdf") == Path("/srv/dms/a.pdf")


def test_demo_document_files_are_where_the_extract_points(sqlite_erp: Engine) -> None:
    root = document_root(sqlite_erp.url.render_as_string())
    documents = extract_exchange_rows(sqlite_erp)["documents"]
    at = documents.columns.index("content_path")
    size = documents.columns.index("size_bytes")
    for row in documents.rows:
        assert document_path(root, row[at]).stat().st_size == row[size]


@pytest.mark.postgres
def test_postgresql_reads_the_same_rows_as_sqlite(
    pg_database: Callable[[], str], sqlite_erp: Engine, tmp_path: Path
) -> None:
    engine = make_engine(pg_database())
    cursors: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            cursors.append(type(cursor).__name__)

    try:
        generate_erp(engine, persons=PERSONS, seed=7, document_dir=tmp_path)
        event.listen(engine, "before_cursor_execute", record)
        pg_tables = extract_portal_rows(engine, chunk_rows=50)
        lite_tables = extract_portal_rows(sqlite_erp, chunk_rows=50)
        _assert_plain(pg_tables)
        assert pg_tables == lite_tables
        pg_exchange = extract_exchange_rows(engine, chunk_rows=50)
        _assert_plain(pg_exchange, EXCHANGE_TYPES)
        assert pg_exchange == extract_exchange_rows(sqlite_erp, chunk_rows=50)
        # memory stays bounded by the chunk: PostgreSQL streams from a server-side cursor
        assert cursors == ["ServerCursor"] * (len(portal_queries()) + len(exchange_queries()))
    finally:
        engine.dispose()
