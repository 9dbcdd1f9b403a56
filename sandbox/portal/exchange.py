"""The portal sandbox's exchange endpoints: ticket types, documents (with content), tickets,
bulletin posts and comments, plus what a tenant or portal user does in the portal (``/_sandbox``).

The public portal API does not publish these endpoints; hausflow defines them (design in
``docs/portal-exchange.md``, contract in ``docs/portal-api.md``) in the style of the others:
reference ids, strict bodies, ``list`` + ``_links.next``, ``modifiedAfter``, field errors. They run
behind the same front door (token, unknown query parameters, faults, counters) as the master data.

A document's content is streamed from the request to a file (``content.ContentFolder``), hashed
while it is written; it replaces the old content only when complete and its ``Content-Digest``
matches, so the sandbox never holds an upload in memory and a refused upload keeps the old content.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from sandbox.portal.app import (
    WRITABLE,
    ApiError,
    Counters,
    ErrorBody,
    GroupCommit,
    IncludeArchivedParam,
    Links,
    ModifiedAfterParam,
    PageParam,
    PageSizeParam,
    SandboxState,
    _check_date,
    _json_text,
    _parse_time,
    _raise_invalid,
    _Writable,
    _writable,
)
from sandbox.portal.store import KEPT_FIELDS, Entry, Store, now_iso, payload_hash

CONTENT_TYPES = ("application/pdf", "image/jpeg", "image/png")
"""Media types the portal takes as a document's content (Word files are converted before)."""

Listed = Callable[..., Response]
Stored = Callable[[str, str], str]
OriginParam = Annotated[
    Literal["erp", "portal"] | None,
    Query(description="hausflow: only records written through the API (erp) or made in the portal"),
]


def _check_time(value: str | None) -> str | None:
    """Times are ISO 8601 (``2026-01-31T08:15:00.000Z``)."""
    if value is not None:
        _parse_time(value)
    return value


# ---- schemas ---------------------------------------------------------------------------------
class _ExchangeRead(BaseModel):
    """Read-only fields every record of the exchange carries."""

    internalId: int
    updatedAt: str
    archived: bool


class TicketTypeIn(_Writable):
    """A ticket type (Meldungsart); the ERP's types are ``locked`` in the portal."""

    name: str
    locked: StrictBool


class TicketTypeOut(_ExchangeRead, TicketTypeIn):
    """A stored ticket type; ``editedInPortal`` is true once a portal admin changed it (false again
    after the next API write)."""

    id: str

    createdAt: str
    editedInPortal: bool


class DocumentIn(_Writable):
    """A document's metadata. A deleted document needs only ``deleted: true`` (and an existing
    ``propertyId`` if it names one).

    Audience: ``contactIds`` (single contacts), else ``unitId`` (the unit), else the property.
    ``version`` is the client's version of the content (e.g. the SHA-256 of the source file).
    """

    title: str | None = None
    documentType: str | None = None
    fileName: str | None = None
    mimeType: str | None = None
    date: str | None = None
    propertyId: str | None = None
    unitId: str | None = None
    contactIds: list[str] | None = None
    version: str | None = None
    size: StrictInt | None = Field(default=None, ge=0)
    deleted: StrictBool | None = None

    @field_validator("date")
    @classmethod
    def _date(cls, value: str | None) -> str | None:
        return _check_date(value)


class DocumentOut(_ExchangeRead, DocumentIn):
    """A stored document with its content's state (``null`` until content was uploaded)."""

    id: str

    createdAt: str
    contentVersion: str | None
    contentSha256: str | None
    contentSize: int | None
    contentType: str | None


class TicketIn(_Writable):
    """A ticket (Vorgang; ERP: Meldung). ``visibility: contact`` needs ``contactId``."""

    ticketTypeId: str
    propertyId: str
    unitId: str | None = None
    contactId: str | None = None
    visibility: Literal["contact", "property"]
    title: str
    description: str | None = None
    status: Literal["open", "closed"]
    createdAt: str | None = None

    @field_validator("createdAt")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        return _check_time(value)


class PortalActivity(BaseModel):
    """The last thing done to a ticket in the portal: when, and what (``ticket created``,
    ``status: closed``, ``comment``)."""

    at: str
    what: str


