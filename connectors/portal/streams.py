"""One class per portal endpoint (Singer-style): name, path, primary key, writable fields."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True)
class PortalStream:
    """An entity of the portal API.

    ``fields`` are the keys hausflow writes; a record read back from the partner is compared on
    these keys only (the partner adds read-only fields such as ``internalId``).
    """

    name: str
    path: str
    fields: tuple[str, ...]
    primary_key: str = "id"
    archivable: bool = True

    def item_path(self, ref_id: str) -> str:
        """Path of one record."""
        return self.path.format(id=ref_id) if "{id}" in self.path else f"{self.path}/{ref_id}"

    def project(self, record: dict[str, Any]) -> dict[str, Any]:
        """The writable part of a record, for comparing what the partner holds with what we send."""
        return {k: record.get(k) for k in self.fields}


PROPERTIES = PortalStream("properties", "/v2/properties", ("id", "name", "addresses", "customFields"))
UNITS = PortalStream("units", "/v2/units", ("id", "propertyId", "name", "type", "floor", "customFields"))
CONTACTS = PortalStream(
    "contacts",
    "/v2/contacts",
    (
        "id",
        "salutation",
        "title",
        "firstName",
        "lastName",
        "companyName",
        "email",
        "telephone",
        "mobile",
        "street",
        "postalCode",
        "city",
        "country",
        "portalUser",
        "customFields",
        "contracts",
    ),
)
RESPONSIBILITIES = PortalStream(
    "responsibilities", "/v2/properties/{id}/responsibilities", ("responsibilities",), archivable=False
)

STREAMS: dict[str, PortalStream] = {s.name: s for s in (PROPERTIES, UNITS, CONTACTS, RESPONSIBILITIES)}


def canonical_json(payload: dict[str, Any]) -> bytes:
    """Deterministic JSON (sorted keys, no spaces, UTF-8) used for hashing and comparison."""
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS, default=str)


def payload_hash(stream: PortalStream, payload: dict[str, Any]) -> str:
    """SHA-256 of the writable part of ``payload``: equal hash, equal content at the partner."""
    return hashlib.sha256(canonical_json(stream.project(payload))).hexdigest()


def write_applied(
    stream: PortalStream, record: dict[str, Any] | None, op: str, expected_hash: str | None
) -> bool:
    """Whether a record read back from the portal already shows the result of a write.

    ``upsert``: same writable content and not archived; ``archive``: archived; ``anonymize``:
    anonymised. Used before retrying an ambiguous write and when settling pending writes.
    """
    if record is None:
        return False
    if op == "upsert":
        return payload_hash(stream, record) == expected_hash and not record.get("archived", False)
    if op == "archive":
        return bool(record.get("archived"))
    if op == "anonymize":
        return bool(record.get("anonymised"))
    return False
