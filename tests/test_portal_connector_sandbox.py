"""The portal connector against the running sandbox, over HTTP on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from connectors.portal import PortalAuthError, PortalClient, WriteOp
from connectors.portal.auth import TokenCache
from connectors.portal.streams import STREAMS, payload_hash
from sandbox.portal.server import SandboxServer


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(key="conn-key", secret="conn-secret") as server:
        yield server


@pytest.fixture
def client(sandbox: SandboxServer) -> PortalClient:
    sandbox.reset()
    sandbox.clear_faults()
    TokenCache.clear()
    return PortalClient(sandbox.base_url, sandbox.key, sandbox.secret, backoff_base_s=0.01, max_retries=8)


PROPERTY = {
    "id": "1001",
    "name": "Lindenhof",
    "addresses": [{"street": "Lindenstr. 5", "postalCode": "10115", "city": "Berlin", "country": "DE"}],
    "customFields": {},
}
UNIT = {
    "id": "1001-01",
    "propertyId": "1001",
    "name": "Whg. 1",
    "type": "APARTMENT",
    "floor": "0",
    "customFields": {},
}


def contact(i: int, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": f"P{i:04d}",
        "salutation": "Frau",
        "title": None,
        "firstName": "Anna",
        "lastName": f"Muster{i}",
        "companyName": None,
        "email": f"anna{i}@example.de",
        "telephone": None,
        "mobile": None,
        "street": "Lindenstr. 5",
        "postalCode": "10115",
        "city": "Berlin",
        "country": "DE",
        "portalUser": True,
        "customFields": {},
        "contracts": [
            {
                "type": "RENTER",
                "propertyId": "1001",
                "unitId": "1001-01",
                "startDate": "2024-01-01",
                "endDate": None,
            }
        ],
    }
    base.update(kw)
    return base


def upsert(entity: str, payload: dict[str, object]) -> WriteOp:
    return WriteOp(entity, "upsert", str(payload["id"]), payload, payload_hash(STREAMS[entity], payload))


def test_upsert_create_update_list_archive_anonymize(client: PortalClient, sandbox: SandboxServer) -> None:
    results = client.write_many([upsert("properties", PROPERTY)])
    assert results[0].ok and results[0].created
    assert client.write_many([upsert("units", UNIT)])[0].ok
    ops = [upsert("contacts", contact(i)) for i in range(250)]
    results = client.write_many(ops)
    assert all(r.ok and r.created for r in results)
    again = client.write_many([upsert("contacts", contact(0, city="Potsdam"))])
    assert again[0].ok and not again[0].created
    listed = client.list_records("contacts")
    assert len(listed) == 250 and {r["id"] for r in listed} == {f"P{i:04d}" for i in range(250)}
    assert client.write_many([WriteOp("contacts", "archive", "P0001")])[0].ok
    assert client.write_many([WriteOp("contacts", "anonymize", "P0002")])[0].ok
    records = client.read_many("contacts", ["P0001", "P0002", "P9999"])
    assert records["P0001"] and records["P0001"]["archived"] is True
    assert records["P0002"] and records["P0002"]["anonymised"] is True and not records["P0002"]["lastName"]
    assert records["P9999"] is None
    assert len(client.list_records("contacts")) == 248
    assert sandbox.counters()["duplicate_writes"] == 0


def test_partner_message_travels_in_the_error(client: PortalClient) -> None:
    client.write_many([upsert("properties", PROPERTY)])
    [bad] = client.write_many([upsert("contacts", contact(1, lastName=None, email="kaputt@"))])
    assert not bad.ok and bad.error_status == 422 and not bad.retriable
    assert "lastName" in (bad.error or "") and "email" in (bad.error or "")
    [orphan] = client.write_many([upsert("units", {**UNIT, "id": "9-1", "propertyId": "9"})])
    assert orphan.error_status == 422 and "propertyId" in (orphan.error or "")


def test_expired_token_is_renewed_transparently(client: PortalClient, sandbox: SandboxServer) -> None:
    sandbox.set_token_ttl(1)
    client.write_many([upsert("properties", PROPERTY)])
    time.sleep(1.5)
    [result] = client.write_many([upsert("units", UNIT)])
    assert result.ok
    sandbox.set_token_ttl(3600)


def test_wrong_secret_fails_fast(sandbox: SandboxServer) -> None:
    TokenCache.clear()
    with pytest.raises(PortalAuthError):
        PortalClient(sandbox.base_url, sandbox.key, "wrong").authenticate()


def test_sandbox_refuses_missing_or_wrong_token(sandbox: SandboxServer) -> None:
    for headers in ({}, {"token": "forged"}, {"Authorization": f"Bearer {sandbox.token()}"}):
        r = httpx.get(f"{sandbox.base_url}/v2/contacts", headers=headers)
        assert r.status_code == 401, headers
    assert httpx.get(f"{sandbox.base_url}/v2/contacts", headers={"token": sandbox.token()}).status_code == 200


def test_dropped_answers_and_5xx_end_with_each_record_written_once(
    client: PortalClient, sandbox: SandboxServer
) -> None:
    client.write_many([upsert("properties", PROPERTY), upsert("units", UNIT)][:1])
    client.write_many([upsert("units", UNIT)])
    sandbox.set_faults(
        status_rates={"500": 0.1, "503": 0.1, "429": 0.1},
        retry_after_s=0,
        drop_rate=0.05,
        apply_then_drop_rate=0.1,
        seed=3,
    )
    results = client.write_many([upsert("contacts", contact(i)) for i in range(200)])
    sandbox.clear_faults()
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    assert any(r.verified_by_read for r in results)
    counters = sandbox.counters()
    assert counters["duplicate_writes"] == 0 and counters["max_writes_per_record"] == 1
    assert client.stats.retries > 0