class TicketOut(_ExchangeRead, TicketIn):
    """A stored ticket: ``origin`` says where it was made, ``lastPortalActivity`` what the portal
    did to it last (``null`` when nothing)."""

    id: str

    origin: Literal["erp", "portal"]
    lastPortalActivity: PortalActivity | None


class BulletinPostIn(_Writable):
    """A post on a property's bulletin board (Pinnwand)."""

    propertyId: str
    title: str
    text: str | None = None
    createdAt: str | None = None

    @field_validator("createdAt")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        return _check_time(value)


class BulletinPostOut(_ExchangeRead, BulletinPostIn):
    """A stored bulletin post; archived posts leave the board (and the default list)."""

    id: str


class CommentIn(_Writable):
    """A comment on a ticket; ``public: false`` is internal (portal staff only). Append-only."""

    ticketId: str
    text: str
    public: StrictBool
    createdAt: str | None = None
    author: str | None = None

    @field_validator("createdAt")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        return _check_time(value)


class CommentOut(_ExchangeRead, CommentIn):
    """A stored comment and where it was written."""

    id: str

    origin: Literal["erp", "portal"]


class TicketTypeList(BaseModel):
    """A page of ticket types."""

    list: list[TicketTypeOut]
    links: Links = Field(alias="_links")


class DocumentList(BaseModel):
    """A page of documents."""

    list: list[DocumentOut]
    links: Links = Field(alias="_links")


class TicketList(BaseModel):
    """A page of tickets."""

    list: list[TicketOut]
    links: Links = Field(alias="_links")


class BulletinPostList(BaseModel):
    """A page of bulletin posts."""

    list: list[BulletinPostOut]
    links: Links = Field(alias="_links")


class CommentList(BaseModel):
    """A page of comments."""

    list: list[CommentOut]
    links: Links = Field(alias="_links")


class _SandboxBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class TicketTypeEdit(_SandboxBody):
    """A portal admin renames a ticket type."""

    name: str


class PortalTicketIn(_SandboxBody):
    """A tenant reports something in the portal; a tenant's ticket is visible to them alone."""

    ticketTypeId: str
    propertyId: str
    unitId: str | None = None
    contactId: str
    title: str
    description: str | None = None
    visibility: Literal["contact", "property"] = "contact"


class PortalStatus(_SandboxBody):
    """A portal user changes a ticket's status."""

    status: Literal["open", "closed"]


class PortalCommentIn(_SandboxBody):
    """A tenant (public) or portal staff (public or internal) comments on a ticket in the portal."""

    text: str
    public: StrictBool
    author: str | None = None


class UploadLimit(_SandboxBody):
    """The largest document content the sandbox takes from now on."""

    maxBytes: int = Field(ge=1)


def _fields(model: type[_Writable]) -> tuple[str, ...]:
    return ("id", *(f for f in model.model_fields if f != "id"))


WRITABLE.update(
    {
        "ticket-types": _fields(TicketTypeIn),
        "documents": _fields(DocumentIn),
        "tickets": _fields(TicketIn),
        "bulletin-posts": _fields(BulletinPostIn),
        "comments": _fields(CommentIn),
    }
)

NO_CONTENT: dict[str, Any] = dict.fromkeys(KEPT_FIELDS["documents"])


# ---- rules -----------------------------------------------------------------------------------
def _property_problems(
    store: Store, property_id: str, unit_id: str | None, archived_ok: bool
) -> list[tuple[str, str]]:
    """The property must exist (and, unless ``archived_ok``, not be archived); a unit must be its."""
    prop = store.entry("properties", property_id)
    if prop is None:
        return [("propertyId", f"property {property_id} does not exist")]
    problems = []
    if prop.archived and not archived_ok:
        problems.append(("propertyId", f"property {property_id} is archived"))
    if unit_id is not None:
        unit = store.entry("units", unit_id)
        if unit is None:
            problems.append(("unitId", f"unit {unit_id} does not exist"))
        elif unit.parent_id != property_id:
            problems.append(
                ("unitId", f"unit {unit_id} belongs to property {unit.parent_id}, not {property_id}")
            )
    return problems


