"""The portal exchange end to end: the demo ERP with real files, the sandbox over HTTP, a real SMTP
server on loopback. Documents, tickets, bulletin posts and comments reach the portal once; tickets
and comments written in the portal reach the ERP once; contacts not in the portal get e-mails once."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select, update

from connectors.erp import demo
from connectors.erp.database import make_engine
from connectors.erp.schema import messages, notes
from connectors.portal import PortalClient
from connectors.state_store import StateStore
from connectors.sync.client import WriteOp
from flows.portal_sync import run_portal_sync
from sandbox.portal.server import SandboxServer
from tests.portal_env import BUSINESS_DATE, portal_env

pytestmark = pytest.mark.usefixtures("prefect_harness")
# The tests on the module's `world` come first; the ones that start from an empty sandbox
# (sandbox.reset()) come last, since they wipe the portal `world` was synced to.
HAS_SOFFICE = shutil.which("soffice") is not None


class Inbox:
    """An aiosmtpd handler that keeps what arrived."""

    def __init__(self) -> None:
        self.mails: list[Any] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.mails.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def view(sandbox: SandboxServer, entity: str) -> dict[str, dict[str, Any]]:
    client = PortalClient(sandbox.base_url, sandbox.key, sandbox.secret)
    return {r["id"]: r for r in client.list_records(entity, include_archived=entity == "bulletin_posts")}


@pytest.fixture(scope="module")
def world(
    sandbox: SandboxServer, smtp: tuple[Inbox, int], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A demo ERP of 300 persons with its document files, and a first sync."""
    folder = tmp_path_factory.mktemp("erp")
    erp_url, state_url = f"sqlite:///{folder}/erp.sqlite", f"sqlite:///{folder}/state.sqlite"
    engine = make_engine(erp_url)
    summary = demo.generate_erp(engine, persons=300, seed=7, business_date=BUSINESS_DATE)
    sandbox.reset()
    env = {
        "HAUSFLOW_MAIL__HOST": "127.0.0.1",
        "HAUSFLOW_MAIL__PORT": str(smtp[1]),
        "HAUSFLOW_MAIL__SENDER": "verwaltung@hausflow.example",
        "HAUSFLOW_LICENCES__DOCUMENTS_MESSAGES": "true",
    }
    with portal_env(sandbox, erp_url, state_url, **env):
        first = run_portal_sync(profile="test")
    return {"engine": engine, "erp_url": erp_url, "state_url": state_url, "env": env, "first": first,
            "summary": summary, "folder": folder}  # fmt: skip


def sync(world: dict[str, Any], sandbox: SandboxServer, **params: Any) -> dict[str, Any]:
    with portal_env(sandbox, world["erp_url"], world["state_url"], **world["env"]):
        return run_portal_sync(profile="test", **params)


def test_documents_reach_the_portal_with_their_files(world: dict[str, Any], sandbox: SandboxServer) -> None:
    first = world["first"]
    assert first["failed"] == 0, first
    docs = view(sandbox, "documents")
    live = {i: d for i, d in docs.items() if not d.get("deleted")}
    deleted = {i: d for i, d in docs.items() if d.get("deleted")}
    assert live and deleted, "released documents go with their file, the others as deleted"
    for doc in live.values():
        assert doc["contentVersion"] == doc["version"], doc
        assert doc["mimeType"] in ("application/pdf", "image/jpeg", "image/png")
    for doc in deleted.values():
        assert doc.get("contentSha256") is None
    counters = sandbox.counters()
    assert counters["uploads"] == len(live)
    assert max(counters["uploads_by_document"].values()) == 1
    with world["engine"].connect() as conn:
        rows = {str(r.document_id): r for r in conn.execute(select(demo.s.documents))}
    converted = [i for i, d in live.items() if rows[i].file_name.lower().endswith((".docx", ".odt"))]
    if HAS_SOFFICE:
        assert converted, "the demo has Word and OpenDocument files of released types"
        client = httpx.Client(base_url=sandbox.base_url)
        token = client.post("/v2/authenticate", json={"key": sandbox.key, "secret": sandbox.secret}).json()[
            "token"
        ]
        body = client.get(f"/v2/documents/{converted[0]}/content", headers={"token": token}).content
        assert body.startswith(b"%PDF"), "converted to PDF before upload"
    oversized = [i for i, r in rows.items() if r.size_bytes > 100 * 1024 * 1024]
    assert oversized and all(i not in live for i in oversized)
    store = StateStore(world["state_url"])
    skipped = {
        r.ref_id: r.reason for r in store.protocol_rows(first["run_id"], outcomes=("skipped",), limit=10_000)
    }
    assert all("MB" in (skipped.get(i) or "") for i in oversized), (
        "the oversized document is skipped with its reason"
    )


