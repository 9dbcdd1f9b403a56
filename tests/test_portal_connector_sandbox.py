"""The portal connector against the running sandbox, over HTTP on loopback."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from connectors.portal import PortalClient, PortalCredentialsError, PortalTransportError, WriteOp
from connectors.portal.auth import TokenCache
from connectors.portal.streams import STREAMS, payload_hash, write_applied
from sandbox.portal.server import SandboxServer, free_port


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
    "number": "1001",
    "postalCode": "10115",
    "city": "Berlin",
    "country": "DE",
    "addresses": [{"street": "Lindenstr. 5", "units": ["1001-01", "1001-02"]}],
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


def test_a_property_reads_back_equal_before_and_after_its_units_and_caretakers(
    client: PortalClient, sandbox: SandboxServer
) -> None:
    """The portal derives a property's units and adds the caretakers' names: neither makes a
    record read back differ from what hausflow wrote, so the read-back before a retry holds."""
    caretakers = {
        "id": "1001",
        "responsibilities": [{"contactId": "P0001", "roleName": "Hausmeister", "roleType": "external"}],
    }

    def applied(entity: str, payload: dict[str, object]) -> bool:
        record = client.read_many(entity, [str(payload["id"])])[str(payload["id"])]
        return write_applied(STREAMS[entity], record, "upsert", payload_hash(STREAMS[entity], payload))

    assert client.write_many([upsert("properties", PROPERTY)])[0].ok
    assert client.read_many("properties", ["1001"])["1001"]["addresses"][0]["units"] == []
    assert applied("properties", PROPERTY)
    units = [upsert("units", UNIT), upsert("units", {**UNIT, "id": "1001-02"})]
    assert all(r.ok for r in client.write_many(units))
    assert client.write_many([upsert("contacts", contact(1))])[0].ok  # its contract is in unit 1001-01
    assert client.write_many([upsert("responsibilities", caretakers)])[0].ok
    record = client.read_many("properties", ["1001"])["1001"]
    assert record is not None and record["addresses"][0]["units"] == ["1001-01", "1001-02"]
    assert [r["contactName"] for r in record["responsibilities"]] == ["Anna Muster1"]
    assert applied("properties", PROPERTY) and applied("responsibilities", caretakers)
    assert not applied("properties", {**PROPERTY, "city": "Potsdam"})  # a real difference still shows
    assert not applied("responsibilities", {**caretakers, "responsibilities": []})
    # answers lost after the portal applied the writes: the read-back confirms them, nothing is sent twice
    sandbox.set_faults(apply_then_drop_rate=1.0, methods=["PUT"])
    renamed = {**PROPERTY, "name": "Lindenhof Nord"}
    results = client.write_many(
        [upsert("properties", renamed), upsert("responsibilities", {**caretakers, "responsibilities": []})]
    )
    sandbox.clear_faults()
    assert all(r.ok and r.verified_by_read for r in results), [r.error for r in results]
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


def test_a_batch_fetches_one_token_not_one_per_worker(client: PortalClient, sandbox: SandboxServer) -> None:
    writes = [upsert("properties", {**PROPERTY, "id": f"{2000 + i}"}) for i in range(40)]
    assert all(r.ok for r in client.write_many(writes))  # no token yet: 16 workers start at once
    assert client.stats.authentications == 1 and client.stats.reauthentications == 0
    # a token the portal no longer accepts (revoked), still cached as valid for an hour
    TokenCache.put((sandbox.base_url.rstrip("/"), sandbox.key), "revoked-token", time.time() + 3600)
    assert all(r.ok for r in client.write_many(writes))  # each worker's first request is refused
    assert client.stats.authentications == 2 and client.stats.reauthentications == 1
    assert client.stats.by_status.get(401) is None  # the 401s were answered inside the token flow
    assert all(r.ok for r in client.write_many(writes))  # the new token is cached: no more
    assert client.stats.authentications == 2 and client.stats.reauthentications == 1


def test_wrong_secret_fails_fast_with_one_login(sandbox: SandboxServer) -> None:
    TokenCache.clear()
    before = sandbox.counters()["logins"]
    with pytest.raises(PortalCredentialsError, match="refused the login") as refused:
        PortalClient(sandbox.base_url, sandbox.key, "wrong").check()
    assert "portal.api_secret" in refused.value.advice()
    assert sandbox.counters()["logins"] - before == 1


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


def test_odd_reference_ids_travel_escaped_and_come_back_intact(client: PortalClient) -> None:
    odd = {**PROPERTY, "id": "Haus Süd #2?a=1&b%20"}
    [result] = client.write_many([upsert("properties", odd)])
    assert result.ok and result.created, result.error
    assert client.read_many("properties", [odd["id"]])[odd["id"]] is not None
    assert [r["id"] for r in client.list_records("properties")] == [odd["id"]]


def test_unreachable_portal_is_a_retried_transport_failure() -> None:
    client = PortalClient(f"http://127.0.0.1:{free_port()}", "k", "s", backoff_base_s=0.001, max_retries=2)
    TokenCache.put((client.base_url, "k"), "T", time.time() + 3600)
    [result] = client.write_many([WriteOp("contacts", "archive", "P1")])
    assert not result.ok and result.retriable and result.attempts == 3
    assert "no connection (ConnectError)" in (result.error or "")


def test_answer_slower_than_the_timeout_is_a_lost_answer(sandbox: SandboxServer) -> None:
    sandbox.reset()
    TokenCache.clear()
    client = PortalClient(sandbox.base_url, sandbox.key, sandbox.secret, timeout_s=0.3, max_retries=0)
    client.check()
    sandbox.set_faults(latency_ms=[1000, 1000])
    try:
        [result] = client.write_many([upsert("properties", PROPERTY)])
    finally:
        sandbox.clear_faults()
    assert not result.ok and result.retriable
    assert "ReadTimeout, answer lost" in (result.error or "")


def test_the_portal_is_reached_over_verified_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS with the certificate checked against the trusted authorities: an unknown one is refused."""
    import trustme

    from connectors.sync import http as http_module

    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_tls)
    trusted = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(trusted))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = b'{"id": "P1", "lastName": "Muster"}'
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def read_one(trust: str | None) -> tuple[dict[str, object] | None, str]:
        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_tls)
        base_url = f"https://localhost:{server.sockets[0].getsockname()[1]}"
        TokenCache.put((base_url, "k"), "T", time.time() + 3600)
        if trust:
            monkeypatch.setenv("SSL_CERT_FILE", trust)
        else:
            monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        http_module.default_tls_context.cache_clear()
        client = PortalClient(base_url, "k", "s", max_retries=0)
        async with server:
            try:
                return (await client.aread_many("contacts", ["P1"]))["P1"], ""
            except PortalTransportError as exc:
                return None, str(exc)
            finally:
                http_module.default_tls_context.cache_clear()

    record, _ = asyncio.run(read_one(str(trusted)))
    assert record == {"id": "P1", "lastName": "Muster"}
    record, error = asyncio.run(read_one(None))
    assert record is None and "ConnectError" in error


