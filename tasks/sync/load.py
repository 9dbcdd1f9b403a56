"""Exactly-once loads for any partner: pending before sending, confirmed only when acknowledged.

Each write is recorded as *pending* in the state store before it is sent, and confirmed only
when the partner acknowledged it. When an answer was lost the client reads the record back
before retrying; writes an earlier run left pending are read back at the start of the next run
(:func:`recover_pending`); a load task that Prefect retries settles what its earlier attempt left
(:func:`settle_earlier_attempt`). So a crash at any point loses nothing and sends nothing twice.

The functions here take a state store and a client, so tests can drive them with the in-memory
:class:`~connectors.sync.fake.FakePartnerClient`; the Prefect tasks below build both from plain
settings inside the task.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.runtime import task_run
from prefect.states import State

from config.settings import HausflowSettings
from connectors.state_store import (
    STATUS_BY_OP,
    Confirmation,
    PendingWrite,
    ProtocolRow,
    QuarantineItem,
    StateEntry,
    StateStore,
)
from connectors.sync.client import PartnerClient, WriteOp
from connectors.sync.errors import PartnerCredentialsError, PartnerError, is_retriable
from connectors.sync.streams import file_missing, write_applied
from tasks.sync.partner import Partner
from tasks.sync.plan import PlannedWrite


def details_key(partner: Partner) -> str:
    """The key of the artifact that lists a run's writes and the records it held back
    (:func:`tasks.sync.protocol.record_protocol`); log lines point there."""
    return f"{partner.name}-sync-details"


class PartnerUnavailableError(RuntimeError):
    """The partner did not answer the run's first read, after the client's own retries: the run
    stops before it reads the ERP or sends anything, and the next scheduled run tries again.

    Not retried by the task either: the client already paused and retried, and a partner that is
    down stays down for longer than a run should wait.
    """


def retry_if_retriable(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect's ``retry_condition_fn``: retry a task only for what is worth another try.

    A partner that did not answer, answered 429/5xx, or a busy state database: yes. Refused
    credentials, a refused record or a programming error: no (they would fail the same way, and
    refused credentials tried again can lock the customer's account).
    """
    error = state.data if isinstance(state.data, BaseException) else None
    return error is not None and is_retriable(error)


@dataclass
class BatchOutcome:
    """What one load batch achieved."""

    confirmed: int = 0
    failed: int = 0
    verified_by_read: int = 0
    confirmed_before: int = 0  # by an earlier attempt of a retried batch
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    failed_keys: list[tuple[str, str]] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)  # positions of its confirmations in the change sequence

    def count(self, outcome: str) -> None:
        """Count one record's outcome."""
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def fail(self, entity: str, ref_id: str, reason: str) -> None:
        """Count one record that failed, with the reason for the log."""
        self.failed += 1
        self.count("failed")
        self.errors.append(f"{entity} {ref_id}: {reason}")
        self.failed_keys.append((entity, ref_id))


def _confirmation(
    client: PartnerClient,
    entity: str,
    ref_id: str,
    op: str,
    digest: str | None,
    record: dict[str, Any] | None,
) -> Confirmation:
    return Confirmation(entity, ref_id, op, digest, client.internal_id(record or {}))


async def recover_pending(
    store: StateStore, client: PartnerClient, partner: Partner, run_id: str | None = None
) -> tuple[int, int, int]:
    """Settle the writes an earlier run sent but never saw confirmed (it crashed or gave up).

    Each pending write is read back: applied ones are confirmed (under ``run_id``, the run that
    found them) without being sent again; the others are planned afresh. A record whose fields
    arrived but whose file did not stays pending as an ``upload``: the next write of it sends the
    file alone (:func:`load_batch`). Writes of ``run_id`` itself (a flow run retried from the
    Prefect UI) get their protocol line, as written in this run. Returns (pending, confirmed,
    planned again).
    """
    pending = store.load_pending(partner.name)
    if not pending:
        return 0, 0, 0
    streams = partner.by_name
    confirmed: list[Confirmation] = []
    dropped: dict[str, list[str]] = {}
    files_missing: list[PendingWrite] = []
    by_entity: dict[str, list[PendingWrite]] = {}
    for p in pending:
        by_entity.setdefault(p.entity, []).append(p)
    rows: list[ProtocolRow] = []
    for entity, items in by_entity.items():
        records = await client.aread_many(entity, [p.ref_id for p in items])
        ours = [p.ref_id for p in items if run_id is not None and p.run_id == run_id]
        before = store.load_state_for(partner.name, entity, ours) if ours else {}
        for p in items:
            record = records.get(p.ref_id)
            op = "upsert" if p.op == "upload" else p.op
            if write_applied(streams[entity], record, op, p.payload_hash):
                confirmed.append(_confirmation(client, entity, p.ref_id, op, p.payload_hash, record))
                if p.ref_id in ours:
                    rows.append(ProtocolRow(entity, p.ref_id, written_outcome(op, before.get(p.ref_id))))
            elif op == "upsert" and file_missing(streams[entity], record, p.payload_hash):
                files_missing.append(PendingWrite(entity, p.ref_id, "upload", p.payload_hash, p.run_id))
            else:
                dropped.setdefault(entity, []).append(p.ref_id)
    store.confirm(partner.name, confirmed, run_id, rows)
    store.mark_pending(partner.name, files_missing)
    for entity, ids in dropped.items():
        store.clear_pending(partner.name, entity, ids)
    return len(pending), len(confirmed), len(files_missing) + sum(len(v) for v in dropped.values())


