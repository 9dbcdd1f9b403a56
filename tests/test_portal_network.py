"""The portal client's network layer (asyncio streams under httpcore) against real local servers.

Each test starts a small server on loopback: plain HTTP, TLS with a test certificate authority,
one that never answers, one that closes kept-alive connections. The portal sandbox tests cover
the layer under the whole client as well.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import httpx
import pytest
import trustme

from connectors.portal.network import AsyncioBackend, single_connection_transport

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


async def send(transport: httpx.AsyncHTTPTransport, url: str, content: bytes = b"") -> httpx.Response:
    request = httpx.Request(
        "PUT", url, content=content, extensions={"timeout": {"read": 2.0, "connect": 2.0}}
    )
    response = await transport.handle_async_request(request)
    await response.aread()
    await response.aclose()
    return response


def test_transport_sends_through_the_asyncio_backend() -> None:
    """The pinned httpx and httpcore fit: the transport's pool opens connections with our backend."""
    transport = single_connection_transport(ssl.create_default_context())
    assert isinstance(transport._pool._network_backend, AsyncioBackend)


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
            except asyncio.IncompleteReadError:
                writer.close()

        server, port = await serve(handler)
        async with server, single_connection_transport(ssl.create_default_context()) as transport:
            for i in range(3):
                response = await send(transport, f"http://127.0.0.1:{port}/v2/units/U{i}", b'{"n":%d}' % i)
                assert response.status_code == 200
                assert response.json() == {"ok": True}
        return seen, connections

    seen, connections = asyncio.run(run())
    assert connections == 1
    assert [r.split(b" ", 2)[1] for r in seen] == [b"/v2/units/U0", b"/v2/units/U1", b"/v2/units/U2"]
    assert seen[2].endswith(b'{"n":2}')


def test_a_connection_the_server_closed_is_not_reused() -> None:
    """The server answers and hangs up: the next request opens a new connection, no error."""

    async def run() -> int:
        connections = 0

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            await read_request(reader)
            writer.write(answer(b"{}"))  # no "Connection: close": the client cannot know
            await writer.drain()
            writer.close()

        server, port = await serve(handler)
        async with server, single_connection_transport(ssl.create_default_context()) as transport:
            for _ in range(3):
                assert (await send(transport, f"http://127.0.0.1:{port}/x")).status_code == 200
                await asyncio.sleep(0.05)  # the close reaches the client
        return connections

    assert asyncio.run(run()) == 3


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
        async with server:
            async with single_connection_transport(trusting) as transport:
                response = await send(transport, f"https://localhost:{port}/v2/properties/O1")
                assert response.json() == {"tls": True}
            async with single_connection_transport(ssl.create_default_context()) as transport:
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await send(transport, f"https://localhost:{port}/v2/properties/O1")

    asyncio.run(run())


def test_no_answer_is_a_read_timeout_and_no_server_a_connect_error() -> None:
    async def run() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)
            writer.close()

        server, port = await serve(silent)
        async with server, single_connection_transport(ssl.create_default_context()) as transport:
            request = httpx.Request("GET", f"http://127.0.0.1:{port}/", extensions={"timeout": {"read": 0.2}})
            with pytest.raises(httpx.ReadTimeout):
                await transport.handle_async_request(request)
        server.close()
        await server.wait_closed()
        async with single_connection_transport(ssl.create_default_context()) as transport:
            with pytest.raises(httpx.ConnectError):
                await send(transport, f"http://127.0.0.1:{port}/")

    asyncio.run(run())


def test_a_connection_dropped_mid_answer_is_a_transport_error() -> None:
    """Half an answer, then the socket closes: httpx's RemoteProtocolError (the client retries it)."""

    async def run() -> None:
        async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
            await writer.drain()
            writer.close()

        server, port = await serve(half)
        async with server, single_connection_transport(ssl.create_default_context()) as transport:
            with pytest.raises(httpx.TransportError):
                await send(transport, f"http://127.0.0.1:{port}/")

    asyncio.run(run())
