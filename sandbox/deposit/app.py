"""The deposit partner's sandbox as a FastAPI app: the contract of ``docs/deposit-api.md`` over HTTP.

The partner (Deutsche Kautionspartner) publishes no protocol, so hausflow defines one in the style
of the portal's public API: records by the ERP's reference ids (deposit accounts by contract
reference, bookings by booking id), the ``token`` header after a login with client user name and
web-service password, ``list`` + ``_links.next`` pages, ``modifiedAfter``, and error bodies with
field-level errors (``{"message", "errors": [{"fieldName", "errorMessage"}]}``, as the UK
"mydeposits" API has them). The sandbox keeps its own state (:mod:`sandbox.deposit.store`),
injects faults (the portal sandbox's :class:`~sandbox.portal.faults.FaultInjector`) and counts
what reached it, duplicate writes included, so tests and benchmarks prove every record arrived once.
"""

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from schwifty import IBAN
from schwifty.exceptions import SchwiftyException
from starlette.exceptions import HTTPException as StarletteHTTPException

from sandbox.deposit.store import Entry, Store
from sandbox.portal.app import (
    GroupCommit,
    Message,
    Receive,
    Scope,
    Send,
    _drain,
    _drop_connection,
    _send_error,
)
from sandbox.portal.faults import WRITE_METHODS, FaultConfig, FaultInjector

API = "/ws/v1"
DEFAULT_TOKEN_TTL_S = 24 * 3600
MAX_PAGE_SIZE = 1000
JSON = "application/json"
AMOUNT_RE = re.compile(r"^-?\d{1,10}\.\d{2}$")
SIGNS: dict[str, int] = {
    "PAYMENT_IN": 1,
    "INTEREST": 1,
    "WITHHOLDING_TAX": -1,
    "SOLIDARITY_SURCHARGE": -1,
    "COUNTERCLAIM": -1,
    "PAYOUT": -1,
}
"""The sign a booking's amount has, by type: money in is positive, money out negative."""


PageQ = Annotated[int, Query(alias="page", ge=1, description="pages start at 1")]
SizeQ = Annotated[
    int, Query(alias="pageSize", ge=1, le=MAX_PAGE_SIZE, description="default 100, at most 1000")
]
ModQ = Annotated[
    str | None, Query(alias="modifiedAfter", description="only records changed after this (ISO 8601)")
]


# ---- schemas (OpenAPI) -------------------------------------------------------------------------
class FieldError(BaseModel):
    """One field-level error."""

    fieldName: str
    errorMessage: str


class ErrorBody(BaseModel):
    """Every error answer: a message and, for 400/409/422, the fields at fault."""

    message: str
    errors: list[FieldError] = Field(default_factory=list)


class LoginRequest(BaseModel):
    """Client user name and web-service password, as the partner hands them out."""

    clientUsername: str
    password: str


class LoginResponse(BaseModel):
    """A token to send as header ``token`` on every other call."""

    token: str
    expiresAt: str


def _check_date(value: str | None) -> str | None:
    if value is None:
        return value
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("not a date in the form YYYY-MM-DD")
    date.fromisoformat(value)
    return value


def _check_amount(value: str) -> str:
    if not AMOUNT_RE.match(value):
        raise ValueError("an amount is a decimal with two places, e.g. 1500.00")
    return value


class Person(BaseModel):
    """A tenant (lead or joint): the ERP's person number and name; ``lastName`` or ``companyName``."""

    model_config = ConfigDict(extra="allow")

    id: str
    salutation: str | None = None
    title: str | None = None
    firstName: str | None = None
    lastName: str | None = None
    companyName: str | None = None
    street: str | None = None
    postalCode: str | None = None
    city: str | None = None
    country: str | None = None
    email: str | None = None


class ObjectRef(BaseModel):
    """The object (Liegenschaft) of the tenancy, by the ERP's object number."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str
    street: str | None = None
    postalCode: str | None = None
    city: str | None = None
    country: str | None = None


class Owner(BaseModel):
    """The object's owner (required: the partner takes no object without one)."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str