def written_outcome(op: str, before: StateEntry | None) -> str:
    """The protocol's outcome of a confirmed write, by what the partner held before."""
    if op != "upsert":
        return STATUS_BY_OP[op]  # archived, anonymised
    if before is None:
        return "created"
    return "restored" if before.status == "archived" else "updated"


def files_to_send_alone(
    store: StateStore, target: str, writes: Sequence[PlannedWrite]
) -> set[tuple[str, str]]:
    """The upserts of ``writes`` whose fields the partner holds already: only their file is sent.

    These are the pending ``upload`` entries (:func:`recover_pending`) of the same payload; a
    changed payload is sent whole.
    """
    if not any(w.op == "upsert" and "_content" in (w.payload or {}) for w in writes):
        return set()
    fields_held = {
        (p.entity, p.ref_id): p.payload_hash for p in store.load_pending(target) if p.op == "upload"
    }
    return {
        (w.entity, w.ref_id)
        for w in writes
        if w.op == "upsert" and fields_held.get((w.entity, w.ref_id), "") == w.payload_hash
    }


async def load_batch(
    store: StateStore,
    client: PartnerClient,
    partner: Partner,
    run_id: str,
    writes: Sequence[PlannedWrite],
    since_seq: int = 0,
    retried: bool = False,
) -> BatchOutcome:
    """Send one batch: mark pending, write concurrently, confirm what the partner acknowledged.

    The confirmed state advances only for acknowledged writes. Writes the partner refused (4xx)
    are quarantined with its message; writes that ran out of retries stay pending and are read
    back at the start of the next run. ``retried``: an earlier attempt of this batch in the same
    run may have sent or settled some of it (:func:`settle_earlier_attempt`); ``since_seq`` is
    the position of the state store's change sequence when the run looked.

    Raises:
        PartnerCredentialsError: the partner refused the credentials; nothing of the batch is
            counted as failed or quarantined, its pending entries are read back next run.
    """
    target = partner.name
    outcome = BatchOutcome()
    to_send = list(writes)
    if retried:
        to_send = await settle_earlier_attempt(store, client, partner, run_id, since_seq, writes, outcome)
    alone = files_to_send_alone(store, target, to_send)
    store.mark_pending(
        target, [PendingWrite(w.entity, w.ref_id, w.op, w.payload_hash, run_id) for w in to_send]
    )
    results = await client.awrite_many(
        [
            WriteOp(
                w.entity,
                "upload" if (w.entity, w.ref_id) in alone else w.op,
                w.ref_id,
                w.payload,
                w.payload_hash,
            )
            for w in to_send
        ]
    )
    confirmations: list[Confirmation] = []
    protocol: list[ProtocolRow] = []
    rejected: list[QuarantineItem] = []
    for write, result in zip(to_send, results, strict=True):
        if result.ok:
            outcome.confirmed += 1
            outcome.verified_by_read += int(result.verified_by_read)
            confirmations.append(
                Confirmation(write.entity, write.ref_id, write.op, write.payload_hash, result.internal_id)
            )
            protocol.append(ProtocolRow(write.entity, write.ref_id, write.outcome, write.reason))
            outcome.count(write.outcome)
            continue
        reason = result.error or "unknown error"
        if result.retriable and result.attempts:
            reason = f"{reason} (gave up after {result.attempts} attempts; read back and retried next run)"
        elif result.retriable:  # never sent (held behind an earlier failure)
            reason = f"{reason} (planned again next run)"
        else:
            rejected.append(
                QuarantineItem(write.entity, write.ref_id, f"{target}_rejected", reason, write.payload)
            )
        protocol.append(ProtocolRow(write.entity, write.ref_id, "failed", reason))
        outcome.fail(write.entity, write.ref_id, reason)
    by_entity: dict[str, list[str]] = {}
    for item in rejected:
        by_entity.setdefault(item.entity, []).append(item.ref_id)
    for entity, ids in by_entity.items():
        store.clear_pending(target, entity, ids)
    store.quarantine(target, rejected, run_id)
    # last, and with the protocol rows in its transaction: a retried batch never writes them twice
    seq = store.confirm(target, confirmations, run_id, protocol)
    if seq is not None:
        outcome.seqs.append(seq)
    return outcome


