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


def prop(name: str = "Wohnanlage Lindenstr.", *streets: str) -> dict[str, Any]:
    return {
        "name": name,
        "number": "1001",
        "postalCode": "10115",
        "city": "Berlin",
        "country": "DE",
        "addresses": [{"street": street, "units": []} for street in streets or ("Lindenstr. 5",)],
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
    old_shape = {"name": "X", "addresses": [{"postalCode": "10115", "city": "Berlin"}]}
    no_street = api.put("/v2/properties/V-2", json=old_shape)
    assert no_street.status_code == 422 and field_names(no_street) == {"addresses[0].street"}
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
    assert put.json() == api.get("/v2/properties/R-1/responsibilities").json()
    [caretaker] = put.json()["responsibilities"]
    assert caretaker == {
        **caretakers["responsibilities"][0],
        "contactInternalId": api.get("/v2/contacts/R-P1").json()["internalId"],
        "contactName": "Anna Schmidt",
        "email": "anna@example.de",
        "telephone": "030 123",
    }
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


def test_a_property_reads_in_the_public_shape_and_can_be_put_back(api: httpx.Client) -> None:
    written = api.put("/v2/properties/P-1", json=prop("Doppelhaus", "Vorderhaus 1", "Hinterhaus 1b"))
    assert written.status_code == 201
    record = written.json()
    assert (record["city"], record["postalCode"], record["country"], record["number"]) == (
        "Berlin",
        "10115",
        "DE",
        "1001",
    )
    assert record["addresses"] == [
        {"street": "Vorderhaus 1", "units": []},
        {"street": "Hinterhaus 1b", "units": []},
    ]
    assert record["responsibilities"] == [] and record["images"] == []
    assert record["appLink"] == f"{str(api.base_url).rstrip('/')}/app/properties/P-1"
    page = httpx.get(record["appLink"])
    assert page.status_code == 200 and "Doppelhaus" in page.text and "Hinterhaus 1b" in page.text
    # the units are the ones that name the property; a list sent is not stored
    for unit_id in ("P-1-B", "P-1-A"):
        assert api.put(f"/v2/units/{unit_id}", json=unit("P-1")).status_code == 201
    assert [a["units"] for a in api.get("/v2/properties/P-1").json()["addresses"]] == [["P-1-A", "P-1-B"], []]
    listed = prop("Doppelhaus", "Vorderhaus 1", "Hinterhaus 1b")
    listed["addresses"][1]["units"] = ["P-1-B", "P-1-later"]  # P-1-later is not written yet
    assert api.put("/v2/properties/P-1", json=listed).status_code == 200
    assert api.get("/v2/properties/P-1").json()["updatedAt"] == record["updatedAt"]  # nothing changed
    api.post("/v2/units/P-1-B/archive")
    assert [a["units"] for a in api.get("/v2/properties/P-1").json()["addresses"]] == [["P-1-A"], []]
    # a GET result can be PUT back: nothing changes, not even updatedAt
    again = api.get("/v2/properties/P-1").json()
    back = api.put("/v2/properties/P-1", json=again)
    assert back.status_code == 200 and back.json()["updatedAt"] == again["updatedAt"]
    # a list naming units of another property is not taken: a unit says where it belongs
    api.put("/v2/properties/P-2", json=prop())
    foreign = prop()
    foreign["addresses"][0]["units"] = ["P-1-A"]
    assert api.put("/v2/properties/P-2", json=foreign).json()["addresses"][0]["units"] == []
    assert api.put("/v2/units/P-1-A", json=unit("P-2")).status_code == 200  # the unit moves
    assert api.get("/v2/properties/P-1").json()["addresses"][0]["units"] == []
    assert api.get("/v2/properties/P-2").json()["addresses"][0]["units"] == ["P-1-A"]
    # caretakers are embedded, and their change is a change of the property for modifiedAfter
    api.put(
        "/v2/contacts/P-P1", json=contact("P-1", lastName=None, firstName=None, companyName="Hauswart GmbH")
    )
    before = api.get("/v2/properties/P-1").json()["updatedAt"]
    time.sleep(0.01)
    caretaker = {"contactId": "P-P1", "roleName": "Hausmeister", "roleType": "external"}
    assert api.put("/v2/properties/P-1/responsibilities", json={"responsibilities": [caretaker]}).is_success
    after = api.get("/v2/properties/P-1").json()
    assert [r["contactName"] for r in after["responsibilities"]] == ["Hauswart GmbH"]
    assert after["updatedAt"] > before
    changed = api.get("/v2/properties", params={"modifiedAfter": before, "pageSize": 1000}).json()["list"]
    assert "P-1" in {r["id"] for r in changed}
    # the read shape's caretaker keys can be sent back to the sub-resource: they are not stored
    back = api.put(
        "/v2/properties/P-1/responsibilities", json={"responsibilities": after["responsibilities"]}
    )
    assert back.json()["responsibilities"] == after["responsibilities"]


def test_list_filters_filter_and_unknown_parameters_are_refused(
    portal: SandboxServer, api: httpx.Client
) -> None:
    portal.reset()
    api.put("/v2/properties/F-1", json=prop())
    for unit_id in ("F-1-1", "F-1-2"):
        api.put(f"/v2/units/{unit_id}", json=unit("F-1"))

    def contract(kind: str, unit_id: str, start: str, end: str | None = None) -> dict[str, Any]:
        return {"type": kind, "propertyId": "F-1", "unitId": unit_id, "startDate": start, "endDate": end}

    api.put("/v2/contacts/F-owner", json=contact("F-1", contracts=[contract("OWNER", "F-1-1", "2001-01-01")]))
    api.put(
        "/v2/contacts/F-renter", json=contact("F-1", contracts=[contract("RENTER", "F-1-1", "2021-01-01")])
    )
    api.put(
        "/v2/contacts/F-gone",
        json=contact("F-1", email=None, contracts=[contract("RENTER", "F-1-2", "2010-01-01", "2020-12-31")]),
    )
    api.put("/v2/contacts/F-next", json=contact("F-1", contracts=[contract("RENTER", "F-1-2", "2999-01-01")]))
    assert api.post("/_sandbox/contacts/F-renter/register").json()["isRegistered"] is True

    def ids(path: str, **params: str) -> list[str]:
        answer = api.get(path, params=params)
        assert answer.status_code == 200, answer.text
        return [r["id"] for r in answer.json()["list"]]

    assert ids("/v2/contacts", role="OWNER") == ["F-owner"]
    assert ids("/v2/contacts", role="RENTER") == ["F-renter", "F-gone", "F-next"]
    assert ids("/v2/contacts", isRegistered="true") == ["F-renter"]
    assert ids("/v2/contacts", isRegistered="false", role="RENTER") == ["F-gone", "F-next"]
    assert ids("/v2/contacts", isInvited="false") == ["F-gone"]
    moved = contact("F-1", city="Potsdam", contracts=[contract("RENTER", "F-1-1", "2021-01-01")])
    assert api.put("/v2/contacts/F-renter", json=moved).json()["city"] == "Potsdam"
    assert ids("/v2/contacts", isRegistered="true") == ["F-renter"]  # a write does not unregister

    def contracts(unit_id: str, **params: str) -> list[tuple[str, str]]:
        [record] = [r for r in api.get("/v2/units", params=params).json()["list"] if r["id"] == unit_id]
        single = api.get(f"/v2/units/{unit_id}", params=params).json()
        assert single["contracts"] == record["contracts"]
        return [(c["contactId"], c["type"]) for c in record["contracts"]]

    assert contracts("F-1-1") == [("F-owner", "OWNER"), ("F-renter", "RENTER")]
    assert contracts("F-1-2") == []  # one ended, one not started yet
    assert contracts("F-1-2", includeInactiveContracts="true") == [("F-gone", "RENTER"), ("F-next", "RENTER")]
    api.post("/v2/contacts/F-renter/archive")
    assert contracts("F-1-1") == [("F-owner", "OWNER")]
    assert contracts("F-1-1", includeInactiveContracts="false") == [("F-owner", "OWNER")]
    assert contracts("F-1-1", includeInactiveContracts="true") == [
        ("F-owner", "OWNER"),
        ("F-renter", "RENTER"),
    ]

    # a filter the endpoint does not take is refused, never ignored
    for path, params in (
        ("/v2/properties", {"role": "OWNER"}),
        ("/v2/units", {"isRegistered": "true"}),
        ("/v2/contacts", {"includeInactiveContracts": "true", "search": "Anna"}),
        ("/v2/contacts/F-owner", {"role": "OWNER"}),
    ):
        refused = api.get(path, params=params)
        assert refused.status_code == 422, (path, refused.text)
        assert field_names(refused) == set(params)
        assert all(name in refused.json()["message"] for name in params)
    put = api.put("/v2/properties/F-1", params={"dryRun": "true"}, json=prop("Nicht geschrieben"))
    assert put.status_code == 422 and api.get("/v2/properties/F-1").json()["name"] != "Nicht geschrieben"
    for params in ({"role": "owner"}, {"isRegistered": "yes"}, {"includeArchived": "1"}):
        assert field_names(api.get("/v2/contacts", params=params)) == set(params)
    assert httpx.get(portal.base_url + "/v2/contacts", params={"x": "1"}).status_code == 401  # token first


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
    api.put("/v2/units/S-1-1", json=unit("S-1"))
    api.put("/v2/contacts/S-P1", json=contact("S-1", "S-1-1"))
    api.post(f"{portal.base_url}/_sandbox/contacts/S-P1/register")
    token = api.headers["token"]
    portal.restart()
    assert portal.last_returncode == 0  # SIGTERM stops it cleanly
    with httpx.Client(base_url=portal.base_url, headers={"token": token}, timeout=10) as client:
        again = client.get("/v2/properties/S-1")
        assert again.status_code == 200 and again.json()["name"] == "Bleibt"
        # what the filters and derived fields read is rebuilt from the records
        assert again.json()["addresses"][0]["units"] == ["S-1-1"]
        assert [c["contactId"] for c in client.get("/v2/units/S-1-1").json()["contracts"]] == ["S-P1"]
        registered = client.get("/v2/contacts", params={"isRegistered": "true", "pageSize": 1000}).json()
        assert "S-P1" in {r["id"] for r in registered["list"]}
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


# ---- a client written against the public documentation only -----------------------------------
class PublicDocsClient:
    """A casavi v2 client as a third party writes it from the public facts alone: ``token``
    header, ``list`` + ``_links.next`` pages, the documented filters; nothing of hausflow's."""

    def __init__(self, base_url: str, key: str, secret: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=10)
        login = self.http.post("/v2/authenticate", json={"key": key, "secret": secret})
        self.http.headers["token"] = login.raise_for_status().json()["token"]

    def all(self, path: str, **filters: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        url: str | None = path
        params: dict[str, str] | None = filters
        while url:
            page = self.http.get(url, params=params).raise_for_status().json()
            records += page["list"]
            url, params = page["_links"]["next"], None
        return records


def test_a_third_party_client_reads_what_the_public_documentation_promises(
    portal: SandboxServer, api: httpx.Client
) -> None:
    portal.reset()
    for i in range(130):  # more than one page at the portal's own page size
        api.put(f"/v2/properties/T-{i:03d}", json=prop(f"Haus {i}"))
    api.put("/v2/units/T-000-1", json=unit("T-000"))
    api.put("/v2/units/T-000-2", json=unit("T-000"))
    ended = {
        "type": "RENTER",
        "propertyId": "T-000",
        "unitId": "T-000-2",
        "startDate": "2015-01-01",
        "endDate": "2019-12-31",
    }
    api.put("/v2/contacts/T-anna", json=contact("T-000", "T-000-1"))
    api.put("/v2/contacts/T-bernd", json=contact("T-000", firstName="Bernd", contracts=[ended]))
    owner = {"type": "OWNER", "propertyId": "T-000", "startDate": "2000-01-01"}
    api.put("/v2/contacts/T-owner", json=contact("T-000", lastName="Eigen", contracts=[owner]))
    caretaker = {"contactId": "T-bernd", "roleName": "Hausmeister", "roleType": "external"}
    api.put("/v2/properties/T-000/responsibilities", json={"responsibilities": [caretaker]})
    httpx.post(f"{portal.base_url}/_sandbox/contacts/T-anna/register").raise_for_status()  # Anna signs up

    client = PublicDocsClient(portal.base_url, portal.key, portal.secret)
    properties = client.all("/v2/properties")
    assert len(properties) == 130
    first = properties[0]
    assert (first["id"], first["name"], first["city"], first["postalCode"], first["country"]) == (
        "T-000",
        "Haus 0",
        "Berlin",
        "10115",
        "DE",
    )
    assert isinstance(first["internalId"], int) and first["appLink"].startswith(("http://", "https://"))
    assert first["addresses"] == [{"street": "Lindenstr. 5", "units": ["T-000-1", "T-000-2"]}]
    assert [(r["contactName"], r["roleName"], r["roleType"]) for r in first["responsibilities"]] == [
        ("Bernd Schmidt", "Hausmeister", "external")
    ]
    assert all(p["addresses"][0]["units"] == [] and p["responsibilities"] == [] for p in properties[1:])

    assert [c["id"] for c in client.all("/v2/contacts", role="OWNER")] == ["T-owner"]
    assert [c["id"] for c in client.all("/v2/contacts", role="RENTER")] == ["T-anna", "T-bernd"]
    assert [c["id"] for c in client.all("/v2/contacts", isRegistered="true")] == ["T-anna"]
    assert [c["id"] for c in client.all("/v2/contacts", isRegistered="false")] == ["T-bernd", "T-owner"]

    def tenants(**filters: str) -> dict[str, list[str]]:
        return {u["id"]: [c["contactId"] for c in u["contracts"]] for u in client.all("/v2/units", **filters)}

    assert tenants() == {"T-000-1": ["T-anna"], "T-000-2": []}
    assert tenants(includeInactiveContracts="true") == {"T-000-1": ["T-anna"], "T-000-2": ["T-bernd"]}

    unknown = client.http.get("/v2/contacts", params={"status": "active"})
    assert unknown.status_code == 422 and "status" in unknown.json()["message"]