class TrustAccount(BaseModel):
    """The object's trust pooled account (Treuhandsammelkonto) at the partner's bank."""

    model_config = ConfigDict(extra="allow")

    iban: str
    bic: str | None = None

    @field_validator("iban")
    @classmethod
    def _iban(cls, value: str) -> str:
        try:
            IBAN(value)
        except SchwiftyException as exc:
            raise ValueError(f"not a valid IBAN ({exc})") from exc
        return value


class DepositAccountIn(BaseModel):
    """A deposit account: one tenancy, keyed by the ERP's contract reference (the path's id)."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = Field(default=None, description="the contract reference; must match the path if sent")
    accountNo: str | None = Field(default=None, description="the ERP's deposit account number")
    depositAmount: str = Field(description="agreed deposit, decimal with two places")
    currency: Literal["EUR"] = "EUR"
    tenancyStart: str
    tenancyEnd: str | None = None
    unitId: str | None = None
    leadTenant: Person
    jointTenants: list[Person] = Field(default_factory=list)
    object: ObjectRef
    owner: Owner
    trustAccount: TrustAccount

    _dates = field_validator("tenancyStart", "tenancyEnd")(_check_date)
    _amount = field_validator("depositAmount")(_check_amount)


class DepositAccountOut(DepositAccountIn):
    """A stored deposit account with what the partner adds: its id, times, flag and balance."""

    internalId: int
    createdAt: str
    updatedAt: str
    archived: bool
    balance: str


BookingType = Literal[
    "PAYMENT_IN", "INTEREST", "WITHHOLDING_TAX", "SOLIDARITY_SURCHARGE", "COUNTERCLAIM", "PAYOUT"
]


class BookingIn(BaseModel):
    """A booking on a deposit account, keyed by the ERP's booking id (the path's id).

    Money in (``PAYMENT_IN``, ``INTEREST``) is positive, money out (``WITHHOLDING_TAX``,
    ``SOLIDARITY_SURCHARGE``, ``COUNTERCLAIM``, ``PAYOUT``) negative. A booking is posted once:
    sent again unchanged it is a duplicate (answered 200), with other content it is refused (409).
    """

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    accountId: str = Field(description="the deposit account's contract reference")
    type: BookingType
    amount: str
    currency: Literal["EUR"] = "EUR"
    bookingDate: str
    text: str | None = Field(default=None, max_length=140)

    _date = field_validator("bookingDate")(_check_date)
    _amount = field_validator("amount")(_check_amount)


class BookingOut(BookingIn):
    """A stored booking."""

    internalId: int
    createdAt: str
    updatedAt: str


class Links(BaseModel):
    """Paging links: ``next`` is an absolute URL or ``null`` on the last page."""

    next: str | None


class DepositAccountList(BaseModel):
    """A page of deposit accounts."""

    list: list[DepositAccountOut]
    links: Links = Field(alias="_links")


class BookingList(BaseModel):
    """A page of bookings."""

    list: list[BookingOut]
    links: Links = Field(alias="_links")


ACCOUNT_FIELDS = tuple(DepositAccountIn.model_fields)
BOOKING_FIELDS = tuple(BookingIn.model_fields)
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 409, 422, 429, 500, 503)
}


# ---- state -------------------------------------------------------------------------------------
@dataclass
class Counters:
    """What reached the sandbox since start or the last reset."""

    requests: int = 0
    writes: int = 0
    duplicate_writes: int = 0
    writes_by_entity: dict[str, int] = field(default_factory=dict)
    logins: int = 0
    logins_refused: int = 0
    refused_writes: int = 0

    def write(self, entity: str, effective: bool) -> None:
        """Count one accepted write: an effective change or a duplicate."""
        if effective:
            self.writes += 1
            self.writes_by_entity[entity] = self.writes_by_entity.get(entity, 0) + 1
        else:
            self.duplicate_writes += 1


@dataclass
class SandboxState:
    """Everything one sandbox process holds."""

    store: Store
    username: str
    password: str
    faults: FaultInjector = field(default_factory=FaultInjector)
    counters: Counters = field(default_factory=Counters)
    tokens: dict[str, datetime] = field(default_factory=dict)
    token_ttl_s: float = DEFAULT_TOKEN_TTL_S


class ApiError(Exception):
    """An error answer in the contract's shape."""

    def __init__(self, status: int, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []


def _error_response(status: int, message: str, errors: list[tuple[str, str]] | None = None) -> Response:
    body = {"message": message, "errors": [{"fieldName": f, "errorMessage": m} for f, m in errors or []]}
    return Response(orjson.dumps(body), status, media_type=JSON)


def _field_name(loc: tuple[int | str, ...]) -> str:
    """``("body", "leadTenant", "lastName")`` -> ``leadTenant.lastName``."""
    name = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path") else loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


class DepositSandboxApp(FastAPI):
    """FastAPI with the front door of the portal sandbox: counts API requests, checks the token
    and injects faults before anything is processed (``apply_then_drop``: after)."""

    sandbox: SandboxState

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        """Serve one ASGI event; faults and the token check for every API call but the login."""
        if scope["type"] == "http" and scope["path"].startswith(API + "/"):
            state = self.sandbox
            state.counters.requests += 1
            if scope["path"] != f"{API}/login":
                if state.faults.active:
                    await self._serve_with_faults(scope, receive, send)
                else:
                    await self._serve_authorized(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _serve_authorized(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"token"), None)
        problem = None
        if not token:
            problem = f"missing header 'token': log in with POST {API}/login"
        else:
            expires = self.sandbox.tokens.get(token)
            if expires is None:
                problem = "unknown token: log in again"
            elif expires <= datetime.now(UTC):
                del self.sandbox.tokens[token]
                problem = "token expired: log in again"
        if problem is not None:
            await _drain(receive)
            await _send_error(send, 401, problem)
            return
        await super().__call__(scope, receive, send)

    async def _serve_with_faults(self, scope: Scope, receive: Receive, send: Send) -> None:
        faults = self.sandbox.faults
        method = scope["method"]
        decision = faults.decide(method)
        if decision.delay_s:
            await asyncio.sleep(decision.delay_s)
        kind = decision.kind
        if kind is None:
            if not (faults.tracks_writes and method in WRITE_METHODS):
                await self._serve_authorized(scope, receive, send)
                return
            status: list[int] = []

            async def counting_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status.append(int(message["status"]))
                await send(message)

            await self._serve_authorized(scope, receive, counting_send)
            if status and status[0] < 300:
                faults.write_succeeded()
            return
        if kind == "drop":
            await _drop_connection(send)
            return
        if kind == "apply_then_drop":

            async def swallow(message: Message) -> None:
                return None

            await self._serve_authorized(scope, receive, swallow)
            await _drop_connection(send)
            return
        await _drain(receive)
        code = 503 if kind == "fail_after_writes" else int(kind)
        headers: list[tuple[bytes, bytes]] = []
        if code in (429, 503):
            headers.append((b"retry-after", str(faults.config.retry_after_s).encode()))
        if code == 408:
            headers.append((b"connection", b"close"))
        await _send_error(send, code, f"HTTP {code} (injected)", headers=headers)


# ---- the app -------------------------------------------------------------------------------------
def create_app(db_path: str, username: str, password: str) -> FastAPI:
    """Build the deposit sandbox over its own SQLite file ``db_path``.

    Args:
        db_path: the sandbox's SQLite file.
        username, password: the only client user name and web-service password the login takes.

    Returns:
        The ASGI app; its state is ``app.sandbox`` (:class:`SandboxState`).
    """
    store = Store(db_path)
    state = SandboxState(store=store, username=username, password=password)
    for token, expires in store.load_tokens().items():
        state.tokens[token] = datetime.fromisoformat(expires.replace("Z", "+00:00"))
    durable = GroupCommit(store)  # type: ignore[arg-type]  # anything with commit()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    app = DepositSandboxApp(
        title="hausflow deposit-partner sandbox",
        version="1",
        description=(
            "The rent-deposit partner (Deutsche Kautionspartner, KM deposit interface) as hausflow defines "
            "its protocol; contract in docs/deposit-api.md. Every call but the login sends the header "
            "`token`. `/_sandbox/...` endpoints are the sandbox's own."
        ),
        lifespan=lifespan,
    )
    app.sandbox = state

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> Response:
        return _error_response(exc.status, exc.message, exc.errors)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        errors = [(_field_name(tuple(e.get("loc", ()))), str(e.get("msg", "invalid"))) for e in exc.errors()]
        state.counters.refused_writes += 1
        return _error_response(422, "the record was refused: see the field errors", errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        return _error_response(exc.status_code, str(exc.detail))

    def answer(data: dict[str, Any], status: int = 200) -> Response:
        return Response(orjson.dumps(data), status, media_type=JSON)

    def check_query(request: Request, known: tuple[str, ...]) -> None:
        unknown = [k for k in request.query_params if k not in known]
        if unknown:
            raise ApiError(
                422,
                f"unknown query parameter {', '.join(map(repr, unknown))}: this call takes {', '.join(known) or 'none'}",
                [(k, "unknown query parameter") for k in unknown],
            )

    def account_out(ref_id: str, entry: Entry) -> dict[str, Any]:
        balance = store.balances.get(ref_id, Decimal(0))
        return {
            **entry.body,
            "internalId": entry.internal_id,
            "createdAt": entry.created_at,
            "updatedAt": entry.updated_at,
            "archived": entry.archived,
            "balance": f"{balance:.2f}",
        }

    def booking_out(entry: Entry) -> dict[str, Any]:
        return {
            **entry.body,
            "internalId": entry.internal_id,
            "createdAt": entry.created_at,
            "updatedAt": entry.updated_at,
        }

    def body_of(raw: Any, ref_id: str, fields: tuple[str, ...]) -> dict[str, Any]:
        if raw.get("id") not in (None, ref_id):
            raise ApiError(
                422, "the body's id differs from the path's", [("id", f"must be {ref_id!r} or left out")]
            )
        return {"id": ref_id, **{k: raw.get(k) for k in fields if k != "id"}}

    @app.post(f"{API}/login", response_model=LoginResponse, responses=ERRORS, tags=["login"])
    async def login(credentials: LoginRequest) -> Response:
        """Exchange client user name and web-service password for a token (``token`` header)."""
        state.counters.logins += 1
        if not (
            secrets.compare_digest(credentials.clientUsername, state.username)
            and secrets.compare_digest(credentials.password, state.password)
        ):
            state.counters.logins_refused += 1
            raise ApiError(401, "client user name or web-service password refused")
        token = secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + timedelta(seconds=state.token_ttl_s)
        state.tokens[token] = expires
        text = expires.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        store.save_token(token, text)
        return answer({"token": token, "expiresAt": text})

    def page(
        request: Request, entity: str, items: list[tuple[str, Entry]], number: int, size: int
    ) -> dict[str, Any]:
        start = (number - 1) * size
        chunk = items[start : start + size]
        more = start + size < len(items)
        next_link = None
        if more:
            params = dict(request.query_params)
            params["page"] = str(number + 1)
            next_link = f"{str(request.base_url).rstrip('/')}{request.url.path}?{urlencode(params)}"
        out = [account_out(r, e) if entity == "deposit-accounts" else booking_out(e) for r, e in chunk]
        return {"list": out, "_links": {"next": next_link}}

    @app.get(
        f"{API}/deposit-accounts",
        response_model=DepositAccountList,
        responses=ERRORS,
        tags=["deposit accounts"],
    )
    async def list_accounts(
        request: Request,
        page_no: PageQ = 1,
        size: SizeQ = 100,
        modified_after: ModQ = None,
        include_archived: Annotated[Literal["true", "false"], Query(alias="includeArchived")] = "false",
    ) -> Response:
        """The deposit accounts, ``pageSize`` per page, oldest first."""
        check_query(request, ("page", "pageSize", "modifiedAfter", "includeArchived"))
        items = [
            (r, e)
            for r, e in store.index["deposit-accounts"].items()
            if (include_archived == "true" or not e.archived)
            and (modified_after is None or e.updated_at > modified_after)
        ]
        return answer(page(request, "deposit-accounts", items, page_no, size))

    @app.get(
        f"{API}/deposit-accounts/{{id}}",
        response_model=DepositAccountOut,
        responses=ERRORS,
        tags=["deposit accounts"],
    )
    async def get_account(id: str, request: Request) -> Response:
        """One deposit account by contract reference, with its balance."""
        check_query(request, ())
        entry = store.get("deposit-accounts", id)
        if entry is None:
            raise ApiError(404, f"no deposit account {id!r}")
        return answer(account_out(id, entry))

    @app.put(
        f"{API}/deposit-accounts/{{id}}",
        response_model=DepositAccountOut,
        responses=ERRORS,
        tags=["deposit accounts"],
    )
    async def put_account(id: str, body: DepositAccountIn, request: Request) -> Response:
        """Create or replace a deposit account (201 created, 200 otherwise; unchanged: a duplicate)."""
        check_query(request, ())
        raw = orjson.loads(await request.body())
        record = body_of(raw, id, ACCOUNT_FIELDS)
        if not (body.leadTenant.lastName or body.leadTenant.companyName):
            raise ApiError(
                422,
                "the record was refused",
                [("leadTenant.lastName", "lastName or companyName is required")],
            )
        outcome = store.upsert("deposit-accounts", id, record)
        await durable()
        state.counters.write("deposit-accounts", outcome.effective)
        return answer(account_out(id, outcome.entry), 201 if outcome.created else 200)

    @app.post(
        f"{API}/deposit-accounts/{{id}}/archive",
        response_model=DepositAccountOut,
        responses=ERRORS,
        tags=["deposit accounts"],
    )
    async def archive_account(id: str, request: Request) -> Response:
        """Close a deposit account for hausflow (the tenancy left the interface); bookings stay."""
        check_query(request, ())
        outcome = store.archive("deposit-accounts", id)
        if outcome is None:
            raise ApiError(404, f"no deposit account {id!r}")
        await durable()
        state.counters.write("deposit-accounts", outcome.effective)
        return answer(account_out(id, outcome.entry))

    @app.get(f"{API}/bookings", response_model=BookingList, responses=ERRORS, tags=["bookings"])
    async def list_bookings(
        request: Request,
        page_no: PageQ = 1,
        size: SizeQ = 100,
        modified_after: ModQ = None,
        account_id: Annotated[
            str | None, Query(alias="accountId", description="one account's bookings")
        ] = None,
    ) -> Response:
        """The bookings, oldest first; of one account with ``accountId``."""
        check_query(request, ("page", "pageSize", "modifiedAfter", "accountId"))
        items = [
            (r, e)
            for r, e in store.index["bookings"].items()
            if (account_id is None or e.body.get("accountId") == account_id)
            and (modified_after is None or e.updated_at > modified_after)
        ]
        return answer(page(request, "bookings", items, page_no, size))

    @app.get(f"{API}/bookings/{{id}}", response_model=BookingOut, responses=ERRORS, tags=["bookings"])
    async def get_booking(id: str, request: Request) -> Response:
        """One booking by the ERP's booking id."""
        check_query(request, ())
        entry = store.get("bookings", id)
        if entry is None:
            raise ApiError(404, f"no booking {id!r}")
        return answer(booking_out(entry))

    @app.put(f"{API}/bookings/{{id}}", response_model=BookingOut, responses=ERRORS, tags=["bookings"])
    async def put_booking(id: str, body: BookingIn, request: Request) -> Response:
        """Post a booking on a deposit account the partner holds (201); unchanged again: 200, a duplicate.

        Refused with field errors: an unknown or archived account (422 ``accountId``), an amount
        whose sign does not fit the type (422 ``amount``); other content under a posted booking id: 409.
        """
        check_query(request, ())
        raw = orjson.loads(await request.body())
        record = body_of(raw, id, BOOKING_FIELDS)
        problems: list[tuple[str, str]] = []
        account = store.get("deposit-accounts", body.accountId)
        if account is None or account.archived:
            problems.append(("accountId", f"no deposit account {body.accountId!r}: send the account first"))
        try:
            amount = Decimal(body.amount)
        except InvalidOperation:  # pragma: no cover - the pattern allows only decimals
            amount = Decimal(0)
        if amount == 0 or (amount > 0) != (SIGNS[body.type] > 0):
            sign = "positive" if SIGNS[body.type] > 0 else "negative"
            problems.append(("amount", f"a {body.type} booking is {sign} and not zero"))
        if problems:
            state.counters.refused_writes += 1
            raise ApiError(422, f"booking {id} was refused", problems)
        existing = store.get("bookings", id)
        if existing is not None and {k: existing.body.get(k) for k in record} != record:
            state.counters.refused_writes += 1
            raise ApiError(
                409,
                f"booking {id} is posted with other content; a booking is posted once, send a correction booking",
                [("id", "already posted")],
            )
        outcome = store.upsert("bookings", id, record)
        await durable()
        state.counters.write("bookings", outcome.effective)
        return answer(booking_out(outcome.entry), 201 if outcome.created else 200)

    # ---- the sandbox's own endpoints ------------------------------------------------------
    @app.get("/_sandbox/counters", tags=["sandbox"])
    async def counters() -> Response:
        """Requests, logins, writes (effective, duplicate, refused), faults injected, records held."""
        c = state.counters
        return answer(
            {
                "requests": c.requests,
                "logins": c.logins,
                "logins_refused": c.logins_refused,
                "writes": c.writes,
                "duplicate_writes": c.duplicate_writes,
                "refused_writes": c.refused_writes,
                "writes_by_entity": c.writes_by_entity,
                "faults_injected": state.faults.injected,
                "records": {e: len(store.index[e]) for e in store.index},
            }
        )

    @app.post("/_sandbox/faults", tags=["sandbox"])
    async def set_faults(config: FaultConfig) -> Response:
        """Inject faults from now on (see the portal sandbox's ``FaultConfig``)."""
        state.faults.set(config)
        return answer(config.model_dump(mode="json"))

    @app.delete("/_sandbox/faults", tags=["sandbox"])
    async def clear_faults() -> Response:
        """No faults any more."""
        state.faults.clear()
        return answer({})

    @app.post("/_sandbox/reset", tags=["sandbox"])
    async def reset() -> Response:
        """No records, no counters, no faults (tokens stay valid)."""
        store.reset()
        state.counters = Counters()
        state.faults.clear()
        state.faults.reset_counts()
        return answer({})

    @app.get("/_sandbox/write-log", tags=["sandbox"])
    async def write_log(entity: str, id: str) -> Response:
        """Every write accepted for one record (``entity``: deposit-accounts or bookings)."""
        return answer({"writes": store.write_log(entity, id)})

    @app.get("/_sandbox/token-ttl", tags=["sandbox"])
    async def token_ttl(seconds: float) -> Response:
        """Tokens issued from now on expire after ``seconds``."""
        state.token_ttl_s = seconds
        return answer({"seconds": seconds})

    return app
