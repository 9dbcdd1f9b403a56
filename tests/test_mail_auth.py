"""SMTP logins against real local servers: basic (plain on loopback, STARTTLS, TLS) and OAuth2 client
credentials (a token endpoint on loopback, then ``AUTH XOAUTH2`` checked by the server), the mail
test command, and every refusal with a clear error that never shows a secret."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult

from config.settings import MailSettings
from connectors.mail import MailClient, MailSecurityError
from connectors.oauth2 import ClientCredentials
from connectors.sync.errors import PartnerCredentialsError, PartnerProtocolError
from flows.admin import main as admin
from tests.test_mail import PASSWORD, SENDER, Mailbox, authenticator, start

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

CLIENT_ID = "7f1c2d9e-hausflow"
CLIENT_SECRET = "Qx8~client-secret-value"
SCOPE = "https://outlook.office365.com/.default"
MAILBOX = "hausflow@hv-mueller.de"


# ---- a token endpoint on loopback ---------------------------------------------------------------
@dataclass
class TokenEndpoint:
    """The tenant's token endpoint: client credentials in, bearer tokens out; remembers each request."""

    port: int = 0
    expires_in: int = 3600
    issued: list[str] = field(default_factory=list)
    requests: list[dict[str, str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/tenant-42/oauth2/v2.0/token"


def _token_handler(endpoint: TokenEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            endpoint.requests.append(form)
            if self.path != "/tenant-42/oauth2/v2.0/token":
                return self._answer(404, {"error": "invalid_tenant"})
            if form.get("grant_type") != "client_credentials" or form.get("scope") != SCOPE:
                return self._answer(
                    400, {"error": "invalid_request", "error_description": "bad grant or scope"}
                )
            if (form.get("client_id"), form.get("client_secret")) != (CLIENT_ID, CLIENT_SECRET):
                return self._answer(
                    401,
                    {
                        "error": "invalid_client",
                        "error_description": "AADSTS7000215: Invalid client secret provided.",
                    },
                )
            token = f"eyJ0eXAi.token-{len(endpoint.issued) + 1}.sig"
            endpoint.issued.append(token)
            return self._answer(
                200, {"token_type": "Bearer", "expires_in": endpoint.expires_in, "access_token": token}
            )

    return Handler


@pytest.fixture
def token_endpoint() -> Iterator[TokenEndpoint]:
    ClientCredentials.clear()
    endpoint = TokenEndpoint()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _token_handler(endpoint))
    endpoint.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield endpoint
    server.shutdown()
    server.server_close()
    ClientCredentials.clear()


# ---- an SMTP server that checks XOAUTH2 against the endpoint's tokens ----------------------------
@dataclass
class OAuthMailbox(Mailbox):
    """The mailbox, plus ``AUTH XOAUTH2``: the bearer must be a token the endpoint issued, for MAILBOX."""

    endpoint: TokenEndpoint | None = None
    revoked: set[str] = field(default_factory=set)
    auth_seen: list[tuple[str, str]] = field(default_factory=list)

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        raw = base64.b64decode(args[1]).decode() if len(args) > 1 else ""
        parts = dict(p.split("=", 1) for p in raw.split("\x01") if "=" in p)
        user, bearer = parts.get("user", ""), parts.get("auth", "")
        self.auth_seen.append((user, bearer))
        token = bearer.removeprefix("Bearer ")
        valid = self.endpoint is not None and token in self.endpoint.issued and token not in self.revoked
        if bearer.startswith("Bearer ") and valid and user == MAILBOX:
            return AuthResult(success=True, auth_data=user)
        error = json.dumps({"status": "401", "schemes": "bearer", "scope": SCOPE}).encode()
        await server.challenge_auth(base64.b64encode(error), encode_to_b64=False)  # the client answers empty
        return AuthResult(success=False, handled=False, message="535 5.7.3 Authentication unsuccessful")


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


@pytest.fixture
def oauth_box(token_endpoint: TokenEndpoint) -> OAuthMailbox:
    return OAuthMailbox(endpoint=token_endpoint)


@pytest.fixture
def oauth_server(oauth_box: OAuthMailbox, server_tls: ssl.SSLContext) -> Iterator[int]:
    """STARTTLS required, XOAUTH2 (the handler's) and the built-in LOGIN/PLAIN offered after it."""
    controller, port = start(
        oauth_box,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
    )
    yield port
    controller.stop()


def oauth_client(
    port: int, endpoint: TokenEndpoint, tls: ssl.SSLContext, secret: str = CLIENT_SECRET
) -> MailClient:
    return MailClient(
        "127.0.0.1",
        port,
        security="starttls",
        auth="oauth2",
        username=MAILBOX,
        sender=SENDER,
        ssl_context=tls,
        oauth2=ClientCredentials(endpoint.url, CLIENT_ID, secret, SCOPE),
    )


def arrived(box: Mailbox) -> list[tuple[str, str]]:
    return [(str(m["To"]), str(m["Subject"])) for m in box.messages]


# ---- OAuth2 ---------------------------------------------------------------------------------------
def test_oauth2_fetches_one_token_and_logs_in_with_xoauth2(
    oauth_server: int, oauth_box: OAuthMailbox, token_endpoint: TokenEndpoint, client_tls: ssl.SSLContext
) -> None:
    client = oauth_client(oauth_server, token_endpoint, client_tls)
    results = client.send("expiry-test", ["anna@example.org", "ben@example.org"], "Betreff", "Text")
    assert [r.ok for r in results] == [True, True]
    assert arrived(oauth_box) == [("anna@example.org", "Betreff"), ("ben@example.org", "Betreff")]
    assert token_endpoint.requests == [
        {
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scope": SCOPE,
        }
    ]
    assert oauth_box.auth_seen == [(MAILBOX, f"Bearer {token_endpoint.issued[0]}")]
    # a second connection (another task, another run in this process) reuses the cached token
    assert all(
        r.ok
        for r in oauth_client(oauth_server, token_endpoint, client_tls).send("x", ["c@example.org"], "S", "T")
    )
    assert len(token_endpoint.requests) == 1 and len(oauth_box.auth_seen) == 2
    assert "oauth2 (AUTH XOAUTH2)" in client.session["auth"] and "235" in client.session["auth"]


def test_a_token_close_to_its_expiry_is_not_used_again(
    oauth_server: int, token_endpoint: TokenEndpoint, client_tls: ssl.SSLContext
) -> None:
    token_endpoint.expires_in = 1  # "shortly before expires_in" is now
    for _ in range(2):
        assert (
            oauth_client(oauth_server, token_endpoint, client_tls)
            .send("x", ["a@example.org"], "S", "T")[0]
            .ok
        )
        time.sleep(1.0)
    assert len(token_endpoint.issued) == 2


def test_an_expired_cached_token_is_replaced_once_by_a_fresh_one(
    oauth_server: int, oauth_box: OAuthMailbox, token_endpoint: TokenEndpoint, client_tls: ssl.SSLContext
) -> None:
    assert oauth_client(oauth_server, token_endpoint, client_tls).send("x", ["a@example.org"], "S", "T")[0].ok
    oauth_box.revoked.add(token_endpoint.issued[0])  # the server no longer takes it (expired there)
    assert oauth_client(oauth_server, token_endpoint, client_tls).send("y", ["b@example.org"], "S", "T")[0].ok
    assert len(token_endpoint.issued) == 2
    assert [bearer for _user, bearer in oauth_box.auth_seen] == [
        f"Bearer {token_endpoint.issued[0]}",
        f"Bearer {token_endpoint.issued[0]}",
        f"Bearer {token_endpoint.issued[1]}",
    ]


def test_a_refused_fresh_token_is_a_clear_credentials_error(
    oauth_server: int, oauth_box: OAuthMailbox, token_endpoint: TokenEndpoint, client_tls: ssl.SSLContext
) -> None:
    oauth_box.endpoint = TokenEndpoint()  # the server trusts another tenant: no token of ours passes
    with pytest.raises(PartnerCredentialsError) as caught:
        oauth_client(oauth_server, token_endpoint, client_tls).send("x", ["a@example.org"], "S", "T")
    advice = caught.value.advice()
    assert "535" in advice and "XOAUTH2 refused, token status 401" in advice and MAILBOX in advice
    assert "oauth2_client_id" in advice and token_endpoint.issued[0] not in advice
    assert len(token_endpoint.issued) == 1 and not oauth_box.messages  # a fresh token is not fetched again


def test_a_wrong_client_secret_is_refused_by_the_token_endpoint(
    oauth_server: int, oauth_box: OAuthMailbox, token_endpoint: TokenEndpoint, client_tls: ssl.SSLContext
) -> None:
    with pytest.raises(PartnerCredentialsError) as caught:
        oauth_client(oauth_server, token_endpoint, client_tls, secret="an-old-secret").send(
            "x", ["a@example.org"], "S", "T"
        )
    advice = caught.value.advice()
    assert caught.value.status == 401 and "invalid_client" in advice and "AADSTS7000215" in advice
    assert "oauth2_client_secret_expires" in advice and "an-old-secret" not in advice
    assert not oauth_box.auth_seen and not oauth_box.messages


def test_the_token_never_goes_in_clear_to_another_machine(token_endpoint: TokenEndpoint) -> None:
    mailer = MailClient(
        "mail.example.invalid",
        25,
        auth="oauth2",
        username=MAILBOX,
        oauth2=ClientCredentials(token_endpoint.url, CLIENT_ID, CLIENT_SECRET, SCOPE),
    )
    with pytest.raises(MailSecurityError, match="OAuth2 token"):
        mailer.send("x", ["a@example.org"], "S", "T")
    with pytest.raises(PartnerProtocolError, match="must be https"):
        ClientCredentials("http://login.example.invalid/t/token", CLIENT_ID, CLIENT_SECRET, SCOPE)
    assert not token_endpoint.requests


def test_a_server_without_xoauth2_says_so(mailbox: Mailbox, token_endpoint: TokenEndpoint) -> None:
    controller, port = start(mailbox, authenticator=authenticator, auth_required=True, auth_require_tls=False)
    try:
        client = MailClient(
            "127.0.0.1",
            port,
            auth="oauth2",
            username=MAILBOX,
            oauth2=ClientCredentials(token_endpoint.url, CLIENT_ID, CLIENT_SECRET, SCOPE),
        )
        with pytest.raises(
            PartnerProtocolError, match="does not offer AUTH XOAUTH2 here \\(it offers: LOGIN PLAIN\\)"
        ):
            asyncio.run(client.acheck())
    finally:
        controller.stop()


@pytest.fixture
def mailbox() -> Mailbox:
    return Mailbox()


# ---- basic, through the mail test -----------------------------------------------------------------
@pytest.mark.parametrize("security", ["none", "starttls", "tls"])
def test_the_mail_test_with_basic_login_reports_each_step(
    security: str, mailbox: Mailbox, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    if security == "tls":
        # aiosmtpd counts only STARTTLS as TLS for AUTH; the implicit TLS connection is encrypted all the same
        options: dict[str, Any] = {"ssl_context": server_tls, "auth_require_tls": False}
    elif security == "starttls":
        options = {"tls_context": server_tls, "require_starttls": True}
    else:
        options = {"auth_require_tls": False}
    controller, port = start(mailbox, authenticator=authenticator, auth_required=True, **options)
    try:
        client = MailClient(
            "127.0.0.1", port, security=security, username="hausflow", password=PASSWORD, sender=SENDER,  # type: ignore[arg-type]
            ssl_context=client_tls,
        )  # fmt: skip
        report = client.send_test("anna@example.org")
        wrong = MailClient(
            "127.0.0.1", port, security=security, username="hausflow", password="falsch", sender=SENDER,  # type: ignore[arg-type]
            ssl_context=client_tls,
        ).send_test("anna@example.org")  # fmt: skip
    finally:
        controller.stop()
    text = "\n".join(report.lines)
    assert report.ok, text
    if security == "none":
        assert "TLS            none (plain SMTP)" in text
    else:
        assert "TLS            TLSv1." in text and f"({security})" in text
    assert "basic (AUTH " in text and "235" in text and "accepted (250" in text
    assert arrived(mailbox) == [("anna@example.org", "hausflow: test mail")]
    assert PASSWORD not in text
    assert (
        not wrong.ok
        and "Login          refused" in "\n".join(wrong.lines)
        and "535" in "\n".join(wrong.lines)
    )


def test_the_mail_test_command_exit_codes_and_what_it_prints(
    oauth_server: int,
    oauth_box: OAuthMailbox,
    token_endpoint: TokenEndpoint,
    ca: trustme.CA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # the machine's authorities: here the test CA
    for key, value in {
        "HOST": "127.0.0.1", "PORT": str(oauth_server), "SECURITY": "starttls", "AUTH": "oauth2",
        "USERNAME": MAILBOX, "SENDER": SENDER, "OAUTH2_TENANT": "tenant-42", "OAUTH2_CLIENT_ID": CLIENT_ID,
        "OAUTH2_CLIENT_SECRET": CLIENT_SECRET,
        "OAUTH2_TOKEN_URL": f"http://127.0.0.1:{token_endpoint.port}/{{tenant}}/oauth2/v2.0/token",
    }.items():  # fmt: skip
        monkeypatch.setenv(f"HAUSFLOW_MAIL__{key}", value)
    assert admin(["mail-test", "admin@hv-mueller.de", "--profile", "test"]) == 0
    out = capsys.readouterr().out
    assert "oauth2 (AUTH XOAUTH2)" in out and "TLSv1." in out and "accepted (250" in out
    assert CLIENT_SECRET not in out and token_endpoint.issued[0] not in out
    assert arrived(oauth_box) == [("admin@hv-mueller.de", "hausflow: test mail")]
    assert admin(["mail-test", "unbekannt@hv-mueller.de", "--profile", "test"]) == 1
    captured = capsys.readouterr()
    assert "RCPT TO        refused: 550 5.1.1" in captured.out and "The mail test failed" in captured.err
    monkeypatch.setenv("HAUSFLOW_MAIL__OAUTH2_CLIENT_SECRET", "expired-secret")
    ClientCredentials.clear()
    assert admin(["mail-test", "admin@hv-mueller.de", "--profile", "test"]) == 1
    out = capsys.readouterr().out
    assert "Login          refused" in out and "invalid_client" in out and "expired-secret" not in out


def test_mail_settings_build_the_oauth2_client() -> None:
    settings = MailSettings(
        auth="oauth2", username=MAILBOX, oauth2_tenant="t-1", oauth2_client_id=CLIENT_ID,
        oauth2_client_secret=CLIENT_SECRET, security="starttls",  # type: ignore[arg-type]
    )  # fmt: skip
    client = MailClient.from_settings(settings)
    assert client.auth == "oauth2" and client._oauth2 is not None
    assert client._oauth2.token_url == "https://login.microsoftonline.com/t-1/oauth2/v2.0/token"
    assert CLIENT_SECRET not in repr(client._oauth2) and CLIENT_SECRET not in repr(settings)
    with pytest.raises(ValueError, match="needs \\[mail\\] username"):
        MailClient.from_settings(MailSettings(auth="basic"))
