"""The portal exchange as tasks: documents, messages and notes to the portal, tickets back to the ERP.

The second phase of the portal sync (docs/portal-exchange.md): after the master data, in the same
flow run, so that every property, unit and contact a document or ticket names is at the portal.

read the ERP's documents, messages, notes, orders -> the files' digests -> the portal's ticket
types and what changed there -> rules -> plan by difference -> convert Word files -> load (the
sync engine's batches) -> e-mail contacts not in the portal -> tickets and comments written in the
portal into the ERP -> the messages' portal status

Unlike the master data, the exchange is built in full every run: its rows are few per person,
its rules are time-driven, and the incremental memo's bookkeeping would cost more than it saves.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.exc import SQLAlchemyError

from config.settings import HausflowSettings
from connectors.documents import DigestCache, convert_to_pdf, first_changed_file
from connectors.erp.database import make_engine
from connectors.erp.extract import (
    TableRows,
    document_path,
    document_root,
    exchange_signature,
    extract_exchange_rows,
)
from connectors.erp.writeback import (
    PortalChange,
    PortalComment,
    PortalTicket,
    WritebackError,
    enter_portal_comments,
    enter_portal_tickets,
    record_portal_changes,
    record_portal_status,
)
from connectors.mail import EMAILS, MailClient
from connectors.portal.streams import EXCHANGE_STREAMS
from connectors.state_store import Confirmation, ProtocolRow, StateEntry, StateStore, record_json
from connectors.sync.client import PartnerClient
from tasks.portal_exchange_rules import (
    ExchangeRules,
    FileFacts,
    build_comments,
    build_documents,
    build_emails,
    build_messages,
    build_ticket_types,
    inbound_messages,
    known_tickets,
    portal_changes,
)
from tasks.portal_rules import Skip
from tasks.portal_tasks import PORTAL, TARGET, known_failures
from tasks.sync.partner import Partner
from tasks.sync.plan import Plan, PlannedWrite, desired_hashes, plan_changes, write_candidates

EXCHANGE_ENTITIES = tuple(s.name for s in EXCHANGE_STREAMS)
"""The portal entities of the exchange, in write order."""
STEPS = ("emails", "inbound")
"""The exchange's steps that are not portal entities: e-mails to contacts not in the portal, and
tickets and comments from the portal into the ERP. ``entities`` of the portal sync takes them too."""
CURSOR = "inbound"
QUIET = "exchange-quiet"
"""The state store's record (``sync_cursors``) of the last complete exchange: its fingerprint and run."""
TRANSIENT_SKIPS = frozenset({"conversion_failed", "document_file_unreadable", "parent_failed"})
"""Skips that may clear without any change (a share mounted again, LibreOffice back): a run that
had them does not let the next one call the exchange quiet."""
CODE = tuple(
    Path(__file__).resolve().parent.parent / name
    for name in ("tasks/portal_exchange.py", "tasks/portal_exchange_rules.py", "connectors/portal/streams.py")
)
CURSOR_OVERLAP = timedelta(seconds=2)
"""The portal's list is read from a little before the cursor: a ticket stamped in the same
millisecond as the last one read is not missed; entering it again does nothing."""
NOT_SENT = "nicht übertragen: vom Portal abgelehnt oder zurückgehalten (siehe Protokoll)"
CONVERT_CHUNK = 50
"""Word files per LibreOffice call: one call costs about a second to start, and then ~0.05 s a
file; a call of hundreds of files could run past its timeout on a busy machine."""
SETTLED_BY_PORTAL = "contact registered in the portal"
NO_ADDRESS = "contact not registered in the portal, without a usable e-mail address"


def connect_mail(settings: HausflowSettings) -> PartnerClient:
    """The SMTP server as a partner of the sync engine (stream ``emails``)."""
    return MailClient.from_settings(settings.mail)


MAIL = Partner("mail", (EMAILS,), connect_mail)


def _dicts(table: TableRows) -> list[dict[str, Any]]:
    return [dict(zip(table.columns, row, strict=True)) for row in table.rows]


def converter_available(settings: HausflowSettings) -> bool:
    """Whether LibreOffice can be called (the program named in ``portal.converter``)."""
    return shutil.which(settings.portal.converter) is not None


