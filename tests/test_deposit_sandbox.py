"""The deposit sandbox over HTTP, through the connector: login, records by reference id, field
errors, paging, faults, write counters, the OpenAPI spec."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from connectors.deposit import DepositClient
from connectors.sync.auth import TokenCache
from connectors.sync.client import WriteOp
from connectors.sync.errors import PartnerCredentialsError
from sandbox.deposit.server import DepositSandboxServer

ACCOUNT = {
    "id": "1001-001-01",
    "accountNo": "K-1001-001-01",
    "depositAmount": "1500.00",
    "currency": "EUR",
    "tenancyStart": "2024-01-01",
    "tenancyEnd": None,
    "unitId": "1001-001",
    "leadTenant": {"id": "P1", "lastName": "Müller", "firstName": "Eva"},
    "jointTenants": [],
    "object": {"id": "1001", "name": "Haus A"},
    "owner": {"id": "P9", "name": "Eigentum GmbH"},
    "trustAccount": {"iban": "DE02200505501015871393", "bic": None},
}


def booking(
    bid: str, kind: str = "PAYMENT_IN", amount: str = "1500.00", account: str = "1001-001-01"
) -> dict[str, Any]:
    return {"id": bid, "accountId": account, "type": kind, "amount": amount, "currency": "EUR",
            "bookingDate": "2024-01-02", "text": None}  # fmt: skip


@pytest.fixture
def partner(deposit_sandbox: DepositSandboxServer) -> DepositClient:
    deposit_sandbox.reset()
    TokenCache.clear()
    return DepositClient(
        deposit_sandbox.base_url, deposit_sandbox.key, deposit_sandbox.secret, backoff_base_s=0.01
    )


def test_records_by_reference_id_and_duplicates_counted(
    partner: DepositClient, deposit_sandbox: DepositSandboxServer
) -> None:
    ops = [
        WriteOp("deposit_accounts", "upsert", "1001-001-01", ACCOUNT),
        WriteOp("bookings", "upsert", "1", booking("1")),
    ]
    assert [r.ok for r in partner.write_many(ops[:1])] == [True]
    assert [r.created for r in partner.write_many(ops[1:])] == [True]
    again = partner.write_many(ops[1:])
    assert again[0].ok and not again[0].created
    counters = deposit_sandbox.counters()
    assert counters["writes"] == 2 and counters["duplicate_writes"] == 1 and counters["logins"] == 1
    read = partner.read_many("deposit_accounts", ["1001-001-01", "nope"])
    assert read["1001-001-01"]["balance"] == "1500.00" and read["nope"] is None


@pytest.mark.parametrize(
    ("case", "op", "status", "field"),
    [
        ("booking of an account the partner does not hold", WriteOp("bookings", "upsert", "2", booking("2", account="X")),
         422, "accountId"),
        ("payout with a positive amount", WriteOp("bookings", "upsert", "3", booking("3", "PAYOUT", "10.00")), 422, "amount"),
        ("amount without cents", WriteOp("bookings", "upsert", "4", booking("4", amount="15")), 422, "amount"),
        ("account without owner", WriteOp("deposit_accounts", "upsert", "C9", {**ACCOUNT, "id": "C9", "owner": None}),
         422, "owner"),
        ("invalid trust account", WriteOp("deposit_accounts", "upsert", "C8",
         {**ACCOUNT, "id": "C8", "trustAccount": {"iban": "DE00123"}}), 422, "trustAccount.iban"),
        ("a posted booking with other content", WriteOp("bookings", "upsert", "1", booking("1", amount="1400.00")),
         409, "id"),
    ],
)  # fmt: skip
def test_field_level_errors(partner: DepositClient, case: str, op: WriteOp, status: int, field: str) -> None:
    partner.write_many([WriteOp("deposit_accounts", "upsert", "1001-001-01", ACCOUNT)])
    partner.write_many([WriteOp("bookings", "upsert", "1", booking("1"))])
    (result,) = partner.write_many([op])
    assert not result.ok and not result.retriable and result.error_status == status, case
    assert field in (result.error or ""), result.error


def test_paging_and_unknown_parameters(partner: DepositClient, deposit_sandbox: DepositSandboxServer) -> None:
    partner.write_many([WriteOp("deposit_accounts", "upsert", "1001-001-01", ACCOUNT)])
    ops = [WriteOp("bookings", "upsert", str(i), booking(str(i), "INTEREST", "1.00")) for i in range(1, 251)]
    assert all(r.ok for r in partner.write_many(ops))
    assert len(partner.list_records("bookings")) == 250  # three pages of 100 through _links.next
    token = deposit_sandbox.token()
    answer = httpx.get(
        f"{deposit_sandbox.base_url}/v1/bookings", params={"status": "x"}, headers={"token": token}
    )
    assert answer.status_code == 422 and answer.json()["errors"][0]["fieldName"] == "status"


def test_wrong_password_costs_one_login_and_is_never_quoted(deposit_sandbox: DepositSandboxServer) -> None:
    TokenCache.clear()
    deposit_sandbox.reset()
    before = deposit_sandbox.counters()["logins"]
    client = DepositClient(deposit_sandbox.base_url, deposit_sandbox.key, "wrong-secret-123")
    with pytest.raises(PartnerCredentialsError) as error:
        client.write_many(
            [WriteOp("deposit_accounts", "upsert", f"C{i}", {**ACCOUNT, "id": f"C{i}"}) for i in range(20)]
        )
    assert "wrong-secret-123" not in str(error.value) and "deposit.password" in error.value.advice()
    assert deposit_sandbox.counters()["logins"] - before == 1


def test_lost_answers_and_5xx_are_read_back_not_sent_twice(
    partner: DepositClient, deposit_sandbox: DepositSandboxServer
) -> None:
    partner.write_many([WriteOp("deposit_accounts", "upsert", "1001-001-01", ACCOUNT)])
    deposit_sandbox.set_faults(
        status_rates={"500": 0.1, "503": 0.1, "429": 0.05}, apply_then_drop_rate=0.15, drop_rate=0.05,
        retry_after_s=0, seed=3,
    )  # fmt: skip
    try:
        ops = [
            WriteOp("bookings", "upsert", str(i), booking(str(i), "INTEREST", "1.00")) for i in range(1, 201)
        ]
        results = partner.write_many(ops)
    finally:
        deposit_sandbox.clear_faults()
    assert all(r.ok for r in results)
    counters = deposit_sandbox.counters()
    assert sum(counters["faults_injected"].values()) > 30
    assert counters["writes_by_entity"]["bookings"] == 200 and counters["duplicate_writes"] == 0
    assert sum(r.verified_by_read for r in results) > 0


def test_openapi_spec_is_served(deposit_sandbox: DepositSandboxServer) -> None:
    spec = httpx.get(f"{deposit_sandbox.origin}/openapi.json").json()
    assert {"/ws/v1/login", "/ws/v1/deposit-accounts/{id}", "/ws/v1/bookings/{id}"} <= set(spec["paths"])
    assert (
        "DepositAccountIn" in spec["components"]["schemas"] and "ErrorBody" in spec["components"]["schemas"]
    )
