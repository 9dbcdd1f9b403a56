"""The sandbox's exchange endpoints over real HTTP: ticket types, documents and their content,
tickets, bulletin posts, comments, and what tenants and portal users do in the portal.

One server process per module (``SandboxServer``); each test uses its own reference ids; tests that
count or page reset the sandbox first.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.portal import SandboxServer


@pytest.fixture(scope="module")
def portal() -> Iterator[SandboxServer]:
    with SandboxServer(key="test-key", secret="test-secret") as server:
        yield server


@pytest.fixture
def api(portal: SandboxServer) -> Iterator[httpx.Client]:
    portal.clear_faults()
    with httpx.Client(base_url=portal.base_url, headers={"token": portal.token()}, timeout=60) as client:
        yield client
    portal.clear_faults()


def field_names(response: httpx.Response) -> set[str]:
    return {e["fieldName"] for e in response.json()["errors"]}


def digest_header(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


def upload(
    api: httpx.Client, doc_id: str, data: bytes, media: str = "application/pdf", digest: str | None = None
) -> httpx.Response:
    headers = {"Content-Type": media, "Content-Digest": digest or digest_header(data)}
    return api.put(f"/v2/documents/{doc_id}/content", content=data, headers=headers)


def master_data(api: httpx.Client, prefix: str) -> None:
    """A property ``<prefix>`` with unit ``<prefix>-1``, contact ``<prefix>-P1``, ticket type ``<prefix>-T``."""
    prop = {"name": "Lindenhof", "addresses": [{"street": "Lindenstr. 5", "units": []}]}
    assert api.put(f"/v2/properties/{prefix}", json=prop).is_success
    unit = {"propertyId": prefix, "name": "Whg. 1", "type": "APARTMENT"}
    assert api.put(f"/v2/units/{prefix}-1", json=unit).is_success
    contract = {"type": "RENTER", "propertyId": prefix, "unitId": f"{prefix}-1", "startDate": "2024-01-01"}
    contact = {"lastName": "Schmidt", "email": "anna@example.de", "portalUser": True, "contracts": [contract]}
    assert api.put(f"/v2/contacts/{prefix}-P1", json=contact).is_success
    assert api.put(f"/v2/ticket-types/{prefix}-T", json={"name": "Schaden", "locked": True}).is_success


def document(prefix: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "title": "Nebenkostenabrechnung 2025",
        "documentType": "NKA",
        "fileName": "nka-2025.pdf",
        "mimeType": "application/pdf",
        "date": "2026-03-01",
        "propertyId": prefix,
        "unitId": f"{prefix}-1",
        "contactIds": [f"{prefix}-P1"],
        "version": "v1",
        "size": 3,
    }
    body.update(extra)
    return body


def ticket(prefix: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "ticketTypeId": f"{prefix}-T",
        "propertyId": prefix,
        "unitId": f"{prefix}-1",
        "contactId": f"{prefix}-P1",
        "visibility": "contact",
        "title": "Heizung kalt",
        "description": "seit Montag",
        "status": "open",
        "createdAt": "2026-01-31T08:15:00.000Z",
    }
    body.update(extra)
    return body


def comment(ticket_id: str, text: str = "Handwerker kommt am Dienstag", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "ticketId": ticket_id,
        "text": text,
        "public": True,
        "createdAt": "2026-02-01T09:00:00.000Z",
        "author": "Hausverwaltung",
    }
    body.update(extra)
    return body


# ---- ticket types ----------------------------------------------------------------------------
def test_ticket_types_and_a_portal_admins_edit(api: httpx.Client) -> None:
    created = api.put("/v2/ticket-types/TT-1", json={"name": "Schaden", "locked": True})
    assert created.status_code == 201
    record = created.json()
    assert (record["id"], record["name"], record["locked"], record["editedInPortal"]) == (
        "TT-1",
        "Schaden",
        True,
        False,
    )
    assert isinstance(record["internalId"], int) and record["updatedAt"].endswith("Z")
    same = api.put("/v2/ticket-types/TT-1", json={"name": "Schaden", "locked": True})
    assert same.status_code == 200 and same.json()["updatedAt"] == record["updatedAt"]
    edited = api.post("/_sandbox/ticket-types/TT-1/edit", json={"name": "Schaden (Portal)"})
    assert edited.status_code == 200
    assert api.get("/v2/ticket-types/TT-1").json()["name"] == "Schaden (Portal)"
    assert api.get("/v2/ticket-types/TT-1").json()["editedInPortal"] is True
    back = api.put("/v2/ticket-types/TT-1", json={"name": "Schaden", "locked": True}).json()
    assert (back["name"], back["editedInPortal"]) == ("Schaden", False)  # the ERP is the master
    assert api.get("/v2/ticket-types/TT-404").status_code == 404
    assert field_names(api.put("/v2/ticket-types/TT-2", json={"name": "X", "locked": "yes"})) == {"locked"}
    assert field_names(api.put("/v2/ticket-types/TT-2", json={"name": " ", "locked": True})) == {"name"}
    listed = api.get("/v2/ticket-types", params={"pageSize": 1000}).json()
    assert "TT-1" in {r["id"] for r in listed["list"]}


# ---- documents -------------------------------------------------------------------------------
def test_document_metadata_references_and_deletion(api: httpx.Client) -> None:
    master_data(api, "D")
    created = api.put("/v2/documents/D-doc1", json=document("D"))
    assert created.status_code == 201
    record = created.json()
    assert record["deleted"] is False and record["contactIds"] == ["D-P1"]
    assert [record[k] for k in ("contentVersion", "contentSha256", "contentSize")] == [None, None, None]
    assert api.get("/v2/documents/D-doc1").json() == record
    for field, value in (
        ("propertyId", "D-none"),
        ("unitId", "D-none"),
        ("mimeType", "application/msword"),
        ("date", "2026-02-30"),
        ("size", "3"),
    ):
        refused = api.put("/v2/documents/D-bad", json=document("D", **{field: value}))
        assert refused.status_code == 422 and field_names(refused) == {field}, (field, refused.text)
    refused = api.put("/v2/documents/D-bad", json=document("D", contactIds=["D-P1", "D-nobody"]))
    assert refused.status_code == 422 and field_names(refused) == {"contactIds[1]"}
    missing = api.put("/v2/documents/D-bad", json={"propertyId": "D", "title": "x"})
    assert missing.status_code == 422 and "fileName" in field_names(missing)
    # a unit of another property, an archived property
    api.put("/v2/properties/D2", json={"name": "Anderes Haus", "addresses": [{"street": "Weg 1"}]})
    wrong_unit = api.put("/v2/documents/D-bad", json=document("D2", unitId="D-1", contactIds=None))
    assert wrong_unit.status_code == 422 and field_names(wrong_unit) == {"unitId"}
    api.post("/v2/properties/D2/archive")
    archived = api.put("/v2/documents/D-bad", json=document("D2", unitId=None, contactIds=None))
    assert archived.status_code == 422 and "archived" in archived.json()["errors"][0]["errorMessage"]
    assert api.get("/v2/documents/D-bad").status_code == 404

    assert upload(api, "D-doc1", b"%PDF").status_code == 204
    gone = api.put("/v2/documents/D-doc1", json={"propertyId": "D", "deleted": True})
    assert gone.status_code == 200
    assert gone.json()["deleted"] is True and gone.json()["contentSha256"] is None
    assert api.get("/v2/documents/D-doc1/content").status_code == 404  # the content is dropped
    # a deleted document of an archived property can still be sent
    assert api.put("/v2/documents/D2-doc", json={"propertyId": "D2", "deleted": True}).status_code == 201


def test_content_upload_round_trip_and_refusals(portal: SandboxServer, api: httpx.Client) -> None:
    master_data(api, "C")
    api.put("/v2/documents/C-doc", json=document("C"))
    first = b"%PDF-1.7 first version"
    answer = upload(api, "C-doc", first)
    assert answer.status_code == 204 and answer.content == b""
    record = api.get("/v2/documents/C-doc").json()
    assert record["contentVersion"] == "v1"
    assert record["contentSha256"] == hashlib.sha256(first).hexdigest()
    assert record["contentSize"] == len(first)
    got = api.get("/v2/documents/C-doc/content")
    assert got.status_code == 200 and got.content == first
    assert got.headers["content-type"] == "application/pdf"
    assert got.headers["content-digest"] == digest_header(first)

    # a digest that does not match: 422, the old content is kept
    wrong = upload(api, "C-doc", b"%PDF other bytes", digest=digest_header(b"something else"))
    assert wrong.status_code == 422 and field_names(wrong) == {"Content-Digest"}
    assert api.get("/v2/documents/C-doc/content").content == first
    for bad in (None, "sha-256=abc", "md5=:AAAA:", "sha-256=:" + base64.b64encode(b"short").decode() + ":"):
        headers = {"Content-Type": "application/pdf", **({"Content-Digest": bad} if bad else {})}
        refused = api.put("/v2/documents/C-doc/content", content=b"%PDF", headers=headers)
        assert refused.status_code == 422 and field_names(refused) == {"Content-Digest"}, bad
    # a media type the portal does not take
    word = upload(api, "C-doc", b"PK..", media="application/msword")
    assert word.status_code == 415 and field_names(word) == {"Content-Type"}
    # unknown and deleted documents take no content
    assert upload(api, "C-none", b"%PDF").status_code == 409
    api.put("/v2/documents/C-gone", json={"propertyId": "C", "deleted": True})
    deleted = upload(api, "C-gone", b"%PDF")
    assert deleted.status_code == 409 and "deleted" in deleted.json()["message"]

    # a new version replaces the content of the same document; contentVersion follows the upload
    api.put("/v2/documents/C-doc", json=document("C", version="v2"))
    assert api.get("/v2/documents/C-doc").json()["contentVersion"] == "v1"  # not uploaded yet
    second = b"\x89PNG second version"
    assert upload(api, "C-doc", second, media="image/png").status_code == 204
    record = api.get("/v2/documents/C-doc").json()
    assert (record["contentVersion"], record["contentSize"]) == ("v2", len(second))
    got = api.get("/v2/documents/C-doc/content")
    assert got.content == second and got.headers["content-type"] == "image/png"
    folder = Path(portal.db_url.removeprefix("sqlite:///")).parent / "portal-content"
    assert len([p for p in folder.iterdir() if p.is_file()]) == 1  # one file, no second copy, no leftovers


def test_upload_limit_413(portal: SandboxServer, api: httpx.Client) -> None:
    master_data(api, "L")
    api.put("/v2/documents/L-doc", json=document("L"))
    small = b"%PDF small"
    assert upload(api, "L-doc", small).status_code == 204
    portal.set_max_upload_bytes(1000)
    try:
        received = portal.counters()["upload_bytes_received"]
        big = b"x" * 200_000
        refused = upload(api, "L-doc", big)
        assert refused.status_code == 413 and "limit" in refused.json()["message"]
        # Content-Length said it all: the sandbox did not read the body
        assert portal.counters()["upload_bytes_received"] == received

        def chunks() -> Iterator[bytes]:  # no Content-Length: the sandbox stops reading at the limit
            for _ in range(300):
                yield b"y" * 65536

        received = portal.counters()["upload_bytes_received"]
        headers = {"Content-Type": "application/pdf", "Content-Digest": digest_header(b"y")}
        streamed = api.put("/v2/documents/L-doc/content", content=chunks(), headers=headers)
        assert streamed.status_code == 413
        # what the server had buffered is read, the rest of the ~20 MB is never read by the handler
        assert portal.counters()["upload_bytes_received"] - received < 2 * 1024 * 1024
        assert api.get("/v2/documents/L-doc/content").content == small  # old content kept
        assert upload(api, "L-doc", b"%PDF fits").status_code == 204  # the connection still serves
    finally:
        portal.set_max_upload_bytes(100 * 1024 * 1024)


def _peak_rss(pid: int) -> int | None:
    """Peak resident memory of a process (Linux ``VmHWM``), ``None`` elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def test_a_large_upload_is_streamed(portal: SandboxServer, api: httpx.Client) -> None:
    master_data(api, "B")
    size, block = 50 * 1024 * 1024, 1024 * 1024
    blocks = [hashlib.sha256(str(i).encode()).digest() * (block // 32) for i in range(4)]
    expected = hashlib.sha256()
    for i in range(size // block):
        expected.update(blocks[i % 4])

    def body() -> Iterator[bytes]:
        for i in range(size // block):
            yield blocks[i % 4]

    api.put("/v2/documents/B-big", json=document("B", size=size))
    assert portal.pid is not None
    peak_before = _peak_rss(portal.pid)
    headers = {
        "Content-Type": "application/pdf",
        "Content-Digest": "sha-256=:" + base64.b64encode(expected.digest()).decode() + ":",
    }
    answer = api.put("/v2/documents/B-big/content", content=body(), headers=headers)
    assert answer.status_code == 204, answer.text
    peak_after = _peak_rss(portal.pid)
    if peak_before is not None and peak_after is not None:
        assert peak_after - peak_before < 20 * 1024 * 1024  # far less than the 50 MB sent
    record = api.get("/v2/documents/B-big").json()
    assert record["contentSize"] == size and record["contentSha256"] == expected.hexdigest()
    download = hashlib.sha256()
    received = 0
    with api.stream("GET", "/v2/documents/B-big/content") as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            download.update(chunk)
            received += len(chunk)
    assert received == size and download.hexdigest() == expected.hexdigest()


# ---- tickets ---------------------------------------------------------------------------------
def test_tickets_from_the_erp_and_from_the_portal(api: httpx.Client) -> None:
    master_data(api, "K")
    created = api.put("/v2/tickets/K-M1", json=ticket("K"))
    assert created.status_code == 201
    record = created.json()
    assert (record["origin"], record["lastPortalActivity"], record["createdAt"]) == (
        "erp",
        None,
        "2026-01-31T08:15:00.000Z",
    )
    whole_property = api.put("/v2/tickets/K-M2", json=ticket("K", visibility="property", contactId=None))
    assert whole_property.status_code == 201
    for body, fields in (
        (ticket("K", contactId=None), {"contactId"}),
        (ticket("K", ticketTypeId="K-none"), {"ticketTypeId"}),
        (ticket("K", propertyId="K-none", unitId=None), {"propertyId"}),
        (ticket("K", contactId="K-nobody"), {"contactId"}),
        (ticket("K", status="done", visibility="all"), {"status", "visibility"}),
        (ticket("K", createdAt="gestern"), {"createdAt"}),
    ):
        refused = api.put("/v2/tickets/K-bad", json=body)
        assert refused.status_code == 422 and field_names(refused) == fields, refused.text

    # a tenant reports in the portal
    portal_made = api.post(
        "/_sandbox/tickets",
        json={
            "ticketTypeId": "K-T",
            "propertyId": "K",
            "unitId": "K-1",
            "contactId": "K-P1",
            "title": "Wasserhahn tropft",
            "description": "Küche",
        },
    )
    assert portal_made.status_code == 201
    made = portal_made.json()
    assert made["id"].startswith("P-") and made["origin"] == "portal" and made["visibility"] == "contact"
    assert made["status"] == "open" and made["lastPortalActivity"]["what"] == "ticket created"
    object_message = api.post(
        "/_sandbox/tickets",
        json={
            "ticketTypeId": "K-T",
            "propertyId": "K",
            "contactId": "K-P1",
            "title": "Treppenhaus dunkel",
            "visibility": "property",
        },
    )
    assert object_message.status_code == 422 and field_names(object_message) == {"visibility"}
    assert "object message" in object_message.json()["message"]

    # a portal user closes it; the ERP's later write keeps the origin
    closed = api.post(f"/_sandbox/tickets/{made['id']}/status", json={"status": "closed"}).json()
    assert closed["status"] == "closed" and closed["lastPortalActivity"]["what"] == "status: closed"
    back = {k: closed[k] for k in ticket("K")}
    again = api.put(f"/v2/tickets/{made['id']}", json=back)
    assert again.status_code == 200 and again.json()["origin"] == "portal"
    assert again.json()["updatedAt"] == closed["updatedAt"]  # nothing changed
    assert api.get("/v2/tickets/K-404").status_code == 404


def test_ticket_lists_filter_by_origin_and_modification(portal: SandboxServer, api: httpx.Client) -> None:
    portal.reset()
    master_data(api, "O")
    for i in range(5):
        api.put(f"/v2/tickets/O-M{i}", json=ticket("O"))
    tenant = {"ticketTypeId": "O-T", "propertyId": "O", "contactId": "O-P1", "title": "Klingel"}
    first = api.post("/_sandbox/tickets", json=tenant).json()
    second = api.post("/_sandbox/tickets", json=tenant).json()
    assert (first["id"], second["id"]) == ("P-1", "P-2")

    def ids(**params: str) -> list[str]:
        seen: list[str] = []
        url: str | None = "/v2/tickets"
        query: dict[str, str] | None = params
        while url:
            page = api.get(url, params=query)
            assert page.status_code == 200, page.text
            seen += [r["id"] for r in page.json()["list"]]
            url, query = page.json()["_links"]["next"], None
        return seen

    assert ids(origin="portal") == ["P-1", "P-2"]
    assert ids(origin="erp", pageSize="2") == [f"O-M{i}" for i in range(5)]
    assert ids() == [*(f"O-M{i}" for i in range(5)), "P-1", "P-2"]
    time.sleep(0.01)
    api.post("/_sandbox/tickets/P-1/comments", json={"text": "Noch da?", "public": True})
    assert ids(origin="portal", modifiedAfter=second["updatedAt"]) == ["P-1"]
    cursor = api.get("/v2/tickets/P-1").json()["updatedAt"]
    assert ids(origin="portal", modifiedAfter=cursor) == []
    assert field_names(api.get("/v2/tickets", params={"origin": "tenant"})) == {"origin"}
    for path, params in (
        ("/v2/tickets", {"status": "open"}),
        ("/v2/documents", {"origin": "portal"}),
        ("/v2/comments", {"ticketId": "P-1"}),
        ("/v2/ticket-types", {"includeArchived": "true"}),
        ("/v2/documents/X/content", {"inline": "1"}),
    ):
        refused = api.get(path, params=params)
        assert refused.status_code == 422 and field_names(refused) == set(params), (path, refused.text)


# ---- bulletin posts --------------------------------------------------------------------------
def test_bulletin_posts_archive_like_the_other_collections(api: httpx.Client) -> None:
    master_data(api, "N")
    post = {"propertyId": "N", "title": "Wasser abgestellt", "text": "Am 3. März", "createdAt": None}
    created = api.put("/v2/bulletin-posts/N-B1", json=post)
    assert created.status_code == 201 and created.json()["archived"] is False
    assert api.put("/v2/bulletin-posts/N-B1", json=post).json()["updatedAt"] == created.json()["updatedAt"]
    assert field_names(api.put("/v2/bulletin-posts/N-B2", json={**post, "propertyId": "N-none"})) == {
        "propertyId"
    }
    archived = api.post("/v2/bulletin-posts/N-B1/archive")
    assert archived.status_code == 200 and archived.json()["archived"] is True
    assert api.post("/v2/bulletin-posts/N-B1/archive").status_code == 200
    listed = {r["id"] for r in api.get("/v2/bulletin-posts", params={"pageSize": 1000}).json()["list"]}
    assert "N-B1" not in listed
    everything = api.get("/v2/bulletin-posts", params={"pageSize": 1000, "includeArchived": "true"}).json()
    assert "N-B1" in {r["id"] for r in everything["list"]}
    assert api.put("/v2/bulletin-posts/N-B1", json=post).json()["archived"] is False  # un-archived
    assert api.post("/v2/bulletin-posts/N-404/archive").status_code == 404


# ---- comments --------------------------------------------------------------------------------
def test_comments_are_append_only_and_come_back_from_the_portal(
    portal: SandboxServer, api: httpx.Client
) -> None:
    master_data(api, "Q")
    api.put("/v2/tickets/Q-M1", json=ticket("Q"))
    created = api.put("/v2/comments/Q-C1", json=comment("Q-M1"))
    assert created.status_code == 201 and created.json()["origin"] == "erp"
    again = api.put("/v2/comments/Q-C1", json=comment("Q-M1"))
    assert again.status_code == 200 and again.json()["updatedAt"] == created.json()["updatedAt"]
    changed = api.put("/v2/comments/Q-C1", json=comment("Q-M1", text="anders"))
    assert changed.status_code == 409 and "append-only" in changed.json()["message"]
    assert api.get("/v2/comments/Q-C1").json()["text"] == "Handwerker kommt am Dienstag"
    orphan = api.put("/v2/comments/Q-C2", json=comment("Q-none"))
    assert orphan.status_code == 422 and field_names(orphan) == {"ticketId"}
    assert field_names(api.put("/v2/comments/Q-C2", json=comment("Q-M1", public="yes"))) == {"public"}

    before = api.get("/v2/tickets/Q-M1").json()
    time.sleep(0.01)
    internal = api.post("/_sandbox/tickets/Q-M1/comments", json={"text": "intern", "public": False})
    assert internal.status_code == 201 and internal.json()["origin"] == "portal"
    assert api.get("/v2/tickets/Q-M1").json()["updatedAt"] == before["updatedAt"]  # internal: no activity
    public = api.post(
        "/_sandbox/tickets/Q-M1/comments", json={"text": "Danke!", "public": True, "author": "Anna Schmidt"}
    ).json()
    assert public["id"].startswith("PC-") and public["ticketId"] == "Q-M1" and public["public"] is True
    activity = api.get("/v2/tickets/Q-M1").json()["lastPortalActivity"]
    assert activity["what"] == "comment"
    from_portal = api.get(
        "/v2/comments", params={"origin": "portal", "modifiedAfter": before["updatedAt"], "pageSize": 1000}
    ).json()["list"]
    assert [(c["text"], c["public"]) for c in from_portal] == [("intern", False), ("Danke!", True)]
    assert "Q-C1" in {c["id"] for c in api.get("/v2/comments", params={"origin": "erp"}).json()["list"]}
    assert (
        api.post("/_sandbox/tickets/Q-none/comments", json={"text": "x", "public": True}).status_code == 404
    )


# ---- counters, faults, restart, spec ---------------------------------------------------------
def test_counters_count_uploads_and_writes(portal: SandboxServer, api: httpx.Client) -> None:
    portal.reset()
    master_data(api, "Z")
    api.put("/v2/documents/Z-d1", json=document("Z"))
    api.put("/v2/documents/Z-d2", json=document("Z"))
    upload(api, "Z-d1", b"%PDF one")
    upload(api, "Z-d1", b"%PDF one")  # the same content again: a duplicate write
    upload(api, "Z-d2", b"%PDF two!")
    upload(api, "Z-d2", b"%PDF", digest=digest_header(b"other"))  # refused: not counted
    api.put("/v2/tickets/Z-M1", json=ticket("Z"))
    api.post(
        "/_sandbox/tickets",
        json={"ticketTypeId": "Z-T", "propertyId": "Z", "contactId": "Z-P1", "title": "t"},
    )
    counters = portal.counters()
    assert counters["uploads"] == 3
    assert counters["upload_bytes"] == 8 + 8 + 9
    assert counters["uploads_by_document"] == {"Z-d1": 2, "Z-d2": 1}
    assert counters["upload_bytes_received"] == 8 + 8 + 9 + 4
    assert counters["writes_by_op"]["upload"] == 2 and counters["duplicate_writes"] == 1
    assert counters["writes_by_entity"]["documents"] == 4  # two upserts, two effective uploads
    assert counters["writes_by_entity"]["tickets"] == 1  # the tenant's ticket is no client write
    assert counters["records"]["tickets"] == 2 and counters["records"]["documents"] == 2
    log = portal.write_log("documents", "Z-d1")
    assert [(w["op"], w["effective"]) for w in log] == [("upsert", True), ("upload", True), ("upload", False)]
    assert log[1]["bodyHash"] == hashlib.sha256(b"%PDF one").hexdigest()


def test_faults_apply_to_the_exchange(portal: SandboxServer, api: httpx.Client) -> None:
    master_data(api, "F")
    api.put("/v2/documents/F-d", json=document("F"))
    portal.set_faults(status_rates={"503": 1.0}, retry_after_s=2)
    faulted = upload(api, "F-d", b"%PDF")
    assert faulted.status_code == 503 and faulted.headers["Retry-After"] == "2"
    assert api.put("/v2/tickets/F-M1", json=ticket("F")).status_code == 503
    portal.set_faults(fail_after_writes=1)
    assert upload(api, "F-d", b"%PDF").status_code == 204
    assert api.put("/v2/comments/F-C1", json=comment("F-M1")).status_code == 503
    portal.clear_faults()
    assert api.get("/v2/tickets/F-M1").status_code == 404  # the faulted write was not applied
    assert httpx.get(f"{portal.base_url}/v2/tickets").status_code == 401  # token as everywhere


def test_state_and_content_survive_a_restart(portal: SandboxServer, api: httpx.Client) -> None:
    master_data(api, "S")
    api.put("/v2/documents/S-d", json=document("S"))
    content = b"%PDF keep me"
    upload(api, "S-d", content)
    api.put("/v2/tickets/S-M1", json=ticket("S"))
    made = api.post(
        "/_sandbox/tickets",
        json={"ticketTypeId": "S-T", "propertyId": "S", "contactId": "S-P1", "title": "x"},
    ).json()
    api.put("/v2/comments/S-C1", json=comment("S-M1"))
    api.post("/_sandbox/ticket-types/S-T/edit", json={"name": "Im Portal geändert"})
    api.put("/v2/documents/S-gone", json={"propertyId": "S", "deleted": True})
    token = api.headers["token"]
    portal.restart()
    with httpx.Client(base_url=portal.base_url, headers={"token": token}, timeout=10) as client:
        document_read = client.get("/v2/documents/S-d").json()
        assert document_read["contentSha256"] == hashlib.sha256(content).hexdigest()
        assert client.get("/v2/documents/S-d/content").content == content
        # the index is rebuilt: origin filter, deleted flag, edited type, append-only comment
        portal_ids = {r["id"] for r in client.get("/v2/tickets", params={"origin": "portal"}).json()["list"]}
        assert made["id"] in portal_ids and "S-M1" not in portal_ids
        assert upload(client, "S-gone", b"%PDF").status_code == 409
        assert client.get("/v2/ticket-types/S-T").json()["editedInPortal"] is True
        assert client.put("/v2/comments/S-C1", json=comment("S-M1")).status_code == 200
        assert client.put("/v2/comments/S-C1", json=comment("S-M1", text="neu")).status_code == 409
        assert upload(client, "S-d", content).status_code == 204
        assert portal.counters()["uploads_by_document"] == {"S-d": 1}  # counters start from zero


def test_openapi_describes_the_exchange(portal: SandboxServer) -> None:
    spec = httpx.get(portal.base_url + "/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/v2/ticket-types/{id}",
        "/v2/documents/{id}",
        "/v2/documents/{id}/content",
        "/v2/tickets",
        "/v2/bulletin-posts/{id}/archive",
        "/v2/comments",
        "/_sandbox/tickets",
        "/_sandbox/tickets/{id}/comments",
        "/_sandbox/tickets/{id}/status",
        "/_sandbox/ticket-types/{id}/edit",
    ):
        assert path in paths, path
    upload_op = paths["/v2/documents/{id}/content"]["put"]
    assert set(upload_op["requestBody"]["content"]) == {"application/pdf", "image/jpeg", "image/png"}
    assert "Content-Digest" in {p["name"] for p in upload_op["parameters"]}
    assert upload_op["security"] == [{"token": []}]
    schemas = spec["components"]["schemas"]
    assert {"DocumentIn", "DocumentOut", "TicketIn", "TicketOut", "CommentIn", "BulletinPostIn"} <= set(
        schemas
    )
