"""Prefect tasks of the portal sync: thin wrappers that call connectors and the pure rules.

Tasks receive plain data (profile name, run id, plain records) and build their clients inside,
one task per batch, never per row. Large inputs are not hashed for caching (``NO_CACHE``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from config.settings import HausflowSettings
from connectors.erp.database import make_engine
from connectors.erp.extract import TableRows, extract_portal_rows
from connectors.portal import PortalClient
from connectors.portal.streams import MASTER_STREAMS, STREAMS
from connectors.state_store import ProtocolRow, QuarantineItem, StateEntry, StateStore, record_json
from connectors.sync.client import PartnerClient
from tasks.portal_memo import (
    BUILT_ENTITIES,
    KEYED_TABLES,
    MemoStore,
    MemoUnusable,
    Scope,
    TableLinks,
    TableVersion,
    changed_positions,
    memo_after_run,
    memo_folder,
    merge_desired,
    rows_for,
    run_fingerprint,
    scope_from_memo,
    table_digest,
    table_file,
    touched_links,
)
from tasks.portal_rules import (
    ContactRules,
    DesiredState,
    Skip,
    build_desired_state,
    build_responsibilities,
    caretaker_entries,
    released_objects,
)
from tasks.sync.load import BatchOutcome, details_key
from tasks.sync.partner import Partner
from tasks.sync.plan import Plan, desired_hashes, held_records, plan_changes, write_candidates
from tasks.validation import REFUSED_BY_PORTAL, record_rule, validate_records

TARGET = "portal"
MEMO_KEY = "portal-memo"  # the state store's key for the memo's row digests


def connect_portal(settings: HausflowSettings) -> PartnerClient:
    """The portal's client for the run's settings."""
    return PortalClient.from_settings(settings.portal)


# The portal as a partner of the sync engine: its streams in write order, and its client.
PORTAL = Partner(TARGET, tuple(STREAMS.values()), connect_portal)
ENTITIES = tuple(s.name for s in sorted(MASTER_STREAMS, key=lambda s: s.write_order))
"""The master-data entities (the exchange's are in tasks/portal_exchange.py)."""

BERLIN = ZoneInfo("Europe/Berlin")


def business_today(settings: HausflowSettings) -> date:
    """Today in Europe/Berlin, or the configured business date (replays, tests)."""
    return settings.business_date or datetime.now(BERLIN).date()


def contact_rules(settings: HausflowSettings) -> ContactRules:
    """The contact rules' configuration taken from the settings."""
    return ContactRules(
        person_types=frozenset(settings.portal.person_types),
        access_days_before_start=settings.portal.access_days_before_start,
        archive_days_after_move_out=settings.portal.archive_days_after_move_out,
        owner_licence=settings.licences.owner,
        caretaker_licence=settings.licences.caretaker,
    )


def desired_state_for(
    settings: HausflowSettings, frames: dict[str, pd.DataFrame], today: date, objects: list[str] | None = None
) -> tuple[DesiredState, set[str], list[str]]:
    """The desired portal state for the extracted frames (pure).

    Returns the desired state, the released objects of this run, and the requested ``objects``
    that are not released (left out).
    """
    released, unknown = _released(settings, frames["objects"]["object_no"], frames["object_groups"], objects)
    return _build(frames, released, contact_rules(settings), today), released, unknown


def desired_state_from_rows(
    settings: HausflowSettings,
    tables: dict[str, TableRows],
    today: date,
    objects: list[str] | None = None,
    scope: Scope | None = None,
) -> tuple[DesiredState, set[str], list[str]]:
    """The desired portal state for the extracted rows: in full, or only ``scope`` rebuilt.

    An incremental run (``scope``) rebuilds the scope's properties, units and contacts from the
    rows they depend on, decides the persons the memo's run withheld again (the memo keeps no
    reasons), and carries everything else over from the memo; caretakers are always taken in
    full. Returns the desired state, the released objects and the requested ``objects`` that
    are not released.
    """
    if scope is None:
        frames = {name: table.frame() for name, table in tables.items()}
        return desired_state_for(settings, frames, today, objects)
    released, unknown = _released(
        settings, [str(r[0]) for r in tables["objects"].rows], tables["object_groups"].frame(), objects
    )
    rules = contact_rules(settings)
    persons = scope.contacts | scope.memo.withheld
    part = {
        name: table.frame()
        for name, table in rows_for(tables, scope.properties, scope.units, persons).items()
    }
    rebuilt = _build(
        part,
        released,
        rules,
        today,
        properties_for=scope.properties,
        units_for=scope.units,
        persons_for=persons,
    )
    rebuilt.caretakers = caretaker_entries(tables["caretakers"].frame(), released, rules)
    return merge_desired(scope, rebuilt), released, unknown


def _released(
    settings: HausflowSettings, object_nos: Any, groups: pd.DataFrame, objects: list[str] | None
) -> tuple[set[str], list[str]]:
    """Released objects of this run, and the requested ``objects`` that are not released."""
    released = released_objects(
        object_nos, groups, settings.portal.object_range, settings.portal.object_group
    )
    unknown: list[str] = []
    if objects:
        unknown = sorted(set(objects) - released)
        released &= set(objects)
    return released, unknown


def _build(
    frames: dict[str, pd.DataFrame], released: set[str], rules: ContactRules, today: date, **narrow: Any
) -> DesiredState:
    return build_desired_state(
        released=released,
        objects=frames["objects"],
        units=frames["units"],
        persons=frames["persons"],
        contracts=frames["contracts"],
        partners=frames["partners"],
        caretakers=frames["caretakers"],
        rules=rules,
        today=today,
        **narrow,
    )


@dataclass
class RunBasis:
    """What a run builds on: the scope of an incremental run, or why it is a full one.

    ``versions`` are this run's ERP tables for the memo, ``files`` the table files they need
    that may be new, ``rows`` the tables themselves (incremental runs: to write a table file
    again if one went missing); ``seq`` is the position of the state store's change sequence when
    the run looked; ``remember`` says whether the run leaves a memo (complete, not dry runs);
    ``key`` keys the memo's digests.
    """

    scope: Scope | None
    why_full: str | None
    fingerprint: str
    seq: int
    remember: bool
    versions: dict[str, TableVersion] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    rows: dict[str, TableRows] = field(default_factory=dict)
    key: bytes = field(default=b"", repr=False)  # the memo's digest key (StateStore.key), never logged


@task(name="extract-erp", cache_policy=NO_CACHE)
def extract_erp(settings: HausflowSettings) -> dict[str, TableRows]:
    """Read objects, units, persons, contracts, partners and caretakers from the ERP (chunked)."""
    logger = get_run_logger()
    engine = make_engine(settings.erp_url)
    try:
        tables = extract_portal_rows(engine)
    finally:
        engine.dispose()
    logger.info("Read the ERP: %s.", ", ".join(f"{len(t.rows):,} {name}" for name, t in tables.items()))
    return tables


@task(name="find-portal-changes", cache_policy=NO_CACHE)
def find_portal_changes(
    settings: HausflowSettings,
    tables: dict[str, TableRows],
    today: date,
    *,
    partial: bool,
    full_resync: bool,
    dry_run: bool,
) -> RunBasis:
    """Compare the ERP rows and the confirmed state with the memo of the last complete run.

    Returns the scope of an incremental run, or the reason for a full one (see
    :mod:`tasks.portal_memo`).
    """
    logger = get_run_logger()
    store = StateStore(settings.state_url)
    seq = store.current_seq()
    key = store.key(MEMO_KEY)
    fingerprint = run_fingerprint(settings, today, key)
    remember = not partial and not dry_run
    basis = RunBasis(None, None, fingerprint, seq, remember, key=key)
    if partial:
        basis.why_full = "this run is for some objects or entities only"
    elif full_resync:
        basis.why_full = "a full resync was asked for"
    elif not settings.portal.incremental:
        basis.why_full = "incremental runs are switched off (portal.incremental = false)"
    memos = MemoStore(memo_folder(settings, TARGET))
    if basis.why_full is None:
        try:
            basis.scope = _scope(store, memos, basis, tables)
        except MemoUnusable as exc:
            basis.why_full = str(exc)
    if basis.scope is not None:
        basis.rows = dict(tables)
        logger.info("Plan: %s.", basis.scope.describe())
    else:  # a full run keeps no rows alive: it needs the memory to build
        basis.versions, basis.files, basis.rows = {}, {}, {}
        memos.drop_warm()
        if remember:
            for name, table in tables.items():
                _whole_file(basis, name, table)
        logger.info("Full run: %s; every record is rebuilt and compared.", basis.why_full)
    return basis


def _scope(
    store: StateStore, memos: MemoStore, basis: RunBasis, tables: dict[str, TableRows]
) -> Scope | None:
    """The scope of an incremental run, or ``None`` with the reason in ``basis.why_full``.

    Raises ``MemoUnusable`` (damaged or refused memo).
    """
    memo = memos.load()
    if memo is None:
        basis.why_full = "there is no memo of an earlier complete run"
    elif memo.fingerprint != basis.fingerprint:
        basis.why_full = "the business date, the portal settings, the licences or the rules changed"
    elif memo.last_seq > basis.seq or store.count_state(TARGET) != memo.state_count:
        basis.why_full = (
            "the state store changed in a way the memo cannot follow (records removed or restored)"
        )
    elif set(memo.tables) != set(tables):
        basis.why_full = "the memo's tables are not the ones this run read"
    if memo is None or basis.why_full is not None:
        return None
    touched = {
        name: _changes_since(memos, basis, name, table, memo.tables[name]) for name, table in tables.items()
    }
    changed, _ = store.changed_since(TARGET, memo.last_seq)
    return scope_from_memo(memo, tables, touched, changed)


def _whole_file(
    basis: RunBasis, table: str, rows: TableRows, links: TableLinks | None = None, digest: str | None = None
) -> TableLinks:
    """Record ``rows`` for the memo as a new table file (``links`` and ``digest`` if known)."""
    links = links or TableLinks.of(table, rows, key=basis.key)
    data = links.to_json(table)
    version = TableVersion(digest or table_digest(rows.rows, key=basis.key), table_file(table, data))
    basis.files[version.file] = data
    basis.versions[table] = version
    return links


def _changes_since(
    memos: MemoStore, basis: RunBasis, table: str, rows: TableRows, known: TableVersion
) -> list[Sequence[Any]]:
    """Link columns of the rows of ``table`` added, removed or changed since the memo's ``known``.

    Records this run's version of the table in ``basis`` and keeps its rows in the process. A
    process that kept the rows of ``known`` compares with them, and digests only the rows that
    changed in place; a new process compares the digest of the whole table with the memo's and,
    where it differs, the digest of every row with the memo's file. Raises ``MemoUnusable`` if
    that file is gone, damaged or not private.
    """
    kept = memos.warm(table, known)
    digest = None
    if kept is not None and (kept.rows is rows.rows or kept.rows == rows.rows):
        digest = known.digest
    elif kept is None:
        digest = table_digest(rows.rows, key=basis.key)
    if digest == known.digest:
        basis.versions[table] = known
        memos.keep_warm(table, known, rows.rows, kept.links if kept is not None else None)
        return []
    if kept is None:
        old = memos.links(table, known)
        positions = None
    else:
        old = kept.links or TableLinks.of(table, TableRows(rows.columns, kept.rows), key=basis.key)
        positions = changed_positions(kept.rows, rows.rows) if table in KEYED_TABLES else None
    if positions is None:
        new = _whole_file(basis, table, rows, digest=digest)
        touched = touched_links(old, new)
    else:
        new = _whole_file(basis, table, rows, old.patched(table, rows, positions, key=basis.key))
        touched = [new.links[i] for i in positions] + [old.links[i] for i in positions]
    memos.keep_warm(table, basis.versions[table], rows.rows, new)
    return touched


@task(name="apply-portal-rules", cache_policy=NO_CACHE)
def apply_portal_rules(
    settings: HausflowSettings,
    tables: dict[str, TableRows],
    objects: list[str] | None,
    today: date,
    scope: Scope | None = None,
) -> tuple[DesiredState, set[str]]:
    """Build the desired portal state; ``objects`` narrows the released objects for this run."""
    logger = get_run_logger()
    desired, released, unknown = desired_state_from_rows(settings, tables, today, objects, scope)
    if unknown:
        logger.warning(
            "Objects %s are not released for the portal (object range/group) and are left out.", unknown
        )
    logger.info(
        "Portal rules on %s (business date): %d released objects, %d units, %d contacts to hold, %d waiting for "
        "their access date, %d to withdraw, %d anonymised in the ERP. Owner licence %s, caretaker licence %s.",
        f"{today:%d.%m.%Y}",
        len(desired.present("properties")),
        len(desired.present("units")),
        len(desired.present("contacts")),
        len(desired.skipped),
        len(desired.withdraw_reasons),
        len(desired.anonymise),
        "on" if settings.licences.owner else "off",
        "on" if settings.licences.caretaker else "off",
    )
    return desired, released


def portal_records_named(desired: DesiredState) -> dict[str, set[str]]:
    """The master-data records the ERP names for the portal: to hold, to withdraw or to anonymise.

    A repair (:mod:`tasks.sync.repair`) records a record the portal holds and the state store
    does not know only if the ERP names it: any other may be the portal's own.
    """
    named = {e: set(desired.present(e)) for e in ("properties", "units", "contacts")}
    for entity, ref_id in desired.withdraw_reasons:
        named.setdefault(entity, set()).add(ref_id)
    named["contacts"] |= desired.anonymise
    named["responsibilities"] = set(build_responsibilities(desired, named["contacts"])[0])
    return named


@dataclass
class Comparison:
    """The confirmed portal state, the desired records' hashes and the records that differ."""

    entities: tuple[str, ...]
    state: dict[str, dict[str, StateEntry]]
    hashes: dict[str, dict[str, str]]
    candidates: dict[str, dict[str, dict[str, Any]]]


@task(name="compare-with-portal-state", cache_policy=NO_CACHE)
def compare_with_portal_state(
    settings: HausflowSettings,
    desired: DesiredState,
    entities: list[str] | None,
    full_resync: bool,
    scope: Scope | None = None,
) -> Comparison:
    """Load what the portal confirmed and find the desired records that differ from it.

    An incremental run loads only the confirmed entries of the records it rebuilt (and all
    responsibilities, which are always built in full): the plan then reaches no further.
    """
    logger = get_run_logger()
    chosen = tuple(e for e in ENTITIES if not entities or e in entities)
    store = StateStore(settings.state_url)
    state: dict[str, dict[str, StateEntry]] = {}
    for entity in chosen:
        if scope is None or entity not in BUILT_ENTITIES:
            state[entity] = store.load_state(TARGET, entity)
            continue
        ids = scope.of(entity)
        if len(ids) > 5_000:  # one streamed read beats many IN lists
            everything = store.load_state(TARGET, entity)
            state[entity] = {rid: everything[rid] for rid in ids if rid in everything}
        else:
            state[entity] = store.load_state_for(TARGET, entity, ids)
    records = {e: r for e, r in desired.records.items() if e in chosen}
    hashes = desired_hashes({e: STREAMS[e] for e in chosen}, records)
    candidates = write_candidates(records, state, hashes, full_resync)
    logger.info(
        "Compared with what the portal confirmed: %s.",
        ", ".join(
            f"{len(candidates.get(e, {})):,} of {len(desired.present(e)):,} {e} differ" for e in records
        ),
    )
    return Comparison(chosen, state, hashes, candidates)


def known_failures(
    open_entries: Sequence[dict[str, Any]],
    candidates: dict[str, dict[str, dict[str, Any]]],
    incremental: bool = True,
) -> tuple[list[Skip], set[tuple[str, str]]]:
    """Quarantine entries that still hold: the record's payload is exactly the one quarantined.

    A refusal by the portal (``portal_rejected``) holds its record in every run while the
    payload is the one refused: the portal would give the same answer, and the run would fail
    for it each time. A changed payload (or a record no longer to be written) releases it. In an
    incremental run (same rules and suites as the run that left the memo) the entries of the
    other checks that depend on the record alone (:func:`tasks.validation.record_rule`; not holds,
    not uniqueness) hold too, if every such open entry of the record was quarantined with its
    current payload. Returns the entries that hold as skips, and the records that need no
    checking again.
    """
    entries: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for entry in open_entries:
        if entry["rule"] == REFUSED_BY_PORTAL or (incremental and record_rule(entry["rule"])):
            entries.setdefault((entry["entity"], entry["ref_id"]), []).append(entry)
    skips: list[Skip] = []
    covered: set[tuple[str, str]] = set()
    for (entity, ref_id), mine in entries.items():
        payload = candidates.get(entity, {}).get(ref_id)
        if payload is None:
            continue
        current = record_json(payload)
        same = [e for e in mine if e["record_json"] == current]
        if len(same) == len(mine):
            covered.add((entity, ref_id))
        else:  # checked again; a refusal of this very payload still holds it
            same = [e for e in same if e["rule"] == REFUSED_BY_PORTAL]
        skips.extend(Skip(entity, ref_id, e["rule"], e["reason"]) for e in same)
    return skips, covered


@task(name="validate-portal-records", cache_policy=NO_CACHE)
def validate_portal_records(
    settings: HausflowSettings,
    comparison: Comparison,
    run_id: str,
    incremental: bool = False,
    desired: DesiredState | None = None,
    decides: Callable[[str, str], bool] | None = None,
) -> list[Skip]:
    """Validate the records about to be written; quarantine the failing ones and what the rules held.

    ``decides``: which records this run decides on (a partition of a partitioned sync, see
    :mod:`tasks.partitions`); the open quarantine entries of the others stay as they are.

    Records equal to their confirmed version passed when they were sent and are not checked
    again. A record the portal refused is held, unchecked, while its payload is the one refused
    (:func:`known_failures`). In an incremental run (same rules and suites as the run that left
    the memo), a record whose payload is exactly the one it was quarantined with keeps its
    entries unchecked: a new process then need not load great-expectations for records nobody
    fixed. The records the rules held (``desired.quarantine``: contracts they cannot place) are
    quarantined with them. Children of a record that is held and not yet in the portal are held
    too (a unit of a quarantined new object, a contact whose only unit is held). The rest goes
    on; of it, each record whose values the text cleaning changed (``desired.notes``) gets a
    protocol line ``note`` saying which.
    """
    logger = get_run_logger()
    store = StateStore(settings.state_url)
    candidates = comparison.candidates
    open_entries = store.open_quarantine(TARGET)
    failures, covered = known_failures(open_entries, candidates, incremental)
    if desired is not None:
        failures.extend(q for q in desired.quarantine if q.entity in comparison.entities)
    for entity in ("properties", "units", "contacts"):
        records = candidates.get(entity, {})
        if covered:
            records = {rid: r for rid, r in records.items() if (entity, rid) not in covered}
        failures.extend(validate_records(entity, records))

    def absent(entity: str, ref_id: str) -> bool:
        entry = comparison.state.get(entity, {}).get(ref_id)
        return entry is None or entry.status != "active"

    failed_ids = {(f.entity, f.ref_id) for f in failures}
    held_props = {rid for ent, rid in failed_ids if ent == "properties" and absent(ent, rid)}
    for unit_id, unit in candidates.get("units", {}).items():
        if unit["propertyId"] in held_props and ("units", unit_id) not in failed_ids:
            failures.append(
                Skip("units", unit_id, "parent_quarantined", f"object {unit['propertyId']} is in quarantine")
            )
    held_units = {f.ref_id for f in failures if f.entity == "units" and absent("units", f.ref_id)}
    for person_no, contact in candidates.get("contacts", {}).items():
        bad = [c for c in contact["contracts"] if c["propertyId"] in held_props or c["unitId"] in held_units]
        if bad and ("contacts", person_no) not in failed_ids:
            where = bad[0]["unitId"] or bad[0]["propertyId"]
            failures.append(
                Skip(
                    "contacts",
                    person_no,
                    "parent_quarantined",
                    f"contract in {where}, which is in quarantine",
                )
            )
    opened = store.quarantine(
        TARGET,
        [
            QuarantineItem(f.entity, f.ref_id, f.rule, f.reason, candidates.get(f.entity, {}).get(f.ref_id))
            for f in failures
        ],
        run_id,
    )
    held = {(f.entity, f.ref_id) for f in failures}
    if decides is None:
        resolved = store.resolve_quarantine(TARGET, held)
    else:  # a partition resolves its own entries as it read them: others' (even new ones) stay open
        resolved = store.resolve_quarantine_entries(
            TARGET,
            [
                (q["entity"], q["ref_id"], q["rule"])
                for q in open_entries
                if decides(q["entity"], q["ref_id"]) and (q["entity"], q["ref_id"]) not in held
            ],
        )
    fresh = {(i.entity, i.ref_id, i.rule) for i in opened}
    new_failures = [f for f in failures if (f.entity, f.ref_id, f.rule) in fresh]
    for f in new_failures[:20]:
        logger.warning("Quarantined %s %s: %s [%s]", f.entity[:-1], f.ref_id, f.reason, f.rule)
    if len(new_failures) > 20:
        logger.warning(
            "... and %d more new quarantine entries (all listed by ./hausflow quarantine, the first ones in %s).",
            len(new_failures) - 20,
            details_key(PORTAL),
        )
    # records held for reasons that were all open before this run (a new reason makes it news)
    still = len(held - {(f.entity, f.ref_id) for f in new_failures})
    if still:
        logger.warning(
            "%d records stay in quarantine from earlier runs, for the same reasons (./hausflow quarantine lists "
            "them, %s too); they are sent once fixed in the ERP.",
            still,
            details_key(PORTAL),
        )
    if resolved:
        logger.info(
            "%d records left the quarantine: they pass the checks now or are no longer selected.", resolved
        )
    if desired is not None and desired.notes:
        notes = [
            ProtocolRow(entity, ref_id, "note", desired.notes[(entity, ref_id)])
            for entity, records in candidates.items()
            for ref_id in records
            if (entity, ref_id) in desired.notes and (entity, ref_id) not in held
        ]
        if notes:
            store.add_protocol(run_id, notes)
            logger.info(
                "%d records go out with values the text cleaning changed (spaces around a value removed, tabs "
                "or line breaks replaced by a space), e.g. %s %s: %s. Each has a protocol line 'note'.",
                len(notes),
                notes[0].entity[:-1],
                notes[0].ref_id,
                notes[0].reason,
            )
    return failures


@task(name="plan-portal-changes", cache_policy=NO_CACHE)
def plan_portal_changes(
    desired: DesiredState,
    comparison: Comparison,
    quarantined: list[Skip],
    full_resync: bool,
    partial: bool,
) -> tuple[Plan, list[Skip]]:
    """The writes of this run: desired minus confirmed, without what is held; plus extra skips."""
    logger = get_run_logger()
    held = held_records(quarantined)
    confirmed_contacts = comparison.state.get("contacts", {})
    sendable = {
        rid
        for rid in desired.present("contacts")
        if ("contacts", rid) not in held or getattr(confirmed_contacts.get(rid), "status", None) == "active"
    }
    responsibilities, resp_skips = build_responsibilities(desired, sendable)
    records = dict(desired.records)
    records["responsibilities"] = responsibilities
    hashes = dict(comparison.hashes)
    hashes.update(desired_hashes({"responsibilities": STREAMS["responsibilities"]}, records))
    plan = plan_changes(
        PORTAL.streams,
        records,
        comparison.state,
        held=held,
        withdraw_reasons=desired.withdraw_reasons,
        anonymise=desired.anonymise,
        full_resync=full_resync,
        allow_archive=not partial,
        entities=comparison.entities,
        hashes=hashes,
    )
    for entity in BUILT_ENTITIES:  # records an incremental run carried over are unchanged
        if entity in plan.unchanged:
            plan.unchanged[entity] += len(desired.present(entity)) - len(desired.records.get(entity, {}))
    counts = plan.counts()
    parts = []
    for entity in comparison.entities:
        mine = [f"{n:,} {outcome}" for (ent, outcome), n in sorted(counts.items()) if ent == entity]
        parts.append(f"{entity}: " + ", ".join([*mine, f"{plan.unchanged.get(entity, 0):,} unchanged"]))
    fate = withdrawn_fate(desired.withdraw_reasons, comparison, held, plan)
    if fate:
        told = ", ".join(f"{n:,} {what}" for what, n in fate.items() if n)
        parts.append(f"of the {sum(fate.values()):,} to withdraw: {told}")
    logger.info("Plan: %s.", "; ".join(parts))
    for note in plan.notes:
        logger.info(note)
    return plan, resp_skips


def withdrawn_fate(
    withdraw: Collection[tuple[str, str]],
    comparison: Comparison,
    held: set[tuple[str, str]],
    plan: Plan,
) -> dict[str, int]:
    """What becomes of the records the rules withdraw, so the rules' "N to withdraw" and the
    protocol's archived count add up (pure).

    Returns counts, in this order, of: ``archived now`` (planned to be archived in this run: the
    protocol's archived lines for them), ``already archived or never in the portal`` (the
    confirmed state holds no active record: never sent, archived or anonymised earlier; in an
    incremental run also those settled by an earlier run and not looked at again), ``held in
    quarantine``, ``left for a full run`` (a run for some objects or entities archives nothing).
    Each record counts once.
    Empty when nothing is withdrawn.
    """
    if not withdraw:
        return {}
    archiving = {(w.entity, w.ref_id) for w in plan.writes if w.op == "archive"}
    fate = dict.fromkeys(
        (
            "archived now",
            "already archived or never in the portal",
            "held in quarantine",
            "left for a full run",
        ),
        0,
    )
    for entity, ref_id in withdraw:
        entry = comparison.state.get(entity, {}).get(ref_id)
        if (entity, ref_id) in archiving:
            fate["archived now"] += 1
        elif entity not in comparison.entities:
            fate["left for a full run"] += 1
        elif entry is None or entry.status != "active":
            fate["already archived or never in the portal"] += 1
        elif (entity, ref_id) in held:
            fate["held in quarantine"] += 1
        else:  # active in the portal, and this run is for some objects only
            fate["left for a full run"] += 1
    return fate


@task(name="remember-portal-run", cache_policy=NO_CACHE)
def remember_portal_run(
    settings: HausflowSettings,
    basis: RunBasis,
    desired: DesiredState,
    quarantined: list[Skip],
    outcomes: list[BatchOutcome],
) -> bool:
    """Leave the memo for the next run (complete, not dry runs); returns whether it was written.

    The memo vouches for the confirmed state up to the newest change this run saw, but only if
    every change since the run looked was its own; otherwise up to where the run looked, so the
    next run rebuilds what others confirmed in between.
    """
    if not basis.remember:
        return False
    unsynced: dict[str, set[str]] = {}
    for skip in quarantined:
        unsynced.setdefault(skip.entity, set()).add(skip.ref_id)
    for outcome in outcomes:
        for entity, ref_id in outcome.failed_keys:
            unsynced.setdefault(entity, set()).add(ref_id)
    store = StateStore(settings.state_url)
    ours = {seq for o in outcomes for seq in o.seqs}
    seen = store.positions_since(TARGET, basis.seq)
    last_seq = max(seen | {basis.seq}) if seen <= ours else basis.seq
    memo = memo_after_run(
        fingerprint=basis.fingerprint,
        last_seq=last_seq,
        state_count=store.count_state(TARGET),
        tables=basis.versions,
        desired=desired,
        unsynced=unsynced,
    )
    return MemoStore(memo_folder(settings, TARGET)).save(memo, basis.files, basis.rows, key=basis.key)
