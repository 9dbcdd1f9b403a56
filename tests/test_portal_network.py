"""The portal client's network layer (asyncio streams under httpcore) against real local servers.

Each test starts a small server on loopback: plain HTTP, TLS with a test certificate authority,
one that never answers, one that closes kept-alive connections, one that hangs up mid-answer.
The portal sandbox tests cover the layer under the whole client as well.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable

import httpcore
import pytest
import trustme

from connectors.portal import PortalClient, WriteOp
from connectors.portal.network import AsyncioBackend

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """Read one request head and its body (Content-Length only); b'' when the client left."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return head + body


def answer(body: bytes, *, close: bool = False) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


async def serve(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ssl_context)
    return server, server.sockets[0].getsockname()[1]


def connection(url: str, ssl_context: ssl.SSLContext | None = None) -> httpcore.AsyncHTTPConnection:
    """One HTTP/1.1 connection opened by the backend, as the portal client builds it."""
    origin = httpcore.URL(url).origin
    return httpcore.AsyncHTTPConnection(
        origin, ssl_context=ssl_context or ssl.create_default_context(), network_backend=AsyncioBackend()
    )


async def send(
    conn: httpcore.AsyncHTTPConnection, url: str, content: bytes = b"", read_timeout: float = 2.0
) -> tuple[int, bytes]:
    request = httpcore.Request(
        "PUT",
        url,
        headers=[(b"Host", httpcore.URL(url).host), (b"Content-Length", b"%d" % len(content))],
        content=content,
        extensions={"timeout": {"read": read_timeout, "connect": 2.0}},
    )
    response = await conn.handle_async_request(request)
    try:
        return response.status, await response.aread()
    finally:
        await response.aclose()


def test_the_client_sends_through_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """A write of the portal client opens its connection with the backend (counted), and lands."""

    async def run() -> tuple[int, list[bytes]]:
        seen: list[bytes] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    request = await read_request(reader)
                    seen.append(request.split(b" ", 2)[1])
                    body = b'{"token":"t"}' if b"/authenticate" in request else b'{"internalId":7}'
                    writer.write(answer(body))
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):  # the client closed, or aborted
                writer.close()

        opened = 0
        connect_tcp = AsyncioBackend.connect_tcp

        async def counted(
            self: AsyncioBackend, *args: object, **kwargs: object
        ) -> httpcore.AsyncNetworkStream:
            nonlocal opened
            opened += 1
            return await connect_tcp(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(AsyncioBackend, "connect_tcp", counted)
        server, port = await serve(handler)
        async with server:
            client = PortalClient(f"http://127.0.0.1:{port}", "k", "s", concurrency=1)
            results = await client.awrite_many(
                [WriteOp("units", "upsert", "U1", {"id": "U1", "propertyId": "O1"})]
            )
            assert results[0].ok and results[0].internal_id == "7"
        return opened, seen

    opened, seen = asyncio.run(run())
    assert opened == 1
    assert seen == [b"/v2/authenticate", b"/v2/units/U1"]


def test_requests_reuse_one_connection_and_carry_their_body() -> None:
    async def run() -> tuple[list[bytes], int]:
        seen: list[bytes] = []
        connections = 0

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            try:
                while True:
                    seen.append(await read_request(reader))
                    writer.write(answer(b'{"ok":true}'))
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):  # the client closed, or aborted
                writer.close()

        server, port = await serve(handler)
        base = f"http://127.0.0.1:{port}"
        async with server, connection(base) as conn:
            for i in range(3):
                status, body = await send(conn, f"{base}/v2/units/U{i}", b'{"n":%d}' % i)
                assert (status, body) == (200, b'{"ok":true}')
        return seen, connections

    seen, connections = asyncio.run(run())
    assert connections == 1
    assert [r.split(b" ", 2)[1] for r in seen] == [b"/v2/units/U0", b"/v2/units/U1", b"/v2/units/U2"]
    assert seen[2].endswith(b'{"n":2}')