def test_messages_become_tickets_posts_and_comments(world: dict[str, Any], sandbox: SandboxServer) -> None:
    tickets, posts, comments = (
        view(sandbox, "tickets"),
        view(sandbox, "bulletin_posts"),
        view(sandbox, "comments"),
    )
    assert tickets and posts and comments
    with world["engine"].connect() as conn:
        rows = list(conn.execute(select(messages)))
        note_rows = list(conn.execute(select(notes)))
        types = {r.code: r.portal_mode for r in conn.execute(select(demo.s.message_types))}
    by_id = {str(r.message_id): r for r in rows}
    for ref, ticket in tickets.items():
        mode = types[by_id[ref].message_type]
        assert mode in ("OBJEKTMELDUNG", "EINZELMELDUNG")
        assert ticket["visibility"] == ("property" if mode == "OBJEKTMELDUNG" else "contact")
    for ref in posts:
        assert types[by_id[ref].message_type] == "PINNWAND"
    assert not any(types[by_id[r].message_type] == "SPERRE" for r in tickets)
    internal = {f"note-{n.note_id}" for n in note_rows if n.internal}
    assert internal and not internal & set(comments), "internal notes never go over"
    assert all(r.portal_status for r in rows), "every message carries its portal status"


def test_a_run_without_changes_sends_nothing(
    world: dict[str, Any], sandbox: SandboxServer, smtp: tuple[Inbox, int]
) -> None:
    uploads, mails = sandbox.counters()["uploads"], len(smtp[0].mails)
    again = sync(world, sandbox)
    assert again["planned_writes"] == 0 and again["failed"] == 0, again
    assert sandbox.counters()["uploads"] == uploads
    assert len(smtp[0].mails) == mails
    # the run after a complete exchange that changed nothing finds it quiet: it reads and plans
    # nothing, and reports the same skips as a run that compared everything
    quiet = sync(world, sandbox)
    assert quiet["exchange"] == "quiet", quiet
    assert quiet["planned_writes"] == 0 and quiet["skipped"] == again["skipped"], (quiet, again)


def test_unregistered_contacts_get_one_email_per_ticket(
    world: dict[str, Any], smtp: tuple[Inbox, int]
) -> None:
    inbox = smtp[0]
    assert inbox.mails, "contacts not registered in the portal with an e-mail address are written to"
    ids = [m["Message-ID"] for m in inbox.mails]
    assert len(ids) == len(set(ids)), "one e-mail per ticket and comment"
    assert all(m["From"] == "verwaltung@hausflow.example" for m in inbox.mails)


def test_a_changed_file_replaces_the_document(world: dict[str, Any], sandbox: SandboxServer) -> None:
    docs = {
        i: d
        for i, d in view(sandbox, "documents").items()
        if not d.get("deleted") and d["fileName"].endswith(".pdf")
    }
    ref = sorted(docs)[0]
    with world["engine"].connect() as conn:
        row = conn.execute(select(demo.s.documents).where(demo.s.documents.c.document_id == int(ref))).one()
    path = Path(world["folder"]) / row.content_path
    path.write_bytes(path.read_bytes().replace(b"%%EOF", b"% changed\n%%EOF"))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 5_000_000_000))
    before = sandbox.counters()["uploads_by_document"].get(ref, 0)
    summary = sync(world, sandbox)
    assert summary["failed"] == 0
    assert summary["counts"].get("documents.updated") == 1
    assert sandbox.counters()["uploads_by_document"][ref] == before + 1
    after = view(sandbox, "documents")[ref]
    assert after["version"] != docs[ref]["version"] and after["contentVersion"] == after["version"]


