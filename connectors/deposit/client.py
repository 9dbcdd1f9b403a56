"""``DepositClient``: the rent-deposit partner as a partner of the sync engine.

Everything HTTP (retries, rate limit, read-back of ambiguous writes, paging) is the engine's
:class:`~connectors.sync.http.HttpPartnerClient`; the deposit partner adds its address, its
streams (:mod:`connectors.deposit.streams`) and its login (:class:`~connectors.deposit.auth.DepositAuth`).
A real implementation of the partner's own protocol replaces this class behind the same interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from connectors.deposit.auth import DepositAuth
from connectors.deposit.streams import STREAMS
from connectors.sync.client import WriteOp, WriteResult
from connectors.sync.http import HttpPartnerClient, RateLimiter


class DepositClient(HttpPartnerClient):
    """The deposit partner's API client. Build it inside the task that uses it, from plain settings.

    Args:
        base_url: the server address, e.g. ``https://api.kautionspartner.de/ws`` or the sandbox's
            ``http://127.0.0.1:8766/ws``; the protocol's paths (``/v1/...``) go below it.
        username, password: client user name and web-service password.
        options: see :class:`~connectors.sync.http.HttpPartnerClient`.
    """

    def __init__(self, base_url: str, username: str, password: str, **options: Any) -> None:
        super().__init__(
            "deposit partner",
            base_url,
            STREAMS,
            DepositAuth(base_url, username, password),
            check_path="/v1/deposit-accounts",
            **options,
        )

    async def awrite_many(self, ops: Sequence[WriteOp]) -> list[WriteResult]:
        """Send ``ops``; the bookings of one deposit account in their order, by one worker, and none
        of them after the first that fails; different accounts (and other records) concurrently.

        Why: the partner keeps a ledger per account; a payout must not reach it before its payment
        in, and a booking sent after an earlier one failed would be posted out of order. A booking
        held that way comes back as a retriable failure (it was not sent; the next run plans it
        again, after the one that failed). One result per op, in order; raises only as
        :meth:`HttpPartnerClient.awrite_many`.
        """
        groups: dict[str, list[int]] = {}
        for i, op in enumerate(ops):
            account = (op.payload or {}).get("accountId") if op.entity == "bookings" else None
            groups.setdefault(f"account:{account}" if account else f"op:{i}", []).append(i)
        results: list[WriteResult | None] = [None] * len(ops)
        limiter = RateLimiter(self._rate, self._shared)

        async def send_group(http: httpx.AsyncClient, indices: list[int]) -> None:
            failed: WriteOp | None = None
            for i in indices:
                op = ops[i]
                if failed is not None:
                    results[i] = WriteResult(
                        op,
                        False,
                        error=(
                            f"not sent: booking {failed.ref_id} of the same deposit account "
                            f"{(failed.payload or {}).get('accountId')} failed before it in this run"
                        ),
                        retriable=True,
                    )
                    continue
                result = await self._write_one(http, limiter, op)
                results[i] = result
                if not result.ok:
                    failed = op

        await self._each(list(groups.values()), send_group)
        return [r for r in results if r is not None]

    @classmethod
    def from_settings(cls, deposit: Any, transport: httpx.AsyncBaseTransport | None = None) -> DepositClient:
        """Build a client from ``config.settings.DepositSettings``."""
        return cls(
            deposit.base_url,
            deposit.client_username,
            deposit.password.get_secret_value(),
            timeout_s=deposit.timeout_s,
            connect_timeout_s=deposit.connect_timeout_s,
            concurrency=deposit.concurrency,
            rate_limit_per_s=deposit.rate_limit_per_s,
            shared_rate_limit=deposit.shared_rate_limit,
            max_retries=deposit.max_retries,
            backoff_base_s=deposit.backoff_base_s,
            backoff_max_s=deposit.backoff_max_s,
            transport=transport,
        )
