"""Status-code tables for the portal connector, via httpx.MockTransport (no internals patched)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from connectors.portal import (
    PortalApiError,
    PortalClient,
    PortalCredentialsError,
    PortalProtocolError,
    PortalTransportError,
    WriteOp,
)
from connectors.portal.auth import TokenCache
from connectors.portal.streams import STREAMS, payload_hash


@pytest.fixture(autouse=True)
def _fresh_tokens() -> None:
    TokenCache.clear()


def make_client(handler: Callable[[httpx.Request], httpx.Response], **kw: object) -> PortalClient:
    opts: dict[str, object] = {"backoff_base_s": 0.001, "max_retries": 3}
    opts.update(kw)
    return PortalClient("http://portal.test", "k", "s", transport=httpx.MockTransport(handler), **opts)  # type: ignore[arg-type]


def auth_ok(request: httpx.Request) -> httpx.Response | None:
    if request.url.path == "/v2/authenticate":
        return httpx.Response(200, json={"token": "T1", "expiresAt": "2099-01-01T00:00:00.000Z"})
    return None


CONTACT = {"id": "P1", "lastName": "Schmidt", "contracts": []}


@pytest.mark.parametrize(
    ("statuses", "ok", "attempts", "error_part"),
    [
        ([201], True, 1, None),
        ([429, 200], True, 2, None),
        ([408, 503, 200], True, 3, None),
        ([503, 503, 503, 503], False, 4, "503"),
        ([422], False, 1, "lastName: required"),
        ([404], False, 1, "404"),
        ([409], False, 1, "archived"),
    ],
)
def test_write_status_table(statuses: list[int], ok: bool, attempts: int, error_part: str | None) -> None:
    seen: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if (r := auth_ok(request)) is not None:
            return r
        if request.method == "GET":  # read-back of an ambiguous write: not applied
            return httpx.Response(404, json={"message": "unknown"})
        status = statuses[min(len(seen), len(statuses) - 1)]
        seen.append(status)
        if status == 422:
            return httpx.Response(
                422,
                json={
                    "message": "invalid",
                    "errors": [{"fieldName": "lastName", "errorMessage": "required"}],
                },
            )
        if status == 409:
            return httpx.Response(409, json={"message": "contact is archived"})
        headers = {"Retry-After": "0"} if status == 429 else {}
        return httpx.Response(
            status,
            json={"internalId": 7, **CONTACT} if status < 300 else {"message": f"status {status}"},
            headers=headers,
        )

    [result] = make_client(handler).write_many([WriteOp("contacts", "upsert", "P1", CONTACT)])
    assert result.ok is ok
    assert len(seen) == attempts
    if ok:
        assert result.internal_id == "7"
        assert result.created is (statuses[-1] == 201)
    else:
        assert error_part and error_part in (result.error or "")
        assert result.retriable is (statuses[-1] >= 500)


def test_reauthenticates_once_on_401() -> None:
    tokens = iter(["T1", "T2"])
    used: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/authenticate":
            assert json.loads(request.content) == {"key": "k", "secret": "s"}
            return httpx.Response(200, json={"token": next(tokens), "expiresAt": "2099-01-01T00:00:00.000Z"})
        used.append(request.headers["token"])
        if request.headers["token"] == "T1":
            return httpx.Response(401, json={"message": "token expired"})
        return httpx.Response(200, json={"internalId": 1})

    client = make_client(handler)
    [result] = client.write_many([WriteOp("contacts", "upsert", "P1", CONTACT)])
    assert result.ok
    assert used == ["T1", "T2"]
    assert "Authorization" not in str(used)
    assert client.stats.reauthentications == 1


def test_bad_credentials_fail_fast_with_a_clear_error() -> None:
    logins: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        logins.append(request.url.path)
        return httpx.Response(401, json={"message": "invalid key"})

    with pytest.raises(PortalCredentialsError, match="refused the login") as refused:
        make_client(handler).check()
    assert "portal.api_key" in refused.value.advice()
    assert logins == ["/v2/authenticate"]


def test_refused_credentials_stop_a_batch_after_one_login_not_one_per_record() -> None:
    """16 workers start without a token: one login is refused, every worker stops, nothing is
    sent and no record gets a failed result of its own (the call raises)."""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        return httpx.Response(401, json={"message": "invalid key"})

    client = make_client(handler)
    ops = [WriteOp("contacts", "upsert", f"P{i}", CONTACT) for i in range(100)]
    with pytest.raises(PortalCredentialsError):
        client.write_many(ops)
    assert calls == ["POST /v2/authenticate"]
    assert client.stats.authentications == 1


@pytest.mark.parametrize("failure", ["429", "503", "timeout", "dropped"])
def test_a_login_that_failed_on_the_way_is_retried_like_any_call(failure: str) -> None:
    logins: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/authenticate":
            logins.append(1)
            if len(logins) == 1:
                if failure == "timeout":
                    raise httpx.ReadTimeout("slow", request=request)
                if failure == "dropped":
                    raise httpx.RemoteProtocolError("server disconnected", request=request)
                return httpx.Response(int(failure), headers={"Retry-After": "0"}, json={"message": "busy"})
            return httpx.Response(200, json={"token": "T1", "expiresAt": "2099-01-01T00:00:00.000Z"})
        return httpx.Response(200, json={"internalId": 1})

    client = make_client(handler)
    [result] = client.write_many([WriteOp("contacts", "archive", "P1")])
    assert result.ok, result.error
    assert len(logins) == 2 and client.stats.retries == 1
    assert client.credentials_expire() == pytest.approx(4070908800.0)


def test_dropped_connection_after_apply_is_confirmed_by_read_back_not_resent() -> None:
    puts: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if (r := auth_ok(request)) is not None:
            return r
        if request.method == "PUT":
            puts.append(request.content)
            raise httpx.RemoteProtocolError("server disconnected", request=request)
        return httpx.Response(200, json={**CONTACT, "internalId": 3, "archived": False, "updatedAt": "x"})

    client = make_client(handler)
    [result] = client.write_many(
        [WriteOp("contacts", "upsert", "P1", CONTACT, payload_hash(STREAMS["contacts"], CONTACT))]
    )
    assert result.ok and result.verified_by_read
    assert len(puts) == 1


def test_connect_error_is_retried_without_read_back() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if (r := auth_ok(request)) is not None:
            return r
        calls.append(request.method)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"internalId": 1})

    [result] = make_client(handler).write_many([WriteOp("contacts", "archive", "P1")])
    assert result.ok and calls == ["POST", "POST"]


def test_list_follows_next_links() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if (r := auth_ok(request)) is not None:
            return r
        page = int(request.url.params.get("page", "1"))
        nxt = f"http://portal.test/v2/units?page={page + 1}&pageSize=2" if page < 3 else None
        return httpx.Response(
            200, json={"list": [{"id": f"{page}-a"}, {"id": f"{page}-b"}], "_links": {"next": nxt}}
        )

    records = make_client(handler).list_records("units")
    assert [r["id"] for r in records] == ["1-a", "1-b", "2-a", "2-b", "3-a", "3-b"]


def test_rate_limit_spaces_requests() -> None:
    import time

    stamps: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if (r := auth_ok(request)) is not None:
            return r
        stamps.append(time.monotonic())
        return httpx.Response(200, json={})

    ops = [WriteOp("contacts", "archive", f"P{i}") for i in range(6)]
    make_client(handler, rate_limit_per_s=20.0, concurrency=6).write_many(ops)
    assert stamps[-1] - stamps[0] >= 0.2  # 6 requests at 20/s need at least 5 intervals of 50 ms


def test_concurrency_bound_and_result_order() -> None:
    import asyncio
    import random

    in_flight = 0
    peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        if (r := auth_ok(request)) is not None:
            return r
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(random.uniform(0, 0.01))  # answers come back out of order
        in_flight -= 1
        ref = request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(200, json={"internalId": int(ref[1:]), "id": ref})

    ops = [WriteOp("contacts", "upsert", f"P{i}", {"id": f"P{i}", "lastName": "X"}) for i in range(200)]
    results = make_client(handler, concurrency=5).write_many(ops)  # type: ignore[arg-type]
    assert peak == 5
    assert [r.op.ref_id for r in results] == [op.ref_id for op in ops]
    assert [r.internal_id for r in results] == [str(i) for i in range(200)]
    reads = make_client(handler, concurrency=3).read_many("contacts", ["P7", "P3", "P9"])  # type: ignore[arg-type]
    assert list(reads) == ["P7", "P3", "P9"] and reads["P3"] == {"internalId": 3, "id": "P3"}


def test_a_next_link_to_another_address_is_refused() -> None:
    """The token goes to the portal's own address only, whatever a page links to."""
    tokens_sent_for: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if (r := auth_ok(request)) is not None:
            return r
        tokens_sent_for.append(str(request.url))
        if request.url.params.get("page") == "2":
            return httpx.Response(200, json={"list": [{"id": "b"}], "_links": {"next": None}})
        return httpx.Response(
            200, json={"list": [{"id": "a"}], "_links": {"next": "http://elsewhere.test/v2/units?page=2"}}
        )

    with pytest.raises(PortalProtocolError, match="another address"):
        make_client(handler).list_records("units")
    assert len(tokens_sent_for) == 1