async def settle_earlier_attempt(
    store: StateStore,
    client: PartnerClient,
    partner: Partner,
    run_id: str,
    since_seq: int,
    writes: Sequence[PlannedWrite],
    outcome: BatchOutcome,
) -> list[PlannedWrite]:
    """The writes of a retried batch that an earlier attempt of this run did not settle.

    Settled, and counted in ``outcome`` without being sent again:
    - written to the protocol as failed by that attempt (its bookkeeping was committed): as
      failed again, with no new protocol line (its pending entry waits for the next run);
    - refused by the partner in that attempt (quarantined as ``<partner>_rejected``): as failed,
      with a protocol line if that attempt's was lost;
    - left pending by it (sent, or about to be, when it failed): read back from the partner and,
      if the partner holds it, confirmed now with its protocol line;
    - confirmed by it (same payload and status, past ``since_seq``, where this run looked).
    The rest is returned, to be sent.
    """
    target = partner.name
    streams = partner.by_name
    ids = {(w.entity, w.ref_id) for w in writes}
    pending = {(p.entity, p.ref_id) for p in store.load_pending(target) if p.run_id == run_id}
    failed_before = {
        (r.entity, r.ref_id): r.reason or "failed"
        for r in store.protocol_rows(run_id, ["failed"], limit=1_000_000)
        if (r.entity, r.ref_id) in ids
    }
    rejected = {
        (q["entity"], q["ref_id"]): str(q["reason"])
        for q in store.open_quarantine(target)
        if q["rule"] == f"{target}_rejected" and q["run_id"] == run_id and (q["entity"], q["ref_id"]) in ids
    }
    stays_failed = failed_before.keys() | rejected.keys()
    to_read_back = pending - stays_failed
    by_entity: dict[str, list[PlannedWrite]] = {}
    for w in writes:
        by_entity.setdefault(w.entity, []).append(w)
    left: list[PlannedWrite] = []
    files_missing: list[PendingWrite] = []
    confirmations: list[Confirmation] = []
    rows: list[ProtocolRow] = []
    for entity, items in by_entity.items():
        done = store.confirmed_in_run(target, run_id, entity, [w.ref_id for w in items], since_seq)
        unsure = [w.ref_id for w in items if (entity, w.ref_id) in to_read_back]
        held = await client.aread_many(entity, unsure) if unsure else {}
        for w in items:
            key = (entity, w.ref_id)
            confirmed = done.get(w.ref_id)
            if key in stays_failed:
                reason = failed_before.get(key) or rejected[key]
                if key not in failed_before:
                    rows.append(ProtocolRow(entity, w.ref_id, "failed", reason))
                outcome.fail(entity, w.ref_id, reason)
            elif w.ref_id in held and write_applied(streams[entity], held[w.ref_id], w.op, w.payload_hash):
                confirmations.append(
                    _confirmation(client, entity, w.ref_id, w.op, w.payload_hash, held[w.ref_id])
                )
                rows.append(ProtocolRow(entity, w.ref_id, w.outcome, w.reason))
                outcome.confirmed += 1
                outcome.verified_by_read += 1
                outcome.count(w.outcome)
            elif confirmed is not None and confirmed[0] == StateEntry(w.payload_hash, STATUS_BY_OP[w.op]):
                outcome.confirmed += 1
                outcome.confirmed_before += 1
                outcome.count(w.outcome)
                outcome.seqs.append(confirmed[1])
            else:
                if w.op == "upsert" and file_missing(streams[entity], held.get(w.ref_id), w.payload_hash):
                    files_missing.append(PendingWrite(entity, w.ref_id, "upload", w.payload_hash, run_id))
                left.append(w)
    store.mark_pending(target, files_missing)  # their file alone is sent (files_to_send_alone)
    seq = store.confirm(target, confirmations, run_id, rows)
    if seq is not None:
        outcome.seqs.append(seq)
    return left


