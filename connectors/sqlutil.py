"""Small helpers shared by hausflow's own stores (state store, SEPA ledger)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

IN_CHUNK = 500  # stays below Oracle's 1000-element IN-list limit


def utcnow() -> datetime:
    """Timezone-aware now in UTC (the only clock the stores use)."""
    return datetime.now(UTC)


def sqlite_file(url: str) -> str | None:
    """The file of a SQLite URL (``sqlite:///path``); ``None`` for other databases and in-memory SQLite."""
    if not url.startswith("sqlite") or "///" not in url:
        return None
    path = url.split("///", 1)[1]
    return None if path in ("", ":memory:") else path


def chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    """``items`` in slices of at most ``size`` (for portable ``IN`` lists)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
