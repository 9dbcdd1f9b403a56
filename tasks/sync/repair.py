"""Repair the state store's record of what a partner holds, from what the partner really holds.

Why: a run plans by difference against the state store, never against the partner, so a state
store that is wrong makes it send too much or too little: restored from an old backup or with
entries lost, it sends again what the partner holds (duplicates); after a record was deleted or
edited at the partner by hand, it never sends that record again. The repair reads the partner's
records of the scope and sets each entry to what the partner holds:

- held as the state store says: kept (*held as confirmed*);
- not held (or a document without its file): the entry is dropped; the sync sends the record
  (*missing*);
- held with other content or another status: the entry becomes what the partner holds; the sync
  sends the ERP's version where it differs (*different*);
- held, unknown to the state store, and named by the ERP: recorded as held (*found*); the sync
  sends it only if the ERP's version differs.

A record the partner holds that the state store does not know and the ERP does not name is left
alone: it may be the partner's own (made in the portal by hand), and recorded it would be archived.

The comparison is pure (:func:`compare_with_partner`); :func:`repair_state` takes a store and a
client like the load functions, and :func:`repair_partner_state` is its Prefect task.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from config.settings import HausflowSettings
from connectors.state_store import Confirmation, StateEntry, StateStore
from connectors.sync.client import PartnerClient
from connectors.sync.streams import Stream, payload_hash
from tasks.sync.load import retry_if_retriable
from tasks.sync.partner import Partner

OP_BY_STATUS = {"active": "upsert", "archived": "archive", "anonymised": "anonymize"}
NAMED = 5
"""Records named per kind in the log line (all of them are in the artifact's counts)."""


@dataclass
class Repair:
    """What the repair of one entity found, by reference id."""

    entity: str
    held: int = 0
    missing: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    found: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        """One row of the resync artifact."""
        return {
            "entity": self.entity,
            "held as confirmed": self.held,
            "missing": len(self.missing),
            "different": len(self.different),
            "found": len(self.found),
        }

    def line(self, partner: str) -> str:
        """The log's line for this entity: counts, and the first records of each kind."""
        named = [
            f"{what} {', '.join(ids[:NAMED])}{' ...' if len(ids) > NAMED else ''}"
            for what, ids in (("missing", self.missing), ("different", self.different), ("found", self.found))
            if ids
        ]
        return (
            f"{self.entity}: {self.held:,} held as confirmed, {len(self.missing):,} missing at the {partner}, "
            f"{len(self.different):,} different, {len(self.found):,} held there but not in the state store"
            + (f" ({'; '.join(named)})" if named else "")
        )


def held_as(stream: Stream, record: Mapping[str, Any] | None) -> StateEntry | None:
    """The state entry that stands for ``record`` as the partner holds it (``None``: not held).

    Archived and anonymised records are entered by their status alone (as their confirmations
    are); a record whose second step is missing (a document without its file) counts as not
    held, so that the sync sends it whole.
    """
    if record is None:
        return None
    if record.get(stream.anonymised_field):
        return StateEntry(None, "anonymised")
    if record.get(stream.archived_field):
        return StateEntry(None, "archived")
    if stream.complete is not None and not stream.complete(dict(record)):
        return None
    return StateEntry(payload_hash(stream, dict(record)), "active")


def same(entry: StateEntry, held: StateEntry) -> bool:
    """Whether the state store's entry says what the partner holds."""
    return entry.status == held.status and (
        held.status != "active" or entry.payload_hash == held.payload_hash
    )


def compare_with_partner(
    stream: Stream,
    state: Mapping[str, StateEntry],
    records: Mapping[str, Mapping[str, Any] | None],
    scope: Collection[str],
    named: Collection[str],
) -> tuple[Repair, dict[str, StateEntry]]:
    """Compare the state store's entries of ``scope`` with the partner's ``records`` (pure).

    Args:
        stream: the entity's stream.
        state: reference id -> the state store's entry.
        records: reference id -> the partner's record (``None`` or absent: not held).
        scope: the reference ids to repair.
        named: the reference ids the ERP names (only these are *found*).

    Returns:
        What was found, and the entries to record (reference id -> what the partner holds).
    """
    repair = Repair(stream.name)
    record: dict[str, StateEntry] = {}
    for ref_id in sorted(scope):
        entry, held = state.get(ref_id), held_as(stream, records.get(ref_id))
        if entry is None:
            if held is not None and ref_id in named:
                repair.found.append(ref_id)
                record[ref_id] = held
        elif held is None:
            repair.missing.append(ref_id)
        elif same(entry, held):
            repair.held += 1
        else:
            repair.different.append(ref_id)
            record[ref_id] = held
    return repair, record


async def read_partner(
    client: PartnerClient, stream: Stream, scope: Collection[str], whole: bool
) -> dict[str, dict[str, Any] | None]:
    """The partner's records of ``scope``: its list, read whole (``whole``, a stream that has
    one), and by reference id for the rest (archived records are not in a list; a narrow scope
    is read by id only)."""
    records: dict[str, dict[str, Any] | None] = {}
    if whole and not stream.sub_resource:
        for item in await client.alist_records(stream.name):
            ref_id = str(item.get(stream.primary_key))
            if ref_id in scope:
                records[ref_id] = item
    rest = sorted(set(scope) - records.keys())
    if rest:
        records.update(await client.aread_many(stream.name, rest))
    return records


async def repair_state(
    store: StateStore,
    client: PartnerClient,
    partner: Partner,
    entity: str,
    named: Collection[str],
    whole: bool,
    run_id: str,
    dry_run: bool = False,
) -> Repair:
    """Repair the entries of one entity from what the partner holds (see the module's doc).

    Args:
        named: the reference ids the ERP names for the partner in this scope.
        whole: repair every entry of the entity (else only those of ``named``: a run for some
            objects).
        run_id: the run the entries it records are confirmed under.
        dry_run: find and count, change nothing.
    """
    stream = partner.by_name[entity]
    state = (
        store.load_state(partner.name, entity) if whole else store.load_state_for(partner.name, entity, named)
    )
    scope = set(named) | (set(state) if whole else set())
    records = await read_partner(client, stream, scope, whole)
    repair, held = compare_with_partner(stream, state, records, scope, named)
    if not dry_run:
        store.forget(partner.name, entity, repair.missing)
        store.confirm(
            partner.name,
            [
                Confirmation(
                    entity,
                    ref_id,
                    OP_BY_STATUS[entry.status],
                    entry.payload_hash,
                    client.internal_id(records.get(ref_id)),
                )
                for ref_id, entry in held.items()
            ],
            run_id,
        )
    return repair


@task(
    name="repair-partner-state",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_if_retriable,
)
async def repair_partner_state(
    partner: Partner,
    settings: HausflowSettings,
    entity: str,
    named: Collection[str],
    whole: bool,
    run_id: str,
    dry_run: bool,
) -> Repair:
    """:func:`repair_state` as a task (one per entity), with one log line of what it found."""
    repair = await repair_state(
        StateStore(settings.state_url),
        partner.connect(settings),
        partner,
        entity,
        named,
        whole,
        run_id,
        dry_run,
    )
    get_run_logger().info(
        "%s%s.", repair.line(partner.name), " (dry run: nothing changed)" if dry_run else ""
    )
    return repair