# ---- Prefect tasks ---------------------------------------------------------------------------------
@task(
    name="check-partner",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_if_retriable,
)
async def check_partner(partner: Partner, settings: HausflowSettings) -> None:
    """One cheap authenticated read before anything else: the partner answers and takes the
    credentials. Refused credentials end the run here, before any write, after one login.

    Raises:
        PartnerCredentialsError: the partner refused the login.
        PartnerUnavailableError: no answer, a timeout or 429/5xx after the client's retries; the
            one log line names the partner's address and what to check.
    """
    logger = get_run_logger()
    client = partner.connect(settings)
    try:
        await client.acheck()
    except PartnerCredentialsError as exc:
        logger.error("The %s sync stops before it reads or sends anything: %s.", partner.name, exc.advice())
        raise
    except PartnerError as exc:
        if not exc.retriable:
            raise  # a redirect or another broken contract: its message says what to check
        logger.error("%s", unavailable_advice(partner, client, exc))
        raise PartnerUnavailableError(
            f"the {partner.name} at {_address(client)} is not available ({exc})"
        ) from exc
    expires = client.credentials_expire()
    if expires is not None:
        StateStore(settings.state_url).record_credentials(
            partner.name, client.key_hint(), datetime.fromtimestamp(expires, UTC)
        )
    until = (
        f"; its token is valid until {datetime.fromtimestamp(expires, UTC):%Y-%m-%d %H:%M} UTC"
        if expires
        else ""
    )
    logger.info("The %s answers%s%s.", partner.name, until, _new_tokens(partner, client))


def unavailable_advice(partner: Partner, client: PartnerClient, error: PartnerError) -> str:
    """The one line a person reads when the partner is not available: where, what came back, what
    to check. The address is the client's (the partner's ``base_url``)."""
    requests = client.stats.requests
    return (
        f"The {partner.name} at {_address(client)} is not available ({error}; {requests} "
        f"attempt{'s' if requests != 1 else ''}): the sync stops before it reads or sends anything. "
        f"Check the address ({partner.name}.base_url), the network and proxy (HTTPS_PROXY, NO_PROXY) "
        f"and the {partner.name}'s status; the next run tries again."
    )


def _address(client: PartnerClient) -> str:
    """The partner's address (its ``base_url``), for messages."""
    return str(getattr(client, "base_url", None) or "its configured address")


def _new_tokens(partner: Partner, client: PartnerClient) -> str:
    """The log's note on tokens fetched after the partner refused one ("" when there were none)."""
    count = client.stats.reauthentications
    if not count:
        return ""
    return f", {count} new token{'s' if count != 1 else ''} after the {partner.name} refused one"


@task(
    name="recover-pending-writes",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_if_retriable,
)
async def recover_pending_writes(partner: Partner, settings: HausflowSettings, run_id: str) -> dict[str, int]:
    """:func:`recover_pending` as a task; returns counts for the log."""
    logger = get_run_logger()
    store = StateStore(settings.state_url)
    if not store.load_pending(partner.name):
        return {"pending": 0, "confirmed": 0, "dropped": 0}
    pending, confirmed, dropped = await recover_pending(store, partner.connect(settings), partner, run_id)
    logger.info(
        "Found %d unconfirmed writes of an interrupted run: %d had reached the %s and are now confirmed "
        "(not sent again), %d had not (or only their fields, not their file) and are planned again.",
        pending,
        confirmed,
        partner.name,
        dropped,
    )
    return {"pending": pending, "confirmed": confirmed, "dropped": dropped}


@task(
    name="load-batch",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_if_retriable,
)
async def load_partner_batch(
    partner: Partner,
    settings: HausflowSettings,
    run_id: str,
    writes: Sequence[PlannedWrite],
    since_seq: int = 0,
) -> BatchOutcome:
    """:func:`load_batch` as a task, with one log line per batch (and the first ten failures)."""
    logger = get_run_logger()
    client = partner.connect(settings)
    retried = task_run.get_run_count() > 1
    try:
        outcome = await load_batch(
            StateStore(settings.state_url), client, partner, run_id, writes, since_seq, retried
        )
    except PartnerCredentialsError as exc:
        logger.error(
            "The %s sync stops: %s. What this batch sent is read back by the next run.",
            partner.name,
            exc.advice(),
        )
        raise
    log_batch(logger, partner, writes, outcome, client)
    return outcome


def log_batch(
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    partner: Partner,
    writes: Sequence[PlannedWrite],
    outcome: BatchOutcome,
    client: PartnerClient,
) -> None:
    """The load log's line for one batch."""
    stats = client.stats
    logger.info(
        "Loaded %d %s (%s) to the %s: %d confirmed, %d failed; %d requests, %d retries%s%s%s.",
        len(writes),
        writes[0].entity if writes else "-",
        writes[0].op if writes else "-",
        partner.name,
        outcome.confirmed,
        outcome.failed,
        stats.requests,
        stats.retries,
        f", {outcome.verified_by_read} confirmed by reading back" if outcome.verified_by_read else "",
        f", {outcome.confirmed_before} confirmed by an earlier attempt" if outcome.confirmed_before else "",
        _new_tokens(partner, client),
    )
    for line in outcome.errors[:10]:
        logger.warning("Not loaded: %s", line)
    if len(outcome.errors) > 10:
        logger.warning(
            "... and %d more not loaded in this batch (listed in %s).",
            len(outcome.errors) - 10,
            details_key(partner),
        )
