"""ERP database access: engines and chunked, dialect-neutral reads."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine, Select, create_engine, event

from connectors.erp.schema import metadata
from connectors.sqlutil import sqlite_file

DEFAULT_CHUNK_ROWS = 20_000


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine for ``url``; SQLite files get their folder, WAL and a busy timeout.

    Why: several processes (flows, the sandbox, tests) touch the same SQLite files; WAL plus a
    busy timeout turns "database is locked" into a short wait.
    """
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"timeout": 30})
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def create_erp_schema(engine: Engine) -> None:
    """Create the reference ERP tables (idempotent)."""
    metadata.create_all(engine)


def read_chunks(
    engine: Engine, query: Select[Any], chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """Stream ``query`` as DataFrames of at most ``chunk_rows`` rows.

    Uses a server-side cursor where the dialect has one (``stream_results``), so memory stays
    bounded by the chunk size, never by the table size. Columns are built column-wise with
    dtype ``object`` (values as the driver returns them, NULL as ``None``): pandas' row-wise
    constructor probes every SQLAlchemy row for attributes, and pandas 3 ``str`` arrays are slow
    to iterate, which the rules do.
    """
    with engine.connect().execution_options(stream_results=True, max_row_buffer=chunk_rows) as conn:
        result = conn.execute(query)
        columns = list(result.keys())
        while True:
            rows = result.fetchmany(chunk_rows)
            if not rows:
                break
            yield frame_from_rows(columns, rows)


def frame_from_rows(columns: list[str], rows: Sequence[Any]) -> pd.DataFrame:
    """Rows (tuples) as a DataFrame of ``object`` columns, built column-wise (fast, no type guessing)."""
    values = list(zip(*rows, strict=True)) if rows else [() for _ in columns]
    return pd.DataFrame(
        {name: pd.Series(col, dtype=object) for name, col in zip(columns, values, strict=True)}
    )


def read_frame(engine: Engine, query: Select[Any], chunk_rows: int = DEFAULT_CHUNK_ROWS) -> pd.DataFrame:
    """Read ``query`` chunk by chunk into one DataFrame (empty frame with the columns if no rows)."""
    frames = list(read_chunks(engine, query, chunk_rows))
    if len(frames) == 1:
        return frames[0]
    if frames:
        return pd.concat(frames, ignore_index=True)
    return pd.DataFrame({c.name: pd.Series([], dtype=object) for c in query.selected_columns})
