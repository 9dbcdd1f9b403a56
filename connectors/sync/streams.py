"""Streams: one per entity a partner takes (Singer-style), with what the sync engine needs of it.

A stream names the entity, its path and key, the fields hausflow writes, and its place in the
write order. The engine plans and loads any stream the same way; adding an entity to a partner
is a stream plus the rules that build its records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

# a reference id keeps these characters in a path; every other one ("/", "?", "#", "%", a space,
# an umlaut) is %-escaped, so any id reaches the partner as one path segment
_ID_SAFE = "!$&'()*+,;=-._~:@"


@dataclass(frozen=True)
class Stream:
    """An entity of a partner API.

    Args:
        name: the entity (``contacts``); also the name in the state store and the protocol.
        path: the collection (``/v2/contacts``), or a sub-resource of a parent record with
            ``{id}`` in it (``/v2/properties/{id}/responsibilities``): then the id travels in
            the path only, not in the body.
        fields: the keys hausflow writes; a record read back from the partner is compared on
            these only (the partner adds read-only fields such as ``internalId``).
        item_fields: for a field holding a list of objects, the keys of each object that are
            compared (the partner adds derived keys to them, such as a caretaker's
            ``contactName``, or derives a key hausflow sends, such as an address's ``units``).
        write_order: upserts go in ascending order (parents before children); archives in the
            reverse order (children before parents).
        archivable: a record no longer desired is archived (``POST {item}/archive``).
        withdrawn: for a stream that cannot be archived, the payload that withdraws a record
            (an empty list of caretakers); ``None``: such records are left as they are.
        withdrawn_reason: the protocol's reason for such a withdrawal.
        anonymisable: records can be anonymised (``POST {item}/anonymize``).
        archived_field, anonymised_field: the flags by which a record read back shows that it
            was archived or anonymised.
        parents: the records (entity, reference id) a payload refers to, which the partner must
            hold before it takes the record (a unit's property); ``None``: none.
        complete: for a record whose write takes a second step (a document's file), whether a
            record read back has it; an upsert counts as applied only then. ``None``: one step.

    A payload's keys starting with ``_`` are hausflow's own (a document's file on disk): never
    sent, never compared.
    """

    name: str
    path: str
    fields: tuple[str, ...]
    primary_key: str = "id"
    write_order: int = 0
    archivable: bool = True
    withdrawn: Callable[[str], dict[str, Any]] | None = None
    withdrawn_reason: str = "withdrawn"
    anonymisable: bool = False
    archived_field: str = "archived"
    anonymised_field: str = "anonymised"
    parents: Callable[[dict[str, Any]], Iterable[tuple[str, str]]] | None = None
    item_fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    complete: Callable[[dict[str, Any]], bool] | None = None

    @property
    def sub_resource(self) -> bool:
        """Whether the record lives under a parent record (its id only in the path)."""
        return "{id}" in self.path

    def item_path(self, ref_id: str) -> str:
        """Path of one record, its reference id escaped as one path segment."""
        escaped = quote(ref_id, safe=_ID_SAFE)
        return self.path.format(id=escaped) if self.sub_resource else f"{self.path}/{escaped}"

    def project(self, record: dict[str, Any]) -> dict[str, Any]:
        """The compared part of a record, for comparing what the partner holds with what we send."""
        out = {k: record.get(k) for k in self.fields}
        for name, keys in self.item_fields.items():
            items = out.get(name)
            if isinstance(items, list):
                out[name] = [{k: i.get(k) for k in keys} if isinstance(i, dict) else i for i in items]
        return out

    def body(self, payload: dict[str, Any]) -> dict[str, Any]:
        """What an upsert sends: the payload without hausflow's own keys (``_...``), and without
        its id for a sub-resource."""
        skip = self.primary_key if self.sub_resource else None
        if skip is None and not any(k.startswith("_") for k in payload):
            return payload
        return {k: v for k, v in payload.items() if k != skip and not k.startswith("_")}


def canonical_json(payload: dict[str, Any]) -> bytes:
    """Deterministic JSON (sorted keys, no spaces, UTF-8) used for hashing and comparison."""
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS, default=str)


def payload_hash(stream: Stream, payload: dict[str, Any]) -> str:
    """SHA-256 of the writable part of ``payload``: equal hash, equal content at the partner."""
    return hashlib.sha256(canonical_json(stream.project(payload))).hexdigest()


def write_applied(stream: Stream, record: dict[str, Any] | None, op: str, expected_hash: str | None) -> bool:
    """Whether a record read back from the partner already shows the result of a write.

    ``upsert``: same writable content and not archived; ``archive``: archived; ``anonymize``:
    anonymised. Used before retrying an ambiguous write and when settling pending writes.
    """
    if record is None:
        return False
    if op == "upsert":
        return (
            payload_hash(stream, record) == expected_hash
            and not record.get(stream.archived_field, False)
            and (stream.complete is None or stream.complete(record))
        )
    if op == "archive":
        return bool(record.get(stream.archived_field))
    if op == "anonymize":
        return bool(record.get(stream.anonymised_field))
    return False


def file_missing(stream: Stream, record: dict[str, Any] | None, expected_hash: str | None) -> bool:
    """Whether a record with a file holds the fields of an upsert but not its file yet.

    Such an upsert is two requests (the fields, then the file); a run that stopped between them
    left this. What is left to send is the file alone: sending the fields again would write
    them twice.
    """
    return (
        stream.complete is not None
        and record is not None
        and payload_hash(stream, record) == expected_hash
        and not record.get(stream.archived_field, False)
        and not stream.complete(record)
    )
