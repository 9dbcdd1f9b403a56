"""The portal sandbox as a FastAPI app: the contract of ``docs/portal-api.md`` over real HTTP.

Why a real server: hausflow's connector must speak the documented protocol (token header, paging
with ``_links.next``, upserts by reference id, error bodies with field errors); pointing it at the
real portal is then a change of base URL and credentials. The sandbox keeps its own state
(``store.Store``), injects faults (``faults.FaultInjector``) and counts what reached it, so tests
and benchmarks can prove that every record was written once.

The request path is kept lean for throughput: handlers are ``async`` and do their (short, blocking)
database work on the event loop, so there is no thread hop and no lock contention; answers are JSON
text built once and sent as bytes.
"""

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, quote
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from sandbox.portal.content import ContentFolder, default_folder
from sandbox.portal.faults import WRITE_METHODS, FaultConfig, FaultInjector
from sandbox.portal.page import render_page, render_property
from sandbox.portal.store import ENTITIES, Entry, Store, now_iso, payload_hash

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_TOKEN_TTL_S = 30 * 24 * 3600
"""A portal token lives about a month."""

MAX_PAGE_SIZE = 1000
NOT_AN_OBJECT = frozenset({"model_attributes_type", "model_type", "dict_type"})
"""Validation error types meaning the body is JSON but not an object (400, like broken JSON)."""
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]{2,}$")
JSON = "application/json"
BERLIN = ZoneInfo("Europe/Berlin")  # a contract is active on the day in Germany
SINGULAR = {
    "properties": "property",
    "units": "unit",
    "contacts": "contact",
    "ticket-types": "ticket type",
    "documents": "document",
    "tickets": "ticket",
    "bulletin-posts": "bulletin post",
    "comments": "comment",
}
DEFAULT_MAX_UPLOAD_BYTES = 100 * 1024 * 1024
"""Largest document content the sandbox takes (the portal's ERP interface allows 100 MB)."""

# Query parameters: the public ones of the casavi API, and the sandbox's own (``pageSize``,
# ``includeArchived``). Any other parameter is refused (422), never ignored.
Flag = Literal["true", "false"]
PageParam = Annotated[int, Query(description="public: pages start at 1")]
PageSizeParam = Annotated[
    int, Query(alias="pageSize", description="the sandbox's own: default 100, maximum 1000")
]
ModifiedAfterParam = Annotated[
    str | None,
    Query(alias="modifiedAfter", description="public: only records with updatedAt later than this"),
]
IncludeArchivedParam = Annotated[
    Flag, Query(alias="includeArchived", description="the sandbox's own: archived records too")
]
InactiveContractsParam = Annotated[
    Flag,
    Query(alias="includeInactiveContracts", description="public: ended and future contracts too"),
]


# ---- schemas (OpenAPI) ---------------------------------------------------------------------------
class FieldError(BaseModel):
    """One field-level validation error."""

    fieldName: str
    errorMessage: str


class ErrorBody(BaseModel):
    """Every error answer: a plain message and, for 400/422, the fields at fault."""

    message: str
    errors: list[FieldError] = Field(default_factory=list)


class AuthRequest(BaseModel):
    """API credentials."""

    key: str
    secret: str


class AuthResponse(BaseModel):
    """A token to send as header ``token`` on every other call."""

    token: str
    expiresAt: str


class _Nested(BaseModel):
    """Nested objects are stored exactly as sent (unknown keys kept), so a read-back compares equal."""

    model_config = ConfigDict(strict=True, extra="allow")


class _Writable(BaseModel):
    """Top-level bodies: strict types, unknown and read-only keys ignored (a GET result can be PUT)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    id: str | None = Field(default=None, description="reference id; the path's id wins, must match if sent")


class Address(_Nested):
    """An address of a property: its street and the units at it.

    ``units`` is derived: a read lists the property's units (the ones that name it as
    ``propertyId`` and are not archived) at its first address. Sent, it is not stored (a unit
    says where it belongs; a property is written before its units, and before a unit moves).
    """

    street: str
    units: list[str] = Field(default_factory=list)


class PropertyIn(_Writable):
    """A property (Liegenschaft) in the public read shape. Required: ``name``, one address or more."""

    name: str
    number: str | None = None
    note: str | None = None
    postalCode: str | None = None
    city: str | None = None
    country: str | None = None
    addresses: list[Address]
    customFields: dict[str, Any] | None = None


UnitType = Literal["APARTMENT", "GARAGE", "COMMERCIAL", "PARKING", "OTHER"]


class UnitIn(_Writable):
    """A unit (Einheit) of an existing property."""

    propertyId: str
    name: str
    type: UnitType
    floor: str | None = None
    customFields: dict[str, Any] | None = None


def _check_date(value: str | None) -> str | None:
    """Dates are ``YYYY-MM-DD`` and real calendar days."""
    if value is None:
        return value
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("not a date in the form YYYY-MM-DD")
    date.fromisoformat(value)
    return value


class Contract(_Nested):
    """A contact's contract with a property and (optionally) a unit."""

    type: Literal["RENTER", "OWNER"]
    propertyId: str
    unitId: str | None = None
    startDate: str | None = None
    endDate: str | None = None

    @field_validator("startDate", "endDate")
    @classmethod
    def _date(cls, value: str | None) -> str | None:
        return _check_date(value)


class ContactIn(_Writable):
    """A contact (person or company). ``lastName`` or ``companyName`` is required."""

    salutation: str | None = None
    title: str | None = None
    firstName: str | None = None
    lastName: str | None = None
    companyName: str | None = None
    email: str | None = None
    telephone: str | None = None
    mobile: str | None = None
    street: str | None = None
    postalCode: str | None = None
    city: str | None = None
    country: str | None = None
    portalUser: StrictBool | None = None
    customFields: dict[str, Any] | None = None
    contracts: list[Contract] | None = None


