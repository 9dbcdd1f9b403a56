"""Reads of the ERP for each sync, as DataFrames built from chunked, dialect-neutral selects."""

from __future__ import annotations

import pandas as pd
from sqlalchemy import Engine, select

from connectors.erp import schema
from connectors.erp.database import read_frame

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


def extract_portal_frames(engine: Engine, chunk_rows: int = 20_000) -> dict[str, pd.DataFrame]:
    """Everything the portal rules read: objects, groups, units, persons, contracts, partners, caretakers.

    The read is complete or it raises: archives are planned only from a complete extract.
    """
    o, u, p, c = schema.objects, schema.units, schema.persons, schema.contracts
    queries = {
        "objects": select(
            o.c.object_no, o.c.name, o.c.street, o.c.postal_code, o.c.city, o.c.country, o.c.owner_person_no
        ).order_by(o.c.object_no),
        "object_groups": select(schema.object_groups.c.group_name, schema.object_groups.c.object_no),
        "units": select(u.c.unit_no, u.c.object_no, u.c.name, u.c.unit_type, u.c.floor).order_by(u.c.unit_no),
        "persons": select(*[p.c[name] for name in PORTAL_PERSON_COLUMNS]).order_by(p.c.person_no),
        "contracts": select(
            c.c.contract_no, c.c.unit_no, c.c.person_no, c.c.contract_type, c.c.start_date, c.c.move_out_date
        ).order_by(c.c.contract_no),
        "partners": select(
            schema.contract_partners.c.contract_no,
            schema.contract_partners.c.person_no,
            schema.contract_partners.c.role,
        ),
        "caretakers": select(
            schema.caretaker_assignments.c.object_no,
            schema.caretaker_assignments.c.person_no,
            schema.caretaker_assignments.c.role_name,
            schema.caretaker_assignments.c.role_type,
        ),
    }
    return {name: read_frame(engine, query, chunk_rows) for name, query in queries.items()}