def test_tickets_and_comments_from_the_portal_enter_the_erp_once(
    world: dict[str, Any], sandbox: SandboxServer
) -> None:
    tickets = view(sandbox, "tickets")
    ticket = next(t for t in tickets.values() if t["visibility"] == "contact")
    client = httpx.Client(base_url=sandbox.base_url)
    made = client.post(
        "/_sandbox/tickets",
        json={"ticketTypeId": ticket["ticketTypeId"], "propertyId": ticket["propertyId"], "unitId": ticket.get("unitId"),
              "contactId": ticket["contactId"], "title": "Fenster klemmt", "description": "Im Schlafzimmer."},
    )  # fmt: skip
    assert made.status_code in (200, 201), made.text
    new_id = made.json()["id"]
    for public, text in ((True, "Danke, bitte morgens."), (False, "intern: Mieter schwierig")):
        r = client.post(
            f"/_sandbox/tickets/{new_id}/comments", json={"text": text, "public": public, "author": "Mieter"}
        )
        assert r.status_code in (200, 201), r.text
    r = client.post(
        f"/_sandbox/tickets/{ticket['id']}/comments",
        json={"text": "Wann kommt jemand?", "public": True, "author": "Mieter"},
    )
    assert r.status_code in (200, 201), r.text
    for _ in range(2):  # a second run enters nothing twice
        summary = sync(world, sandbox)
        assert summary["failed"] == 0, summary
    with world["engine"].connect() as conn:
        entered = list(conn.execute(select(messages).where(messages.c.portal_ticket_id == new_id)))
        assert len(entered) == 1
        assert entered[0].entered_by == "900" and entered[0].status == "OFFEN"
        its_notes = list(conn.execute(select(notes).where(notes.c.message_id == entered[0].message_id)))
        assert [n.text for n in its_notes] == ["Danke, bitte morgens."], "internal portal comments never"
        old = conn.execute(select(messages).where(messages.c.message_id == int(ticket["id"]))).one()
        assert old.portal_change and old.portal_changed_at, "what changed in the portal shows at the message"
        answer = list(
            conn.execute(
                select(notes).where(
                    notes.c.message_id == old.message_id, notes.c.portal_comment_id.is_not(None)
                )
            )
        )
        assert [n.text for n in answer] == ["Wann kommt jemand?"]


def test_closing_a_house_notice_removes_it_from_the_board(
    world: dict[str, Any], sandbox: SandboxServer
) -> None:
    posts = {i: p for i, p in view(sandbox, "bulletin_posts").items() if not p.get("archived")}
    ref = sorted(posts)[0]
    with world["engine"].begin() as conn:
        conn.execute(update(messages).where(messages.c.message_id == int(ref)).values(
            status="ABGESCHLOSSEN", modified_at=datetime.now(UTC)))  # fmt: skip
    summary = sync(world, sandbox)
    assert summary["failed"] == 0
    assert view(sandbox, "bulletin_posts")[ref].get("archived") is True


def test_a_lost_cursor_enters_nothing_twice(world: dict[str, Any], sandbox: SandboxServer) -> None:
    """A crash after the ERP took the portal's tickets and before the cursor moved: the next run
    reads them again and enters nothing twice (the ERP keys them by the portal's ids)."""
    with world["engine"].connect() as conn:
        before = (
            conn.execute(
                select(messages.c.portal_ticket_id).where(messages.c.portal_ticket_id.is_not(None))
            ).all(),
            conn.execute(
                select(notes.c.portal_comment_id).where(notes.c.portal_comment_id.is_not(None))
            ).all(),
        )
    assert before[0] and before[1], "runs after the portal test above"
    StateStore(world["state_url"]).set_cursor("portal", "inbound", "2000-01-01T00:00:00.000Z")
    assert sync(world, sandbox)["failed"] == 0
    with world["engine"].connect() as conn:
        after = (
            conn.execute(
                select(messages.c.portal_ticket_id).where(messages.c.portal_ticket_id.is_not(None))
            ).all(),
            conn.execute(
                select(notes.c.portal_comment_id).where(notes.c.portal_comment_id.is_not(None))
            ).all(),
        )
    assert sorted(after[0]) == sorted(before[0]) and sorted(after[1]) == sorted(before[1])


def test_a_document_skipped_for_a_run_stays_at_the_portal(
    world: dict[str, Any], sandbox: SandboxServer
) -> None:
    """A file that cannot be read for a run (a share not mounted) is skipped with the reason; the
    portal keeps the document and its file, and nothing is uploaded again once the file is back."""
    docs = {i: d for i, d in view(sandbox, "documents").items() if not d.get("deleted")}
    ref = sorted(docs)[-1]
    with world["engine"].connect() as conn:
        row = conn.execute(select(demo.s.documents).where(demo.s.documents.c.document_id == int(ref))).one()
    path = Path(world["folder"]) / row.content_path
    hidden = path.with_suffix(".away")
    path.rename(hidden)
    uploads = sandbox.counters()["uploads"]
    try:
        summary = sync(world, sandbox)
        skipped = {
            r.ref_id: r.reason
            for r in StateStore(world["state_url"]).protocol_rows(
                summary["run_id"], outcomes=("skipped",), limit=10_000
            )
        }
        assert "cannot be read" in (skipped.get(ref) or ""), skipped.get(ref)
        assert not view(sandbox, "documents")[ref].get("deleted"), "a skip is not a deletion"
    finally:
        hidden.rename(path)
    again = sync(world, sandbox)
    assert again["failed"] == 0 and sandbox.counters()["uploads"] == uploads


