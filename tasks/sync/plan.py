"""Plan by difference: desired state minus what the partner last confirmed (pure, no I/O).

Why not modification dates: deletions, co-tenant removals and time-driven changes (day N after
the move-out) leave no modification date behind. Comparing the full desired state with the
confirmed state catches all of them, and a re-run after success plans nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from connectors.state_store import StateEntry
from connectors.sync.streams import Stream, payload_hash

DEFAULT_WITHDRAW_REASON = "no longer selected (deleted in the ERP, no longer released, or licence off)"


class Held(Protocol):
    """Anything that names a record held back (a rule's skip, a quarantine entry)."""

    @property
    def entity(self) -> str: ...

    @property
    def ref_id(self) -> str: ...


@dataclass(frozen=True)
class PlannedWrite:
    """One write the plan wants, with the protocol outcome it will have when confirmed."""

    entity: str
    op: str  # upsert, archive, anonymize
    ref_id: str
    outcome: str  # created, updated, restored, archived, anonymised
    payload: dict[str, Any] | None = None
    payload_hash: str | None = None
    reason: str | None = None


@dataclass
class Plan:
    """The ordered writes of a run plus the counts of what stays as it is."""

    writes: list[PlannedWrite] = field(default_factory=list)
    unchanged: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[tuple[str, str], int]:
        """Number of planned writes per (entity, outcome)."""
        out: dict[tuple[str, str], int] = {}
        for w in self.writes:
            out[(w.entity, w.outcome)] = out.get((w.entity, w.outcome), 0) + 1
        return out

    def phases(self) -> Iterator[list[PlannedWrite]]:
        """Writes grouped into phases that must complete in order (referential order)."""
        current: list[PlannedWrite] = []
        key: tuple[str, str] | None = None
        for w in self.writes:
            k = (w.entity, w.op)
            if key is not None and k != key and current:
                yield current
                current = []
            key = k
            current.append(w)
        if current:
            yield current

    def batches(self, size: int) -> Iterator[list[PlannedWrite]]:
        """Phases cut into batches of at most ``size`` writes (never mixing two phases)."""
        for phase in self.phases():
            for start in range(0, len(phase), size):
                yield phase[start : start + size]


def upsert_order(streams: Sequence[Stream]) -> list[Stream]:
    """Streams in the order their upserts go (parents first)."""
    return sorted(streams, key=lambda s: s.write_order)


def plan_changes(
    streams: Sequence[Stream],
    desired: Mapping[str, Mapping[str, dict[str, Any]]],
    state: Mapping[str, Mapping[str, StateEntry]],
    *,
    held: set[tuple[str, str]] | None = None,
    withdraw_reasons: Mapping[tuple[str, str], str] | None = None,
    anonymise: set[str] | None = None,
    full_resync: bool = False,
    allow_archive: bool = True,
    entities: tuple[str, ...] | None = None,
    hashes: Mapping[str, Mapping[str, str]] | None = None,
) -> Plan:
    """Compute the writes that bring the partner from ``state`` to ``desired``.

    Args:
        streams: the partner's streams; their ``write_order`` orders the plan.
        desired: entity -> reference id -> payload, as the rules built it (already validated).
        state: entity -> reference id -> what the partner last confirmed.
        held: (entity, id) of records in quarantine: neither written nor archived this run.
        withdraw_reasons: why a record is no longer desired, for the protocol.
        anonymise: reference ids anonymised in the ERP (of the anonymisable streams).
        full_resync: send every desired record even when its hash is unchanged.
        allow_archive: archive what is no longer desired (only after a complete extract of all objects).
        entities: the entities this run covers (default: every stream).
        hashes: precomputed payload hashes (entity -> id -> hash), see :func:`desired_hashes`.

    Returns:
        The ordered plan: upserts in write order (parents first), then withdrawals of records
        of streams that cannot be archived, archives in reverse write order (children first),
        and anonymisations.
    """
    ordered = [s for s in upsert_order(streams) if entities is None or s.name in entities]
    held = held or set()
    withdraw_reasons = withdraw_reasons or {}
    anonymise = anonymise or set()
    plan = Plan()
    for stream in ordered:
        entity = stream.name
        confirmed = state.get(entity, {})
        known = (hashes or {}).get(entity, {})
        unchanged = 0
        for ref_id, payload in desired.get(entity, {}).items():
            if (entity, ref_id) in held:
                continue
            digest = known.get(ref_id) or payload_hash(stream, payload)
            entry = confirmed.get(ref_id)
            if entry is None:
                outcome = "created"
            elif entry.status == "anonymised":
                continue  # anonymisation cannot be undone; the rules never send such a person
            elif entry.status == "archived":
                outcome = "restored"
            elif entry.payload_hash != digest or full_resync:
                outcome = "updated"
            else:
                unchanged += 1
                continue
            plan.writes.append(PlannedWrite(entity, "upsert", ref_id, outcome, payload, digest))
        plan.unchanged[entity] = unchanged
    if not allow_archive:
        plan.notes.append(
            "partial run (objects chosen): nothing is archived; a full run reconciles deletions"
        )
    for stream in ordered if allow_archive else ():
        if stream.archivable or stream.withdrawn is None:
            continue
        entity = stream.name
        wanted = desired.get(entity, {})
        for ref_id, entry in sorted(state.get(entity, {}).items()):
            if ref_id in wanted or entry.status != "active" or (entity, ref_id) in held:
                continue
            empty = stream.withdrawn(ref_id)
            digest = payload_hash(stream, empty)
            if entry.payload_hash == digest:
                continue
            reason = stream.withdrawn_reason
            plan.writes.append(PlannedWrite(entity, "upsert", ref_id, "updated", empty, digest, reason))
    for stream in reversed(ordered) if allow_archive else ():
        if not stream.archivable:
            continue
        entity = stream.name
        wanted = desired.get(entity, {})
        for ref_id, entry in sorted(state.get(entity, {}).items()):
            if entry.status != "active" or ref_id in wanted or (entity, ref_id) in held:
                continue
            if stream.anonymisable and ref_id in anonymise:
                continue  # anonymised below, which also archives
            reason = withdraw_reasons.get((entity, ref_id), DEFAULT_WITHDRAW_REASON)
            plan.writes.append(PlannedWrite(entity, "archive", ref_id, "archived", reason=reason))
    for stream in ordered:
        if not stream.anonymisable:
            continue
        confirmed = state.get(stream.name, {})
        for ref_id in sorted(anonymise):
            entry = confirmed.get(ref_id)
            if entry is not None and entry.status != "anonymised":
                plan.writes.append(
                    PlannedWrite(
                        stream.name, "anonymize", ref_id, "anonymised", reason="anonymised in the ERP"
                    )
                )
    return plan


def desired_hashes(
    streams: Mapping[str, Stream], desired: Mapping[str, Mapping[str, dict[str, Any]]]
) -> dict[str, dict[str, str]]:
    """Payload hash of every desired record of the given streams, computed once per run."""
    return {
        entity: {rid: payload_hash(stream, p) for rid, p in desired[entity].items()}
        for entity, stream in streams.items()
        if entity in desired
    }


def write_candidates(
    desired: Mapping[str, Mapping[str, dict[str, Any]]],
    state: Mapping[str, Mapping[str, StateEntry]],
    hashes: Mapping[str, Mapping[str, str]],
    full_resync: bool = False,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Desired records that differ from what the partner confirmed: the ones a run would write.

    Only these need validating: a record equal to its confirmed version passed validation when
    it was sent (a full resync validates everything again).
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for entity, records in desired.items():
        confirmed = state.get(entity, {})
        digests = hashes.get(entity, {})
        chosen = {}
        for rid, payload in records.items():
            entry = confirmed.get(rid)
            if (
                full_resync
                or entry is None
                or entry.status != "active"
                or entry.payload_hash != digests.get(rid)
            ):
                chosen[rid] = payload
        out[entity] = chosen
    return out


def held_records(skips: Sequence[Held]) -> set[tuple[str, str]]:
    """(entity, id) of every record held back by validation."""
    return {(s.entity, s.ref_id) for s in skips}


def without_failed_parents(
    streams: Mapping[str, Stream], batch: Sequence[PlannedWrite], failed: set[tuple[str, str]]
) -> tuple[list[PlannedWrite], list[tuple[PlannedWrite, tuple[str, str]]]]:
    """The writes of ``batch`` to send, and those to hold back with the parent that failed.

    Why: batches go out one after another; a unit whose property the partner refused earlier in
    the same run would be refused too ("property does not exist"), and that refusal, held until
    the unit's own record changes, would keep it out after its property is fixed. Held back here,
    it is neither sent nor quarantined, and the next run plans it again.
    """
    send: list[PlannedWrite] = []
    held: list[tuple[PlannedWrite, tuple[str, str]]] = []
    for write in batch:
        parents = streams[write.entity].parents
        missing = None
        if failed and write.op == "upsert" and parents is not None and write.payload is not None:
            missing = next((p for p in parents(write.payload) if p in failed), None)
        if missing is None:
            send.append(write)
        else:
            held.append((write, missing))
    return send, held
