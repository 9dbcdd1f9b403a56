"""Plan by difference: desired portal state minus what the portal last confirmed (pure, no I/O).

Why not modification dates: deletions, co-tenant removals and time-driven changes (day N after
the move-out) leave no modification date behind. Comparing the full desired state with the
confirmed state catches all of them, and a re-run after success plans nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from connectors.portal.streams import STREAMS, payload_hash
from connectors.state_store import StateEntry
from tasks.portal_rules import Skip

ENTITIES = ("properties", "units", "contacts", "responsibilities")
# Phases run one after the other; within a phase writes go concurrently.
UPSERT_ORDER = ("properties", "units", "contacts", "responsibilities")
ARCHIVE_ORDER = ("contacts", "units", "properties")
DEFAULT_WITHDRAW_REASON = (
    "no longer selected for the portal (deleted in the ERP, object no longer released, or licence off)"
)


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


def plan_changes(
    desired: Mapping[str, Mapping[str, dict[str, Any]]],
    state: Mapping[str, Mapping[str, StateEntry]],
    *,
    held: set[tuple[str, str]] | None = None,
    withdraw_reasons: Mapping[tuple[str, str], str] | None = None,
    anonymise: set[str] | None = None,
    full_resync: bool = False,
    allow_archive: bool = True,
    entities: tuple[str, ...] = ENTITIES,
    hashes: Mapping[str, Mapping[str, str]] | None = None,
) -> Plan:
    """Compute the writes that bring the portal from ``state`` to ``desired``.

    Args:
        desired: entity -> reference id -> payload, as the rules built it (already validated).
        state: entity -> reference id -> what the portal last confirmed.
        held: (entity, id) of records in quarantine: neither written nor archived this run.
        withdraw_reasons: why a record is no longer desired, for the protocol.
        anonymise: person numbers anonymised in the ERP.
        full_resync: send every desired record even when its hash is unchanged.
        allow_archive: archive what is no longer desired (only after a complete extract of all objects).
        entities: the entities this run covers.
        hashes: precomputed payload hashes (entity -> id -> hash), see :func:`desired_hashes`.

    Returns:
        The ordered plan: upserts (properties, units, contacts, responsibilities), then
        responsibility removals, archives (contacts, units, properties) and anonymisations.
    """
    held = held or set()
    withdraw_reasons = withdraw_reasons or {}
    anonymise = anonymise or set()
    plan = Plan()
    for entity in UPSERT_ORDER:
        if entity not in entities:
            continue
        stream = STREAMS[entity]
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
    if allow_archive and "responsibilities" in entities:
        stream = STREAMS["responsibilities"]
        wanted = desired.get("responsibilities", {})
        for ref_id, entry in sorted(state.get("responsibilities", {}).items()):
            if ref_id in wanted or entry.status != "active" or ("responsibilities", ref_id) in held:
                continue
            empty = {"id": ref_id, "responsibilities": []}
            digest = payload_hash(stream, empty)
            if entry.payload_hash == digest:
                continue
            plan.writes.append(
                PlannedWrite(
                    "responsibilities", "upsert", ref_id, "updated", empty, digest, "caretakers removed"
                )
            )
    for entity in ARCHIVE_ORDER:
        if not allow_archive or entity not in entities:
            continue
        wanted = desired.get(entity, {})
        for ref_id, entry in sorted(state.get(entity, {}).items()):
            if entry.status != "active" or ref_id in wanted or (entity, ref_id) in held:
                continue
            if entity == "contacts" and ref_id in anonymise:
                continue  # anonymised below, which also archives
            reason = withdraw_reasons.get((entity, ref_id), DEFAULT_WITHDRAW_REASON)
            plan.writes.append(PlannedWrite(entity, "archive", ref_id, "archived", reason=reason))
    if "contacts" in entities:
        confirmed = state.get("contacts", {})
        for ref_id in sorted(anonymise):
            entry = confirmed.get(ref_id)
            if entry is not None and entry.status != "anonymised":
                plan.writes.append(
                    PlannedWrite(
                        "contacts", "anonymize", ref_id, "anonymised", reason="anonymised in the ERP"
                    )
                )
    return plan


def desired_hashes(
    desired: Mapping[str, Mapping[str, dict[str, Any]]], entities: tuple[str, ...] = ENTITIES
) -> dict[str, dict[str, str]]:
    """Payload hash of every desired record, computed once per run."""
    return {
        entity: {rid: payload_hash(STREAMS[entity], p) for rid, p in desired.get(entity, {}).items()}
        for entity in entities
        if entity in desired
    }


def write_candidates(
    desired: Mapping[str, Mapping[str, dict[str, Any]]],
    state: Mapping[str, Mapping[str, StateEntry]],
    hashes: Mapping[str, Mapping[str, str]],
    full_resync: bool = False,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Desired records that differ from what the portal confirmed: the ones a run would write.

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


def held_records(skips: list[Skip]) -> set[tuple[str, str]]:
    """(entity, id) of every record held back by validation."""
    return {(s.entity, s.ref_id) for s in skips}