def test_a_portal_ticket_the_erp_cannot_take_holds_back_no_other(
    world: dict[str, Any], sandbox: SandboxServer
) -> None:
    """A tenant's ticket of a type the ERP does not know is reported and read again next run; the
    tenant's other ticket is entered."""
    client = PortalClient(sandbox.base_url, sandbox.key, sandbox.secret)
    client.write_many(
        [WriteOp("ticket_types", "upsert", "FREMD", {"id": "FREMD", "name": "Nur im Portal", "locked": True})]
    )
    contact_ticket = next(t for t in view(sandbox, "tickets").values() if t["visibility"] == "contact")
    http = httpx.Client(base_url=sandbox.base_url)
    ids = []
    for type_id, title in (("FREMD", "Unbekannte Art"), (contact_ticket["ticketTypeId"], "Tür quietscht")):
        made = http.post("/_sandbox/tickets", json={"ticketTypeId": type_id, "propertyId": contact_ticket["propertyId"],
                                                    "contactId": contact_ticket["contactId"], "title": title, "description": "-"})  # fmt: skip
        assert made.status_code in (200, 201), made.text
        ids.append(made.json()["id"])
    summary = sync(world, sandbox)
    with world["engine"].connect() as conn:
        entered = {r.portal_ticket_id for r in conn.execute(select(messages.c.portal_ticket_id))}
    assert ids[1] in entered and ids[0] not in entered
    skipped = {
        r.ref_id: r.reason
        for r in StateStore(world["state_url"]).protocol_rows(
            summary["run_id"], outcomes=("skipped",), limit=10_000
        )
    }
    assert ids[0] in skipped, "the ticket the ERP cannot take is in the protocol"
    cursor = StateStore(world["state_url"]).cursor("portal", "inbound")
    bad = view(sandbox, "tickets")[ids[0]]
    assert cursor is not None and cursor <= bad["updatedAt"], "the cursor does not pass it"


def test_faults_converge_without_a_second_upload_comment_or_mail(
    sandbox: SandboxServer, smtp: tuple[Inbox, int], tmp_path: Path
) -> None:
    """Lost answers, 5xx and 429 on every request, writes applied and then the answer dropped:
    runs until nothing is left to do; no document uploaded twice, no comment or e-mail twice."""
    erp_url, state_url = f"sqlite:///{tmp_path}/erp.sqlite", f"sqlite:///{tmp_path}/state.sqlite"
    demo.generate_erp(make_engine(erp_url), persons=200, seed=21, business_date=BUSINESS_DATE)
    sandbox.reset()
    inbox = smtp[0]
    mails_before = len(inbox.mails)
    env = {"HAUSFLOW_MAIL__HOST": "127.0.0.1", "HAUSFLOW_MAIL__PORT": str(smtp[1]),
           "HAUSFLOW_LICENCES__DOCUMENTS_MESSAGES": "true"}  # fmt: skip
    sandbox.set_faults(
        status_rates={"500": 0.05, "503": 0.04, "429": 0.06},
        retry_after_s=0,
        drop_rate=0.03,
        apply_then_drop_rate=0.05,
        seed=11,
    )
    try:
        with portal_env(sandbox, erp_url, state_url, **env):
            for _ in range(6):
                try:
                    if run_portal_sync(profile="test")["failed"] == 0:
                        break
                except Exception:  # a run may fail under faults; the next one goes on
                    continue
    finally:
        sandbox.clear_faults()
    with portal_env(sandbox, erp_url, state_url, **env):
        final = run_portal_sync(profile="test")
    assert final["planned_writes"] == 0 and final["failed"] == 0, final
    counters = sandbox.counters()
    assert sum(counters["faults_injected"].values()) > 10
    assert counters["duplicate_writes"] == 0, "no record written twice, no file uploaded twice"
    assert max(counters["uploads_by_document"].values()) == 1
    for doc in view(sandbox, "documents").values():
        assert doc.get("deleted") or doc["contentVersion"] == doc["version"], "nothing lost"
    ids = [m["Message-ID"] for m in inbox.mails[mails_before:]]
    assert ids and len(ids) == len(set(ids)), "each e-mail once"


