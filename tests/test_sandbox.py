"""The portal sandbox over real HTTP: one server process per module (``SandboxServer``).

Each test uses its own reference ids; tests that count or page reset the sandbox first.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
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
    with httpx.Client(base_url=portal.base_url, headers={"token": portal.token()}, timeout=10) as client:
        yield client
    portal.clear_faults()


def prop(name: str = "Wohnanlage Lindenstr.") -> dict[str, Any]:
    return {
        "name": name,
        "addresses": [{"street": "Lindenstr. 5", "postalCode": "10115", "city": "Berlin", "country": "DE"}],
        "customFields": {},
    }


def unit(property_id: str) -> dict[str, Any]:
    return {
        "propertyId": property_id,
        "name": "Whg. 3",
        "type": "APARTMENT",
        "floor": "1",
        "customFields": {},
    }


def contact(property_id: str, unit_id: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "salutation": "Frau",
        "title": None,
        "firstName": "Anna",
        "lastName": "Schmidt",
        "companyName": None,
        "email": "anna@example.de",
        "telephone": "030 123",
        "mobile": None,
        "street": "Lindenstr. 5",
        "postalCode": "10115",
        "city": "Berlin",
        "country": "DE",
        "portalUser": True,
        "customFields": {"personType": "MIETER"},
        "contracts": [
            {
                "type": "RENTER",
                "propertyId": property_id,
                "unitId": unit_id,
                "startDate": "2024-05-01",
                "endDate": None,
            }
        ],
    }
    body.update(extra)
    return body


def field_names(response: httpx.Response) -> set[str]:
    return {e["fieldName"] for e in response.json()["errors"]}


# ---- auth ------------------------------------------------------------------------------------
def test_authentication_rules(portal: SandboxServer) -> None:
    with httpx.Client(base_url=portal.base_url, timeout=10) as client:
        assert client.post("/v2/authenticate", json={"key": "test-key", "secret": "nope"}).status_code == 401
        good = client.post("/v2/authenticate", json={"key": "test-key", "secret": "test-secret"})
        assert good.status_code == 200 and good.json()["expiresAt"].endswith("Z")
        missing = client.get("/v2/properties")
        assert missing.status_code == 401 and "token" in missing.json()["message"]
        assert client.get("/v2/properties", headers={"token": "made-up"}).status_code == 401
        assert client.get("/v2/properties", headers={"token": good.json()["token"]}).status_code == 200
        portal.set_token_ttl(0.3)
        try:
            short = portal.token()
            assert client.get("/v2/properties", headers={"token": short}).status_code == 200
            time.sleep(0.4)
            expired = client.get("/v2/properties", headers={"token": short})
            assert expired.status_code == 401 and "expired" in expired.json()["message"]
        finally:
            portal.set_token_ttl(30 * 24 * 3600)


# ---- upserts and validation -------------------------------------------------------------------
def test_put_creates_with_201_and_updates_with_200(api: httpx.Client) -> None:
    created = api.put("/v2/properties/U-1001", json=prop())
    assert created.status_code == 201
    record = created.json()
    assert record["id"] == "U-1001" and record["archived"] is False and isinstance(record["internalId"], int)
    same = api.put("/v2/properties/U-1001", json=prop())
    assert same.status_code == 200 and same.json()["updatedAt"] == record["updatedAt"]
    changed = api.put("/v2/properties/U-1001", json=prop("Neuer Name"))
    assert changed.status_code == 200 and changed.json()["name"] == "Neuer Name"
    assert changed.json()["internalId"] == record["internalId"]
    assert api.get("/v2/properties/U-1001").json()["name"] == "Neuer Name"
    assert api.get("/v2/properties/U-unknown").status_code == 404


def test_validation_answers_422_with_field_errors(api: httpx.Client) -> None:
    api.put("/v2/properties/V-1", json=prop())
    nameless = api.put("/v2/contacts/V-P1", json=contact("V-1", lastName=None, email="not-an-address"))
    assert nameless.status_code == 422
    assert field_names(nameless) == {"lastName", "email"}
    assert (
        api.put(
            "/v2/contacts/V-P2", json=contact("V-1", lastName=None, companyName="Muster GmbH")
        ).status_code
        == 201
    )
    wrong_type = api.put("/v2/units/V-1-1", json={**unit("V-1"), "floor": 1, "type": "CASTLE"})
    assert wrong_type.status_code == 422 and field_names(wrong_type) == {"floor", "type"}
    no_address = api.put("/v2/properties/V-2", json={"name": "X", "addresses": []})
    assert no_address.status_code == 422 and field_names(no_address) == {"addresses"}
    bad_date = api.put(
        "/v2/contacts/V-P3",
        json=contact("V-1", contracts=[{"type": "RENTER", "propertyId": "V-1", "startDate": "2024-13-01"}]),
    )
    assert bad_date.status_code == 422 and field_names(bad_date) == {"contracts[0].startDate"}
    malformed = api.put(
        "/v2/properties/V-3", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400
    other_id = api.put("/v2/properties/V-4", json={**prop(), "id": "V-5"})
    assert other_id.status_code == 422 and field_names(other_id) == {"id"}


def test_references_must_exist(api: httpx.Client) -> None:
    orphan = api.put("/v2/units/R-9-1", json=unit("R-9"))
    assert orphan.status_code == 422 and field_names(orphan) == {"propertyId"}
    api.put("/v2/properties/R-1", json=prop())
    api.put("/v2/properties/R-2", json=prop())
    assert api.put("/v2/units/R-1-1", json=unit("R-1")).status_code == 201
    bad = api.put("/v2/contacts/R-P1", json=contact("R-1", "R-1-404"))
    assert bad.status_code == 422 and field_names(bad) == {"contracts[0].unitId"}
    wrong_property = api.put("/v2/contacts/R-P1", json=contact("R-2", "R-1-1"))
    assert wrong_property.status_code == 422 and field_names(wrong_property) == {"contracts[0].unitId"}
    assert api.put("/v2/contacts/R-P1", json=contact("R-1", "R-1-1")).status_code == 201

    caretakers = {
        "responsibilities": [{"contactId": "R-P1", "roleName": "Hausmeister", "roleType": "external"}]
    }
    put = api.put("/v2/properties/R-1/responsibilities", json=caretakers)
    assert put.status_code == 200
    assert api.get("/v2/properties/R-1/responsibilities").json() == {"id": "R-1", **caretakers}
    unknown = {
        "responsibilities": [{"contactId": "R-none", "roleName": "Hausmeister", "roleType": "external"}]
    }
    response = api.put("/v2/properties/R-1/responsibilities", json=unknown)
    assert response.status_code == 422 and field_names(response) == {"responsibilities[0].contactId"}
    api.post("/v2/contacts/R-P1/archive")
    archived = api.put("/v2/properties/R-1/responsibilities", json=caretakers)
    assert archived.status_code == 422 and "archived" in archived.json()["errors"][0]["errorMessage"]
    assert api.put("/v2/properties/R-404/responsibilities", json=caretakers).status_code == 404


# ---- lists -----------------------------------------------------------------------------------
def test_paging_follows_absolute_next_links(portal: SandboxServer, api: httpx.Client) -> None:
    portal.reset()
    ids = [f"L-{i:03d}" for i in range(25)]
    for ref in ids:
        api.put(f"/v2/properties/{ref}", json=prop(ref))
    api.post("/v2/properties/L-000/archive")
    seen: list[str] = []
    url: str | None = "/v2/properties?pageSize=10"
    pages = 0
    while url:
        data = api.get(url).json()
        seen += [r["id"] for r in data["list"]]
        url = data["_links"]["next"]
        assert url is None or url.startswith(portal.base_url + "/v2/properties?")
        pages += 1
    assert pages == 3 and seen == ids[1:]
    everything = api.get("/v2/properties", params={"pageSize": 1000, "includeArchived": "true"}).json()
    assert [r["id"] for r in everything["list"]] == ids and everything["_links"]["next"] is None
    assert api.get("/v2/properties", params={"pageSize": 1001}).status_code == 422
    assert field_names(api.get("/v2/properties", params={"page": 0})) == {"page"}


def test_modified_after_filters_by_update_time(api: httpx.Client) -> None:
    first = api.put("/v2/properties/M-1", json=prop()).json()
    time.sleep(0.01)
    api.put("/v2/properties/M-2", json=prop())
    later = api.get("/v2/properties", params={"modifiedAfter": first["updatedAt"], "pageSize": 1000}).json()
    ids = {r["id"] for r in later["list"]}
    assert "M-2" in ids and "M-1" not in ids
    assert api.get("/v2/properties", params={"modifiedAfter": "yesterday"}).status_code == 422


# ---- archive, delete, anonymise --------------------------------------------------------------
def test_delete_needs_archive_first_and_put_unarchives(api: httpx.Client) -> None:
    api.put("/v2/properties/D-1", json=prop())
    assert api.delete("/v2/properties/D-1").status_code == 409
    archived = api.post("/v2/properties/D-1/archive")
    assert archived.status_code == 200 and archived.json()["archived"] is True
    assert api.post("/v2/properties/D-1/archive").status_code == 200
    assert api.put("/v2/properties/D-1", json=prop()).json()["archived"] is False
    api.post("/v2/properties/D-1/archive")
    assert api.delete("/v2/properties/D-1").status_code == 204
    assert api.get("/v2/properties/D-1").status_code == 404
    assert api.delete("/v2/properties/D-1").status_code == 404


def test_anonymize_wipes_personal_data_and_blocks_writes(portal: SandboxServer, api: httpx.Client) -> None:
    api.put("/v2/properties/A-1", json=prop())
    api.put("/v2/contacts/A-P1", json=contact("A-1", firstName="Annegret", lastName="Geheimnisvoll"))
    wiped = api.post("/v2/contacts/A-P1/anonymize")
    assert wiped.status_code == 200
    record = wiped.json()
    assert record["anonymised"] is True and record["archived"] is True
    assert all(record[f] is None for f in ("firstName", "lastName", "email", "telephone", "street", "city"))
    assert record["customFields"] == {}
    assert api.post("/v2/contacts/A-P1/anonymize").status_code == 200
    blocked = api.put("/v2/contacts/A-P1", json=contact("A-1"))
    assert blocked.status_code == 409
    page = httpx.get(portal.base_url + "/", params={"page": 1}).text
    assert "Geheimnisvoll" not in page and "Annegret" not in page


# ---- counters --------------------------------------------------------------------------------
def test_counters_detect_duplicate_writes(portal: SandboxServer, api: httpx.Client) -> None:
    portal.reset()
    api.put("/v2/properties/C-1", json=prop())
    api.put("/v2/properties/C-1", json=prop())  # nothing changed: a duplicate
    api.post("/v2/properties/C-1/archive")
    api.post("/v2/properties/C-1/archive")  # already archived: a duplicate
    api.put("/v2/properties/C-2", json=prop())
    counters = portal.counters()
    assert counters["writes"] == 3 and counters["duplicate_writes"] == 2
    assert counters["writes_by_entity"] == {"properties": 3}
    assert counters["records"]["properties"] == 2
    assert counters["records_by_state"]["properties"]["archived"] == 1
    assert counters["max_writes_per_record"] == 4
    log = portal.write_log("properties", "C-1")
    assert [(w["op"], w["effective"]) for w in log] == [
        ("upsert", True),
        ("upsert", False),
        ("archive", True),
        ("archive", False),
    ]
    assert log[0]["bodyHash"] == log[1]["bodyHash"]


# ---- faults ----------------------------------------------------------------------------------
def test_status_faults_answer_before_anything_is_written(portal: SandboxServer, api: httpx.Client) -> None:
    portal.set_faults(status_rates={"429": 1.0}, retry_after_s=3)
    limited = api.put("/v2/properties/F-1", json=prop())
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "3"
    portal.set_faults(status_rates={"500": 0.3, "502": 0.3, "503": 0.4}, seed=7)
    statuses = {api.put(f"/v2/properties/F-{i}", json=prop()).status_code for i in range(30)}
    assert statuses == {500, 502, 503}
    portal.set_faults(status_rates={"408": 1.0})
    assert api.get("/v2/properties/F-1").status_code == 408
    portal.clear_faults()
    assert api.get("/v2/properties/F-1").status_code == 404  # no faulted write was applied
    injected = portal.counters()["faults_injected"]
    assert injected["429"] == 1 and injected["408"] == 1


def test_dropped_connections(portal: SandboxServer, api: httpx.Client) -> None:
    portal.set_faults(drop_rate=1.0)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        api.put("/v2/properties/X-1", json=prop())
    portal.set_faults(apply_then_drop_rate=1.0)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        api.put("/v2/properties/X-2", json=prop())
    portal.clear_faults()
    assert api.get("/v2/properties/X-1").status_code == 404  # dropped before processing
    assert api.get("/v2/properties/X-2").status_code == 200  # applied, then the answer was lost
    injected = portal.counters()["faults_injected"]
    assert injected["drop"] >= 1 and injected["apply_then_drop"] >= 1


def test_fail_after_writes(portal: SandboxServer, api: httpx.Client) -> None:
    portal.set_faults(fail_after_writes=2)
    assert [api.put(f"/v2/properties/W-{i}", json=prop()).status_code for i in range(4)] == [
        201,
        201,
        503,
        503,
    ]
    assert api.get("/v2/properties/W-0").status_code == 200  # reads still work
    portal.clear_faults()
    assert api.get("/v2/properties/W-2").status_code == 404
    assert api.put("/v2/properties/W-2", json=prop()).status_code == 201


# ---- persistence, page, spec -----------------------------------------------------------------
def test_state_survives_restart(portal: SandboxServer, api: httpx.Client) -> None:
    api.put("/v2/properties/S-1", json=prop("Bleibt"))
    token = api.headers["token"]
    portal.restart()
    assert portal.last_returncode == 0  # SIGTERM stops it cleanly
    with httpx.Client(base_url=portal.base_url, headers={"token": token}, timeout=10) as client:
        again = client.get("/v2/properties/S-1")
        assert again.status_code == 200 and again.json()["name"] == "Bleibt"
        assert client.put("/v2/properties/S-1", json=prop("Bleibt")).status_code == 200
        created = client.put("/v2/properties/S-2", json=prop()).json()
        assert created["internalId"] > again.json()["internalId"]


def test_html_page_lists_records(portal: SandboxServer, api: httpx.Client) -> None:
    api.put("/v2/properties/H-1", json=prop("Haus <am> See"))
    api.put("/v2/contacts/H-P1", json=contact("H-1", lastName="Sichtbar"))
    page = httpx.get(portal.base_url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Haus &lt;am&gt; See" in page.text and "Sichtbar" in page.text and "RENTER H-1" in page.text


def test_openapi_describes_the_models(portal: SandboxServer) -> None:
    spec = httpx.get(portal.base_url + "/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"ContactIn", "ContactOut", "Contract", "PropertyIn", "UnitIn", "ErrorBody"} <= set(schemas)
    assert "/v2/contacts/{id}/anonymize" in spec["paths"]
    assert spec["components"]["securitySchemes"]["token"]["in"] == "header"
    assert spec["paths"]["/v2/units/{id}"]["put"]["security"] == [{"token": []}]
    assert "security" not in spec["paths"]["/v2/authenticate"]["post"]


def test_latency_and_method_filter(portal: SandboxServer, api: httpx.Client) -> None:
    portal.set_faults(latency_ms=[150, 150], status_rates={"500": 1.0}, methods=["PUT"])
    started = time.perf_counter()
    assert api.get("/v2/properties/none").status_code == 404  # GET is not faulted: neither slow nor 500
    assert time.perf_counter() - started < 0.15
    started = time.perf_counter()
    assert api.put("/v2/properties/T-1", json=prop()).status_code == 500
    assert time.perf_counter() - started >= 0.15
    bad = httpx.post(portal.base_url + "/_sandbox/faults", json={"status_rates": {"404": 0.5}})
    assert bad.status_code == 422