class Responsibility(BaseModel):
    """A caretaker (or other role) of a property: an existing, non-archived contact.

    The read shape's keys taken from the contact (``contactName`` ...) are ignored when sent.
    """

    model_config = ConfigDict(strict=True, extra="ignore")

    contactId: str
    roleName: str
    roleType: Literal["internal", "external"]


class ResponsibilityOut(Responsibility):
    """A responsibility as read: with the contact's portal id, name, e-mail and telephone."""

    contactInternalId: int | None
    contactName: str | None
    email: str | None
    telephone: str | None


class ResponsibilitiesIn(BaseModel):
    """The complete list of a property's responsibilities (replaces the stored list)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    responsibilities: list[Responsibility]


class ResponsibilitiesOut(BaseModel):
    """A property's responsibilities."""

    id: str
    responsibilities: list[ResponsibilityOut]


class _ReadOnly(BaseModel):
    """Fields every stored record carries."""

    internalId: int
    createdAt: str
    updatedAt: str
    archived: bool


class PropertyOut(_ReadOnly, PropertyIn):
    """A stored property, with what the portal adds: its caretakers, a link into the app, images."""

    id: str
    responsibilities: list[ResponsibilityOut]
    appLink: str
    images: list[Any]


class UnitContract(BaseModel):
    """A contract of a contact in a unit (read-only, taken from the contact's ``contracts``)."""

    contactId: str
    type: Literal["RENTER", "OWNER"]
    startDate: str | None
    endDate: str | None


class UnitOut(_ReadOnly, UnitIn):
    """A stored unit, with the contracts in it (active ones unless ``includeInactiveContracts``)."""

    id: str
    contracts: list[UnitContract]


class ContactOut(_ReadOnly, ContactIn):
    """A stored contact; anonymised contacts keep only ``id``, contracts and flags."""

    id: str

    anonymised: bool
    isRegistered: bool
    isInvited: bool


class Links(BaseModel):
    """Paging links: ``next`` is an absolute URL or ``null`` on the last page."""

    next: str | None


class PropertyList(BaseModel):
    """A page of properties."""

    list: list[PropertyOut]
    links: Links = Field(alias="_links")


class UnitList(BaseModel):
    """A page of units."""

    list: list[UnitOut]
    links: Links = Field(alias="_links")


class ContactList(BaseModel):
    """A page of contacts."""

    list: list[ContactOut]
    links: Links = Field(alias="_links")


WRITABLE: dict[str, tuple[str, ...]] = {
    "properties": ("id", *(f for f in PropertyIn.model_fields if f != "id")),
    "units": ("id", *(f for f in UnitIn.model_fields if f != "id")),
    "contacts": ("id", *(f for f in ContactIn.model_fields if f != "id")),
}
"""Writable top-level fields per entity, ``id`` first; a PUT replaces all of them (absent = null)."""

PERSONAL_FIELDS = (
    "salutation",
    "title",
    "firstName",
    "lastName",
    "companyName",
    "email",
    "telephone",
    "mobile",
    "street",
    "postalCode",
    "city",
    "country",
)


# ---- state -----------------------------------------------------------------------------------
@dataclass
class Counters:
    """What reached the sandbox since start or the last reset."""

    requests: int = 0
    writes: int = 0
    duplicate_writes: int = 0
    duplicate_writes_by_entity: dict[str, int] = field(default_factory=dict)
    writes_by_entity: dict[str, int] = field(default_factory=dict)
    writes_by_op: dict[str, int] = field(default_factory=dict)
    logins: int = 0  # POST /v2/authenticate calls, accepted or refused
    logins_refused: int = 0
    uploads: int = 0  # document contents accepted (204)
    upload_bytes: int = 0  # bytes of the accepted contents
    upload_bytes_received: int = 0  # bytes read from upload bodies, refused ones included
    uploads_by_document: dict[str, int] = field(default_factory=dict)

    def upload(self, document_id: str, size: int) -> None:
        """Count one accepted content upload of ``size`` bytes."""
        self.uploads += 1
        self.upload_bytes += size
        self.uploads_by_document[document_id] = self.uploads_by_document.get(document_id, 0) + 1

    def write(self, entity: str, op: str, effective: bool) -> None:
        """Count one accepted write: an effective change or a duplicate (nothing changed)."""
        if effective:
            self.writes += 1
            self.writes_by_entity[entity] = self.writes_by_entity.get(entity, 0) + 1
            self.writes_by_op[op] = self.writes_by_op.get(op, 0) + 1
        else:
            self.duplicate_writes += 1
            self.duplicate_writes_by_entity[entity] = self.duplicate_writes_by_entity.get(entity, 0) + 1


@dataclass
class SandboxState:
    """Everything one sandbox process holds: store, content, faults, counters, tokens, credentials."""

    store: Store
    key: str
    secret: str
    content: ContentFolder
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    faults: FaultInjector = field(default_factory=FaultInjector)
    counters: Counters = field(default_factory=Counters)
    tokens: dict[str, datetime] = field(default_factory=dict)
    token_ttl_s: float = DEFAULT_TOKEN_TTL_S


