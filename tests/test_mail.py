"""``MailClient`` against a real SMTP server (aiosmtpd) on loopback: plain, login, STARTTLS, TLS."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from config.settings import MailSettings
from connectors.mail import EMAILS, MailClient, MailSecurityError, message_id
from connectors.sync.client import WriteOp
from connectors.sync.errors import (
    PartnerCredentialsError,
    PartnerError,
    PartnerProtocolError,
    PartnerTransportError,
    is_retriable,
)

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

SENDER = "Hausverwaltung Müller <service@hv-mueller.de>"
PASSWORD = "s3cret-Passwort-42"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mailbox:
    """The aiosmtpd handler: keeps what arrived, refuses some recipients, can close connections."""

    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    peers: set[Any] = field(default_factory=set)
    # after this many mails on one connection, MAIL FROM is answered 421 (the server closes)
    per_connection: int | None = None
    _count: dict[Any, int] = field(default_factory=dict)

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        seen = self._count.get(session.peer, 0)
        if self.per_connection is not None and seen >= self.per_connection:
            return "421 4.7.0 too many mails on this connection, closing"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.startswith("unbekannt"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if address.startswith("voll"):
            return "452 4.2.2 Mailbox full, try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.original_content, policy=email.policy.default))  # type: ignore[arg-type]
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.peers.add(session.peer)
        self._count[session.peer] = self._count.get(session.peer, 0) + 1
        return "250 2.0.0 queued"


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"hausflow",
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def start(handler: Mailbox, **options: Any) -> tuple[Controller, int]:
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **options)
    controller.start()
    return controller, port


@pytest.fixture
def mailbox() -> Mailbox:
    return Mailbox()


@pytest.fixture
def plain_server(mailbox: Mailbox) -> Iterator[int]:
    """Plain SMTP, no login."""
    controller, port = start(mailbox)
    yield port
    controller.stop()


@pytest.fixture
def login_server(mailbox: Mailbox) -> Iterator[int]:
    """Plain SMTP with AUTH on loopback (allowed without TLS here)."""
    controller, port = start(mailbox, authenticator=authenticator, auth_required=True, auth_require_tls=False)
    yield port
    controller.stop()


@pytest.fixture
def starttls_server(mailbox: Mailbox, server_tls: ssl.SSLContext) -> Iterator[int]:
    """STARTTLS required; AUTH offered only after it."""
    controller, port = start(
        mailbox,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
    )
    yield port
    controller.stop()


def mail(ref_id: str, to: str, **extra: Any) -> WriteOp:
    payload = {
        "id": ref_id,
        "to": to,
        "subject": "Ihre Meldung: Heizung im Erdgeschoß läuft nicht",
        "text": "Guten Tag,\n\nwir haben Ihre Meldung erhalten. Grüße aus Köln – Ihre Hausverwaltung\n",
        **extra,
    }
    return WriteOp("emails", "upsert", ref_id, payload)


def client(port: int, **options: Any) -> MailClient:
    return MailClient("127.0.0.1", port, sender=SENDER, timeout_s=5, **options)


def test_mails_arrive_with_headers_umlauts_and_a_stable_message_id(
    mailbox: Mailbox, plain_server: int
) -> None:
    ops = [mail("ticket-1", "anna@example.org", toName="Anna Weiß"), mail("comment-7", "bernd@example.org")]
    results = asyncio.run(client(plain_server).awrite_many(ops))

    assert [(r.ok, r.created, r.attempts) for r in results] == [(True, True, 1), (True, True, 1)]
    assert len(mailbox.messages) == 2 and len(mailbox.peers) == 1  # one connection for the call
    first = mailbox.messages[0]
    assert first["Subject"] == "Ihre Meldung: Heizung im Erdgeschoß läuft nicht"
    assert first["To"].addresses[0].display_name == "Anna Weiß"
    assert first["To"].addresses[0].addr_spec == "anna@example.org"
    assert first["From"].addresses[0].addr_spec == "service@hv-mueller.de"
    assert first["Date"].datetime.tzinfo is not None
    assert first.get_content_charset() == "utf-8"
    assert "Grüße aus Köln – Ihre Hausverwaltung" in first.get_content()
    assert first["Message-ID"] == message_id("ticket-1", SENDER)
    assert first["Message-ID"].endswith("@hv-mueller.de>") and "ticket-1" in first["Message-ID"]
    assert mailbox.envelopes[1] == ("service@hv-mueller.de", ["bernd@example.org"])


def test_a_resend_carries_the_same_message_id(mailbox: Mailbox, plain_server: int) -> None:
    mailer = client(plain_server)
    asyncio.run(mailer.awrite_many([mail("ticket-1", "anna@example.org")]))
    asyncio.run(mailer.awrite_many([mail("ticket-1", "anna@example.org")]))
    asyncio.run(mailer.awrite_many([mail("ticket-2", "anna@example.org")]))
    ids = [m["Message-ID"] for m in mailbox.messages]
    assert ids[0] == ids[1] != ids[2]
    assert message_id("a/b", SENDER) != message_id("a-b", SENDER)
    assert len(mailbox.peers) == 3  # one connection per call


def test_refused_recipients_fail_alone_and_the_others_are_sent(mailbox: Mailbox, plain_server: int) -> None:
    ops = [
        mail("ticket-1", "anna@example.org"),
        mail("ticket-2", "unbekannt@example.org"),
        mail("ticket-3", "voll@example.org"),
        mail("ticket-4", "bernd@example.org"),
    ]
    results = asyncio.run(client(plain_server).awrite_many(ops))

    assert [r.ok for r in results] == [True, False, False, True]
    refused, full = results[1], results[2]
    assert (refused.error_status, refused.retriable) == (550, False)
    assert (
        refused.error is not None
        and "User unknown" in refused.error
        and "unbekannt@example.org" in refused.error
    )
    assert (full.error_status, full.retriable) == (452, True)
    assert [to for _, (to,) in mailbox.envelopes] == ["anna@example.org", "bernd@example.org"]
    assert [r.op.ref_id for r in results] == ["ticket-1", "ticket-2", "ticket-3", "ticket-4"]


def test_bad_payloads_and_withdrawals_fail_without_reaching_the_server(
    mailbox: Mailbox, plain_server: int
) -> None:
    ops = [
        mail("ticket-1", "not an address"),
        WriteOp("emails", "upsert", "ticket-2", {"id": "ticket-2", "to": "a@example.org"}),
        WriteOp("emails", "archive", "ticket-3"),
        mail("ticket-4", "anna@example.org"),
    ]
    results = asyncio.run(client(plain_server).awrite_many(ops))
    assert [r.ok for r in results] == [False, False, False, True]
    assert not any(r.retriable for r in results)
    assert results[1].error is not None and "subject, text" in results[1].error
    assert len(mailbox.messages) == 1


def test_a_dropped_connection_is_opened_again_and_the_mail_resent(
    mailbox: Mailbox, plain_server: int
) -> None:
    mailbox.per_connection = 2
    ops = [mail(f"ticket-{n}", f"person{n}@example.org") for n in range(5)]
    mailer = client(plain_server)
    results = asyncio.run(mailer.awrite_many(ops))

    assert all(r.ok for r in results)
    assert [r.attempts for r in results] == [1, 1, 2, 1, 2]
    assert [m["Message-ID"] for m in mailbox.messages] == [message_id(op.ref_id, SENDER) for op in ops]
    assert len(mailbox.peers) == 3 and mailer.stats.retries == 2


def test_a_server_that_drops_every_connection_raises_a_retriable_error(
    mailbox: Mailbox, plain_server: int
) -> None:
    mailbox.per_connection = 0
    with pytest.raises(PartnerTransportError) as caught:
        asyncio.run(client(plain_server).awrite_many([mail("ticket-1", "anna@example.org")]))
    assert is_retriable(caught.value) and "421" in str(caught.value)


def test_server_down_raises_a_retriable_error() -> None:
    mailer = client(free_port())
    with pytest.raises(PartnerTransportError) as caught:
        asyncio.run(mailer.awrite_many([mail("ticket-1", "anna@example.org")]))
    assert is_retriable(caught.value) and "check [mail] host and port" in str(caught.value)
    with pytest.raises(PartnerTransportError):
        asyncio.run(mailer.acheck())


def test_a_server_that_never_greets_times_out_as_retriable() -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        mailer = MailClient("127.0.0.1", silent.getsockname()[1], sender=SENDER, timeout_s=0.5)
        with pytest.raises(PartnerTransportError) as caught:
            asyncio.run(mailer.awrite_many([mail("ticket-1", "anna@example.org")]))
    assert is_retriable(caught.value)


def test_login_on_loopback_without_tls(mailbox: Mailbox, login_server: int) -> None:
    mailer = client(login_server, username="hausflow", password=PASSWORD)
    asyncio.run(mailer.acheck())
    results = asyncio.run(mailer.awrite_many([mail("ticket-1", "anna@example.org")]))
    assert results[0].ok and len(mailbox.messages) == 1
    assert mailer.stats.authentications == 2
    assert mailer.key_hint() == "…"  # a short username gives no hint
    assert mailer.credentials_expire() is None


def test_a_wrong_password_is_a_credentials_error_that_never_quotes_it(
    mailbox: Mailbox, login_server: int
) -> None:
    mailer = client(login_server, username="hausflow", password="falsch-" + PASSWORD)
    with pytest.raises(PartnerCredentialsError) as caught:
        asyncio.run(mailer.awrite_many([mail("ticket-1", "anna@example.org")]))
    assert not is_retriable(caught.value)
    assert caught.value.status == 535 and PASSWORD not in caught.value.advice()
    assert "HAUSFLOW_MAIL__PASSWORD" in caught.value.advice()
    with pytest.raises(PartnerCredentialsError):
        asyncio.run(mailer.acheck())
    assert mailbox.messages == []


def test_a_server_that_requires_a_login_without_a_username_ends_the_call(
    mailbox: Mailbox, login_server: int
) -> None:
    with pytest.raises(PartnerCredentialsError) as caught:
        asyncio.run(client(login_server).awrite_many([mail("ticket-1", "anna@example.org")]))
    assert caught.value.status == 530 and "[mail] username and password" in caught.value.advice()


def test_the_password_never_goes_in_clear_to_another_machine() -> None:
    mailer = MailClient(
        "mail.example.invalid", 25, security="none", username="hausflow", password=PASSWORD, sender=SENDER
    )
    with pytest.raises(MailSecurityError) as caught:
        asyncio.run(mailer.awrite_many([mail("ticket-1", "anna@example.org")]))
    text = str(caught.value)
    assert "unencrypted" in text and "starttls or tls" in text and PASSWORD not in text
    assert not is_retriable(caught.value) and isinstance(caught.value, PartnerError)
    with pytest.raises(MailSecurityError):
        asyncio.run(mailer.acheck())
    # on loopback or with TLS the guard lets the login go (it then fails to connect, retriably)
    for host, security in [("localhost", "none"), ("::1", "none"), ("mail.example.invalid", "starttls")]:
        guarded = MailClient(host, free_port(), security=security, username="u", password="p", timeout_s=1)
        with pytest.raises(PartnerTransportError):
            asyncio.run(guarded.acheck())


def test_starttls_then_login_with_a_trusted_certificate(
    mailbox: Mailbox, starttls_server: int, client_tls: ssl.SSLContext
) -> None:
    settings = MailSettings(
        host="127.0.0.1",
        port=starttls_server,
        security="starttls",
        username="hausflow",
        password=PASSWORD,  # type: ignore[arg-type]
        sender=SENDER,
        timeout_s=5,
    )
    mailer = MailClient.from_settings(settings, ssl_context=client_tls)
    asyncio.run(mailer.acheck())
    results = asyncio.run(mailer.awrite_many([mail("ticket-1", "anna@example.org")]))
    assert results[0].ok
    assert mailbox.messages[0]["Subject"] == "Ihre Meldung: Heizung im Erdgeschoß läuft nicht"
    assert mailer.base_url == f"smtp://127.0.0.1:{starttls_server}"


def test_starttls_with_an_untrusted_certificate_is_refused(mailbox: Mailbox, starttls_server: int) -> None:
    mailer = client(starttls_server, security="starttls", username="hausflow", password=PASSWORD)
    with pytest.raises(PartnerProtocolError) as caught:
        asyncio.run(mailer.acheck())
    assert "certificate" in str(caught.value) and not is_retriable(caught.value)
    assert mailbox.messages == []


def test_starttls_asked_of_a_server_without_it(plain_server: int) -> None:
    with pytest.raises(PartnerProtocolError, match="does not offer STARTTLS"):
        asyncio.run(client(plain_server, security="starttls").acheck())


def test_implicit_tls(mailbox: Mailbox, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    controller, port = start(mailbox, ssl_context=server_tls)
    try:
        mailer = client(port, security="tls", ssl_context=client_tls)
        asyncio.run(mailer.acheck())
        results = asyncio.run(mailer.awrite_many([mail("ticket-1", "anna@example.org")]))
    finally:
        controller.stop()
    assert results[0].ok and len(mailbox.messages) == 1 and mailer.base_url.startswith("smtps://")


def test_nothing_can_be_read_back() -> None:
    mailer = client(free_port())
    assert asyncio.run(mailer.aread_many("emails", ["ticket-1", "comment-2"])) == {
        "ticket-1": None,
        "comment-2": None,
    }
    assert asyncio.run(mailer.alist_records("emails")) == []
    assert mailer.internal_id({"id": "x"}) is None
    assert asyncio.run(mailer.awrite_many([])) == []
    assert EMAILS.name == "emails" and not EMAILS.archivable
