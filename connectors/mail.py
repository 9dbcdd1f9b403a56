"""``MailClient``: an SMTP server as a partner of the sync engine, for the stream ``emails``.

Contacts that are not registered in the portal but have an e-mail address get messages and notes
by e-mail (``docs/portal-exchange.md``). The engine loads the stream ``emails`` like any other:
one upsert per mail, keyed by a reference id (``ticket-<id>``, ``comment-<id>``), marked pending
before it is sent and confirmed when the server accepted it.

Sending uses the standard library (:mod:`smtplib`) in a worker thread: one SMTP connection per
:meth:`MailClient.awrite_many` call, reused for all of its mails; if the server drops it (or
answers 421), the client connects again and sends the interrupted mail once more.

What "exactly once" means here, honestly: SMTP cannot be read back, so :meth:`aread_many`
knows no mail, and a mail left pending by a crash is sent again by the next run. The window is
small (between the server's ``250`` to the mail's data and the engine's record of it, or a
connection lost while the server was answering), but it exists. For that case every mail carries
a ``Message-ID`` derived from its reference id and the sender's domain alone: the same
reference always gives the same ``Message-ID``, so mail clients and archives that collapse
duplicates by ``Message-ID`` show a resent mail once. Not every client does; a recipient may see
the mail twice in that rare case. A *different* mail needs a different reference id: a changed
payload under the same reference keeps its ``Message-ID`` and may be taken for a duplicate.

Errors: a recipient the server refuses permanently (5xx) is a failed, non-retriable result for
that mail alone, with the server's code and message; a temporary refusal (4xx) a retriable one.
A server that cannot be reached or does not answer in time raises
:class:`~connectors.sync.errors.PartnerTransportError` (retriable, the task is retried); a refused
login raises :class:`~connectors.sync.errors.PartnerCredentialsError`, which never quotes the
password or the server's answer to it.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import re
import smtplib
import ssl
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any, Literal

from connectors.oauth2 import SETTINGS_HINT as OAUTH2_HINT
from connectors.oauth2 import BearerToken, ClientCredentials, xoauth2_response
from connectors.state_store import credential_hint
from connectors.sync.client import ClientStats, WriteOp, WriteResult
from connectors.sync.errors import (
    PartnerCredentialsError,
    PartnerError,
    PartnerProtocolError,
    PartnerTransportError,
)
from connectors.sync.streams import Stream

__all__ = ["EMAILS", "STREAMS", "MailClient", "MailSecurityError", "MailTestReport", "message_id"]

EMAILS = Stream("emails", "/emails", ("id", "to", "toName", "subject", "text"), archivable=False)
STREAMS = {EMAILS.name: EMAILS}

Security = Literal["none", "starttls", "tls"]
Auth = Literal["none", "basic", "oauth2"]

_SETTINGS_HINT = (
    "the [mail] settings username and password (HAUSFLOW_MAIL__USERNAME, HAUSFLOW_MAIL__PASSWORD)"
)
# a reply code with which the server closes the connection: reconnect and send again
_CLOSING = 421
# "authentication required": the server wants a login before it takes mail
_LOGIN_REQUIRED = 530


class MailSecurityError(PartnerError):
    """The settings would send the SMTP password unencrypted to another machine.

    Fatal for the run (not retriable): no mail is sent until ``[mail] security`` is ``starttls``
    or ``tls``, or the server is on this machine (loopback).
    """


@dataclass
class MailTestReport:
    """What :meth:`MailClient.send_test` did, step by step, for a person to read."""

    ok: bool = False
    lines: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        """Add one step."""
        self.lines.append(line)


class _ConnectionLost(Exception):
    """The server closed the connection (or never answered) while a mail was on its way."""


def message_id(ref_id: str, sender: str) -> str:
    """The ``Message-ID`` of the mail with reference ``ref_id``: the same for every resend.

    ``<hausflow.<readable part of the id>.<first 16 hex of SHA-256 of the id>@<sender's domain>>``;
    the hash keeps two ids apart whose readable parts are equal (``a/b`` and ``a-b``).
    """
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    readable = re.sub(r"[^A-Za-z0-9-]+", "-", ref_id).strip("-")[:48] or "mail"
    digest = hashlib.sha256(ref_id.encode("utf-8")).hexdigest()[:16]
    return f"<hausflow.{readable}.{digest}@{domain}>"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine without asking DNS (``localhost``, 127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost.") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class MailClient:
    """An SMTP server as a partner: mails go out, nothing can be read back.

    Build it inside the task that uses it, from plain settings (:meth:`from_settings`).

    Args:
        host, port: the SMTP server.
        security: ``none`` (plain SMTP), ``starttls`` (upgrade after EHLO; refused if the server
            does not offer it) or ``tls`` (implicit TLS, usually port 465).
        username, password: the login of ``basic`` (``AUTH PLAIN``/``LOGIN``); with ``oauth2``
            ``username`` is the mailbox the token acts for. With security ``none`` a password or
            token goes to a loopback host only; otherwise :class:`MailSecurityError`.
        auth: ``none``, ``basic`` or ``oauth2`` (``AUTH XOAUTH2`` with a token of ``oauth2``);
            left out: ``basic`` when ``username`` is set, else ``none``.
        oauth2: the client credentials that fetch the token (``auth = oauth2``).
        sender: the ``From`` address (``"Hausverwaltung <noreply@example.de>"`` or a bare one);
            its domain names the ``Message-ID``.
        timeout_s: for connecting and every SMTP command.
        ssl_context: certificates to trust (default: the system's authorities).
    """

    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        security: Security = "none",
        username: str = "",
        password: str = "",
        sender: str = "hausflow@localhost",
        timeout_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        auth: Auth | None = None,
        oauth2: ClientCredentials | None = None,
    ) -> None:
        if security not in ("none", "starttls", "tls"):
            raise ValueError(f"unknown mail security {security!r}: none, starttls or tls")
        auth = auth or ("basic" if username else "none")
        if auth not in ("none", "basic", "oauth2"):
            raise ValueError(f"unknown mail auth {auth!r}: none, basic or oauth2")
        if auth != "none" and not username:
            raise ValueError(f"[mail] auth = {auth} needs [mail] username (the login or mailbox)")
        if auth == "oauth2" and oauth2 is None:
            raise ValueError("[mail] auth = oauth2 needs the OAuth2 client credentials")
        self.auth: Auth = auth
        self._oauth2 = oauth2
        self.session: dict[str, str] = {}  # what the last connection did (TLS, login), for the mail test
        self.name = "mail server"
        self.host = host
        self.port = port
        self.security = security
        self.username = username
        self._password = password
        self.sender = sender
        self.timeout_s = timeout_s
        self._ssl_context = ssl_context
        self.stats = ClientStats()
        scheme = "smtps" if security == "tls" else "smtp"
        self.base_url = f"{scheme}://{host}:{port}"

    @classmethod
    def from_settings(cls, mail: Any, ssl_context: ssl.SSLContext | None = None) -> MailClient:
        """Build a client from ``config.settings.MailSettings`` (the OAuth2 client too, for ``oauth2``).

        Raises:
            ValueError: ``auth`` lacks what it needs (a username).
            PartnerProtocolError: the token endpoint is plain http to another machine.
        """
        oauth2 = None
        if mail.auth == "oauth2":
            oauth2 = ClientCredentials(
                mail.token_url(),
                mail.oauth2_client_id,
                mail.oauth2_client_secret.get_secret_value(),
                mail.oauth2_scope,
                timeout_s=mail.timeout_s,
            )
        return cls(
            mail.host,
            mail.port,
            security=mail.security,
            username=mail.username,
            password=mail.password.get_secret_value(),
            sender=mail.sender,
            timeout_s=mail.timeout_s,
            ssl_context=ssl_context,
            auth=mail.auth,
            oauth2=oauth2,
        )

    # ---- plain sending (alerts, warnings) ------------------------------------------------------
    def send(self, ref_id: str, recipients: Sequence[str], subject: str, text: str) -> list[WriteResult]:
        """Send one mail to each of ``recipients`` over one connection; one result per recipient.

        ``ref_id`` names the mail (its ``Message-ID`` per recipient is ``ref_id/<address>``: a
        resend after a crash keeps it). A refused recipient is a failed result with the server's
        answer; the others are sent.

        Raises: as :meth:`awrite_many` (nothing was sent then).
        """
        ops = [
            WriteOp(
                EMAILS.name,
                "upsert",
                f"{ref_id}/{address}",
                {"id": f"{ref_id}/{address}", "to": address, "subject": subject, "text": text},
            )
            for address in recipients
        ]
        if not ops:
            return []
        self._refuse_cleartext_password()
        return self._send_all(ops)

    async def asend(
        self, ref_id: str, recipients: Sequence[str], subject: str, text: str
    ) -> list[WriteResult]:
        """:meth:`send` in a worker thread, for asynchronous flows."""
        return await asyncio.to_thread(self.send, ref_id, recipients, subject, text)

    # ---- the PartnerClient interface ---------------------------------------------------------
    async def awrite_many(self, ops: Sequence[WriteOp]) -> list[WriteResult]:
        """Send one mail per op over one connection; one result per op, in order.

        Raises:
            PartnerTransportError: the server cannot be reached or does not answer (before any
                mail of the call went out; later, the unsent mails are retriable failed results).
            PartnerCredentialsError: the server refused the login.
            MailSecurityError: the password would go unencrypted to another machine.
            PartnerProtocolError: the server lacks what the settings ask for (STARTTLS, AUTH) or
                its certificate is not trusted.
        """
        if not ops:
            return []
        self._refuse_cleartext_password()
        return await asyncio.to_thread(self._send_all, list(ops))

    async def aread_many(self, entity: str, ref_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """SMTP cannot read back: every id is unknown, so the engine sends a pending mail again
        (with the same ``Message-ID``, see the module's note)."""
        return dict.fromkeys(ref_ids)

    async def alist_records(
        self,
        entity: str,
        modified_after: str | None = None,
        include_archived: bool = False,
        filters: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """A mail server lists nothing."""
        return []

    async def acheck(self) -> None:
        """Connect, greet, STARTTLS and log in as configured, ``NOOP``, quit.

        Raises: as :meth:`awrite_many`.
        """
        self._refuse_cleartext_password()

        def check() -> None:
            with self._session() as smtp:
                self.stats.requests += 1
                code, text = smtp.noop()
                self._count(code)
                if code != 250:
                    raise PartnerTransportError(
                        f"the mail server at {self.base_url} answered NOOP with {code} {_text(text)}"
                    )

        await asyncio.to_thread(check)

    def credentials_expire(self) -> float | None:
        """SMTP logins do not expire."""
        return None

    def key_hint(self) -> str:
        """Which login the client uses, as a hint (the username's first characters), never the password."""
        return credential_hint(self.username) if self.username else "…"

    def internal_id(self, data: Any) -> str | None:
        """A mail server has no ids of its own."""
        return None

    # ---- sending ---------------------------------------------------------------------------------
    def _send_all(self, ops: list[WriteOp]) -> list[WriteResult]:
        results: list[WriteResult | None] = [None] * len(ops)
        messages: dict[int, EmailMessage] = {}
        for i, op in enumerate(ops):
            built = self._build(op)
            if isinstance(built, WriteResult):
                results[i] = built
            else:
                messages[i] = built
        if messages:
            self._send_messages(ops, messages, results)
        return [r for r in results if r is not None]

    def _send_messages(
        self, ops: list[WriteOp], messages: dict[int, EmailMessage], results: list[WriteResult | None]
    ) -> None:
        """Send over one connection; after a drop, connect again once and resend the interrupted
        mail (again only after a mail got an answer on the new connection)."""
        smtp: smtplib.SMTP | None = self._open()  # raises for the whole call: nothing was sent
        todo = list(messages)
        try:
            may_reconnect = True
            for pos, i in enumerate(todo):
                attempts, gone = 0, ""
                while True:
                    attempts += 1
                    try:
                        assert smtp is not None
                        results[i] = self._send_one(smtp, ops[i], messages[i], attempts)
                        may_reconnect = True  # the connection answered
                        break
                    except _ConnectionLost as lost:
                        _close(smtp)
                        smtp = None
                        gone = f"the connection to the mail server at {self.base_url} was lost ({lost})"
                        if not may_reconnect:
                            break
                        may_reconnect = False
                        try:
                            smtp = self._open()
                        except PartnerError as exc:
                            gone = f"{gone}; connecting again failed: {exc}"
                            break
                        self.stats.retries += 1
                        gone = ""
                self._login_required(results, i)
                if gone:
                    if not any(r is not None and r.ok for r in results):
                        raise PartnerTransportError(f"{gone}; no mail of this batch was accepted")
                    # the rest waits, pending, for the engine's next attempt
                    results[i] = _failed(
                        ops[i], f"{gone}; the mail may or may not have arrived", None, attempts
                    )
                    for j in todo[pos + 1 :]:
                        results[j] = _failed(ops[j], f"not sent: {gone}", None, 0)
                    break
        finally:
            _quit(smtp)

    def _login_required(self, results: list[WriteResult | None], i: int) -> None:
        """A server that wants a login (530) refuses every mail: that ends the call, as a refused
        login does, unless mails of it went out already (their results must reach the engine)."""
        result = results[i]
        if result is None or result.error_status != _LOGIN_REQUIRED:
            return
        if any(r is not None and r.ok for r in results):
            return
        hint = "[mail] username and password (or auth = oauth2)" if self.auth == "none" else self._hint()
        raise PartnerCredentialsError(
            self.name, _LOGIN_REQUIRED, f"{_LOGIN_REQUIRED}: it requires a login", hint
        )

    def _send_one(self, smtp: smtplib.SMTP, op: WriteOp, message: EmailMessage, attempts: int) -> WriteResult:
        """Send one mail; a refusal is a failed result, a lost connection :class:`_ConnectionLost`."""
        self.stats.requests += 1
        to = message["To"]
        try:
            refused = smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()), (550, b"refused"))
            if code == _CLOSING:
                raise _ConnectionLost(f"{code} {_text(text)}") from exc
            return self._refused(op, f"the mail server refused the recipient {to}", code, text, attempts)
        except smtplib.SMTPSenderRefused as exc:
            if exc.smtp_code == _CLOSING:
                raise _ConnectionLost(f"{exc.smtp_code} {_text(exc.smtp_error)}") from exc
            result = self._refused(
                op,
                f"the mail server refused the sender {self.sender}",
                exc.smtp_code,
                exc.smtp_error,
                attempts,
            )
            if not result.retriable and exc.smtp_code != _LOGIN_REQUIRED:
                result.error = f"{result.error}; check [mail] sender (an address this login may send as)"
            return result
        except smtplib.SMTPNotSupportedError as exc:  # e.g. an address that needs SMTPUTF8
            return _failed(
                op, f"the mail server cannot take the mail to {to}: {exc}", None, attempts, retriable=False
            )
        except smtplib.SMTPResponseException as exc:  # SMTPDataError: the content was refused
            if exc.smtp_code == _CLOSING:
                raise _ConnectionLost(f"{exc.smtp_code} {_text(exc.smtp_error)}") from exc
            return self._refused(
                op, f"the mail server refused the mail to {to}", exc.smtp_code, exc.smtp_error, attempts
            )
        except (smtplib.SMTPServerDisconnected, OSError) as exc:  # timeouts and TLS errors too
            raise _ConnectionLost(str(exc) or type(exc).__name__) from exc
        if refused:  # only when some of several recipients were refused; a mail has one
            code, text = next(iter(refused.values()))
            return self._refused(op, "the mail server refused a recipient", code, text, attempts)
        self._count(250)
        return WriteResult(op, True, created=True, attempts=attempts)

    def _refused(self, op: WriteOp, what: str, code: int, text: bytes | str, attempts: int) -> WriteResult:
        """5xx: refused for good; 4xx: for now (retriable)."""
        self._count(code)
        kind = "temporarily, try again later" if 400 <= code < 500 else "permanently"
        return _failed(
            op, f"{what} ({kind}): {code} {_text(text)}", code, attempts, retriable=400 <= code < 500
        )

    def _build(self, op: WriteOp) -> EmailMessage | WriteResult:
        """The mail of an op, or the failed result saying why there is none."""
        if op.op != "upsert":
            return _failed(
                op,
                f"the e-mail {op.ref_id} cannot be withdrawn ({op.op}): it was sent",
                None,
                0,
                retriable=False,
            )
        payload = op.payload or {}
        missing = [
            k
            for k in ("to", "subject", "text")
            if not isinstance(payload.get(k), str) or not payload[k].strip()
        ]
        if missing:
            return _failed(op, f"the e-mail {op.ref_id} lacks {', '.join(missing)}", None, 0, retriable=False)
        message = EmailMessage()
        try:
            message["From"] = self.sender
            message["To"] = Address(
                display_name=str(payload.get("toName") or ""), addr_spec=payload["to"].strip()
            )
        except (ValueError, IndexError, HeaderParseError) as exc:
            return _failed(
                op,
                f"the e-mail {op.ref_id} has an invalid address {payload['to']!r}: {exc}",
                None,
                0,
                retriable=False,
            )
        message["Subject"] = " ".join(payload["subject"].split())  # no line breaks in a header
        message["Date"] = format_datetime(datetime.now(UTC))
        message["Message-ID"] = message_id(op.ref_id, self.sender)
        message.set_content(payload["text"], charset="utf-8", cte="quoted-printable")
        return message

    # ---- the connection --------------------------------------------------------------------------
    def _hint(self) -> str:
        return OAUTH2_HINT + " and [mail] username (the mailbox)" if self.auth == "oauth2" else _SETTINGS_HINT

    def _refuse_cleartext_password(self) -> None:
        if self.auth != "none" and self.security == "none" and not is_loopback(self.host):
            secret = "OAuth2 token" if self.auth == "oauth2" else "password"
            raise MailSecurityError(
                f"hausflow does not send the SMTP {secret} of {self.username!r} unencrypted to "
                f"{self.host}: set [mail] security to starttls or tls (HAUSFLOW_MAIL__SECURITY), "
                "or use a mail server on this machine (loopback); no mail was sent"
            )

    def _tls(self) -> ssl.SSLContext:
        return self._ssl_context or ssl.create_default_context()

    @contextmanager
    def _session(self) -> Iterator[smtplib.SMTP]:
        smtp = self._open()
        try:
            yield smtp
        finally:
            _quit(smtp)

    def _open(self) -> smtplib.SMTP:
        """A connection, greeted, upgraded and logged in as configured."""
        where = f"the mail server at {self.base_url}"
        smtp: smtplib.SMTP | None = None
        try:
            if self.security == "tls":
                smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s, context=self._tls())
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
            smtp.ehlo()
            if self.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise PartnerProtocolError(
                        f"{where} does not offer STARTTLS: set [mail] security to tls (port 465) or "
                        "ask the mail server's administrator"
                    )
                smtp.starttls(context=self._tls())
                smtp.ehlo()
            self.session = {"tls": _tls_text(smtp, self.security)}
            self._authenticate(smtp)
            return smtp
        except PartnerError:
            _close(smtp)
            raise
        except smtplib.SMTPAuthenticationError as exc:
            _close(smtp)
            self._count(exc.smtp_code)
            if exc.smtp_code < 500:  # 454: temporary authentication failure
                raise PartnerTransportError(
                    f"{where} cannot log in now ({exc.smtp_code}); try again later"
                ) from None
            # never the server's text: a login answer may echo what was sent
            if self.auth == "oauth2":  # the text is hausflow's own (see _xoauth2), never the token
                detail = f"{exc.smtp_code} {_text(exc.smtp_error)} for mailbox {self.username!r}"
            else:
                detail = f"{exc.smtp_code} for user {self.username!r}"
            raise PartnerCredentialsError(self.name, exc.smtp_code, detail, self._hint()) from None
        except smtplib.SMTPNotSupportedError as exc:
            _close(smtp)
            raise PartnerProtocolError(
                f"{where} does not offer a login (AUTH) here ({exc}): leave [mail] username empty, or set "
                "[mail] security to starttls or tls if it offers AUTH over TLS only"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            _close(smtp)
            raise PartnerProtocolError(
                f"{where} shows a certificate hausflow does not trust ({exc.verify_message}): check [mail] host "
                "(the name in the certificate) and the machine's certificate authorities"
            ) from None
        except (smtplib.SMTPConnectError, smtplib.SMTPServerDisconnected, smtplib.SMTPHeloError) as exc:
            _close(smtp)
            raise PartnerTransportError(f"{where} did not take the connection: {exc}") from exc
        except smtplib.SMTPResponseException as exc:
            _close(smtp)
            if exc.smtp_code >= 500:
                raise PartnerProtocolError(
                    f"{where} refused the session: {exc.smtp_code} {_text(exc.smtp_error)}"
                ) from None
            raise PartnerTransportError(f"{where} answered {exc.smtp_code} {_text(exc.smtp_error)}") from exc
        except smtplib.SMTPException as exc:  # "No suitable authentication method found."
            _close(smtp)
            raise PartnerProtocolError(f"{where}: {exc}; check the [mail] settings") from None
        except TimeoutError as exc:
            _close(smtp)
            raise PartnerTransportError(
                f"{where} did not answer within {self.timeout_s:g} s: check [mail] host and port"
            ) from exc
        except OSError as exc:  # refused, unreachable, unknown host, TLS handshake broken
            _close(smtp)
            raise PartnerTransportError(
                f"{where} cannot be reached ({exc.strerror or exc}): check [mail] host and port and that "
                "the server runs"
            ) from exc

    def _authenticate(self, smtp: smtplib.SMTP) -> None:
        """Log in as ``auth`` says; records what happened in :attr:`session`."""
        if self.auth == "none":
            self.session["auth"] = "none (no login configured)"
            return
        self.stats.authentications += 1
        offered = smtp.esmtp_features.get("auth", "").upper().split()
        if self.auth == "basic":
            code, text = smtp.login(self.username, self._password)
            mechanism = next((m for m in ("CRAM-MD5", "PLAIN", "LOGIN") if m in offered), "?")
            self.session["auth"] = f"basic (AUTH {mechanism}) as {self.username!r}: {code} {_text(text)}"
            return
        if not smtp.has_extn("auth") or "XOAUTH2" not in offered:
            raise PartnerProtocolError(
                f"the mail server at {self.base_url} does not offer AUTH XOAUTH2 here (it offers: "
                f"{' '.join(offered) or 'no AUTH'}): check [mail] auth, or set [mail] security to starttls "
                "or tls if it offers XOAUTH2 over TLS only"
            )
        assert self._oauth2 is not None
        while True:
            token = self._oauth2.token()
            try:
                code, text = self._xoauth2(smtp, token)
            except smtplib.SMTPAuthenticationError as exc:
                self._oauth2.drop(token)
                if not token.fresh and exc.smtp_code >= 500:
                    continue  # a cached token the server no longer takes: one fresh token, once
                raise
            when = datetime.fromtimestamp(token.expires_at, UTC).astimezone()
            self.session["auth"] = (
                f"oauth2 (AUTH XOAUTH2) as {self.username!r} with a token from {self._oauth2.token_url} "
                f"({'new' if token.fresh else 'cached'}, valid until {when:%Y-%m-%d %H:%M}): {code} {_text(text)}"
            )
            return

    def _xoauth2(self, smtp: smtplib.SMTP, token: BearerToken) -> tuple[int, bytes]:
        """``AUTH XOAUTH2`` with the initial response; a 334 error challenge is answered empty (as
        the mechanism asks), and the server's status from it goes into the refusal."""
        challenges: list[bytes] = []

        def answer(challenge: bytes | None = None) -> str:
            if challenge is None:
                return xoauth2_response(self.username, token.value)
            challenges.append(challenge)
            return ""

        try:
            return smtp.auth("XOAUTH2", answer, initial_response_ok=True)
        except smtplib.SMTPAuthenticationError as exc:
            status = ""
            if challenges:
                with suppress(ValueError, TypeError):
                    detail = json.loads(challenges[-1].decode("utf-8", "replace"))
                    status = f", token status {detail.get('status')}" if isinstance(detail, dict) else ""
            raise smtplib.SMTPAuthenticationError(
                exc.smtp_code, f"XOAUTH2 refused{status}".encode()
            ) from None

    def send_test(self, to: str) -> MailTestReport:
        """The mail test (``./hausflow mail-test``): connect, TLS, log in, send one mail to ``to``,
        and say what each step did with the server's answers. Never raises for the server's sake;
        never shows the password or the token."""
        report = MailTestReport()
        report.say(
            f"Server         {self.base_url} (security {self.security}, auth {self.auth}"
            + (f" as {self.username!r}" if self.auth != "none" else "")
            + ")"
        )
        try:
            address = Address(addr_spec=to.strip())
        except (ValueError, IndexError, HeaderParseError) as exc:
            report.say(f"Refused        {to!r} is not an e-mail address ({exc}); nothing was sent")
            return report
        try:
            self._refuse_cleartext_password()
            smtp = self._open()
        except PartnerCredentialsError as exc:
            report.say(f"TLS            {self.session.get('tls', '-')}")
            report.say(f"Login          refused: {exc.advice()}")
            return report
        except (PartnerError, ValueError) as exc:
            report.say(f"Connection     failed: {exc}")
            return report
        try:
            report.say(f"TLS            {self.session['tls']}")
            report.say(f"Login          {self.session['auth']}")
            message = EmailMessage()
            message["From"] = self.sender
            message["To"] = address
            message["Subject"] = "hausflow: test mail"
            message["Date"] = format_datetime(datetime.now(UTC))
            message["Message-ID"] = message_id(f"mail-test-{datetime.now(UTC):%Y%m%d%H%M%S%f}", self.sender)
            message.set_content(
                f"This test mail was sent by hausflow through {self.base_url} (security {self.security}, "
                f"auth {self.auth}). If it arrived, hausflow's mail settings work.\n",
                charset="utf-8",
            )
            sender = parseaddr(self.sender)[1] or self.sender
            steps = (
                ("MAIL FROM", lambda: smtp.mail(sender)),
                ("RCPT TO", lambda: smtp.rcpt(address.addr_spec)),
            )
            for name, step in steps:
                code, text = step()
                if code not in (250, 251):
                    report.say(f"{name:<14} refused: {code} {_text(text)}")
                    report.say(f"Mail to {address.addr_spec}: refused, nothing was sent")
                    return report
            code, text = smtp.data(message.as_bytes())
            accepted = code == 250
            report.say(
                f"Mail to {address.addr_spec}: {'accepted' if accepted else 'refused'} ({code} {_text(text)})"
            )
            report.ok = accepted
            return report
        except (smtplib.SMTPException, OSError) as exc:
            report.say(f"Sending        failed: {type(exc).__name__}: {exc}")
            return report
        finally:
            _quit(smtp)

    def _count(self, code: int) -> None:
        self.stats.by_status[code] = self.stats.by_status.get(code, 0) + 1


def _failed(
    op: WriteOp, error: str, code: int | None, attempts: int, *, retriable: bool = True
) -> WriteResult:
    return WriteResult(op, False, error=error, error_status=code, retriable=retriable, attempts=attempts)


def _text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return " ".join(text.split())[:300]


def _tls_text(smtp: smtplib.SMTP, security: str) -> str:
    """The connection's TLS as a person reads it (``TLSv1.3, TLS_AES_256_GCM_SHA384 (starttls)``)."""
    sock = smtp.sock
    if isinstance(sock, ssl.SSLSocket):
        cipher = sock.cipher()
        return f"{sock.version()}, {cipher[0] if cipher else '?'} ({security})"
    return "none (plain SMTP)"


def _quit(smtp: smtplib.SMTP | None) -> None:
    if smtp is None:
        return
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        _close(smtp)


def _close(smtp: smtplib.SMTP | None) -> None:
    if smtp is not None:
        with suppress(OSError):
            smtp.close()