def _document_problems(store: Store, body: DocumentIn) -> list[tuple[str, str]]:
    """A live document needs its metadata and existing references; a deleted one nothing more (a
    document gone from the ERP is reported by id alone), or a property that exists if it names one."""
    if body.deleted:
        return (
            []
            if body.propertyId is None
            else _property_problems(store, body.propertyId, None, archived_ok=True)
        )
    problems: list[tuple[str, str]] = [
        (name, "required unless the document is deleted")
        for name in ("title", "documentType", "fileName", "mimeType", "date", "propertyId", "version", "size")
        if getattr(body, name) is None or getattr(body, name) == ""
    ]
    if body.mimeType and body.mimeType not in CONTENT_TYPES:
        problems.append(("mimeType", f"must be one of {', '.join(CONTENT_TYPES)}"))
    if body.propertyId is not None:
        problems += _property_problems(store, body.propertyId, body.unitId, archived_ok=False)
    for i, contact_id in enumerate(body.contactIds or []):
        if store.entry("contacts", contact_id) is None:
            problems.append((f"contactIds[{i}]", f"contact {contact_id} does not exist"))
    return problems


def _ticket_problems(
    store: Store, ticket_type_id: str, property_id: str, unit_id: str | None, contact_id: str | None
) -> list[tuple[str, str]]:
    """A ticket's references: its type, its property (and unit), its contact."""
    problems = []
    if store.entry("ticket-types", ticket_type_id) is None:
        problems.append(("ticketTypeId", f"ticket type {ticket_type_id} does not exist"))
    problems += _property_problems(store, property_id, unit_id, archived_ok=True)
    if contact_id is not None and store.entry("contacts", contact_id) is None:
        problems.append(("contactId", f"contact {contact_id} does not exist"))
    return problems


def _not_blank(**values: str | None) -> list[tuple[str, str]]:
    return [(name, "must not be empty") for name, value in values.items() if not (value or "").strip()]


def parse_content_digest(header: str | None) -> bytes:
    """The SHA-256 of an RFC 9530 ``Content-Digest`` header (``sha-256=:<base64>:``).

    Other algorithms in the same header are ignored; a header without a valid ``sha-256`` is
    refused (``422``): the sandbox takes no content it cannot check.
    """
    problem = "missing: send Content-Digest: sha-256=:<base64 of the SHA-256 of the body>:"
    for member in (header or "").split(","):
        name, _, value = member.strip().partition("=")
        if name.strip().lower() != "sha-256":
            continue
        value = value.strip()
        problem = "the sha-256 value must be base64 between colons (RFC 9530)"
        if len(value) > 2 and value[0] == value[-1] == ":":
            try:
                digest = base64.b64decode(value[1:-1], validate=True)
            except (binascii.Error, ValueError):
                break
            if len(digest) == 32:
                return digest
            problem = "the sha-256 value must be 32 bytes"
        break
    raise ApiError(422, f"Content-Digest: {problem}", [("Content-Digest", problem)])


def _origin_is(origin: str) -> Callable[[Entry], bool]:
    return lambda entry: entry.kept is not None and entry.kept.get("origin") == origin