def test_a_failed_read_stops_the_other_requests_of_the_call() -> None:
    """One read fails for good (400): the call raises that error, and the requests still in
    flight are stopped with it, so none of them is still on its way when the caller goes on."""
    import asyncio

    answered: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if (r := auth_ok(request)) is not None:
            return r
        ref = request.url.path.rsplit("/", 1)[-1]
        if ref == "BAD":
            return httpx.Response(400, json={"message": "no such thing"})
        await asyncio.sleep(0.3)
        answered.append(ref)
        return httpx.Response(200, json={"id": ref})

    async def run() -> list[str]:
        client = make_client(handler, concurrency=4)  # type: ignore[arg-type]
        with pytest.raises(PortalApiError, match="no such thing"):
            await client.aread_many("contacts", ["P1", "P2", "BAD", "P4", "P5"])
        await asyncio.sleep(0.5)  # long enough for any request left running to answer
        return answered

    assert asyncio.run(run()) == []


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (422, {"detail": [{"msg": "invalid", "input": {"key": "k", "secret": "s3cr3t-echoed"}}]}),
        (404, {"message": "no such path s3cr3t-echoed"}),
        (200, {"message": "welcome s3cr3t-echoed"}),  # a proxy's page, no token
    ],
)
def test_any_login_answer_but_a_token_is_a_refusal_that_quotes_nothing(status: int, body: object) -> None:
    """Not only 401: a login answered otherwise (a wrong base URL, a proxy's page) stops the call
    after one login, blames no record, and the message quotes nothing of the answer (it may
    echo the secret)."""
    logins: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        logins.append(1)
        return httpx.Response(status, json=body)

    client = make_client(handler)
    with pytest.raises(PortalCredentialsError) as refused:
        client.write_many([WriteOp("contacts", "archive", f"P{i}") for i in range(20)])
    assert len(logins) == 1
    assert "s3cr3t" not in refused.value.advice() and f"HTTP {status}" in str(refused.value)