def test_proxy_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``HTTP(S)_PROXY`` sends the portal's requests through the proxy; ``NO_PROXY`` exempts a host."""
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                seen.append(head.split(b"\r\n", 1)[0])
                body = b'{"list": [], "_links": {"next": null}}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def scenario(no_proxy: str) -> str:
        server = await asyncio.start_server(proxy, "127.0.0.1", 0)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        monkeypatch.setenv("NO_PROXY", no_proxy)
        base_url = "http://portal.invalid"
        TokenCache.put((base_url, "k"), "T", time.time() + 3600)
        client = PortalClient(base_url, "k", "s", max_retries=0)
        async with server:
            try:
                await client.alist_records("units")
                await client.acheck()
            except PortalTransportError as exc:
                return str(exc)
        return "through the proxy"

    assert asyncio.run(scenario("elsewhere.invalid")) == "through the proxy"
    # only the portal's public query parameters: a portal may refuse any other
    assert seen == [
        b"GET http://portal.invalid/v2/units?page=1 HTTP/1.1",
        b"GET http://portal.invalid/v2/properties?page=1 HTTP/1.1",
    ]
    assert "no connection" in asyncio.run(scenario("portal.invalid"))  # straight to the (unknown) host
    assert len(seen) == 2


def test_a_file_changed_after_the_plan_read_it_is_refused_not_sent_as_that_version(
    client: PortalClient, tmp_path: Path
) -> None:
    """The upload sends the digest the plan read (``_content["sha256"]``): bytes that no longer
    match it are refused by the portal, which keeps the content it had."""
    from connectors.documents import file_digest

    assert client.write_many([WriteOp("properties", "upsert", "1001", PROPERTY)])[0].ok
    path = tmp_path / "nk2025.pdf"
    path.write_bytes(b"%PDF-1.7\nfirst version\n%%EOF\n")
    planned = file_digest(path)

    def document(version: str) -> dict[str, object]:
        return {
            "id": "D1", "title": "Abrechnung", "documentType": "ABRECHNUNG", "fileName": path.name,
            "mimeType": "application/pdf", "date": "2026-03-01", "propertyId": "1001", "unitId": None,
            "contactIds": [], "version": version, "size": path.stat().st_size, "deleted": False,
            "_content": {"path": str(path), "mimeType": "application/pdf", "sha256": version},
        }  # fmt: skip

    first = client.write_many([WriteOp("documents", "upsert", "D1", document(planned))])[0]
    assert first.ok, first.error
    assert client.read_many("documents", ["D1"])["D1"]["contentSha256"] == planned  # type: ignore[index]

    path.write_bytes(b"%PDF-1.7\nrewritten after the plan read it\n%%EOF\n")
    stale = "cd" * 32  # the digest a plan read before the file changed
    second = client.write_many([WriteOp("documents", "upsert", "D1", document(stale))])[0]
    assert not second.ok
    assert second.error is not None and "file upload" in second.error and "digest" in second.error.lower()
    assert client.read_many("documents", ["D1"])["D1"]["contentSha256"] == planned  # type: ignore[index]


