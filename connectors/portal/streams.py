"""The portal's streams: properties, units, contacts and the properties' caretakers.

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

__all__ = ["CONTACTS", "PROPERTIES", "RESPONSIBILITIES", "STREAMS", "UNITS", "PortalStream",
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

STREAMS: dict[str, Stream] = {s.name: s for s in (PROPERTIES, UNITS, CONTACTS, RESPONSIBILITIES)}