def test_a_login_the_partner_never_answers_ends_within_the_timeout() -> None:
    import asyncio
    import time

    async def handler(request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout") or {}
        await asyncio.sleep(timeout.get("read") or 30)  # as a silent server: until the read timeout
        raise httpx.ReadTimeout("no answer", request=request)

    client = make_client(handler, timeout_s=0.2, max_retries=0)
    started = time.monotonic()
    with pytest.raises(PortalTransportError, match="answer lost"):
        client.check()
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("status", [301, 307, 308])
def test_a_redirected_write_is_not_confirmed(status: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if (r := auth_ok(request)) is not None:
            return r
        return httpx.Response(status, headers={"Location": "https://elsewhere.test/v2/contacts/P1"})

    [result] = make_client(handler).write_many([WriteOp("contacts", "upsert", "P1", CONTACT)])
    assert (
        not result.ok
        and not result.retriable
        and "redirecting to https://elsewhere.test" in (result.error or "")
    )
    with pytest.raises(PortalProtocolError, match="base_url"):
        make_client(handler).check()


def test_retry_after_pauses_every_request_of_the_client_and_a_too_long_one_is_not_waited_for() -> None:
    import time

    sent: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if (r := auth_ok(request)) is not None:
            return r
        sent.append(time.monotonic())
        if len(sent) == 1:
            return httpx.Response(429, headers={"Retry-After": "0.5"}, json={"message": "slow down"})
        return httpx.Response(200, json={"internalId": 1})

    client = make_client(handler, concurrency=1)
    results = client.write_many([WriteOp("contacts", "archive", f"P{i}") for i in range(3)])
    assert all(r.ok for r in results)
    assert len(sent) == 4 and sent[1] - sent[0] >= 0.45

    def too_long(request: httpx.Request) -> httpx.Response:
        if (r := auth_ok(request)) is not None:
            return r
        return httpx.Response(503, headers={"Retry-After": "3600"}, json={"message": "maintenance"})

    [result] = make_client(too_long).write_many([WriteOp("contacts", "archive", "P1")])
    assert not result.ok and result.retriable and result.attempts == 1


def test_retry_after_as_a_date_and_the_errors_survive_pickling() -> None:
    import pickle
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    from connectors.sync.errors import (
        PartnerCredentialsError,
        PartnerRetriableError,
        PartnerValidationError,
        retry_after_seconds,
    )

    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < (retry_after_seconds(soon) or 0) <= 30
    assert retry_after_seconds("7") == 7.0 and retry_after_seconds("soon") is None
    for error in (
        PartnerCredentialsError("portal", 401, "HTTP 401", "portal.api_key"),
        PartnerRetriableError(429, "slow down", [], "/v2/x", "portal", 3.0),
        PartnerValidationError(
            422, "bad", [{"fieldName": "email", "errorMessage": "invalid"}], "/v2/x", "portal"
        ),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error) and vars(copy) == vars(error)