def test_a_document_whose_fields_arrived_without_its_file_gets_the_file_alone(
    client: PortalClient, sandbox: SandboxServer, tmp_path: Path
) -> None:
    """A run stopped between a document's two requests (fields, then file): the next run settles
    the pending write by reading it back and sends the file alone, not the fields a second time."""
    from connectors.documents import file_digest
    from connectors.state_store import PendingWrite, StateStore
    from tasks.portal_tasks import PORTAL
    from tasks.sync.load import load_batch, recover_pending
    from tasks.sync.plan import PlannedWrite

    assert client.write_many([WriteOp("properties", "upsert", "1001", PROPERTY)])[0].ok
    path = tmp_path / "nk2025.pdf"
    path.write_bytes(b"%PDF-1.7\nstatement\n%%EOF\n")
    digest = file_digest(path)
    document = {
        "id": "D1", "title": "Abrechnung", "documentType": "ABRECHNUNG", "fileName": path.name,
        "mimeType": "application/pdf", "date": "2026-03-01", "propertyId": "1001", "unitId": None,
        "contactIds": [], "version": digest, "size": path.stat().st_size, "deleted": False,
        "_content": {"path": str(path), "mimeType": "application/pdf", "sha256": digest},
    }  # fmt: skip
    digest_of_fields = payload_hash(STREAMS["documents"], document)
    store = StateStore(f"sqlite:///{tmp_path}/state.sqlite")
    store.mark_pending("portal", [PendingWrite("documents", "D1", "upsert", digest_of_fields, "run-1")])
    hidden = path.rename(tmp_path / "away.pdf")  # the first run gets the fields there, not the file
    assert not client.write_many([WriteOp("documents", "upsert", "D1", document, digest_of_fields)])[0].ok
    hidden.rename(path)
    before = sandbox.counters()

    pending, confirmed, again = asyncio.run(recover_pending(store, client, PORTAL, "run-2"))
    assert (pending, confirmed, again) == (1, 0, 1)
    assert [p.op for p in store.load_pending("portal")] == ["upload"]
    write = PlannedWrite("documents", "upsert", "D1", "created", document, digest_of_fields)
    outcome = asyncio.run(load_batch(store, client, PORTAL, "run-2", [write]))

    assert outcome.confirmed == 1, outcome
    after = sandbox.counters()
    assert after["duplicate_writes"] == before["duplicate_writes"] == 0, after["duplicate_writes_by_entity"]
    assert after["writes_by_entity"]["documents"] == before["writes_by_entity"]["documents"] + 1  # the file
    assert after["uploads_by_document"] == {"D1": 1}
    held = client.read_many("documents", ["D1"])["D1"]
    assert held is not None and held["contentSha256"] == digest and held["contentVersion"] == digest
    assert not store.load_pending("portal")
    assert store.load_state("portal", "documents")["D1"].status == "active"