class GroupCommit:
    """One database commit per event-loop turn for every write of that turn.

    A write handler calls ``await durable()`` after its (uncommitted) write: the first caller of a
    turn schedules a commit with ``call_soon``, which runs after every task of the current turn, so
    the writes of concurrent requests share it. Every caller resumes only after the commit, so an
    answer never promises a write a crash could lose.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._future: asyncio.Future[None] | None = None

    async def __call__(self) -> None:
        """Wait until the writes done so far are committed."""
        if self._future is None:
            loop = asyncio.get_running_loop()
            self._future = loop.create_future()
            loop.call_soon(self._commit)
        await self._future

    def _commit(self) -> None:
        future, self._future = self._future, None
        assert future is not None
        try:
            self._store.commit()
        except Exception as exc:  # every waiting write learns of it (answers 500)
            future.set_exception(exc)
        else:
            future.set_result(None)


class ApiError(Exception):
    """An error answer in the contract's shape (``message`` + field ``errors``)."""

    def __init__(
        self,
        status: int,
        message: str,
        errors: list[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []
        self.headers = dict(headers) if headers else None


def _error_bytes(message: str, errors: list[tuple[str, str]] | None = None) -> bytes:
    body = {"message": message, "errors": [{"fieldName": f, "errorMessage": m} for f, m in errors or []]}
    return json.dumps(body, ensure_ascii=False).encode()


def _error_response(error: ApiError) -> Response:
    return Response(_error_bytes(error.message, error.errors), error.status, error.headers, JSON)


def _field_name(loc: tuple[int | str, ...]) -> str:
    """``("body", "contracts", 0, "propertyId")`` -> ``contracts[0].propertyId``."""
    name = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name


# ---- the ASGI app with faults in front ---------------------------------------------------------
class SandboxApp(FastAPI):
    """FastAPI with the sandbox's front door: counts ``/v2`` requests and injects faults.

    The fault logic sits in ``__call__`` (outside every middleware) because dropping a connection
    needs the server's transport, which only the outermost ``send`` leads to.
    """

    sandbox: SandboxState

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        """Serve one ASGI connection event; see the class docstring."""
        if scope["type"] == "http" and scope["path"].startswith("/v2/"):
            state = self.sandbox
            state.counters.requests += 1
            if scope["path"] != "/v2/authenticate":
                if state.faults.active:
                    await self._serve_with_faults(scope, receive, send)
                else:
                    await self._serve_authorized(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _serve_authorized(self, scope: Scope, receive: Receive, send: Send) -> None:
        """401 unless the ``token`` header holds a token that has not expired, else serve.

        Checked here rather than as a FastAPI dependency: it is the same for every ``/v2`` call and
        a dependency costs a noticeable share of a write's CPU time.
        """
        token = None
        for name, value in scope["headers"]:
            if name == b"token":
                token = value.decode("latin-1")
                break
        problem = None
        if not token:
            problem = "missing header 'token': authenticate with POST /v2/authenticate"
        else:
            tokens = self.sandbox.tokens
            expires = tokens.get(token)
            if expires is None:
                problem = "unknown token: authenticate again"
            elif expires <= datetime.now(UTC):
                del tokens[token]
                problem = "token expired: authenticate again"
        if problem is not None:
            await _drain(receive)
            await _send_error(send, 401, problem)
            return
        if scope.get("query_string"):
            unknown = self._unknown_query(scope)
            if unknown is not None:
                await _drain(receive)
                await _send_error(send, 422, *unknown)
                return
        await super().__call__(scope, receive, send)

    def _unknown_query(self, scope: Scope) -> tuple[str, list[tuple[str, str]]] | None:
        """The message and field errors for query parameters the called endpoint does not take.

        A client must never get unfiltered data because the sandbox ignored a filter it does not
        know. ``None`` when every parameter is known, or no endpoint matches (routing answers).
        """
        sent = dict.fromkeys(
            k for k, _ in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        )
        for route in self.routes:
            if isinstance(route, APIRoute) and route.matches(scope)[0] is Match.FULL:
                known = [param.alias for param in route.dependant.query_params]
                unknown = [name for name in sent if name not in known]
                if not unknown:
                    return None
                takes = f"takes {', '.join(known)}" if known else "takes no query parameters"
                message = (
                    f"unknown query parameter {', '.join(map(repr, unknown))}: "
                    f"{scope['method']} {route.path} {takes}"
                )
                return message, [(name, "unknown query parameter") for name in unknown]
        return None

    async def _serve_with_faults(self, scope: Scope, receive: Receive, send: Send) -> None:
        faults = self.sandbox.faults
        method = scope["method"]
        decision = faults.decide(method)
        if decision.delay_s:
            await asyncio.sleep(decision.delay_s)
        kind = decision.kind
        count_writes = faults.tracks_writes and method in WRITE_METHODS
        if kind is None:
            if not count_writes:
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
            answered: list[int] = []

            async def swallow(message: Message) -> None:
                if message["type"] == "http.response.start":
                    answered.append(int(message["status"]))

            await self._serve_authorized(scope, receive, swallow)
            if count_writes and answered and answered[0] < 300:
                faults.write_succeeded()
            await _drop_connection(send)
            return
        await _drain(receive)
        code = 503 if kind == "fail_after_writes" else int(kind)
        message = {
            408: "request timeout (injected)",
            429: "too many requests (injected)",
            503: "service unavailable (injected)",
        }.get(code, f"server error {code} (injected)")
        if kind == "fail_after_writes":
            message = "service unavailable: write limit of the sandbox reached (injected)"
        headers: list[tuple[bytes, bytes]] = []
        if code in (429, 503):
            headers.append((b"retry-after", str(faults.config.retry_after_s).encode()))
        if code == 408:
            headers.append((b"connection", b"close"))
        await _send_error(send, code, message, headers=headers)


async def _send_error(
    send: Send,
    status: int,
    message: str,
    errors: list[tuple[str, str]] | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """An error answer in the contract's shape, straight over ASGI (before any routing)."""
    body = _error_bytes(message, errors)
    all_headers = [
        (b"content-type", JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive) -> None:
    """Read the request body to its end, so the connection can serve the next request."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def _drop_connection(send: Send) -> None:
    """Close the connection without an answer; the client sees ``RemoteProtocolError``.

    uvicorn's ``send`` is a bound method of the request cycle, which holds the transport. Any other
    server: start an answer that promises a body and fail, which makes the server abort it.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None:
        transport.close()
        await asyncio.sleep(0)  # let the server see the connection lost, so it sends nothing
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
    raise ConnectionAbortedError("connection dropped (injected)")


# ---- the app ---------------------------------------------------------------------------------
def create_app(
    db_url: str,
    key: str,
    secret: str,
    content_dir: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
) -> FastAPI:
    """Build the sandbox: a FastAPI app over its own database at ``db_url``.

    Args:
        db_url: SQLAlchemy URL of the sandbox's state (``sqlite:///var/sandbox/portal.sqlite``).
        key, secret: the only credentials ``POST /v2/authenticate`` accepts.
        content_dir: folder of the documents' content; ``None``: beside the SQLite file
            (``portal-content/``).
        max_upload_bytes: largest document content taken (``413`` above).

    Returns:
        The ASGI app; its state is in ``app.sandbox`` (``SandboxState``). The store is closed when
        the app shuts down (lifespan).
    """
    store = Store(db_url)
    content = ContentFolder(Path(content_dir) if content_dir else default_folder(db_url))
    state = SandboxState(
        store=store, key=key, secret=secret, content=content, max_upload_bytes=max_upload_bytes
    )
    durable = GroupCommit(store)
    for token, expires in store.load_tokens().items():
        state.tokens[token] = _parse_time(expires)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        """Close the store (commit, checkpoint) when the server shuts down."""
        yield
        store.close()

    app = SandboxApp(
        title="hausflow portal sandbox",
        version="2",
        description=(
            "The tenant-portal API (casavi manager API v2) as hausflow's sandbox implements it; "
            "contract in docs/portal-api.md. `/_sandbox/...` endpoints are the sandbox's own."
        ),
        lifespan=lifespan,
    )
    app.sandbox = state

    def openapi() -> dict[str, Any]:
        """FastAPI's spec plus the ``token`` header on every ``/v2`` call but ``authenticate``."""
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {})["securitySchemes"] = {
            "token": {
                "type": "apiKey",
                "in": "header",
                "name": "token",
                "description": "POST /v2/authenticate",
            }
        }
        for path, operations in schema["paths"].items():
            if path.startswith("/v2/") and path != "/v2/authenticate":
                for operation in operations.values():
                    operation["security"] = [{"token": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> Response:
        """Answer an ``ApiError`` in the contract's error shape."""
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        """FastAPI's validation errors in the contract's shape: 400 for broken JSON, else 422 with fields."""
        errors: list[tuple[str, str]] = []
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            kind = err.get("type")
            if kind == "json_invalid" or (loc == ("body",) and kind in NOT_AN_OBJECT):
                return _error_response(ApiError(400, "malformed JSON body: expected a JSON object"))
            if loc == ("body",) and kind == "missing":
                return _error_response(ApiError(400, "a JSON body is required"))
            errors.append((_field_name(loc) or "body", str(err.get("msg"))))
        text = "; ".join(f"{f}: {m}" for f, m in errors)
        return _error_response(ApiError(422, f"the request is not valid: {text}", errors))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        """Routing errors (404, 405) in the contract's error shape."""
        return _error_response(ApiError(exc.status_code, str(exc.detail), headers=exc.headers))

    errors_doc: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorBody, "description": "missing, unknown or expired token"},
        404: {"model": ErrorBody, "description": "unknown id"},
        409: {"model": ErrorBody, "description": "conflict with the record's state"},
        422: {"model": ErrorBody, "description": "validation failed (field errors)"},
        429: {"model": ErrorBody, "description": "rate limited, see Retry-After"},
    }

    # ---- auth --------------------------------------------------------------------------------
    @app.post(
        "/v2/authenticate",
        response_model=AuthResponse,
        responses={401: {"model": ErrorBody}},
        tags=["auth"],
        summary="Exchange key and secret for a token",
    )
    async def authenticate(credentials: AuthRequest) -> Response:
        """Exchange key and secret for a token (401 on wrong credentials)."""
        state.counters.logins += 1
        if not (
            secrets.compare_digest(credentials.key, state.key)
            and secrets.compare_digest(credentials.secret, state.secret)
        ):
            state.counters.logins_refused += 1
            raise ApiError(401, "key or secret is wrong")
        token = secrets.token_hex(24)
        expires = datetime.now(UTC) + timedelta(seconds=state.token_ttl_s)
        expires_iso = _format_time(expires)
        state.tokens[token] = expires
        store.save_token(token, expires_iso)
        return _json_response({"token": token, "expiresAt": expires_iso})

    # ---- writes ------------------------------------------------------------------------------
    async def upsert(entity: str, ref_id: str, body: _Writable, read_only: dict[str, Any]) -> tuple[str, int]:
        writable = _writable(entity, ref_id, body)
        parent = writable.get("propertyId") if entity == "units" else None
        outcome = store.upsert(entity, ref_id, writable, read_only, payload_hash(writable), parent)
        await durable()
        state.counters.write(entity, "upsert", outcome.effective)
        return outcome.body, 201 if outcome.created else 200

    @app.put(
        "/v2/properties/{id}",
        responses={200: {"model": PropertyOut}, 201: {"model": PropertyOut}, **errors_doc},
        response_model=None,
        tags=["properties"],
        summary="Create or replace a property (the public read shape; read-only keys ignored)",
    )
    async def put_property(id: str, body: PropertyIn, request: Request) -> Response:
        """Upsert a property: 201 created, 200 updated or unchanged; 422 with field errors."""
        _raise_invalid(_property_problems(body))
        text, status = await upsert("properties", id, body, {})
        return _json_text(_property_view(store, text, request), status)

    @app.put(
        "/v2/units/{id}",
        responses={200: {"model": UnitOut}, 201: {"model": UnitOut}, **errors_doc},
        response_model=None,
        tags=["units"],
        summary="Create or replace a unit",
    )
    async def put_unit(id: str, body: UnitIn) -> Response:
        """Upsert a unit of an existing property (422 when the property is unknown)."""
        problems = []
        if not body.name.strip():
            problems.append(("name", "must not be empty"))
        if store.entry("properties", body.propertyId) is None:
            problems.append(("propertyId", f"property {body.propertyId} does not exist"))
        _raise_invalid(problems)
        text, status = await upsert("units", id, body, {})
        return _json_text(_unit_view(store, text, False), status)

    @app.put(
        "/v2/contacts/{id}",
        responses={200: {"model": ContactOut}, 201: {"model": ContactOut}, **errors_doc},
        response_model=None,
        tags=["contacts"],
        summary="Create or replace a contact (409 once anonymised)",
    )
    async def put_contact(id: str, body: ContactIn) -> Response:
        """Upsert a contact; 409 once anonymised; contracts must reference existing records."""
        entry = store.entry("contacts", id)
        if entry is not None and entry.anonymised:
            raise ApiError(409, f"contact {id} is anonymised and cannot be written any more")
        _raise_invalid(_contact_problems(store, body))
        read_only = {
            "anonymised": False,
            "isRegistered": entry is not None and "isRegistered" in entry.flags,
            "isInvited": bool(body.portalUser and body.email),
        }
        return _json_text(*await upsert("contacts", id, body, read_only))

    @app.get(
        "/v2/properties/{id}/responsibilities",
        response_model=ResponsibilitiesOut,
        responses=errors_doc,
        tags=["properties"],
        summary="The responsibilities (caretakers) of a property",
    )
    async def get_responsibilities(id: str) -> Response:
        """The property's responsibilities as its ``GET`` shows them (an empty list when none)."""
        if store.entry("properties", id) is None:
            raise ApiError(404, f"property {id} does not exist")
        return _json_response({"id": id, "responsibilities": _responsibilities_view(store, id)})

    @app.put(
        "/v2/properties/{id}/responsibilities",
        response_model=ResponsibilitiesOut,
        responses=errors_doc,
        tags=["properties"],
        summary="Replace the responsibilities of a property",
    )
    async def put_responsibilities(id: str, body: ResponsibilitiesIn) -> Response:
        """Replace the responsibilities; every contact must exist and not be archived."""
        prop = store.entry("properties", id)
        if prop is None:
            raise ApiError(404, f"property {id} does not exist")
        if prop.archived:
            raise ApiError(409, f"property {id} is archived; write it again (PUT) first")
        problems = []
        for i, item in enumerate(body.responsibilities):
            contact = store.entry("contacts", item.contactId)
            if contact is None:
                problems.append(
                    (f"responsibilities[{i}].contactId", f"contact {item.contactId} does not exist")
                )
            elif contact.archived:
                problems.append((f"responsibilities[{i}].contactId", f"contact {item.contactId} is archived"))
        _raise_invalid(problems)
        writable = {"id": id, "responsibilities": [r.model_dump() for r in body.responsibilities]}
        outcome = store.upsert("responsibilities", id, writable, {}, payload_hash(writable))
        if outcome.effective:  # the property reads differently now: a new updatedAt for modifiedAfter
            store.amend("properties", id, {})
        await durable()
        state.counters.write("responsibilities", "upsert", outcome.effective)
        return _json_response({"id": id, "responsibilities": _responsibilities_view(store, id)})

    # ---- reads -------------------------------------------------------------------------------
    def listed(
        request: Request,
        entity: str,
        paging: tuple[int, int, str | None, Flag],
        where: Callable[[Entry], bool] | None = None,
        view: Callable[[str], str] | None = None,
    ) -> Response:
        """One page ordered by internalId, with an absolute ``_links.next`` or ``null``."""
        page, page_size, modified_after, include_archived = paging
        problems = []
        if page < 1:
            problems.append(("page", "pages start at 1"))
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            problems.append(("pageSize", f"must be between 1 and {MAX_PAGE_SIZE}"))
        after = None
        if modified_after is not None:
            try:
                after = _format_time(_parse_time(modified_after))
            except ValueError:
                problems.append(("modifiedAfter", "not an ISO 8601 time such as 2026-01-31T08:15:00.000Z"))
        _raise_invalid(problems)
        bodies, more = store.page(entity, page, page_size, after, include_archived == "true", where)
        if view is not None:
            bodies = [view(b) for b in bodies]
        next_url = json.dumps(str(request.url.include_query_params(page=page + 1))) if more else "null"
        return _json_text('{"list":[' + ",".join(bodies) + '],"_links":{"next":' + next_url + "}}")

    def stored(entity: str, id: str) -> str:
        body = store.get(entity, id)
        if body is None:
            raise ApiError(404, f"{SINGULAR[entity]} {id} does not exist")
        return body

    @app.get(
        "/v2/properties",
        response_model=PropertyList,
        responses=errors_doc,
        tags=["properties"],
        summary="List properties (paged, ordered by internalId)",
    )
    async def list_properties(
        request: Request,
        page: PageParam = 1,
        page_size: PageSizeParam = 100,
        modified_after: ModifiedAfterParam = None,
        include_archived: IncludeArchivedParam = "false",
    ) -> Response:
        """Properties with their units, responsibilities and app links."""
        return listed(
            request,
            "properties",
            (page, page_size, modified_after, include_archived),
            view=lambda body: _property_view(store, body, request),
        )

    @app.get(
        "/v2/properties/{id}",
        response_model=PropertyOut,
        responses=errors_doc,
        tags=["properties"],
        summary="One property by reference id",
    )
    async def get_property(id: str, request: Request) -> Response:
        """One property (404 when unknown)."""
        return _json_text(_property_view(store, stored("properties", id), request))

    @app.get(
        "/v2/units",
        response_model=UnitList,
        responses=errors_doc,
        tags=["units"],
        summary="List units (paged, ordered by internalId)",
    )
    async def list_units(
        request: Request,
        page: PageParam = 1,
        page_size: PageSizeParam = 100,
        modified_after: ModifiedAfterParam = None,
        include_archived: IncludeArchivedParam = "false",
        include_inactive: InactiveContractsParam = "false",
    ) -> Response:
        """Units with the contracts in them."""
        inactive = include_inactive == "true"
        return listed(
            request,
            "units",
            (page, page_size, modified_after, include_archived),
            view=lambda body: _unit_view(store, body, inactive),
        )

    @app.get(
        "/v2/units/{id}",
        response_model=UnitOut,
        responses=errors_doc,
        tags=["units"],
        summary="One unit by reference id",
    )
    async def get_unit(id: str, include_inactive: InactiveContractsParam = "false") -> Response:
        """One unit (404 when unknown)."""
        return _json_text(_unit_view(store, stored("units", id), include_inactive == "true"))

    @app.get(
        "/v2/contacts",
        response_model=ContactList,
        responses=errors_doc,
        tags=["contacts"],
        summary="List contacts (paged, ordered by internalId)",
    )
    async def list_contacts(
        request: Request,
        page: PageParam = 1,
        page_size: PageSizeParam = 100,
        modified_after: ModifiedAfterParam = None,
        include_archived: IncludeArchivedParam = "false",
        is_registered: Annotated[
            Flag | None, Query(alias="isRegistered", description="public: registered in the portal or not")
        ] = None,
        is_invited: Annotated[
            Flag | None, Query(alias="isInvited", description="public: invited to the portal or not")
        ] = None,
        role: Annotated[
            Literal["OWNER", "RENTER"] | None,
            Query(description="public: only contacts with a contract of this type"),
        ] = None,
    ) -> Response:
        """Contacts, filtered by their flags and the types of their contracts."""
        wanted = {
            flag: value == "true"
            for flag, value in (("isRegistered", is_registered), ("isInvited", is_invited))
            if value is not None
        }

        def where(entry: Entry) -> bool:
            return all((flag in entry.flags) == value for flag, value in wanted.items()) and (
                role is None or any(c[1] == role for c in entry.contracts)
            )

        paging = (page, page_size, modified_after, include_archived)
        return listed(request, "contacts", paging, where if wanted or role else None)

    @app.get(
        "/v2/contacts/{id}",
        response_model=ContactOut,
        responses=errors_doc,
        tags=["contacts"],
        summary="One contact by reference id",
    )
    async def get_contact(id: str) -> Response:
        """One contact (404 when unknown)."""
        return _json_text(stored("contacts", id))

    # ---- archive, delete per collection ------------------------------------------------------
    views: tuple[tuple[str, type[BaseModel], Callable[[str, Request], str]], ...] = (
        ("properties", PropertyOut, lambda body, request: _property_view(store, body, request)),
        ("units", UnitOut, lambda body, _request: _unit_view(store, body, False)),
        ("contacts", ContactOut, lambda body, _request: body),
    )
    for entity, out_model, view in views:
        _collection_routes(app, state, durable, entity, out_model, errors_doc, view)

    # the exchange of documents, tickets and comments (imported here: it builds on this module)
    from sandbox.portal.exchange import BulletinPostOut, add_exchange_routes

    add_exchange_routes(app, state, durable, errors_doc, listed, stored)
    _collection_routes(
        app, state, durable, "bulletin-posts", BulletinPostOut, errors_doc, lambda body, _request: body
    )

    @app.post(
        "/v2/contacts/{id}/anonymize",
        response_model=ContactOut,
        responses=errors_doc,
        tags=["contacts"],
        summary="Wipe a contact's personal data for good and archive it (idempotent)",
    )
    async def anonymize_contact(id: str) -> Response:
        """Wipe the personal fields for good and archive the contact (idempotent)."""
        changes: dict[str, Any] = dict.fromkeys(PERSONAL_FIELDS)
        changes.update(customFields={}, portalUser=False, isInvited=False, isRegistered=False)
        outcome = store.set_state("contacts", id, "anonymize", changes, archived=True, anonymised=True)
        if outcome is None:
            raise ApiError(404, f"contact {id} does not exist")
        await durable()
        state.counters.write("contacts", "anonymize", outcome.effective)
        return _json_text(outcome.body)

    # ---- sandbox-only ------------------------------------------------------------------------
    @app.get("/_sandbox/counters", tags=["sandbox"], summary="What reached the sandbox")
    async def counters() -> dict[str, Any]:
        """What reached the sandbox since start or reset (see docs/portal-api.md)."""
        c = state.counters
        by_state = {e: store.count(e) for e in ENTITIES}
        return {
            "requests": c.requests,
            "writes": c.writes,
            "writes_by_entity": c.writes_by_entity,
            "writes_by_op": c.writes_by_op,
            "duplicate_writes": c.duplicate_writes,
            "duplicate_writes_by_entity": c.duplicate_writes_by_entity,
            "logins": c.logins,
            "logins_refused": c.logins_refused,
            "uploads": c.uploads,
            "upload_bytes": c.upload_bytes,
            "upload_bytes_received": c.upload_bytes_received,
            "uploads_by_document": c.uploads_by_document,
            "max_writes_per_record": store.max_writes_per_record,
            "faults_injected": dict(state.faults.injected),
            "records": {e: s["total"] for e, s in by_state.items()},
            "records_by_state": by_state,
        }

    @app.get("/_sandbox/write-log", tags=["sandbox"], summary="Every accepted write of one record")
    async def get_write_log(
        entity: Literal[
            "properties",
            "units",
            "contacts",
            "responsibilities",
            "ticket-types",
            "documents",
            "tickets",
            "bulletin-posts",
            "comments",
        ],
        id: str,
    ) -> dict[str, Any]:
        """Every write request the sandbox accepted for one record, oldest first."""
        writes = store.write_log(entity, id)
        return {"entity": entity, "id": id, "count": len(writes), "writes": writes}

    @app.post(
        "/_sandbox/contacts/{id}/register",
        tags=["sandbox"],
        summary="The contact registers in the portal (isRegistered: true)",
    )
    async def register_contact(id: str) -> Response:
        """What a tenant does by accepting the invitation; ``409`` for an archived contact."""
        entry = store.entry("contacts", id)
        if entry is None:
            raise ApiError(404, f"contact {id} does not exist")
        if entry.archived:
            raise ApiError(409, f"contact {id} is archived and cannot register")
        if "isRegistered" in entry.flags:
            return _json_text(stored("contacts", id))
        body = store.amend("contacts", id, {"isRegistered": True})
        await durable()
        return _json_text(body or "")

    @app.get(
        "/app/properties/{id}",
        response_class=HTMLResponse,
        tags=["sandbox"],
        summary="What a property's appLink opens",
    )
    async def app_property(id: str, request: Request) -> HTMLResponse:
        """A read-only HTML page of one property (the real portal's app is not simulated)."""
        body = store.get("properties", id)
        if body is None:
            raise ApiError(404, f"property {id} does not exist")
        return HTMLResponse(render_property(json.loads(_property_view(store, body, request))))

    @app.post("/_sandbox/faults", tags=["sandbox"], summary="Set the faults to inject (replaces the old)")
    async def set_faults(config: FaultConfig) -> dict[str, Any]:
        """Replace the active faults; the answer echoes the configuration in effect."""
        state.faults.set(config)
        return config.model_dump(mode="json")

    @app.delete("/_sandbox/faults", tags=["sandbox"], summary="Inject no faults any more")
    async def clear_faults() -> dict[str, Any]:
        """Inject no faults any more (the count of injected faults stays)."""
        state.faults.clear()
        return {"faults": None}

    @app.post("/_sandbox/reset", tags=["sandbox"], summary="Empty the store, counters and faults")
    async def reset() -> dict[str, Any]:
        """Empty the store, the documents' content, the write log, the counters and the faults;
        tokens stay valid."""
        store.reset()
        state.content.clear()
        state.counters = Counters()
        state.faults.clear()
        state.faults.reset_counts()
        return {"reset": True}

    @app.get("/_sandbox/token-ttl", tags=["sandbox"], summary="Lifetime of tokens issued from now on")
    async def token_ttl(seconds: float = Query(ge=0)) -> dict[str, Any]:
        """Tokens issued from now on expire after ``seconds`` (to test re-authentication)."""
        state.token_ttl_s = seconds
        return {"seconds": seconds}

    @app.get("/", response_class=HTMLResponse, tags=["sandbox"], summary="Read-only HTML view")
    async def page(page: int = Query(1, ge=1)) -> HTMLResponse:
        """The read-only HTML view; anonymised contacts show only their id."""
        return HTMLResponse(render_page(store, page))

    return app


def _collection_routes(
    app: FastAPI,
    state: SandboxState,
    durable: GroupCommit,
    entity: str,
    out_model: type[BaseModel],
    errors_doc: dict[int | str, dict[str, Any]],
    view: Callable[[str, Request], str],
) -> None:
    """Archive and delete routes of one collection (same contract for all)."""
    store = state.store
    singular = SINGULAR[entity]

    async def archive_record(id: str, request: Request) -> Response:
        """Archive (idempotent); archived records leave the default list."""
        entry = store.entry(entity, id)
        if entry is None:
            raise ApiError(404, f"{singular} {id} does not exist")
        outcome = store.set_state(entity, id, "archive", {}, archived=True, anonymised=entry.anonymised)
        assert outcome is not None
        await durable()
        state.counters.write(entity, "archive", outcome.effective)
        return _json_text(view(outcome.body, request))

    async def delete_record(id: str) -> Response:
        """Delete an archived record for good (409 unless archived first)."""
        entry = store.entry(entity, id)
        if entry is None:
            raise ApiError(404, f"{singular} {id} does not exist")
        if not entry.archived:
            raise ApiError(409, f"{singular} {id} must be archived before it can be deleted")
        store.delete(entity, id)
        if entity == "properties":
            store.delete("responsibilities", id)
        await durable()
        state.counters.write(entity, "delete", True)
        return Response(status_code=204)

    tags: list[str | Any] = [entity]
    app.add_api_route(
        f"/v2/{entity}/{{id}}/archive",
        archive_record,
        methods=["POST"],
        response_model=out_model,
        responses=errors_doc,
        tags=tags,
        summary=f"Archive a {singular} (idempotent)",
        name=f"archive_{singular}",
    )
    app.add_api_route(
        f"/v2/{entity}/{{id}}",
        delete_record,
        methods=["DELETE"],
        status_code=204,
        response_class=Response,
        responses=errors_doc,
        tags=tags,
        summary=f"Delete an archived {singular} (409 unless archived)",
        name=f"delete_{singular}",
    )


# ---- helpers ---------------------------------------------------------------------------------
def _writable(entity: str, ref_id: str, body: _Writable) -> dict[str, Any]:
    """Every writable field as sent (absent = null), ``id`` from the path first."""
    if body.id is not None and body.id != ref_id:
        raise ApiError(422, "the body's id differs from the path", [("id", f"must be {ref_id!r} or absent")])
    sent = body.model_dump(exclude_unset=True)
    writable = {name: sent.get(name) for name in WRITABLE[entity]}
    writable["id"] = ref_id
    if entity == "properties":  # an address's units are derived, never stored
        addresses = writable["addresses"] or []
        writable["addresses"] = [{k: v for k, v in a.items() if k != "units"} for a in addresses]
    return writable


def _property_problems(body: PropertyIn) -> list[tuple[str, str]]:
    """Rules of a property beyond its types: a name, one address or more, each with a street."""
    problems: list[tuple[str, str]] = []
    if not body.name.strip():
        problems.append(("name", "must not be empty"))
    if not body.addresses:
        problems.append(("addresses", "at least one address is required"))
    for i, address in enumerate(body.addresses):
        if not address.street.strip():
            problems.append((f"addresses[{i}].street", "must not be empty"))
    return problems


def _property_view(store: Store, body: str, request: Request) -> str:
    """A stored property as the API shows it: its units at its first address, its
    responsibilities with the contacts' names, its ``appLink`` and ``images``."""
    record = json.loads(body)
    ref_id = record["id"]
    addresses = record.get("addresses") or []
    for i, address in enumerate(addresses):
        address["units"] = store.units_of(ref_id) if i == 0 else []
    record["responsibilities"] = _responsibilities_view(store, ref_id)
    record["appLink"] = f"{str(request.base_url).rstrip('/')}/app/properties/{quote(ref_id, safe='')}"
    record["images"] = []
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _responsibilities_view(store: Store, property_id: str) -> list[dict[str, Any]]:
    """A property's responsibilities with the contact's portal id, name, e-mail and telephone."""
    stored = store.get_dict("responsibilities", property_id) or {}
    out = []
    for item in stored.get("responsibilities") or []:
        entry = store.entry("contacts", item["contactId"])
        contact = store.get_dict("contacts", item["contactId"]) or {}
        name = " ".join(n for n in (contact.get("firstName"), contact.get("lastName")) if n)
        out.append(
            {
                "contactId": item["contactId"],
                "contactInternalId": entry.internal_id if entry else None,
                "contactName": name or contact.get("companyName"),
                "roleName": item.get("roleName"),
                "roleType": item.get("roleType"),
                "email": contact.get("email"),
                "telephone": contact.get("telephone"),
            }
        )
    return out


def _unit_view(store: Store, body: str, include_inactive: bool) -> str:
    """A stored unit as the API shows it: with the contracts in it (active ones unless asked)."""
    record = json.loads(body)
    today = datetime.now(BERLIN).date().isoformat()
    record["contracts"] = store.contracts_in(record["id"], today, include_inactive)
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _contact_problems(store: Store, body: ContactIn) -> list[tuple[str, str]]:
    """Rules of a contact beyond its types: name, e-mail, the references of its contracts."""
    problems: list[tuple[str, str]] = []
    if not (body.lastName or "").strip() and not (body.companyName or "").strip():
        problems.append(("lastName", "lastName or companyName is required"))
    if body.email is not None and not EMAIL_RE.match(body.email):
        problems.append(("email", "not a valid e-mail address (send null when there is none)"))
    for i, contract in enumerate(body.contracts or []):
        where = f"contracts[{i}]"
        if store.entry("properties", contract.propertyId) is None:
            problems.append((f"{where}.propertyId", f"property {contract.propertyId} does not exist"))
        if contract.unitId is not None:
            unit = store.entry("units", contract.unitId)
            if unit is None:
                problems.append((f"{where}.unitId", f"unit {contract.unitId} does not exist"))
            elif unit.parent_id != contract.propertyId:
                problems.append(
                    (
                        f"{where}.unitId",
                        f"unit {contract.unitId} belongs to property {unit.parent_id}, "
                        f"not {contract.propertyId}",
                    )
                )
        if contract.startDate and contract.endDate and contract.endDate < contract.startDate:
            problems.append((f"{where}.endDate", "must not be before startDate"))
    return problems


def _raise_invalid(problems: list[tuple[str, str]]) -> None:
    if problems:
        raise ApiError(
            422, "the record is not valid: " + "; ".join(f"{f}: {m}" for f, m in problems), problems
        )


def _json_text(text: str, status: int = 200) -> Response:
    return Response(text.encode(), status, media_type=JSON)


def _json_response(data: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(data, ensure_ascii=False).encode(), status, media_type=JSON)


def _parse_time(value: str) -> datetime:
    """ISO 8601 to an aware UTC datetime; a time without offset counts as UTC."""
    # an unencoded "+" of the offset arrives as a space
    parsed = datetime.fromisoformat(re.sub(r" (\d{2}:?\d{2})$", r"+\1", value.strip()))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


__all__ = ["SandboxApp", "SandboxState", "create_app", "now_iso"]
