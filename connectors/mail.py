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
import re
import smtplib
import ssl
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any, Literal

from connectors.state_store import credential_hint
from connectors.sync.client import ClientStats, WriteOp, WriteResult
from connectors.sync.errors import (
    PartnerCredentialsError,
    PartnerError,
    PartnerProtocolError,
    PartnerTransportError,
)
from connectors.sync.streams import Stream

__all__ = ["EMAILS", "STREAMS", "MailClient", "MailSecurityError", "message_id"]

EMAILS = Stream("emails", "/emails", ("id", "to", "toName", "subject", "text"), archivable=False)
STREAMS = {EMAILS.name: EMAILS}

Security = Literal["none", "starttls", "tls"]

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
        username, password: login (``AUTH``) only if ``username`` is set. With ``none`` the
            password goes to a loopback host only; otherwise :class:`MailSecurityError`.
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
    ) -> None:
        if security not in ("none", "starttls", "tls"):
            raise ValueError(f"unknown mail security {security!r}: none, starttls or tls")
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
        """Build a client from ``config.settings.MailSettings``."""
        return cls(
            mail.host,
            mail.port,
            security=mail.security,
            username=mail.username,
            password=mail.password.get_secret_value(),
            sender=mail.sender,
            timeout_s=mail.timeout_s,
            ssl_context=ssl_context,
        )

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
        hint = "[mail] username and password" if not self.username else _SETTINGS_HINT
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
    def _refuse_cleartext_password(self) -> None:
        if self.username and self.security == "none" and not is_loopback(self.host):
            raise MailSecurityError(
                f"hausflow does not send the SMTP password of {self.username!r} unencrypted to "
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
            if self.username:
                self.stats.authentications += 1
                smtp.login(self.username, self._password)
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
            raise PartnerCredentialsError(
                self.name, exc.smtp_code, f"{exc.smtp_code} for user {self.username!r}", _SETTINGS_HINT
            ) from None
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

    def _count(self, code: int) -> None:
        self.stats.by_status[code] = self.stats.by_status.get(code, 0) + 1


def _failed(
    op: WriteOp, error: str, code: int | None, attempts: int, *, retriable: bool = True
) -> WriteResult:
    return WriteResult(op, False, error=error, error_status=code, retriable=retriable, attempts=attempts)


def _text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return " ".join(text.split())[:300]


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
