"""What the SEPA run reads from and writes to the ERP: open claims, mandates, claim status.

Reads stream in chunks from one ``select()`` ordered by person and due date (the budget rule of
seed 004 needs a person's claims together, oldest first). The only writes are the claim status
(``IN_COLLECTION``, ``PAID``, ``RETURNED``), the open amount and the return reason.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pandas as pd
from sqlalchemy import Engine, Select, and_, case, or_, select, update

from connectors.erp.database import DEFAULT_CHUNK_ROWS, read_chunks
from connectors.erp.schema import claims, payment_types, persons, sepa_mandates
from connectors.sqlutil import chunks


def candidate_claims_query(due_until: date) -> Select[Any]:
    """Open claims due by ``due_until`` that one of the three ways of seed 004 could debit.

    Columns: claim fields, the person's payment type (``auto_debit``, three fixed remittance
    lines) and released budget. Ordered by person, due date, claim number.
    """
    return (
        select(
            claims.c.claim_no,
            claims.c.person_no,
            claims.c.object_no,
            claims.c.invoice_no,
            claims.c.invoice_date,
            claims.c.due_date,
            claims.c.open_amount,
            claims.c.booking_text,
            claims.c.single_mandate_id,
            case((payment_types.c.auto_debit.is_(True), True), else_=False).label("auto_debit"),
            persons.c.elv_release_amount,
            payment_types.c.remittance_line1,
            payment_types.c.remittance_line2,
            payment_types.c.remittance_line3,
        )
        .select_from(
            claims.join(persons, persons.c.person_no == claims.c.person_no).outerjoin(
                payment_types, payment_types.c.code == persons.c.payment_type_code
            )
        )
        .where(
            and_(
                claims.c.status == "OPEN",
                claims.c.open_amount > 0,
                claims.c.due_date <= due_until,
                or_(
                    claims.c.single_mandate_id.is_not(None),
                    payment_types.c.auto_debit.is_(True),
                    persons.c.elv_release_amount > 0,
                ),
            )
        )
        .order_by(claims.c.person_no, claims.c.due_date, claims.c.claim_no)
    )


def read_candidate_claims(
    engine: Engine, due_until: date, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """Stream the candidate claims (see ``candidate_claims_query``) as DataFrames."""
    return read_chunks(engine, candidate_claims_query(due_until), chunk_rows)


_MANDATE_COLUMNS = (
    sepa_mandates.c.mandate_id,
    sepa_mandates.c.person_no,
    sepa_mandates.c.mandate_type,
    sepa_mandates.c.iban,
    sepa_mandates.c.bic,
    sepa_mandates.c.account_holder,
    sepa_mandates.c.signed_on,
    sepa_mandates.c.first_collection_on,
    sepa_mandates.c.last_collection_on,
    sepa_mandates.c.original_iban,
    sepa_mandates.c.revoked_on,
)


def read_mandates(
    engine: Engine, person_nos: Sequence[str] = (), mandate_ids: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Mandates of some persons (all types) and/or with some ids, as plain dicts."""
    out: list[dict[str, Any]] = []
    with engine.connect() as conn:
        for column, values in (
            (sepa_mandates.c.person_no, person_nos),
            (sepa_mandates.c.mandate_id, mandate_ids),
        ):
            values = sorted(set(values))
            for part in chunks(values):
                out.extend(
                    dict(r)
                    for r in conn.execute(select(*_MANDATE_COLUMNS).where(column.in_(part))).mappings()
                )
    return out


def set_claim_status(
    engine: Engine, claim_nos: Sequence[str], status: str, only_from: Sequence[str] = ("OPEN",)
) -> int:
    """Set the status of claims that are still in one of ``only_from`` (idempotent); returns rows changed."""
    changed = 0
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for part in chunks(list(claim_nos)):
            result = conn.execute(
                update(claims)
                .where(and_(claims.c.claim_no.in_(part), claims.c.status.in_(list(only_from))))
                .values(status=status, modified_at=now)
            )
            changed += result.rowcount or 0
    return changed


def settle_claim(
    engine: Engine,
    claim_no: str,
    status: str,
    open_amount: Decimal,
    return_reason: str | None = None,
) -> None:
    """Write the reconciliation outcome of one claim: status, remaining open amount, return reason."""
    with engine.begin() as conn:
        conn.execute(
            update(claims)
            .where(claims.c.claim_no == claim_no)
            .values(
                status=status,
                open_amount=open_amount,
                return_reason=return_reason,
                modified_at=datetime.now(UTC),
            )
        )


def mark_claims_paid(engine: Engine, claim_nos: Sequence[str]) -> int:
    """Claims whose collected money arrived: ``PAID`` with nothing left open (only from ``IN_COLLECTION``)."""
    changed = 0
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for part in chunks(list(claim_nos)):
            result = conn.execute(
                update(claims)
                .where(and_(claims.c.claim_no.in_(part), claims.c.status == "IN_COLLECTION"))
                .values(status="PAID", open_amount=Decimal("0"), return_reason=None, modified_at=now)
            )
            changed += result.rowcount or 0
    return changed
