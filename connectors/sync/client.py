"""What the sync engine needs of a partner: the ``PartnerClient`` interface and its data types.

Two kinds of implementation sit behind it: :class:`connectors.sync.http.HttpPartnerClient`
(a real partner over HTTP; the portal's client is one) and
:class:`connectors.sync.fake.FakePartnerClient` (in memory, for fast rule and engine tests).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class WriteOp:
    """One write: ``upsert`` (payload required), ``archive`` or ``anonymize``.

    ``upload``: the file alone of an upsert whose fields the partner already holds (an earlier
    attempt stopped between the two requests); its state is confirmed as the upsert's.
    """

    entity: str
    op: str
    ref_id: str
    payload: dict[str, Any] | None = None
    payload_hash: str | None = None


@dataclass
class WriteResult:
    """Outcome of one write as the partner confirmed it (or the error that stopped it)."""

    op: WriteOp
    ok: bool
    created: bool = False
    internal_id: str | None = None
    verified_by_read: bool = False
    error: str | None = None
    error_status: int | None = None
    retriable: bool = False
    attempts: int = 0


@dataclass
class ClientStats:
    """Counters of one client, for logs and tests."""

    requests: int = 0
    retries: int = 0
    verified_by_read: int = 0
    authentications: int = 0
    reauthentications: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


class PartnerClient(Protocol):
    """A partner as the sync engine sees it: records by entity and reference id.

    Contract: :meth:`awrite_many` returns one result per op, in order, and never raises for a
    single record (a refusal is a failed result); it raises for what concerns every record, such
    as refused credentials (:class:`~connectors.sync.errors.PartnerCredentialsError`). Reads
    return ``None`` for a reference id the partner does not know.
    """

    name: str
    stats: ClientStats

    async def awrite_many(self, ops: Sequence[WriteOp]) -> list[WriteResult]: ...

    async def aread_many(self, entity: str, ref_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]: ...

    async def alist_records(
        self,
        entity: str,
        modified_after: str | None = None,
        include_archived: bool = False,
        filters: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]: ...

    async def acheck(self) -> None: ...

    def credentials_expire(self) -> float | None: ...

    def key_hint(self) -> str: ...

    def internal_id(self, data: Any) -> str | None: ...