@dataclass
class PortalSide:
    """What the exchange reads from the portal each run."""

    ticket_types: dict[str, dict[str, Any]]
    tickets: list[dict[str, Any]]
    comments: list[dict[str, Any]]
    newest: str | None


@dataclass(frozen=True)
class ExchangeInputs:
    """The exchange's inputs as a run found them before it read anything: the ERP's exchange
    tables by aggregates, and the first document file no longer as its digest was read."""

    aggregates: list[str]
    changed_file: str | None
    files: int


@dataclass
class ExchangePlan:
    """The exchange's plan, what the rules held back, and what the ERP is told afterwards."""

    plan: Plan
    skips: list[Skip]
    held: list[Skip]
    status: dict[int, str]
    records: dict[str, dict[str, dict[str, Any]]]
    ticket_refs: dict[int, str]
    contact_of: dict[str, str] = field(default_factory=dict)
    every_comment: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: Mapping[str, Sequence[dict[str, Any]]] = field(default_factory=dict)
    portal: PortalSide | None = None
    workdir: str | None = None
    quiet: bool = False
    basis: tuple[set[str], set[str], set[str]] | None = None
    inputs: ExchangeInputs | None = None
    unsettled_files: int = 0


@task(name="check-exchange-inputs", cache_policy=NO_CACHE)
def check_exchange_inputs(settings: HausflowSettings) -> ExchangeInputs:
    """The ERP's exchange tables by aggregates, and each document file the last run read by ``stat``.

    Why a task of its own: it needs nothing of the master data, so the flow starts it alongside
    them (a thread of the task runner: SQLite and ``stat`` wait outside Python's lock). Taken
    before the exchange reads its rows, so a change made while a run reads them is seen by the
    next one.
    """
    engine = make_engine(settings.erp_url)
    try:
        aggregates = exchange_signature(engine)
    finally:
        engine.dispose()
    known = StateStore(settings.state_url).file_stats()
    return ExchangeInputs(aggregates, first_changed_file(known), len(known))


def fingerprint_exchange(
    settings: HausflowSettings,
    today: date,
    inputs: ExchangeInputs,
    released: set[str],
    portal_contacts: set[str],
    portal_units: set[str],
    portal: PortalSide,
) -> str:
    """A digest of everything the exchange's plan depends on, read cheaply.

    The ERP's exchange tables by aggregates (``inputs``, :func:`check_exchange_inputs`), the
    released objects, the contacts and units at the portal, the portal's ticket types, the state
    store's change sequence and open quarantine, the business date, the settings and the
    exchange's code. Equal to the fingerprint a complete, clean exchange left, with no document
    file changed since it was read (``inputs.changed_file``): the exchange has nothing to do.
    """
    store = StateStore(settings.state_url)
    digest = hashlib.blake2b(digest_size=16)
    parts: list[Any] = [
        today.isoformat(),
        settings.erp_url,
        settings.portal.model_dump_json(),
        settings.licences.model_dump_json(),
        settings.mail.model_dump_json(),
        inputs.aggregates,
        store.current_seq(),
        len(store.open_quarantine(TARGET)),
        len(store.open_quarantine(MAIL.name)),
        len(store.load_pending(TARGET)),  # e.g. a document's file still to send after its fields
        len(store.load_pending(MAIL.name)),
        sorted(portal.ticket_types.items()),
    ]
    for part in parts:
        digest.update(repr(part).encode())
    for ids in (released, portal_contacts, portal_units):
        digest.update("\n".join(sorted(ids)).encode())
        digest.update(b"\x00")
    for path in CODE:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def quiet_since(
    settings: HausflowSettings, fingerprint: str, inputs: ExchangeInputs, portal: PortalSide
) -> tuple[str | None, str]:
    """The run whose complete exchange left this very fingerprint, if no document file changed
    and nothing came from the portal since; else ``None`` and why the exchange is compared in full."""
    if inputs.changed_file is not None:
        return None, f"the document file {inputs.changed_file} changed since it was read"
    recorded = StateStore(settings.state_url).cursor(TARGET, QUIET)
    if not recorded or ":" not in recorded:
        return (
            None,
            "the last exchange was not complete and clean (failures, a partial run, or skips that may clear)",
        )
    digest, run_id = recorded.split(":", 1)
    if digest != fingerprint:
        return None, "the ERP, the files, the portal, the settings or the confirmed state changed"
    cursor = StateStore(settings.state_url).cursor(TARGET, CURSOR) or ""
    news = [r for r in (*portal.tickets, *portal.comments) if str(r.get("updatedAt") or "") > cursor]
    if news:
        return None, f"{len(news)} tickets or comments changed in the portal"
    return run_id, ""


