"""``FakePartnerClient``: a partner in memory, behind the same interface as the real clients.

For fast rule and engine tests: it holds records by entity and reference id, counts every write
and every write that changed nothing (a duplicate), and can refuse records or credentials.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from connectors.sync.client import ClientStats, WriteOp, WriteResult
from connectors.sync.errors import PartnerCredentialsError
from connectors.sync.streams import Stream, payload_hash


class FakePartnerClient:
    """An in-memory partner.

    Args:
        name: the partner's name in messages.
        streams: its entities by name.
        refuse: (entity, ref_id) -> the message with which a write of that record is refused (422).
        credentials_ok: ``False``: every call raises :class:`PartnerCredentialsError`.
    """

    def __init__(
        self,
        name: str,
        streams: Mapping[str, Stream],
        *,
        refuse: Mapping[tuple[str, str], str] | None = None,
        credentials_ok: bool = True,
    ) -> None:
        self.name = name
        self.streams = dict(streams)
        self.records: dict[str, dict[str, dict[str, Any]]] = {entity: {} for entity in streams}
        self.writes: Counter[tuple[str, str]] = Counter()
        self.duplicates = 0
        self.refuse = dict(refuse or {})
        self.credentials_ok = credentials_ok
        self.stats = ClientStats()

    def _login(self) -> None:
        if not self.credentials_ok:
            raise PartnerCredentialsError(self.name, 401, "invalid key", "the fake's credentials")

    async def awrite_many(self, ops: Sequence[WriteOp]) -> list[WriteResult]:
        """Apply each op at once; one result per op, in order."""
        self._login()
        return [self._write(op) for op in ops]

    def _write(self, op: WriteOp) -> WriteResult:
        self.stats.requests += 1
        if (op.entity, op.ref_id) in self.refuse:
            message = self.refuse[(op.entity, op.ref_id)]
            return WriteResult(
                op, False, error=f"{self.name} answered 422: {message}", error_status=422, attempts=1
            )
        stream = self.streams[op.entity]
        held = self.records[op.entity].get(op.ref_id)
        self.writes[(op.entity, op.ref_id)] += 1
        if op.op == "upsert":
            record = {**stream.project(op.payload or {}), "archived": False, "anonymised": False}
            if (
                held is not None
                and payload_hash(stream, held) == payload_hash(stream, record)
                and not held["archived"]
            ):
                self.duplicates += 1
            self.records[op.entity][op.ref_id] = {**record, "internalId": op.ref_id}
            return WriteResult(op, True, created=held is None, internal_id=op.ref_id, attempts=1)
        if held is None:
            return WriteResult(
                op, False, error=f"{self.name} answered 404: unknown", error_status=404, attempts=1
            )
        if op.op == "upload":  # the fake holds no files: the record's fields are all there is
            return WriteResult(op, True, internal_id=op.ref_id, attempts=1)
        flag = stream.archived_field if op.op == "archive" else stream.anonymised_field
        if held.get(flag):
            self.duplicates += 1
        held[flag] = True
        held[stream.archived_field] = True
        return WriteResult(op, True, internal_id=op.ref_id, attempts=1)

    async def aread_many(self, entity: str, ref_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """The records held, ``None`` for unknown ones."""
        self._login()
        held = self.records[entity]
        return {ref_id: dict(held[ref_id]) if ref_id in held else None for ref_id in ref_ids}

    async def alist_records(
        self,
        entity: str,
        modified_after: str | None = None,
        include_archived: bool = False,
        filters: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Every record held (archived ones on request)."""
        self._login()
        archived = self.streams[entity].archived_field
        return [
            dict(r)
            for r in self.records[entity].values()
            if (include_archived or not r.get(archived))
            and all(str(r.get(k)) == v for k, v in (filters or {}).items())
            and (modified_after is None or str(r.get("updatedAt") or "") > modified_after)
        ]

    async def acheck(self) -> None:
        """Raises when the credentials are refused."""
        self._login()

    def credentials_expire(self) -> float | None:
        """The fake's credentials do not expire."""
        return None

    def key_hint(self) -> str:
        """The fake has no key."""
        return "…"

    def internal_id(self, data: Any) -> str | None:
        """The fake's own id of a record it holds."""
        internal = data.get("internalId") if isinstance(data, dict) else None
        return None if internal is None else str(internal)
