"""``HttpPartnerClient``: a partner API over ``httpx.AsyncClient``, exactly once per write.

Contract: writes are sent concurrently, bounded by ``concurrency`` and the rate limit; only a 2xx
answer confirms one. Retriable failures (408, 429, 5xx, timeouts, dropped connections, the same
on the login) are retried with exponential backoff up to ``max_retries``; a ``Retry-After`` holds
every request of the client for as long as the partner asked. Before retrying a write whose
outcome is ambiguous (the answer was lost, 500/502/504), the record is read back: if the partner
already holds exactly what we sent, the write counts as confirmed and is not sent again. That is
how a write reaches the partner once, not twice.

The shape of requests and pages is hausflow's REST convention, the one the tenant portal's
public API has and the partner contracts hausflow defines itself adopt (``docs/portal-api.md``):
records by reference id (``PUT {path}/{id}``, ``POST {path}/{id}/archive``), pages as ``list`` +
``_links.next`` (the link pinned to the partner's own address). A partner with another shape
overrides :meth:`HttpPartnerClient.write_request`, :meth:`~HttpPartnerClient.page_params`,
:meth:`~HttpPartnerClient.read_page` and :meth:`~HttpPartnerClient.internal_id`.

Proxies come from the environment (``HTTPS_PROXY``, ``NO_PROXY``), as httpx reads them; TLS
certificates are verified against httpx's authorities (certifi's bundle, or ``SSL_CERT_FILE``).
"""

from __future__ import annotations

import asyncio
import functools
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import httpx

from connectors.documents import content_digest_header, file_digest, stream_file
from connectors.sync.auth import TokenAuth
from connectors.sync.client import ClientStats, WriteOp, WriteResult
from connectors.sync.errors import (
    AMBIGUOUS_STATUSES,
    PartnerApiError,
    PartnerAuthError,
    PartnerCredentialsError,
    PartnerError,
    PartnerNotFoundError,
    PartnerProtocolError,
    PartnerRetriableError,
    PartnerTransportError,
    error_from_response,
)
from connectors.sync.streams import Stream, payload_hash, write_applied

_T = TypeVar("_T")
_R = TypeVar("_R")


@functools.cache
def default_tls_context() -> ssl.SSLContext:
    """One TLS context with httpx's authorities for every client of the process (building one
    costs about 20 ms, and each batch task builds a client)."""
    return httpx.create_ssl_context()


class RateLimiter:
    """At most ``rate`` requests per second across a client's concurrent requests, and a pause
    for all of them when the partner asks for one (``Retry-After``). httpx has neither.

    ``shared``: the name of a Prefect global concurrency limit with a slot decay (Prefect's
    rate-limit form) that every request also takes a slot of. Several workers, each with its
    own client, then keep their sum within the partner's rate limit: the limit lives on the
    Prefect server they share (``./hausflow cluster up`` creates it from the settings).
    """

    def __init__(self, rate: float | None, shared: str | None = None) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()
        self._shared = shared

    async def wait(self) -> None:
        """Return when the next request may go out."""
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self._interval
        if delay > 0:
            await asyncio.sleep(delay)
        if self._shared:
            await _shared_slot(self._shared)

    def hold(self, seconds: float) -> None:
        """No request goes out for ``seconds`` from now."""
        self._next = max(self._next, time.monotonic() + seconds)


class SharedLimitMissingError(RuntimeError):
    """The shared rate limit a partner's settings name is not on the Prefect server. It concerns
    every request, not a record: the run stops (at its first request, the partner check)."""


async def _shared_slot(name: str, attempts: int = 5) -> None:
    """One slot of the Prefect global concurrency limit ``name`` (strict: a limit that is not on
    the Prefect server must not let requests pass unlimited).

    Prefect reports any failure to get a slot alike (the limit missing, its API down, a timeout):
    a limit the API says is missing stops the run (:class:`SharedLimitMissingError`); anything
    else is tried again after a pause, then counts as the request's transport error (retriable).
    """
    from prefect import get_client
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, rate_limit
    from prefect.exceptions import ObjectNotFound

    for attempt in range(attempts):
        try:
            await rate_limit(name, occupy=1, strict=True)
            return
        except ConcurrencySlotAcquisitionError as exc:
            try:
                async with get_client() as client:
                    await client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                raise SharedLimitMissingError(
                    f"the shared rate limit {name!r} (setting shared_rate_limit) is not on the Prefect server: "
                    "create it as a global concurrency limit with a slot decay (./hausflow cluster up does so "
                    "from rate_limit_per_s)"
                ) from exc
            except Exception:  # the Prefect API is not answering: as below
                pass
            if attempt + 1 == attempts:
                raise PartnerTransportError(
                    f"no slot of the shared rate limit {name!r} after {attempts} tries: {exc}"
                ) from exc
            await asyncio.sleep(min(2.0**attempt, 10.0))