def test_mails_that_could_not_go_out_go_with_the_next_run(
    sandbox: SandboxServer, smtp: tuple[Inbox, int], tmp_path: Path
) -> None:
    """The mail server is down: the portal gets everything, the run ends Failed saying the e-mails
    were not sent; the next run sends each of them once."""
    erp_url, state_url = f"sqlite:///{tmp_path}/erp.sqlite", f"sqlite:///{tmp_path}/state.sqlite"
    demo.generate_erp(make_engine(erp_url), persons=120, seed=3, business_date=BUSINESS_DATE)
    sandbox.reset()
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    down = {"HAUSFLOW_MAIL__HOST": "127.0.0.1", "HAUSFLOW_MAIL__PORT": str(closed),
            "HAUSFLOW_LICENCES__DOCUMENTS_MESSAGES": "true"}  # fmt: skip
    with (
        portal_env(sandbox, erp_url, state_url, **down),
        pytest.raises(RuntimeError, match="e-mails not sent"),
    ):
        run_portal_sync(profile="test")
    assert view(sandbox, "tickets"), "the portal got its tickets all the same"
    inbox = smtp[0]
    before = len(inbox.mails)
    up = {**down, "HAUSFLOW_MAIL__PORT": str(smtp[1])}
    for _ in range(2):
        with portal_env(sandbox, erp_url, state_url, **up):
            assert run_portal_sync(profile="test")["failed"] == 0
    ids = [m["Message-ID"] for m in inbox.mails[before:]]
    assert ids and len(ids) == len(set(ids))


def test_sigkill_mid_exchange_neither_loses_nor_duplicates(
    sandbox: SandboxServer, smtp: tuple[Inbox, int], tmp_path: Path
) -> None:
    """The sync process killed with SIGKILL while it uploads documents and while it writes
    tickets and comments: the next runs settle what was pending, nothing is sent twice."""
    from tests.test_portal_sync_resilience import _start_sync_process, sync_until_converged

    erp_url, state_url = f"sqlite:///{tmp_path}/erp.sqlite", f"sqlite:///{tmp_path}/state.sqlite"
    demo.generate_erp(make_engine(erp_url), persons=200, seed=44, business_date=BUSINESS_DATE)
    sandbox.reset()
    sandbox.set_faults(latency_ms=[5, 15], apply_then_drop_rate=0.02, seed=4)
    inbox = smtp[0]
    before = len(inbox.mails)
    env = {"HAUSFLOW_MAIL__HOST": "127.0.0.1", "HAUSFLOW_MAIL__PORT": str(smtp[1]),
           "HAUSFLOW_LICENCES__DOCUMENTS_MESSAGES": "true", "HAUSFLOW_PORTAL__BATCH_SIZE": "20"}  # fmt: skip
    log = open(tmp_path / "sync-processes.log", "wb")  # noqa: SIM115 - read on failure
    kills = 0
    try:
        with portal_env(sandbox, erp_url, state_url, **env) as values:
            for entity, threshold in (("documents", 25), ("comments", 5)):
                proc = _start_sync_process(values, {}, log)
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and proc.poll() is None:
                    if sandbox.counters()["writes_by_entity"].get(entity, 0) >= threshold:
                        os.kill(proc.pid, signal.SIGKILL)
                        kills += 1
                        break
                    time.sleep(0.02)
                proc.wait(timeout=30)
            log.flush()
            assert kills == 2, (tmp_path / "sync-processes.log").read_text()[-3000:]
            sandbox.clear_faults()
            results = sync_until_converged(values)
            final = run_portal_sync(profile="test")
    finally:
        sandbox.clear_faults()
    assert final["planned_writes"] == 0, results
    counters = sandbox.counters()
    assert counters["duplicate_writes"] == 0, counters["duplicate_writes_by_entity"]
    assert max(counters["uploads_by_document"].values()) == 1
    for doc in view(sandbox, "documents").values():
        assert doc.get("deleted") or doc["contentVersion"] == doc["version"]
    store = StateStore(state_url)
    assert not store.load_pending("portal") and not store.load_pending("mail")
    ids = [m["Message-ID"] for m in inbox.mails[before:]]
    assert ids and len(ids) == len(set(ids))
