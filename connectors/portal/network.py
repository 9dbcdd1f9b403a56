"""The portal client's network layer: httpcore's network-backend interface over asyncio's own streams.

Why: httpcore's default backend under asyncio goes through anyio: a cancel scope around every
read and write, a lookup of the running async library, a task lookup per lock. For the portal's
many small writes that layer cost about a fifth of the client's CPU time. 690 contact updates
against the sandbox, 16 connections, eight rounds each, outside a flow: the client's CPU (with
the transport loop measured in the same rounds) 0.51-0.53 s with anyio, 0.46-0.48 s with this
backend. Inside the flow, where the client, the sandbox and the Prefect API share two cores,
the client's thread needed 0.21-0.23 s of CPU for the writes with anyio and 0.16-0.17 s with this
backend, and the writes took 0.29-0.38 s and 0.28-0.33 s.

The backend is httpcore's documented extension point (``network_backend``); HTTP/1.1 and
everything above this layer stay httpcore's own. Failures are raised as httpcore's exceptions
(``ConnectError``, ``ReadTimeout``, ...), which the portal client turns into httpx's.
"""

from __future__ import annotations

import asyncio
import select
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore

# A host with several addresses (IPv6 and IPv4): the next one is tried this long after the last
# without waiting for it to fail, as anyio does; one that drops packets would take the whole timeout.
HAPPY_EYEBALLS_DELAY_S = 0.25


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One TCP (or TLS) connection as an asyncio reader and writer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(f"no answer within {timeout} s") from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            self._writer.write(buffer)
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(f"could not send within {timeout} s") from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        """Close at once, as httpcore's own backends do: no waiting for the peer.

        ``close()`` and ``wait_closed()`` would wait for the peer's part of the TLS shutdown (up
        to asyncio's 30 s), for buffered bytes a stalled peer never takes, and forever after a
        TLS handshake that timed out; httpcore shields the close from cancellation, so a timed-out
        request would hang with it.
        """
        self._writer.transport.abort()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError as exc:
            self._writer.transport.abort()
            raise httpcore.ConnectTimeout(f"no TLS handshake within {timeout} s") from exc
        except (OSError, ssl.SSLError) as exc:
            self._writer.transport.abort()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._writer.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        if info == "socket":
            return self._writer.get_extra_info("socket")
        if info == "is_readable":
            return self._is_readable()
        return None

    def _is_readable(self) -> bool:
        """Whether an idle connection has something to read: the peer closed it, or sent data.

        The event loop reads the socket on its own, so an end of stream may already sit in the
        reader; otherwise the socket itself is asked, as httpcore's own backends do.
        """
        if self._reader.at_eof() or self._writer.is_closing():
            return True
        sock = self._writer.get_extra_info("socket")
        fileno = -1 if sock is None else sock.fileno()
        if fileno < 0:
            return True
        poller = select.poll()  # not select.select: it fails for descriptors above 1023
        poller.register(fileno, select.POLLIN)
        return bool(poller.poll(0))


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Opens :class:`AsyncioStream` connections on the running event loop."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    local_addr=(local_address, 0) if local_address else None,
                    happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY_S,
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"no connection to {host}:{port} within {timeout} s") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        try:
            sock = writer.get_extra_info("socket")
            for option in socket_options or ():
                sock.setsockopt(*option)
        except OSError as exc:
            writer.transport.abort()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return AsyncioStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