class HttpPartnerClient:
    """A partner API client over HTTP. Build it inside the task that uses it, from plain settings.

    Args:
        name: the partner, for messages (``portal``).
        base_url: the partner's address, e.g. ``https://api.mycasavi.com``.
        streams: the partner's entities by name.
        auth: the partner's token flow.
        check_path: a cheap authenticated read that shows the partner answers (:meth:`acheck`).
        concurrency: requests in flight at once, each worker over a connection of its own.
        rate_limit_per_s: upper bound of requests per second, ``None`` for none.
        shared_rate_limit: a Prefect global concurrency limit all workers' requests share
            (:class:`RateLimiter`), ``None`` for none.
        max_retries: retries per request for retriable failures.
        retry_after_max_s: the longest pause a ``Retry-After`` gets (a longer one fails the request).
        verify: TLS verification (an ``ssl.SSLContext``; ``False`` only for tests).
        transport: an ``httpx`` transport instead of the network (tests: ``httpx.MockTransport``).
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        streams: Mapping[str, Stream],
        auth: TokenAuth,
        *,
        check_path: str,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        concurrency: int = 16,
        rate_limit_per_s: float | None = None,
        shared_rate_limit: str | None = None,
        max_retries: int = 6,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 20.0,
        retry_after_max_s: float = 300.0,
        verify: ssl.SSLContext | bool | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.streams = dict(streams)
        self.stats = ClientStats()
        self._auth = auth
        self._auth.stats = self.stats
        self._check_path = check_path
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._concurrency = max(1, concurrency)
        self._rate = rate_limit_per_s
        self._shared = shared_rate_limit
        self._max_retries = max_retries
        self._backoff_base = backoff_base_s
        self._backoff_max = backoff_max_s
        self._retry_after_max = retry_after_max_s
        self._verify = default_tls_context() if verify is None else verify
        self._transport = transport
        self._origin = httpx.URL(self.base_url).copy_with(path="/", query=None, fragment=None)

    # ---- the PartnerClient interface -----------------------------------------------------------
    async def awrite_many(self, ops: Sequence[WriteOp]) -> list[WriteResult]:
        """Send ``ops`` concurrently; one result per op, in order.

        Raises only for what concerns every record: refused credentials
        (:class:`PartnerCredentialsError`) or a token refused right after the login.
        """
        limiter = RateLimiter(self._rate, self._shared)
        return await self._each(ops, lambda http, op: self._write_one(http, limiter, op))

    async def aread_many(self, entity: str, ref_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """Read records by reference id (``None`` for unknown ones)."""
        stream = self.streams[entity]
        limiter = RateLimiter(self._rate, self._shared)
        records = await self._each(ref_ids, lambda http, ref_id: self._get_one(http, limiter, stream, ref_id))
        return dict(zip(ref_ids, records, strict=True))

    async def alist_records(
        self,
        entity: str,
        modified_after: str | None = None,
        include_archived: bool = False,
        filters: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Every record of a collection, following ``_links.next`` page by page.

        ``filters``: further query parameters of the first page (``origin=portal``)."""
        stream = self.streams[entity]
        limiter = RateLimiter(self._rate, self._shared)
        params: dict[str, Any] | None = {
            **self.page_params(modified_after, include_archived),
            **(filters or {}),
        }
        out: list[dict[str, Any]] = []
        url: str | None = stream.path
        async with self._http() as http:
            while url:
                response = await self._request(http, limiter, "GET", url, params=params)
                assert response is not None
                records, url = self.read_page(response.json())
                out.extend(records)
                if url:
                    self._pinned(url)
                params = None  # the next link carries its own query
        return out

    async def acheck(self) -> None:
        """One cheap authenticated read: raises unless the partner answers and takes the credentials."""
        async with self._http() as http:
            await self._request(
                http,
                RateLimiter(self._rate, self._shared),
                "GET",
                self._check_path,
                params=self.page_params(None, False),
            )

    def credentials_expire(self) -> float | None:
        """When the current token expires (epoch seconds), once the client has one."""
        return self._auth.expires_at()

    def key_hint(self) -> str:
        """Which API key the client uses, as a hint that is useless to anyone who reads it."""
        return self._auth.key_hint()

    # ---- the partner's REST shape (override for a partner with another one) -------------------
    def write_request(self, stream: Stream, op: WriteOp) -> tuple[str, str, dict[str, Any] | None]:
        """Method, path and JSON body of a write: ``PUT`` the record by reference id, or ``POST``
        to its ``archive`` or ``anonymize`` action."""
        path = stream.item_path(op.ref_id)
        if op.op == "upsert":
            return "PUT", path, stream.body(op.payload or {})
        if op.op in ("archive", "anonymize"):
            return "POST", f"{path}/{op.op}", None
        raise ValueError(f"unknown write op {op.op!r}")

    def page_params(self, modified_after: str | None, include_archived: bool) -> dict[str, Any]:
        """The query of a list's first page: only what the partner's public API knows.

        ``page`` and ``modifiedAfter`` are the portal's public parameters; the page size is the
        partner's own (a partner may refuse a parameter it does not know). ``includeArchived``
        is hausflow's sandbox's own and only sent when a caller asks for archived records (the
        sync never does).
        """
        params: dict[str, Any] = {"page": 1}
        if modified_after:
            params["modifiedAfter"] = modified_after
        if include_archived:
            params["includeArchived"] = "true"
        return params

    def read_page(self, data: Any) -> tuple[list[dict[str, Any]], str | None]:
        """The records of a page and the link to the next one (``None`` on the last page)."""
        return list(data.get("list", [])), (data.get("_links") or {}).get("next")

    def internal_id(self, data: Any) -> str | None:
        """The partner's own id of a record it answered with, if it names one."""
        internal = data.get("internalId") if isinstance(data, dict) else None
        return None if internal is None else str(internal)

    # ---- the same for synchronous callers (not inside a running event loop) -------------------
    def write_many(self, ops: Sequence[WriteOp]) -> list[WriteResult]:
        """:meth:`awrite_many` for synchronous callers."""
        return asyncio.run(self.awrite_many(ops))

    def read_many(self, entity: str, ref_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """:meth:`aread_many` for synchronous callers."""
        return asyncio.run(self.aread_many(entity, ref_ids))

    def list_records(
        self, entity: str, modified_after: str | None = None, include_archived: bool = False
    ) -> list[dict[str, Any]]:
        """:meth:`alist_records` for synchronous callers."""
        return asyncio.run(self.alist_records(entity, modified_after, include_archived))

    def check(self) -> None:
        """:meth:`acheck` for synchronous callers."""
        asyncio.run(self.acheck())

    # ---- internals -----------------------------------------------------------------------------
    def _http(self) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` with one connection to the partner.

        Concurrent calls take one client of one connection per worker (:meth:`_each`), not one
        client with a pool of ``concurrency`` connections: httpcore checks every connection of
        a pool each time a request enters or leaves it, which made up most of the client's CPU
        time per request with 16 connections (measured against the sandbox: see
        docs/performance.md).
        """
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        return httpx.AsyncClient(
            base_url=self.base_url,
            auth=self._auth,
            timeout=self._timeout,
            limits=limits,
            verify=self._verify,
            transport=self._transport,
            headers={"Accept": "application/json", "User-Agent": "hausflow/0.1"},
            trust_env=True,
        )

    def _pinned(self, url: str) -> None:
        """A ``next`` link must stay on the partner's own address: the token goes nowhere else."""
        link = httpx.URL(url)
        if link.is_absolute_url and link.copy_with(path="/", query=None, fragment=None) != self._origin:
            raise PartnerProtocolError(f"the {self.name}'s link {url} leads to another address")

    def _backoff(self, attempt: int) -> float:
        delay = self._backoff_base * (2**attempt)
        return min(delay, self._backoff_max) * (0.5 + random.random() / 2)

    async def _request(
        self,
        http: httpx.AsyncClient,
        limiter: RateLimiter,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        verify: Callable[[], Awaitable[bool]] | None = None,
        attempts_out: list[int] | None = None,
        content: Callable[[], AsyncIterator[bytes]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response | None:
        """One request with bounded retries. Returns ``None`` when ``verify`` proved it was applied.

        ``content`` makes a streamed body afresh for every attempt (a file read chunk by chunk)."""
        attempt = 0
        while True:
            await limiter.wait()
            self.stats.requests += 1
            ambiguous = False
            try:
                response = await http.request(
                    method,
                    path,
                    json=json,
                    params=params,
                    content=None if content is None else content(),
                    headers=headers,
                )
            except PartnerError as exc:  # from the login: retriable (429, 5xx) or not (credentials)
                if not exc.retriable:
                    raise
                error: PartnerError = exc
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                error = PartnerTransportError(f"{method} {path}: no connection ({type(exc).__name__})")
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                error = PartnerTransportError(f"{method} {path}: {type(exc).__name__}, answer lost")
                ambiguous = True
            else:
                status = response.status_code
                self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
                if 200 <= status < 300:
                    if attempts_out is not None:
                        attempts_out.append(attempt + 1)
                    return response
                if status < 400:  # not followed: a write sent elsewhere must not count as done
                    where = response.headers.get("Location", "elsewhere")
                    raise PartnerProtocolError(
                        f"{method} {path}: the {self.name} answered {status}, redirecting to {where}; "
                        "check its address (base_url)"
                    )
                try:
                    body = response.json()
                except ValueError:
                    body = response.text
                error = error_from_response(
                    status, body, path, response.headers.get("Retry-After"), self.name
                )
                if not error.retriable:
                    raise error
                ambiguous = status in AMBIGUOUS_STATUSES
            if attempts_out is not None:
                attempts_out.append(attempt + 1)
            if ambiguous and verify is not None:
                try:
                    if await verify():
                        self.stats.verified_by_read += 1
                        return None
                except PartnerCredentialsError:
                    raise
                except PartnerError:
                    pass  # cannot tell: fall through to a normal retry
            if attempt >= self._max_retries:
                raise error
            attempt += 1
            self.stats.retries += 1
            pause = error.retry_after_s if isinstance(error, PartnerRetriableError) else None
            if pause is None:
                await asyncio.sleep(self._backoff(attempt))
            elif pause > self._retry_after_max:
                raise error  # the partner asks for a longer pause than a run waits: the next run retries
            else:
                limiter.hold(pause)  # every request of the client waits, not only this one

    async def _get_one(
        self, http: httpx.AsyncClient, limiter: RateLimiter, stream: Stream, ref_id: str
    ) -> dict[str, Any] | None:
        try:
            response = await self._request(http, limiter, "GET", stream.item_path(ref_id))
        except PartnerNotFoundError:
            return None
        assert response is not None
        data: dict[str, Any] = response.json()
        return data

    async def _write_one(self, http: httpx.AsyncClient, limiter: RateLimiter, op: WriteOp) -> WriteResult:
        stream = self.streams[op.entity]
        attempts: list[int] = []

        read_back: list[dict[str, Any] | None] = []

        async def applied() -> bool:  # the read-back check before retrying an ambiguous write
            record = await self._get_one(http, limiter, stream, op.ref_id)
            read_back.append(record)
            expected = op.payload_hash or payload_hash(stream, op.payload or {})
            if stream.complete is not None and op.op == "upsert":  # this step: the fields; the file follows
                return record is not None and payload_hash(stream, record) == expected
            return write_applied(stream, record, op.op, expected)

        if op.op == "upload":  # the fields are at the partner already: the file alone
            failed = await self._upload_or_error(http, limiter, stream, op, attempts)
            return failed or WriteResult(op, True, attempts=len(attempts))
        method, target, body = self.write_request(stream, op)
        try:
            response = await self._request(
                http, limiter, method, target, json=body, verify=applied, attempts_out=attempts
            )
        except (PartnerCredentialsError, PartnerAuthError):
            raise  # not this record's fault: the caller stops the whole call
        except PartnerApiError as exc:
            return WriteResult(
                op, False, error=exc.describe(), error_status=exc.status, retriable=exc.retriable,
                attempts=len(attempts),
            )  # fmt: skip
        except PartnerError as exc:
            return WriteResult(op, False, error=str(exc), retriable=exc.retriable, attempts=len(attempts))
        internal_id = None
        answer: Any = None
        if response is None:
            if stream.complete is None or op.op != "upsert":
                return WriteResult(op, True, verified_by_read=True, attempts=len(attempts))
            answer = read_back[-1]
        elif response.content:
            try:
                answer = response.json()
                internal_id = self.internal_id(answer)
            except ValueError:
                internal_id = None
        if stream.complete is not None and op.op == "upsert" and not stream.complete(answer or {}):
            failed = await self._upload_or_error(http, limiter, stream, op, attempts)
            if failed is not None:
                return failed
        if response is None:
            return WriteResult(op, True, verified_by_read=True, attempts=len(attempts))
        return WriteResult(
            op, True, created=response.status_code == 201, internal_id=internal_id, attempts=len(attempts)
        )

    async def _upload_or_error(
        self, http: httpx.AsyncClient, limiter: RateLimiter, stream: Stream, op: WriteOp, attempts: list[int]
    ) -> WriteResult | None:
        """Upload the record's file: ``None`` when the partner holds it, else the failed result."""
        try:
            await self._upload(http, limiter, stream, op)
        except (PartnerCredentialsError, PartnerAuthError):
            raise
        except PartnerApiError as exc:
            return WriteResult(
                op, False, error=f"file upload: {exc.describe()}", error_status=exc.status,
                retriable=exc.retriable, attempts=len(attempts),
            )  # fmt: skip
        except (PartnerError, OSError) as exc:
            retriable = isinstance(exc, PartnerError) and exc.retriable
            return WriteResult(
                op, False, error=f"file upload: {exc}", retriable=retriable, attempts=len(attempts)
            )
        return None

    async def _upload(
        self, http: httpx.AsyncClient, limiter: RateLimiter, stream: Stream, op: WriteOp
    ) -> None:
        """The second step of a record with a file: ``PUT {item}/content``, streamed from disk.

        The file is the payload's ``_content["path"]`` (a Word file already converted to PDF);
        its SHA-256 goes along as ``Content-Digest`` (RFC 9530), so the partner can refuse a
        body that arrived damaged. Memory does not grow with the file: it is read in chunks. An ambiguous answer is settled by reading the record
        back: the partner holds this file when it shows its digest.

        The digest is the plan's (``_content["sha256"]``, read when the plan compared the file)
        where it has one, so a file is read once for the plan and once for the body; a file
        changed in between no longer matches it, and the partner refuses the upload.
        """
        meta = (op.payload or {}).get("_content") or {}
        path = meta["path"]
        digest = str(meta.get("sha256") or await asyncio.to_thread(file_digest, path))

        async def applied() -> bool:
            record = await self._get_one(http, limiter, stream, op.ref_id)
            if record is None or record.get("contentSha256") != digest:
                return False
            return stream.complete is None or stream.complete(record)

        await self._request(
            http,
            limiter,
            "PUT",
            f"{stream.item_path(op.ref_id)}/content",
            content=lambda: stream_file(path),
            headers={
                "Content-Type": meta.get("mimeType") or "application/octet-stream",
                "Content-Digest": content_digest_header(digest),
            },
            verify=applied,
        )

    async def _each(
        self, items: Sequence[_T], call: Callable[[httpx.AsyncClient, _T], Awaitable[_R]]
    ) -> list[_R]:
        """``call`` for every item, ``concurrency`` at a time; results in the order of ``items``.

        A fixed set of workers, each with its own client and connection, takes the next item as
        soon as one is free. When one call fails (or the caller is cancelled), the others are
        stopped before the error goes up, so no request of this call is still on its way when the
        caller goes on or retries.
        """
        results: list[_R | None] = [None] * len(items)
        cursor = iter(range(len(items)))

        async def worker() -> None:
            async with self._http() as http:
                for i in cursor:
                    results[i] = await call(http, items[i])

        workers = [asyncio.ensure_future(worker()) for _ in range(min(self._concurrency, len(items)))]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        return cast(list[_R], results)