# ---- routes ----------------------------------------------------------------------------------
def add_exchange_routes(
    app: FastAPI,
    state: SandboxState,
    durable: GroupCommit,
    errors_doc: dict[int | str, dict[str, Any]],
    listed: Listed,
    stored: Stored,
) -> None:
    """Add the exchange's ``/v2`` endpoints and the portal's side of it (``/_sandbox``) to ``app``.

    ``listed`` and ``stored`` are the app's list and single-record readers (same paging, same
    ``404``).
    """
    store = state.store

    def counters() -> Counters:
        return state.counters  # replaced by a reset

    async def write(
        entity: str, ref_id: str, writable: dict[str, Any], read_only: dict[str, Any], logged: bool = True
    ) -> tuple[str, int]:
        outcome = store.upsert(entity, ref_id, writable, read_only, payload_hash(writable), logged=logged)
        await durable()
        if logged:
            counters().write(entity, "upsert", outcome.effective)
        return outcome.body, 201 if outcome.created else 200

    def put_doc(model: type[BaseModel], tag: str, summary: str) -> dict[str, Any]:
        return {
            "responses": {200: {"model": model}, 201: {"model": model}, **errors_doc},
            "response_model": None,
            "tags": [tag],
            "summary": summary,
        }

    def kept(entity: str, ref_id: str, default: dict[str, Any]) -> dict[str, Any]:
        entry = store.entry(entity, ref_id)
        return dict(entry.kept) if entry is not None and entry.kept is not None else dict(default)

    # ---- ticket types ------------------------------------------------------------------------
    @app.put(
        "/v2/ticket-types/{id}", **put_doc(TicketTypeOut, "ticket-types", "Create or replace a ticket type")
    )
    async def put_ticket_type(id: str, body: TicketTypeIn) -> Response:
        """Upsert a ticket type; the write makes ``editedInPortal`` false again."""
        _raise_invalid(_not_blank(name=body.name))
        writable = _writable("ticket-types", id, body)
        return _json_text(*await write("ticket-types", id, writable, {"editedInPortal": False}))

    @app.get(
        "/v2/ticket-types",
        response_model=TicketTypeList,
        responses=errors_doc,
        tags=["ticket-types"],
        summary="List ticket types (paged, ordered by internalId)",
    )
    async def list_ticket_types(
        request: Request,
        page: PageParam = 1,
        page_size: PageSizeParam = 100,
        modified_after: ModifiedAfterParam = None,
    ) -> Response:
        """Ticket types, with whether a portal admin edited them."""
        return listed(request, "ticket-types", (page, page_size, modified_after, "false"))

    @app.get(
        "/v2/ticket-types/{id}",
        response_model=TicketTypeOut,
        responses=errors_doc,
        tags=["ticket-types"],
        summary="One ticket type by reference id",
    )
    async def get_ticket_type(id: str) -> Response:
        """One ticket type (404 when unknown)."""
        return _json_text(stored("ticket-types", id))

    # ---- documents ---------------------------------------------------------------------------
    @app.put(
        "/v2/documents/{id}", **put_doc(DocumentOut, "documents", "Create or replace a document's metadata")
    )
    async def put_document(id: str, body: DocumentIn) -> Response:
        """Upsert a document's metadata; ``deleted: true`` drops its content."""
        _raise_invalid(_document_problems(store, body))
        writable = _writable("documents", id, body)
        writable["deleted"] = bool(body.deleted)
        content = NO_CONTENT if body.deleted else kept("documents", id, NO_CONTENT)
        text, status = await write("documents", id, writable, content)
        if body.deleted:  # after the commit: a crash before it leaves the old content readable
            state.content.drop(id)
        return _json_text(text, status)

    @app.get(
        "/v2/documents",
        response_model=DocumentList,
        responses=errors_doc,
        tags=["documents"],
        summary="List documents (paged, ordered by internalId; deleted ones included)",
    )
    async def list_documents(
        request: Request,
        page: PageParam = 1,
        page_size: PageSizeParam = 100,
        modified_after: ModifiedAfterParam = None,
    ) -> Response:
        """Documents with their content's state."""
        return listed(request, "documents", (page, page_size, modified_after, "false"))

    @app.get(
        "/v2/documents/{id}",
        response_model=DocumentOut,
        responses=errors_doc,
        tags=["documents"],
        summary="One document's metadata by reference id",
    )
    async def get_document(id: str) -> Response:
        """One document (404 when unknown)."""
        return _json_text(stored("documents", id))

    binary = {"schema": {"type": "string", "format": "binary"}}

    @app.put(
        "/v2/documents/{id}/content",
        status_code=204,
        response_class=Response,
        responses={
            **errors_doc,
            409: {"model": ErrorBody, "description": "unknown or deleted document"},
            413: {"model": ErrorBody, "description": "larger than the limit (100 MB)"},
            415: {"model": ErrorBody, "description": "not PDF, JPEG or PNG"},
            422: {"model": ErrorBody, "description": "Content-Digest missing or not matching"},
        },
        tags=["documents"],
        summary="Upload (or replace) a document's content, streamed; checked against Content-Digest",
        openapi_extra={"requestBody": {"required": True, "content": dict.fromkeys(CONTENT_TYPES, binary)}},
    )
    async def put_document_content(
        id: str,
        request: Request,
        content_type: Annotated[
            str | None, Header(alias="Content-Type", description="application/pdf, image/jpeg or image/png")
        ] = None,
        content_digest: Annotated[
            str | None,
            Header(alias="Content-Digest", description="RFC 9530, required: sha-256=:<base64>:"),
        ] = None,
    ) -> Response:
        """Store the body as the document's content; the old content stays unless it all succeeds."""
        entry = store.entry("documents", id)
        if entry is None:
            raise ApiError(409, f"document {id} does not exist: PUT /v2/documents/{id} before its content")
        if "deleted" in entry.flags:
            raise ApiError(409, f"document {id} is deleted: it takes no content")
        media = (content_type or "").split(";")[0].strip().lower()
        if media not in CONTENT_TYPES:
            message = f"Content-Type {media or '(none)'} is not taken: send {', '.join(CONTENT_TYPES)}"
            raise ApiError(415, message, [("Content-Type", message)])
        expected = parse_content_digest(content_digest)
        limit = state.max_upload_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise ApiError(
                413, f"the content of document {id} has {length} bytes, more than the limit {limit}"
            )
        digest, size = hashlib.sha256(), 0
        temp = state.content.temp_path(id)
        try:
            with temp.open("wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    counters().upload_bytes_received += len(chunk)
                    if size > limit:
                        raise ApiError(
                            413, f"the content of document {id} is larger than the limit of {limit} bytes"
                        )
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.digest() != expected:
                got = base64.b64encode(digest.digest()).decode()
                message = (
                    f"the body's sha-256 is :{got}:, not what Content-Digest says; the old content is kept"
                )
                raise ApiError(422, message, [("Content-Digest", "does not match the body")])
            entry = store.entry("documents", id)  # deleted while the body arrived?
            if entry is None or "deleted" in entry.flags:
                raise ApiError(409, f"document {id} was deleted during the upload")
            state.content.install(temp, id)
        finally:
            temp.unlink(missing_ok=True)
        record = store.get_dict("documents", id) or {}
        facts = {
            "contentVersion": record.get("version"),
            "contentSha256": digest.hexdigest(),
            "contentSize": size,
            "contentType": media,
        }
        effective = entry.kept != facts
        if effective:
            store.amend("documents", id, facts)
        store.log_write("documents", id, "upload", digest.hexdigest(), effective)
        await durable()
        counters().write("documents", "upload", effective)
        counters().upload(id, size)
        return Response(status_code=204)

    @app.get(
        "/v2/documents/{id}/content",
        response_class=Response,
        responses={200: {"content": dict.fromkeys(CONTENT_TYPES, binary)}, **errors_doc},
        tags=["documents"],
        summary="A document's content (404 when none was uploaded)",
    )
    async def get_document_content(id: str) -> Response:
        """The stored bytes, with their ``Content-Type`` and ``Content-Digest``."""
        entry = store.entry("documents", id)
        if entry is None:
            raise ApiError(404, f"document {id} does not exist")
        facts = entry.kept or {}
        path = state.content.path(id)
        if not facts.get("contentSha256") or not path.exists():
            raise ApiError(404, f"document {id} has no content")
        b64 = base64.b64encode(bytes.fromhex(facts["contentSha256"])).decode()
        return FileResponse(
            path, media_type=facts.get("contentType"), headers={"Content-Digest": f"sha-256=:{b64}:"}
        )

    # ---- tickets -----------------------------------------------------------------------------
    @app.put("/v2/tickets/{id}", **put_doc(TicketOut, "tickets", "Create or replace a ticket"))
    async def put_ticket(id: str, body: TicketIn) -> Response:
        """Upsert a ticket; a ticket made in the portal keeps its origin and portal activity."""
        problems = _not_blank(title=body.title)
        if body.visibility == "contact" and body.contactId is None:
            problems.append(("contactId", "required when visibility is contact"))
        problems += _ticket_problems(store, body.ticketTypeId, body.propertyId, body.unitId, body.contactId)
        _raise_invalid(problems)
        read_only = kept("tickets", id, {"origin": "erp", "lastPortalActivity": None})
        return _json_text(*await write("tickets", id, _writable("tickets", id, body), read_only))

    @app.get(
        "/v2/tickets",
        response_model=TicketList,
        responses=errors_doc,
        tags=["tickets"],
        summary="List tickets (paged; origin=portal&modifiedAfter= for what changed in the portal)",
    )
    async def list_tickets(
        request: Request,
        page: PageParam = 1,
        page_size: PageSizeParam = 100,
        modified_after: ModifiedAfterParam = None,
        origin: OriginParam = None,
    ) -> Response:
        """Tickets, optionally only those made through the API or in the portal."""
        where = _origin_is(origin) if origin else None
        return listed(request, "tickets", (page, page_size, modified_after, "false"), where)

    @app.get(
        "/v2/tickets/{id}",
        response_model=TicketOut,
        responses=errors_doc,
        tags=["tickets"],
        summary="One ticket by reference id",
    )
    async def get_ticket(id: str) -> Response:
        """One ticket (404 when unknown)."""
        return _json_text(stored("tickets", id))

    # ---- bulletin posts ----------------------------------------------------------------------
    @app.put(
        "/v2/bulletin-posts/{id}",
        **put_doc(BulletinPostOut, "bulletin-posts", "Create or replace a bulletin post (un-archives it)"),
    )
    async def put_bulletin_post(id: str, body: BulletinPostIn) -> Response:
        """Upsert a post on a property's bulletin board."""
        _raise_invalid(
            _not_blank(title=body.title) + _property_problems(store, body.propertyId, None, archived_ok=True)
        )
        return _json_text(*await write("bulletin-posts", id, _writable("bulletin-posts", id, body), {}))

    @app.get(
        "/v2/bulletin-posts",
        response_model=BulletinPostList,
        responses=errors_doc,
        tags=["bulletin-posts"],
        summary="List bulletin posts (paged, ordered by internalId)",
    )
    async def list_bulletin_posts(
        request: Request,
        page: PageParam = 1,
        page_size: PageSizeParam = 100,
        modified_after: ModifiedAfterParam = None,
        include_archived: IncludeArchivedParam = "false",
    ) -> Response:
        """Bulletin posts; archived (removed) ones only with ``includeArchived=true``."""
        return listed(request, "bulletin-posts", (page, page_size, modified_after, include_archived))

    @app.get(
        "/v2/bulletin-posts/{id}",
        response_model=BulletinPostOut,
        responses=errors_doc,
        tags=["bulletin-posts"],
        summary="One bulletin post by reference id",
    )
    async def get_bulletin_post(id: str) -> Response:
        """One bulletin post (404 when unknown)."""
        return _json_text(stored("bulletin-posts", id))

    # ---- comments ----------------------------------------------------------------------------
    @app.put(
        "/v2/comments/{id}",
        **put_doc(CommentOut, "comments", "Create a comment (append-only: 409 for other content)"),
    )
    async def put_comment(id: str, body: CommentIn) -> Response:
        """Create a comment; the same content again is ``200`` unchanged, other content ``409``."""
        writable = _writable("comments", id, body)
        entry = store.entry("comments", id)
        if entry is not None and entry.body_hash != payload_hash(writable):
            raise ApiError(
                409,
                f"comment {id} exists with other content: comments are append-only, "
                "write a new comment with a new id instead of changing this one",
            )
        _raise_invalid(
            _not_blank(text=body.text)
            + (
                [("ticketId", f"ticket {body.ticketId} does not exist")]
                if store.entry("tickets", body.ticketId) is None
                else []
            )
        )
        return _json_text(*await write("comments", id, writable, kept("comments", id, {"origin": "erp"})))

    @app.get(
        "/v2/comments",
        response_model=CommentList,
        responses=errors_doc,
        tags=["comments"],
        summary="List comments (paged; origin=portal&modifiedAfter= for those written in the portal)",
    )
    async def list_comments(
        request: Request,
        page: PageParam = 1,
        page_size: PageSizeParam = 100,
        modified_after: ModifiedAfterParam = None,
        origin: OriginParam = None,
    ) -> Response:
        """Comments, optionally only those written through the API or in the portal."""
        where = _origin_is(origin) if origin else None
        return listed(request, "comments", (page, page_size, modified_after, "false"), where)

    @app.get(
        "/v2/comments/{id}",
        response_model=CommentOut,
        responses=errors_doc,
        tags=["comments"],
        summary="One comment by reference id",
    )
    async def get_comment(id: str) -> Response:
        """One comment (404 when unknown)."""
        return _json_text(stored("comments", id))

    # ---- the portal's side (sandbox-only) ----------------------------------------------------
    @app.post(
        "/_sandbox/ticket-types/{id}/edit",
        response_model=TicketTypeOut,
        tags=["sandbox"],
        summary="A portal admin edits a ticket type (editedInPortal: true)",
    )
    async def edit_ticket_type(id: str, body: TicketTypeEdit) -> Response:
        """What a portal admin does to a ticket type; not counted as a write."""
        if store.entry("ticket-types", id) is None:
            raise ApiError(404, f"ticket type {id} does not exist")
        changes = {"name": body.name, "editedInPortal": True}
        text = store.amend("ticket-types", id, changes, WRITABLE["ticket-types"])
        await durable()
        return _json_text(text or "")

    @app.post(
        "/_sandbox/tickets",
        status_code=201,
        response_model=TicketOut,
        tags=["sandbox"],
        summary="A tenant creates a ticket in the portal (id P-<n>, origin portal)",
    )
    async def portal_ticket(body: PortalTicketIn) -> Response:
        """A tenant's report; a tenant cannot make an object message (visibility property): 422."""
        if body.visibility == "property":
            message = (
                "a tenant cannot create a ticket visible to the whole property (an object message); "
                "only the property management can"
            )
            raise ApiError(422, message, [("visibility", message)])
        _raise_invalid(
            _not_blank(title=body.title)
            + _ticket_problems(store, body.ticketTypeId, body.propertyId, body.unitId, body.contactId)
        )
        now = now_iso()
        ref_id = f"P-{store.next_number('tickets', 'P-')}"
        writable = {
            "id": ref_id,
            "ticketTypeId": body.ticketTypeId,
            "propertyId": body.propertyId,
            "unitId": body.unitId,
            "contactId": body.contactId,
            "visibility": "contact",
            "title": body.title,
            "description": body.description,
            "status": "open",
            "createdAt": now,
        }
        activity = {"origin": "portal", "lastPortalActivity": {"at": now, "what": "ticket created"}}
        text, _status = await write("tickets", ref_id, writable, activity, logged=False)
        return _json_text(text, 201)

    @app.post(
        "/_sandbox/tickets/{id}/status",
        response_model=TicketOut,
        tags=["sandbox"],
        summary="A portal user changes a ticket's status",
    )
    async def portal_status(id: str, body: PortalStatus) -> Response:
        """The status changes and ``lastPortalActivity`` says so (``status: <s>``)."""
        if store.entry("tickets", id) is None:
            raise ApiError(404, f"ticket {id} does not exist")
        activity = {"at": now_iso(), "what": f"status: {body.status}"}
        changes = {"status": body.status, "lastPortalActivity": activity}
        text = store.amend("tickets", id, changes, WRITABLE["tickets"])
        await durable()
        return _json_text(text or "")

    @app.post(
        "/_sandbox/tickets/{id}/comments",
        status_code=201,
        response_model=CommentOut,
        tags=["sandbox"],
        summary="A tenant or portal staff comments on a ticket in the portal (id PC-<n>)",
    )
    async def portal_comment(id: str, body: PortalCommentIn) -> Response:
        """A comment made in the portal; a public one is the ticket's last portal activity."""
        if store.entry("tickets", id) is None:
            raise ApiError(404, f"ticket {id} does not exist")
        _raise_invalid(_not_blank(text=body.text))
        now = now_iso()
        ref_id = f"PC-{store.next_number('comments', 'PC-')}"
        writable = {
            "id": ref_id,
            "ticketId": id,
            "text": body.text,
            "public": body.public,
            "createdAt": now,
            "author": body.author,
        }
        text, _status = await write("comments", ref_id, writable, {"origin": "portal"}, logged=False)
        if body.public:
            store.amend("tickets", id, {"lastPortalActivity": {"at": now, "what": "comment"}})
            await durable()
        return _json_text(text, 201)

    @app.post(
        "/_sandbox/upload-limit",
        tags=["sandbox"],
        summary="The largest document content taken from now on",
    )
    async def upload_limit(body: UploadLimit) -> dict[str, Any]:
        """Change the upload limit (default 100 MB, or the ``--max-upload-bytes`` of the start)."""
        state.max_upload_bytes = body.maxBytes
        return {"maxBytes": body.maxBytes}


__all__ = ["CONTENT_TYPES", "add_exchange_routes", "parse_content_digest"]