def remember_quiet(settings: HausflowSettings, fingerprint: str | None, run_id: str) -> None:
    """Record (or, with ``None``, forget) the fingerprint of a complete, clean exchange."""
    StateStore(settings.state_url).set_cursor(
        TARGET, QUIET, f"{fingerprint}:{run_id}" if fingerprint else "-"
    )


def earlier_skips(settings: HausflowSettings, run_id: str) -> tuple[list[Skip], list[Skip]]:
    """The exchange's skips and quarantined records as the run ``run_id`` wrote them to the protocol:
    a quiet run reports them again, as a run that compared everything would."""
    entities = {*EXCHANGE_ENTITIES, *STEPS}
    rows = StateStore(settings.state_url).protocol_rows(
        run_id, outcomes=("skipped", "quarantined"), limit=1_000_000
    )
    skips = [
        Skip(r.entity, r.ref_id, "unchanged", r.reason or "")
        for r in rows
        if r.entity in entities and r.outcome == "skipped"
    ]
    held = []
    for r in rows:
        if r.entity in entities and r.outcome == "quarantined":
            reason, _, rule = (r.reason or "").rpartition(" [")
            held.append(
                Skip(r.entity, r.ref_id, rule.rstrip("]") or "quarantine", reason or (r.reason or ""))
            )
    return skips, held


@task(name="extract-exchange", cache_policy=NO_CACHE)
def extract_exchange(settings: HausflowSettings) -> dict[str, list[dict[str, Any]]]:
    """Read documents, message types, messages, notes and orders from the ERP (chunked)."""
    logger = get_run_logger()
    engine = make_engine(settings.erp_url)
    try:
        tables = {name: _dicts(t) for name, t in extract_exchange_rows(engine).items()}
    finally:
        engine.dispose()
    logger.info("Read the ERP's exchange: %s.", ", ".join(f"{len(r):,} {n}" for n, r in tables.items()))
    return tables


@task(name="read-document-files", cache_policy=NO_CACHE)
def read_document_files(
    settings: HausflowSettings,
    documents: Sequence[dict[str, Any]],
    today: date,
    objects: Collection[str] | None = None,
) -> tuple[dict[int, FileFacts], int]:
    """Size and SHA-256 of each file a released document type points to, and how many files
    were read whose digest could not be remembered (changed just now: the next run reads them
    again, so this one does not let it be quiet).

    A file is read again only when its size or modification time changed since the digest was
    remembered (``file_digests`` in the state store); every other file costs one ``stat``.
    ``objects``: a run for some objects (a partition of a partitioned sync) reads only their
    documents' files, and forgets no other file's digest (another run may be reading it).
    """
    logger = get_run_logger()
    rules = ExchangeRules.from_settings(settings.portal, today)
    root = document_root(settings.erp_url, settings.portal.document_dir)
    store = StateStore(settings.state_url)
    cache = DigestCache(store.file_digests())
    facts: dict[int, FileFacts] = {}
    wanted = rules.document_types | rules.document_types_without_time_filter
    for doc in documents:
        if doc.get("doc_type") not in wanted:
            continue  # never uploaded: reported as deleted, or not at all
        if objects is not None and str(doc.get("object_no")) not in objects:
            continue
        raw = doc.get("content_path")
        if not raw:
            facts[doc["document_id"]] = FileFacts(None, None, None, "the ERP names no file for it")
            continue
        path = document_path(root, raw)
        try:
            size = path.stat().st_size
            digest = cache.digest(path)
        except OSError as exc:
            facts[doc["document_id"]] = FileFacts(
                str(path), None, None, f"its file cannot be read ({exc.strerror})"
            )
            continue
        facts[doc["document_id"]] = FileFacts(str(path), size, digest, None)
    changed = cache.changed()
    store.save_file_digests(changed, cache.gone() if objects is None else ())
    logger.info("Document files: %d checked, %d read for their digest.", len(facts), len(changed))
    return facts, cache.unsettled