def test_an_idle_connection_the_server_closed_reports_itself_expired() -> None:
    """The server answers and hangs up without saying so: the idle connection reads as expired
    (httpcore asks the stream whether it is readable), so nothing is sent on it again."""

    async def run() -> tuple[bool, bool]:
        hang_up = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(answer(b"{}"))  # no "Connection: close": the client cannot know
            await writer.drain()
            await hang_up.wait()
            writer.close()

        server, port = await serve(handler)
        base = f"http://127.0.0.1:{port}"
        async with server, connection(base) as conn:
            assert (await send(conn, f"{base}/x"))[0] == 200
            fresh = conn.has_expired()
            hang_up.set()
            await asyncio.sleep(0.05)  # the close reaches the client
            return fresh, conn.has_expired()

    fresh, later = asyncio.run(run())
    assert (fresh, later) == (False, True)


def test_tls_with_a_trusted_certificate_and_refusal_of_an_untrusted_one() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)

    async def run() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await read_request(reader)
                writer.write(answer(b'{"tls":true}', close=True))
                await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                pass
            writer.close()

        server, port = await serve(handler, server_context)
        base = f"https://localhost:{port}"
        async with server:
            async with connection(base, trusting) as conn:
                assert await send(conn, f"{base}/v2/properties/O1") == (200, b'{"tls":true}')
            async with connection(base) as conn:
                with pytest.raises(httpcore.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await send(conn, f"{base}/v2/properties/O1")

    asyncio.run(run())


def test_no_answer_is_a_read_timeout_and_no_server_a_connect_error() -> None:
    async def run() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)
            writer.close()

        server, port = await serve(silent)
        base = f"http://127.0.0.1:{port}"
        async with server, connection(base) as conn:
            with pytest.raises(httpcore.ReadTimeout):
                await send(conn, f"{base}/", read_timeout=0.2)
        server.close()
        await server.wait_closed()
        async with connection(base) as conn:
            with pytest.raises(httpcore.ConnectError):
                await send(conn, f"{base}/")

    asyncio.run(run())


def test_a_connection_dropped_mid_answer_is_a_protocol_error() -> None:
    """Half an answer, then the socket closes: a RemoteProtocolError (the client retries it)."""

    async def run() -> None:
        async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
            await writer.drain()
            writer.close()

        server, port = await serve(half)
        base = f"http://127.0.0.1:{port}"
        async with server, connection(base) as conn:
            with pytest.raises(httpcore.RemoteProtocolError):
                await send(conn, f"{base}/")

    asyncio.run(run())


def test_tls_stalls_end_within_their_timeouts() -> None:
    """A server that never completes the TLS handshake is a connect timeout, one that never
    answers over TLS a read timeout, each within its timeout: closing the connection does not
    wait for the peer (asyncio would wait up to 30 s for its part of the TLS shutdown)."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)

    async def run() -> tuple[float, float]:
        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(60)  # takes the connection (and, with TLS, the handshake), says nothing

        plain, plain_port = await serve(mute)
        tls, tls_port = await serve(mute, server_context)
        async with plain, tls:
            started = time.monotonic()
            base = f"https://localhost:{plain_port}"
            async with connection(base, trusting) as conn:
                request = httpcore.Request(
                    "GET",
                    f"{base}/",
                    headers=[(b"Host", b"localhost")],
                    extensions={"timeout": {"connect": 0.3}},
                )
                with pytest.raises(httpcore.ConnectTimeout):
                    await conn.handle_async_request(request)
            handshake = time.monotonic() - started
            started = time.monotonic()
            base = f"https://localhost:{tls_port}"
            async with connection(base, trusting) as conn:
                with pytest.raises(httpcore.ReadTimeout):
                    await send(conn, f"{base}/v2/units/U1", b"{}", read_timeout=0.3)
            answer = time.monotonic() - started
            for server in (plain, tls):
                server.close()
        return handshake, answer

    handshake, answer = asyncio.run(asyncio.wait_for(run(), 20))
    assert handshake < 3 and answer < 3, (handshake, answer)
