"""The portal's streams: master data (properties, units, contacts, the properties' caretakers) and
the exchange (ticket types, documents, tickets, bulletin-board posts, comments).

Properties go over in the shape of the portal's public schema (``city``, ``postalCode`` and
``country`` at the top, ``addresses: [{street, units}]``). The portal derives an address's
``units`` from the units that name the property (``propertyId``), so a property read back right
after its write, before its units exist, lists none: the units are sent, as the public shape has
them, but not compared. Caretakers read back with the contact's name, e-mail and telephone the
portal adds; of them too, only what hausflow writes is compared.
"""

from __future__ import annotations

from typing import Any

from connectors.sync.streams import Stream, canonical_json, payload_hash, write_applied

__all__ = ["BULLETIN_POSTS", "COMMENTS", "CONTACTS", "DOCUMENTS", "EXCHANGE_STREAMS", "MASTER_STREAMS",
           "PROPERTIES", "RESPONSIBILITIES", "STREAMS", "TICKETS", "TICKET_TYPES", "UNITS", "PortalStream",
           "canonical_json", "payload_hash", "write_applied"]  # fmt: skip

PortalStream = Stream


def _unit_parents(unit: dict[str, Any]) -> list[tuple[str, str]]:
    return [("properties", str(unit["propertyId"]))] if unit.get("propertyId") else []


def _contact_parents(contact: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for contract in contact.get("contracts") or []:
        if contract.get("propertyId"):
            out.append(("properties", str(contract["propertyId"])))
        if contract.get("unitId"):
            out.append(("units", str(contract["unitId"])))
    return out


def _caretaker_parents(record: dict[str, Any]) -> list[tuple[str, str]]:
    out = [("properties", str(record["id"]))]
    out += [
        ("contacts", str(r["contactId"])) for r in record.get("responsibilities") or [] if r.get("contactId")
    ]
    return out


def _no_caretakers(ref_id: str) -> dict[str, Any]:
    """Caretakers are a list on their property: withdrawing them sends the empty list."""
    return {"id": ref_id, "responsibilities": []}


PROPERTIES = Stream(
    "properties",
    "/v2/properties",
    ("id", "name", "number", "postalCode", "city", "country", "addresses", "customFields"),
    write_order=1,
    item_fields={"addresses": ("street",)},
)
UNITS = Stream(
    "units",
    "/v2/units",
    ("id", "propertyId", "name", "type", "floor", "customFields"),
    write_order=2,
    parents=_unit_parents,
)
CONTACTS = Stream(
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
    write_order=3,
    parents=_contact_parents,
    anonymisable=True,
)
RESPONSIBILITIES = Stream(
    "responsibilities",
    "/v2/properties/{id}/responsibilities",
    ("responsibilities",),
    write_order=4,
    parents=_caretaker_parents,
    item_fields={"responsibilities": ("contactId", "roleName", "roleType")},
    archivable=False,
    withdrawn=_no_caretakers,
    withdrawn_reason="caretakers removed",
)

MASTER_STREAMS = (PROPERTIES, UNITS, CONTACTS, RESPONSIBILITIES)
"""Master data: built incrementally by the portal memo (tasks/portal_memo.py)."""


# ---- documents, messages and notes (docs/portal-exchange.md) ---------------------------------
def _audience_parents(record: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if record.get("propertyId"):
        out.append(("properties", str(record["propertyId"])))
    if record.get("unitId"):
        out.append(("units", str(record["unitId"])))
    if record.get("contactId"):
        out.append(("contacts", str(record["contactId"])))
    out += [("contacts", str(c)) for c in record.get("contactIds") or []]
    return out


def _ticket_parents(record: dict[str, Any]) -> list[tuple[str, str]]:
    types = [("ticket_types", str(record["ticketTypeId"]))] if record.get("ticketTypeId") else []
    return types + _audience_parents(record)


def _comment_parents(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [("tickets", str(record["ticketId"]))] if record.get("ticketId") else []


def _document_deleted(ref_id: str) -> dict[str, Any]:
    """A document no longer in the ERP is reported to the portal as deleted, without content."""
    return {"id": ref_id, "deleted": True}


def _document_complete(record: dict[str, Any]) -> bool:
    """A document is at the portal when it is deleted, or holds the file of its version."""
    return bool(record.get("deleted")) or (
        record.get("version") is not None and record.get("contentVersion") == record.get("version")
    )


TICKET_TYPES = Stream(
    "ticket_types", "/v2/ticket-types", ("id", "name", "locked"), write_order=5, archivable=False
)
DOCUMENTS = Stream(
    "documents",
    "/v2/documents",
    (
        "id",
        "title",
        "documentType",
        "fileName",
        "mimeType",
        "date",
        "propertyId",
        "unitId",
        "contactIds",
        "version",
        "size",
        "deleted",
    ),
    write_order=6,
    archivable=False,
    withdrawn=_document_deleted,
    withdrawn_reason="document no longer in the ERP: reported as deleted",
    parents=_audience_parents,
    complete=_document_complete,
)
TICKETS = Stream(
    "tickets",
    "/v2/tickets",
    (
        "id",
        "ticketTypeId",
        "propertyId",
        "unitId",
        "contactId",
        "visibility",
        "title",
        "description",
        "status",
        "createdAt",
    ),
    write_order=6,
    archivable=False,
    parents=_ticket_parents,
)
BULLETIN_POSTS = Stream(
    "bulletin_posts",
    "/v2/bulletin-posts",
    ("id", "propertyId", "title", "text", "createdAt"),
    write_order=6,
    parents=_audience_parents,
)
COMMENTS = Stream(
    "comments",
    "/v2/comments",
    ("id", "ticketId", "text", "public", "createdAt", "author"),
    write_order=7,
    archivable=False,
    parents=_comment_parents,
)
EXCHANGE_STREAMS = (TICKET_TYPES, DOCUMENTS, TICKETS, BULLETIN_POSTS, COMMENTS)
"""Documents, messages and notes: built in full every run (tasks/portal_exchange.py)."""

STREAMS: dict[str, Stream] = {s.name: s for s in (*MASTER_STREAMS, *EXCHANGE_STREAMS)}