@task(name="read-portal-exchange", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
async def read_portal_exchange(settings: HausflowSettings, inbound: bool) -> PortalSide:
    """The portal's ticket types, and the tickets and comments changed there since the cursor."""
    client = PORTAL.connect(settings)
    cursor = StateStore(settings.state_url).cursor(TARGET, CURSOR) if inbound else None
    since = None
    if cursor:
        since = (datetime.fromisoformat(cursor.replace("Z", "+00:00")) - CURSOR_OVERLAP).isoformat()

    async def news() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        if not inbound:
            return [], []
        tickets = await client.alist_records("tickets", modified_after=since)
        comments = await client.alist_records("comments", modified_after=since, filters={"origin": "portal"})
        return tickets, comments

    # the types alongside the news; the comments after the tickets: the cursor may move to the
    # newest ticket read, and a ticket or comment made in between is later than that and read again
    type_list, (tickets, comments) = await asyncio.gather(client.alist_records("ticket_types"), news())
    types = {str(t["id"]): t for t in type_list}
    if not inbound:
        return PortalSide(types, [], [], None)
    stamps = [str(r["updatedAt"]) for r in tickets if r.get("updatedAt")]
    return PortalSide(types, tickets, comments, max(stamps) if stamps else cursor)


@task(name="plan-exchange", cache_policy=NO_CACHE)
def plan_exchange(
    settings: HausflowSettings,
    rows: Mapping[str, Sequence[dict[str, Any]]],
    files: Mapping[int, FileFacts],
    portal: PortalSide,
    released: set[str],
    portal_contacts: set[str],
    portal_units: set[str],
    today: date,
    entities: Sequence[str] | None,
    full_resync: bool,
    partial: bool,
) -> ExchangePlan:
    """The exchange's records by the rules, compared with what the portal confirmed: the plan."""
    logger = get_run_logger()
    rules = ExchangeRules.from_settings(settings.portal, today)
    chosen = tuple(e for e in EXCHANGE_ENTITIES if not entities or e in entities)
    store = StateStore(settings.state_url)
    state: dict[str, dict[str, StateEntry]] = {e: store.load_state(TARGET, e) for e in EXCHANGE_ENTITIES}

    def at_portal(entity: str) -> set[str]:
        return {rid for rid, entry in state[entity].items() if entry.status == "active"}

    skips: list[Skip] = []
    types, changed_types = build_ticket_types(rows["message_types"], portal.ticket_types)
    for code, reason in changed_types.items():
        skips.append(Skip("ticket_types", code, "type_changed_in_portal", reason))
    documents, uploads, doc_skips = build_documents(
        rules,
        rows["documents"],
        released,
        files,
        portal_contacts,
        portal_units,
        converter_available(settings),
    )
    messages = build_messages(
        rules,
        rows["messages"],
        rows["message_types"],
        released,
        at_portal("tickets"),
        at_portal("bulletin_posts"),
        changed_types,
        portal_contacts,
    )
    # every comment's payload (its e-mail may still be due); those at the portal are never sent again
    every_comment, comment_skips = build_comments(
        rules, rows["notes"], rows["orders"], messages.ticket_refs, ()
    )
    sent = at_portal("comments")
    comments = {ref: c for ref, c in every_comment.items() if ref not in sent}
    skips += doc_skips + messages.skipped + comment_skips
    records = {
        "ticket_types": types,
        "documents": documents,
        "tickets": messages.tickets,
        "bulletin_posts": messages.posts,
        "comments": comments,
    }
    records = {e: r for e, r in records.items() if e in chosen}
    streams = {s.name: s for s in EXCHANGE_STREAMS if s.name in chosen}
    hashes = desired_hashes(streams, records)
    candidates = write_candidates(records, state, hashes, full_resync)
    open_entries = [e for e in store.open_quarantine(TARGET) if e["entity"] in chosen]
    held_skips, held = known_failures(open_entries, candidates)
    # a document the rules skipped this run (file unreadable, LibreOffice missing, its contact held)
    # stays at the portal as it is: only a document gone from the ERP is reported as deleted
    held |= {("documents", s.ref_id) for s in doc_skips}
    plan = plan_changes(
        EXCHANGE_STREAMS,
        records,
        state,
        held=held,
        full_resync=full_resync,
        allow_archive=not partial,
        entities=chosen,
        hashes=hashes,
    )
    for i, write in enumerate(
        plan.writes
    ):  # the file to upload travels with the write, never compared or sent
        upload = uploads.get(write.ref_id) if write.entity == "documents" and write.op == "upsert" else None
        if upload is not None and write.payload is not None:
            content = {
                "path": upload.path,
                "convert": upload.convert,
                "mimeType": upload.mime_type,
                "sha256": upload.sha256,
            }
            plan.writes[i] = replace(write, payload={**write.payload, "_content": content})
    contact_of = {
        ref: str(t["contactId"])
        for ref, t in messages.tickets.items()
        if t.get("visibility") == "contact" and t.get("contactId")
    }
    counts = plan.counts()
    logger.info(
        "Exchange plan: %s.",
        "; ".join(
            f"{e}: "
            + ", ".join(
                [f"{n:,} {o}" for (ent, o), n in sorted(counts.items()) if ent == e]
                + [f"{plan.unchanged.get(e, 0):,} unchanged"]
            )
            for e in chosen
        ),
    )
    return ExchangePlan(
        plan, skips, held_skips, messages.status, records, messages.ticket_refs, contact_of, every_comment
    )


@task(name="convert-documents", cache_policy=NO_CACHE)
def convert_documents(settings: HausflowSettings, plan: Plan, workdir: str) -> list[Skip]:
    """Convert the Word and OpenDocument files of this run's uploads to PDF, in one LibreOffice call.

    A document whose conversion fails leaves the plan with the reason: never sent unconverted.
    """
    logger = get_run_logger()
    todo = [
        w
        for w in plan.writes
        if w.entity == "documents" and w.payload and (w.payload.get("_content") or {}).get("convert")
    ]
    if not todo:
        return []
    sources = sorted({Path(w.payload["_content"]["path"]) for w in todo if w.payload})
    results: dict[Path, Path | str] = {}
    for i in range(0, len(sources), CONVERT_CHUNK):  # each call with its own timeout
        chunk = sources[i : i + CONVERT_CHUNK]
        results.update(convert_to_pdf(chunk, Path(workdir) / str(i), settings.portal.converter))
    failed: set[str] = set()
    skips: list[Skip] = []
    converted: dict[str, PlannedWrite] = {}
    for write in todo:
        assert write.payload is not None
        content = write.payload["_content"]
        outcome = results.get(Path(content["path"]))
        if isinstance(outcome, Path):
            done = {**content, "path": str(outcome), "convert": False, "sha256": None}
            converted[write.ref_id] = replace(write, payload={**write.payload, "_content": done})
            continue
        failed.add(write.ref_id)
        title = write.payload.get("title") or write.ref_id
        reason = f"document {title!r} ({write.ref_id}) not converted to PDF: {outcome}; not sent unconverted"
        skips.append(Skip("documents", write.ref_id, "conversion_failed", reason))
    plan.writes = [
        converted.get(w.ref_id, w) if w.entity == "documents" else w
        for w in plan.writes
        if not (w.entity == "documents" and w.ref_id in failed)
    ]
    logger.info("Converted %d of %d Word/OpenDocument files to PDF.", len(todo) - len(failed), len(todo))
    return skips


@task(name="plan-emails", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
async def plan_emails(
    settings: HausflowSettings,
    run_id: str,
    exchange: ExchangePlan,
    persons: Mapping[str, dict[str, Any]],
) -> tuple[Plan, list[Skip]]:
    """E-mails to contacts that are not registered in the portal, once per ticket and comment.

    Every ticket and comment for one contact is settled once: by the portal (the contact is
    registered there: recorded without a mail), or by an e-mail. Only the unsettled ones that the
    portal holds are looked at, so a run without new tickets asks the portal nothing.
    """
    logger = get_run_logger()
    plan = Plan()
    if not settings.portal.notify_unregistered_by_email:
        logger.info(
            "E-mails to contacts not registered in the portal are switched off in profile %r "
            "(portal.notify_unregistered_by_email = false): none is sent.",
            settings.profile,
        )
        return plan, []
    store = StateStore(settings.state_url)
    settled = store.load_state(MAIL.name, "emails")
    tickets_at = {r for r, e in store.load_state(TARGET, "tickets").items() if e.status == "active"}
    comments_at = {r for r, e in store.load_state(TARGET, "comments").items() if e.status == "active"}
    created: list[tuple[str, Literal["ticket", "comment"], dict[str, Any]]] = []
    tickets = exchange.records.get("tickets", {})
    for ref in exchange.contact_of:
        if ref in tickets_at and f"ticket-{ref}" not in settled:
            created.append((ref, "ticket", tickets[ref]))
    for ref, comment in exchange.every_comment.items():
        if (
            ref in comments_at
            and f"comment-{ref}" not in settled
            and comment.get("ticketId") in exchange.contact_of
        ):
            created.append((ref, "comment", comment))
    if not created:
        return plan, []
    contact_ids = sorted({exchange.contact_of[c["ticketId"] if k == "comment" else r] for r, k, c in created})
    client = PORTAL.connect(settings)
    found = await client.aread_many("contacts", contact_ids)
    registered = {cid: bool((rec or {}).get("isRegistered")) for cid, rec in found.items()}
    emails, skips = build_emails(created, persons, registered, tickets)
    for entry in store.open_quarantine(
        MAIL.name
    ):  # refused by the mail server: held while the mail is the same
        ref = entry["ref_id"]
        if (
            entry["rule"] == f"{MAIL.name}_rejected"
            and ref in emails
            and record_json(emails[ref]) == entry["record_json"]
        ):
            del emails[ref]
            skips.append(Skip("emails", ref, entry["rule"], f"held: {entry['reason']}"))
    no_address = {s.ref_id for s in skips if s.rule in ("email_address_missing", "email_address_invalid")}
    by_portal: list[Confirmation] = []
    unreachable: list[Confirmation] = []
    for ref, kind, payload in created:
        key = f"{kind}-{ref}"
        if key in emails:
            continue
        cid = exchange.contact_of[payload["ticketId"] if kind == "comment" else ref]
        # settled for good, so that the portal is not asked again each run: read in the portal, or
        # no address to write to (that skip is in the protocol with its reason)
        if registered.get(cid):
            by_portal.append(Confirmation("emails", key, "upsert", SETTLED_BY_PORTAL))
        elif key in no_address:
            unreachable.append(Confirmation("emails", key, "upsert", NO_ADDRESS))
    store.confirm(
        MAIL.name,
        by_portal + unreachable,
        run_id,
        [ProtocolRow("emails", c.ref_id, "skipped", SETTLED_BY_PORTAL) for c in by_portal],
    )
    hashes = desired_hashes({"emails": EMAILS}, {"emails": emails})
    plan = plan_changes((EMAILS,), {"emails": emails}, {}, hashes=hashes, allow_archive=False)
    logger.info(
        "E-mails: %d new tickets and comments for single contacts; %d of them go by e-mail, %d to registered contacts.",
        len(created),
        len(emails),
        len(by_portal),
    )
    return plan, skips


@task(name="enter-portal-tickets", cache_policy=NO_CACHE)
def enter_portal_tickets_task(
    settings: HausflowSettings, portal: PortalSide, rows: Mapping[str, Sequence[dict[str, Any]]]
) -> tuple[dict[str, int], list[Skip]]:
    """Tickets and public comments written in the portal into the ERP, each exactly once.

    The ERP keys them by the portal's id, so entering one again does nothing; the cursor
    advances only after the ERP committed them.
    """
    logger = get_run_logger()
    known_comments = [str(n["portal_comment_id"]) for n in rows["notes"] if n.get("portal_comment_id")]
    new_messages, new_notes, skips = inbound_messages(
        portal.tickets,
        portal.comments,
        known_tickets(rows["messages"]),
        rows["message_types"],
        settings.portal.erp_user,
        known_comments,
    )
    tickets = [_fields(PortalTicket, m) for m in new_messages]
    comments = [_fields(PortalComment, n) for n in new_notes]
    engine = make_engine(settings.erp_url)
    try:
        entered, refused = _enter_each(engine, tickets, settings.portal.erp_user)
        noted = enter_portal_comments(engine, comments, settings.portal.erp_user)
        changes = portal_changes(portal.tickets, rows["messages"])
        record_portal_changes(engine, [PortalChange(mid, at, what) for mid, (at, what) in changes.items()])
    finally:
        engine.dispose()
    skips += refused
    held_at = [
        str(t["updatedAt"])
        for t in portal.tickets
        if t.get("updatedAt") and str(t.get("id")) in {s.ref_id for s in skips}
    ]
    newest = min([portal.newest, *held_at]) if held_at and portal.newest else portal.newest
    if newest:  # a ticket the ERP could not take is read again next run, until it can
        StateStore(settings.state_url).set_cursor(TARGET, CURSOR, newest)
    created = sum(1 for e in entered if e.created)
    notes = sum(1 for n in noted if n.created)
    for n in noted:
        if n.reason:
            logger.warning("Portal comment %s not taken into the ERP: %s", n.portal_comment_id, n.reason)
    for skip in skips[:10]:
        logger.warning("Not taken into the ERP: %s", skip.reason)
    logger.info(
        "From the portal into the ERP: %d new messages, %d new notes, %d changes shown at their messages.",
        created,
        notes,
        len(changes),
    )
    return {"messages": created, "notes": notes, "changes": len(changes)}, skips


def _enter_each(engine: Any, tickets: list[PortalTicket], erp_user: str) -> tuple[list[Any], list[Skip]]:
    """Enter the tickets in one transaction; if the ERP refuses that, each on its own, so one
    ticket the ERP cannot take (a person or unit it does not know) holds back no other."""
    try:
        return enter_portal_tickets(engine, tickets, erp_user), []
    except (WritebackError, SQLAlchemyError):
        pass
    entered: list[Any] = []
    refused: list[Skip] = []
    for ticket in tickets:
        try:
            entered += enter_portal_tickets(engine, [ticket], erp_user)
        except (WritebackError, SQLAlchemyError) as exc:
            reason = f"portal ticket {ticket.portal_ticket_id} not entered into the ERP: {_first_line(exc)}"
            refused.append(Skip("inbound", ticket.portal_ticket_id, "erp_refused", reason))
    return entered, refused


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


def _fields(kind: Any, row: Mapping[str, Any]) -> Any:
    """The dataclass ``kind`` from the keys of ``row`` it has."""
    names = {f.name for f in fields(kind)}
    return kind(**{k: v for k, v in row.items() if k in names})


@task(name="record-portal-status", cache_policy=NO_CACHE)
def record_portal_status_task(
    settings: HausflowSettings,
    status: Mapping[int, str],
    rows: Mapping[str, Sequence[dict[str, Any]]],
    not_sent: Iterable[int] = (),
) -> int:
    """Write each message's portal status into the ERP, where it changed; ``not_sent``: messages
    whose ticket or post the portal refused or this run held back (the protocol says why)."""
    current = {int(m["message_id"]): m.get("portal_status") for m in rows["messages"]}
    status = {**status, **{mid: NOT_SENT for mid in not_sent}}
    changed = {mid: text for mid, text in status.items() if current.get(mid) != text}
    if not changed:
        return 0
    engine = make_engine(settings.erp_url)
    try:
        record_portal_status(engine, changed)
    finally:
        engine.dispose()
    get_run_logger().info("Portal status of %d messages written to the ERP.", len(changed))
    return len(changed)


def merged(first: Plan, *others: Plan) -> Plan:
    """One plan of several: their writes in order, unchanged counts and notes together."""
    out = replace(first, writes=list(first.writes), unchanged=dict(first.unchanged), notes=list(first.notes))
    for other in others:
        out.writes += other.writes
        out.unchanged.update(other.unchanged)
        out.notes += other.notes
    return out
