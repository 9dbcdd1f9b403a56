"""The tenant-portal sync: ERP master data -> casavi (objects, units, persons, owners, caretakers),
then the exchange: documents, messages and notes to the portal, tickets and comments back.

master data: extract -> find changes since the last run -> rules -> compare with the confirmed
state -> validate what differs -> plan -> load per batch
exchange (tasks/portal_exchange.py): extract -> file digests -> the portal's ticket types and
news -> rules -> plan -> convert Word files -> load per batch -> e-mails -> portal tickets into
the ERP -> portal status of the messages
then one protocol for both, and the memo for the next run

Why one flow and not a sibling: documents and tickets name properties, units and contacts; run
after the master data in the same flow run, they find them at the portal (a write whose parent
failed in this run is held back), with one schedule, one protocol and one place to look.

The flow is asynchronous: the load batches await the portal client on the flow's event loop, the
other tasks are plain functions that run in turn in the flow's thread. Why not a synchronous flow:
Prefect ends a synchronous flow run by joining its heartbeat thread, which sleeps in one-second
steps, so every run would last up to a second longer than its work (an asynchronous flow run lets
the thread end on its own). Synchronous callers use :func:`run_portal_sync`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from typing import Any, TypeVar, cast, get_args

from prefect import flow, get_run_logger
from prefect.context import SyncClientContext
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from config.settings import HausflowSettings, ProfileName, load_settings
from connectors.erp.extract import TableRows
from connectors.state_store import StateStore
from tasks.licensing import licensed
from tasks.partitions import Partition
from tasks.portal_exchange import (
    EXCHANGE_ENTITIES,
    MAIL,
    STEPS,
    TRANSIENT_SKIPS,
    ExchangeInputs,
    ExchangePlan,
    PortalSide,
    check_exchange_inputs,
    convert_documents,
    earlier_skips,
    enter_portal_tickets_task,
    extract_exchange,
    fingerprint_exchange,
    merged,
    plan_emails,
    plan_exchange,
    quiet_since,
    read_document_files,
    read_portal_exchange,
    record_portal_status_task,
    remember_quiet,
)
from tasks.portal_rules import DesiredState, Skip
from tasks.portal_tasks import (
    PORTAL,
    apply_portal_rules,
    business_today,
    compare_with_portal_state,
    extract_erp,
    find_portal_changes,
    plan_portal_changes,
    remember_portal_run,
    validate_portal_records,
)
from tasks.sync.load import BatchOutcome, check_partner, load_partner_batch, recover_pending_writes
from tasks.sync.partner import Partner
from tasks.sync.plan import Plan, held_records, without_failed_parents
from tasks.sync.protocol import record_protocol
from tasks.systems import claim_system, switched_off

T = TypeVar("T")
PARTITIONED = frozenset({"properties", "units", "contacts", "documents"})
"""What a partition run writes (docs/scale-out.md); everything else goes with the closing run."""
ALL_ENTITIES = (*PORTAL.entities, *STEPS)
"""What ``entities`` takes: the portal's entities (master data and exchange) and the exchange's
steps ``emails`` and ``inbound``."""


def whole(value: T) -> T:
    """Hand ``value`` to a task as it is: Prefect otherwise walks every element of a task argument
    (to find futures), which costs about 30 s for the 140,000 records of a 100,000-person ERP."""
    return cast(T, quote(value))


@contextmanager
def collect_run_objects_only() -> Iterator[None]:
    """Let the garbage collector skip what the process held before the run, until the run ends.

    Why: a run reads ~100,000 rows per changed table; so many new objects make Python run full
    collections, and each one walks every object of the process: the imported Prefect, pandas and
    great-expectations modules and the rows kept from the last run, 320,000-490,000 objects, at
    0.15-0.4 s per run (about 0.02 s with them set aside). ``gc.freeze()`` sets them aside: they
    are still freed when their last reference goes; only garbage cycles among them wait until the
    run ends, when everything goes back to the oldest generation, so nothing leaks. A process
    that froze objects itself keeps its own arrangement: then nothing is changed.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@flow(name="portal-sync", log_prints=False)
async def portal_sync(
    objects: list[str] | None = None,
    entities: list[str] | None = None,
    full_resync: bool = False,
    dry_run: bool = False,
    profile: str | None = None,
    partition: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Bring the tenant portal in line with the ERP.

    Args:
        objects: restrict this run to these object numbers (no archiving in such a partial run).
        entities: restrict to some of properties, units, contacts, responsibilities (master
            data), ticket_types, documents, tickets, bulletin_posts, comments (the exchange), and
            the exchange's steps emails and inbound (tickets and comments from the portal).
        full_resync: send every record again, even if unchanged since the last confirmation.
        dry_run: compute and show the plan (artifacts portal-sync-protocol and -details), send nothing.
        profile: settings profile (production, test, demo); default ``HAUSFLOW_PROFILE``.
        partition: this run is one partition of a partitioned sync (flows/scale_out.py):
            ``{"index", "count", "first", "last"}``. The rules see the whole ERP; the run writes
            only the records the partition owns (:mod:`tasks.partitions`), archives and withdraws
            nothing and leaves the writes earlier runs left pending to the parent run.

    Returns:
        A summary: planned, confirmed, failed, skipped, quarantined, unchanged, counts per outcome,
        and how the run was planned: ``mode`` (``full`` or ``incremental``), ``full_reason`` and
        ``rebuilt`` (records rebuilt per entity); ``exchange``: ``compared`` (read and planned in
        full), ``quiet`` (nothing changed since the last complete exchange) or ``off``.
    """
    # One Prefect API client for the run's synchronous tasks: without a client in the context each
    # task builds its own, and with it a TLS context (about 25 ms, nine times per run).
    with collect_run_objects_only(), SyncClientContext.get_or_create():
        return await _sync(objects, entities, full_resync, dry_run, profile, partition)


async def _sync(
    objects: list[str] | None,
    entities: list[str] | None,
    full_resync: bool,
    dry_run: bool,
    profile: str | None,
    partition: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The body of :func:`portal_sync` (in its flow run)."""
    logger = get_run_logger()
    part = Partition.of(partition) if partition else None
    if part is not None and objects:
        raise ValueError("a partition run takes its objects from the partition, not from 'objects'")
    if part is not None and not (entities and set(entities) <= PARTITIONED):
        raise ValueError(
            f"a partition run writes only {', '.join(sorted(PARTITIONED))} (entities: {entities}); the rest "
            "names records of several partitions and is the closing run's"
        )
    settings, stop = licensed(load_settings(profile), "portal")
    stop = stop or switched_off(settings, "portal")
    if stop is not None:
        return stop
    claim_system(settings)
    run_id = str(flow_run.get_id() or "local")
    store = StateStore(settings.state_url)
    store.start_run(run_id, "portal-sync", PORTAL.name, dry_run)
    today = business_today(settings)
    logger.info(
        "Portal sync (profile %s) to %s; the ERP is the master: portal-side edits of master data are overwritten.",
        settings.profile,
        settings.portal.base_url,
    )
    early: dict[str, PrefectFuture[Any]] = {}
    try:
        await check_partner(PORTAL, settings)
        if not dry_run and part is None:  # a partition's parent settled them before it started
            await recover_pending_writes(PORTAL, settings, run_id)
        partial = bool(objects) or part is not None  # nothing is archived or withdrawn
        early = _start_exchange_reads(settings, partial, entities, full_resync, dry_run)
        tables = extract_erp(settings)
        basis = find_portal_changes(
            settings,
            whole(tables),
            today,
            partial=partial or bool(entities),
            full_resync=full_resync,
            dry_run=dry_run,
        )
        desired, released = apply_portal_rules(settings, whole(tables), objects, today, whole(basis.scope))
        persons_table = tables["persons"]  # whom the exchange may e-mail, when it is not quiet
        del tables
        view = desired  # what the exchange may name
        decides = None
        if part is not None:
            view, decides = _partition_view(settings, part, desired, entities)
            desired = part.narrow(desired)
            released = part.objects(released)
        comparison = compare_with_portal_state(
            settings, whole(desired), entities, full_resync, whole(basis.scope)
        )
        quarantined = validate_portal_records(
            settings,
            whole(comparison),
            run_id,
            incremental=basis.scope is not None,
            desired=whole(desired),
            decides=decides,
        )
        plan, resp_skips = plan_portal_changes(
            whole(desired), whole(comparison), whole(quarantined), full_resync, partial
        )
        outcomes: list[BatchOutcome] = []
        deferred: list[Skip] = []
        failed: set[tuple[str, str]] = set()
        if dry_run:
            logger.info("Dry run: %d writes planned, nothing sent.", len(plan.writes))
        else:
            await _load(PORTAL, settings, run_id, plan, basis.seq, failed, deferred, outcomes)
        # the exchange: documents, messages and notes (docs/portal-exchange.md), after the master data
        exchange_mode = "off"
        extra_skips: list[Skip] = []
        extra_held: list[Skip] = []
        problems: list[str] = []
        if exchange_wanted(settings, entities):
            held_back = held_records(quarantined)  # not at the portal: nothing may name them
            exchange = await _exchange(
                settings,
                early,
                released,
                view,
                held_back,
                today,
                partial,
                entities,
                full_resync,
                dry_run,
            )
            extra_skips, extra_held = exchange.skips, exchange.held
            exchange_mode = "quiet" if exchange.quiet else "compared"
            if not dry_run:
                try:
                    await _load(
                        PORTAL, settings, run_id, exchange.plan, basis.seq, failed, deferred, outcomes
                    )
                finally:  # the converted PDFs hold tenants' documents: gone with the load
                    if exchange.workdir:
                        shutil.rmtree(exchange.workdir, ignore_errors=True)
                problems += await _notify_and_enter(
                    settings, run_id, exchange, persons_table, partial, entities, outcomes
                )
                if (
                    exchange.basis is not None and exchange.portal is not None
                ):  # complete: may make the next quiet
                    clean = (
                        not (failed or deferred or problems)
                        and not any(s.rule in TRANSIENT_SKIPS for s in exchange.skips)
                        and not exchange.unsettled_files
                    )
                    ids, contacts, units = exchange.basis
                    assert exchange.inputs is not None  # with the basis
                    after = fingerprint_exchange(
                        settings, today, exchange.inputs, ids, contacts, units, exchange.portal
                    )
                    remember_quiet(settings, after if clean else None, run_id)
            plan = merged(plan, exchange.plan)
        if deferred:
            logger.warning(
                "%d writes were held back because the record they refer to failed in this run (listed in "
                "portal-sync-details); the next run sends them.",
                len(deferred),
            )
            # not sent and not confirmed: the next run rebuilds and plans them again
            outcomes.append(BatchOutcome(failed_keys=[(d.entity, d.ref_id) for d in deferred]))
        summary = record_protocol(
            PORTAL,
            settings,
            run_id,
            whole(plan),
            whole(desired.skipped + resp_skips + deferred + extra_skips),
            whole(quarantined + extra_held),
            whole(outcomes),
            dry_run,
        )
        remember_portal_run(settings, whole(basis), whole(desired), whole(quarantined), whole(outcomes))
        summary["mode"] = "full" if basis.scope is None else "incremental"
        summary["exchange"] = exchange_mode
        summary["full_reason"] = basis.why_full
        summary["rebuilt"] = {
            e: len(basis.scope.of(e)) if basis.scope else len(desired.records.get(e, {}))
            for e in ("properties", "units", "contacts")
        }
    except Exception:
        store.finish_run(run_id, "FAILED", {})
        raise
    finally:
        for future in early.values():
            future.wait()  # nothing of this run goes on after it
    logger.info(
        "Portal sync done: %d writes confirmed, %d failed, %d unchanged, %d skipped with a reason, %d quarantined.",
        summary["confirmed"],
        summary["failed"],
        summary["unchanged"],
        summary["skipped"],
        summary["quarantined"],
    )
    if problems:
        raise RuntimeError("; ".join(problems))
    if summary["failed"]:
        raise RuntimeError(
            f"{summary['failed']} portal writes failed (listed with the reason in portal-sync-details): "
            "what the portal refused stays in quarantine until the record changes in the ERP; the next run "
            "retries the rest."
        )
    return summary


async def _load(
    partner: Partner,
    settings: HausflowSettings,
    run_id: str,
    plan: Plan,
    seq: int,
    failed: set[tuple[str, str]],
    deferred: list[Skip],
    outcomes: list[BatchOutcome],
) -> None:
    """Send a plan batch by batch; a write whose parent failed earlier in the run is held back."""
    for planned in plan.batches(settings.portal.batch_size):
        batch, held = without_failed_parents(partner.by_name, planned, failed)
        deferred += [
            Skip(
                w.entity,
                w.ref_id,
                "parent_failed",
                f"not sent: {p[0]} {p[1]} failed in this run; the next run sends it",
            )
            for w, p in held
        ]
        if batch:
            outcome = await load_partner_batch(partner, settings, run_id, whole(batch), seq)
            failed |= set(outcome.failed_keys)
            outcomes.append(outcome)


def _start_exchange_reads(
    settings: HausflowSettings,
    partial: bool,
    entities: list[str] | None,
    full_resync: bool,
    dry_run: bool,
) -> dict[str, PrefectFuture[Any]]:
    """Start the exchange's reads that need nothing of the master data, to run alongside them:
    the portal's ticket types and news, and (for a run that may be quiet) the ERP's aggregates
    and the document files' ``stat``. Each waits for the network or the disk, not for Python."""
    if not exchange_wanted(settings, entities):
        return {}
    early: dict[str, PrefectFuture[Any]] = {
        "portal": read_portal_exchange.submit(settings, inbound=not dry_run and wanted(entities, "inbound"))
    }
    if not (dry_run or partial or entities or full_resync):
        early["inputs"] = check_exchange_inputs.submit(settings)
    return early


async def _exchange(
    settings: HausflowSettings,
    early: dict[str, PrefectFuture[Any]],
    released: set[str],
    desired: DesiredState,
    held_back: set[tuple[str, str]],
    today: date,
    partial: bool,
    entities: list[str] | None,
    full_resync: bool,
    dry_run: bool,
) -> ExchangePlan:
    """Read and plan the exchange, and convert this run's Word files (docs/portal-exchange.md).

    A run over everything first compares the exchange's fingerprint (:func:`fingerprint_exchange`)
    with the one the last complete, clean exchange left: equal, no document file changed since it
    was read, and nothing new from the portal, the exchange has nothing to do and reads and plans
    nothing (a quiet run); the skips of that run are reported again.
    """
    portal: PortalSide = early["portal"].result()
    inputs: ExchangeInputs | None = early["inputs"].result() if "inputs" in early else None
    released_ids = set(released)
    contacts = {c for c in desired.present("contacts") if ("contacts", c) not in held_back}
    units = {u for u in desired.present("units") if ("units", u) not in held_back}
    if inputs is not None:
        fingerprint = fingerprint_exchange(settings, today, inputs, released_ids, contacts, units, portal)
        since, why = quiet_since(settings, fingerprint, inputs, portal)
        if not since:
            get_run_logger().info("Exchange compared in full: %s.", why)
            # a run that stops halfway (file digests saved, nothing sent) must leave no quiet mark
            remember_quiet(settings, None, "")
        else:
            skips, held = earlier_skips(settings, since)
            get_run_logger().info(
                "Exchange: the ERP's documents and messages, their files, the portal and the confirmed state are "
                "as the complete exchange of run %s left them: nothing to read or send (%d skips of that run "
                "reported again).",
                since,
                len(skips),
            )
            return ExchangePlan(Plan(), skips, held, {}, {}, {}, quiet=True, portal=portal)
    rows = extract_exchange(settings)
    files, unsettled = read_document_files(
        settings, whole(rows["documents"]), today, released_ids if partial else None
    )
    exchange = plan_exchange(
        settings,
        whole(rows),
        whole(files),
        whole(portal),
        whole(released_ids),
        whole(contacts),
        whole(units),
        today,
        entities,
        full_resync,
        partial,
    )
    exchange.rows = rows
    exchange.portal = portal
    exchange.basis = (released_ids, contacts, units) if inputs is not None else None
    exchange.inputs = inputs
    exchange.unsettled_files = unsettled
    if not dry_run:
        exchange.workdir = tempfile.mkdtemp(prefix="hausflow-pdf-")
        exchange.skips += convert_documents(settings, whole(exchange.plan), exchange.workdir)
    return exchange


async def _notify_and_enter(
    settings: HausflowSettings,
    run_id: str,
    exchange: ExchangePlan,
    persons: TableRows,
    partial: bool,
    entities: list[str] | None,
    outcomes: list[BatchOutcome],
) -> list[str]:
    """E-mails to contacts not in the portal; tickets and comments from the portal into the ERP;
    the messages' portal status. Returns what went wrong, for the run's end (the rest goes on)."""
    logger = get_run_logger()
    problems: list[str] = []
    if exchange.quiet:  # nothing changed in the ERP or the state, nothing new from the portal
        return problems
    in_scope = not entities or {"tickets", "comments"} <= set(entities)  # what e-mails are about
    if wanted(entities, "emails") and in_scope:
        try:
            await recover_pending_writes(MAIL, settings, run_id)
            mails, mail_skips = await plan_emails(
                settings, run_id, whole(exchange), whole(persons_by_number(persons))
            )
            exchange.skips += mail_skips
            if mails.writes:
                await check_partner(MAIL, settings)
                await _load(MAIL, settings, run_id, mails, 0, set(), [], outcomes)
            exchange.plan = merged(exchange.plan, mails)
        except Exception as exc:  # the mail server is not the portal's: the rest of the exchange goes on
            logger.error(
                "E-mails to contacts not in the portal were not sent: %s. The next run sends them.", exc
            )
            problems.append(f"e-mails not sent: {exc}")
    if wanted(entities, "inbound") and exchange.portal is not None:
        try:
            _counts, inbound_skips = enter_portal_tickets_task(
                settings, whole(exchange.portal), whole(exchange.rows)
            )
            exchange.skips += inbound_skips
        except Exception as exc:  # the ERP refused: the portal's side is done; the next run reads them again
            logger.error("Tickets and comments from the portal were not entered into the ERP: %s.", exc)
            problems.append(f"portal tickets not entered into the ERP: {exc}")
    # the status says what this run decided for every message: only a run over all objects and
    # all tickets and posts may say it
    if not partial and (not entities or {"tickets", "bulletin_posts"} <= set(entities)):
        failed = {key for o in outcomes for key in o.failed_keys}
        not_sent = [
            mid
            for mid, ref in exchange.ticket_refs.items()
            if ("tickets", ref) in failed or ("bulletin_posts", str(mid)) in failed
        ]
        record_portal_status_task(settings, whole(exchange.status), whole(exchange.rows), whole(not_sent))
    return problems


def _partition_view(
    settings: HausflowSettings, part: Partition, desired: DesiredState, entities: list[str] | None
) -> tuple[DesiredState, Callable[[str, str], bool]]:
    """For a partition run: the contacts and units its documents may name (its own, and those of
    other partitions the portal holds, neither held in quarantine), and which records it decides
    on (their quarantine entries are its to resolve)."""
    store = StateStore(settings.state_url)
    covered = set(entities) if entities else None

    def decides(entity: str, ref_id: str) -> bool:
        if covered is not None and entity not in covered:
            return False
        if entity in ("units", "contacts"):
            return part.owns(entity, ref_id, desired.records.get(entity, {}).get(ref_id))
        return entity == "properties" and part.owns(entity, ref_id)

    view = desired
    if exchange_wanted(settings, entities):
        # what a single run's exchange may name: at the portal, and not held in quarantine
        held = {(q["entity"], q["ref_id"]) for q in store.open_quarantine(PORTAL.name)}
        keys: dict[str, set[str]] = {}
        for entity in ("contacts", "units"):
            active = {r for r, e in store.load_state(PORTAL.name, entity).items() if e.status == "active"}
            keys[entity] = {
                r
                for r in desired.present(entity)
                if (decides(entity, r) or r in active) and (entity, r) not in held
            }
        view = DesiredState(keys=keys)
    return view, decides


def exchange_wanted(settings: HausflowSettings, entities: list[str] | None) -> bool:
    """Whether the run takes part in the exchange: licensed (``licences.documents_messages``),
    and ``entities`` names some of it or is not given."""
    if not settings.licences.documents_messages:
        return False
    return not entities or any(e in EXCHANGE_ENTITIES or e in STEPS for e in entities)


def wanted(entities: list[str] | None, step: str) -> bool:
    """Whether the run does ``step`` (every step when ``entities`` is not given)."""
    return not entities or step in entities


def persons_by_number(table: TableRows) -> dict[str, dict[str, Any]]:
    """The persons with an e-mail address, by number: whom the exchange may write to."""
    columns = table.columns
    return {
        str(person["person_no"]): person
        for person in (dict(zip(columns, row, strict=True)) for row in table.rows)
        if person.get("email")
    }


def run_portal_sync(**parameters: Any) -> dict[str, Any]:
    """Run the flow from synchronous code (scripts, tests, benchmarks) and return its summary."""
    return asyncio.run(portal_sync(**parameters))


def command_line(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The flow's parameters from the command line ``python -m flows.portal_sync [...]``.

    Unknown arguments end the process with exit code 2 and the usage (argparse); only the
    parameters given are passed, so the flow's defaults hold for the others.
    """
    parser = argparse.ArgumentParser(
        prog="python -m flows.portal_sync",
        description="Bring the tenant portal in line with the ERP: one portal sync in this process, "
        "its summary printed as one JSON line last.",
        epilog="Settings come from config/profiles/<profile>.toml and HAUSFLOW_* variables "
        "(.env.example); the run reports to the Prefect API of PREFECT_API_URL.",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="compute and show the plan (protocol artifact), send nothing"
    )
    parser.add_argument(
        "--full-resync",
        action="store_true",
        help="send every record again, even if unchanged since the last confirmation",
    )
    parser.add_argument(
        "--objects",
        nargs="+",
        action="extend",
        metavar="NUMBER",
        help="only these object numbers (space or comma separated); such a partial run archives nothing",
    )
    parser.add_argument(
        "--entities",
        nargs="+",
        action="extend",
        choices=ALL_ENTITIES,
        metavar="ENTITY",
        help=f"only these entities: {', '.join(ALL_ENTITIES)}",
    )
    parser.add_argument(
        "--profile",
        choices=get_args(ProfileName),
        help="settings profile (default: HAUSFLOW_PROFILE, else test)",
    )
    parser.add_argument(
        "--partition",
        metavar="K/N:FIRST..LAST",
        help="run partition K of N, objects FIRST..LAST, as a partitioned sync's runs do (docs/scale-out.md)",
    )
    args = parser.parse_args(argv)
    parameters: dict[str, Any] = {"dry_run": args.dry_run, "full_resync": args.full_resync}
    if args.partition is not None:
        found = re.fullmatch(r"(\d+)/(\d+):(.+?)\.\.(.+)", args.partition.strip())
        if not found or not 1 <= int(found[1]) <= int(found[2]):
            parser.error(
                f"--partition {args.partition!r}: expected K/N:FIRST..LAST with 1 <= K <= N, e.g. 1/2:1001..1050"
            )
        parameters["partition"] = {
            "index": int(found[1]) - 1,
            "count": int(found[2]),
            "first": found[3],
            "last": found[4],
        }
    if args.objects is not None:
        objects = [n.strip() for arg in args.objects for n in arg.split(",") if n.strip()]
        if not objects:  # an empty list would mean every object, archiving included
            parser.error("--objects needs at least one object number")
        parameters["objects"] = objects
    if args.entities:
        parameters["entities"] = list(dict.fromkeys(args.entities))
    if args.profile:
        parameters["profile"] = args.profile
    return parameters


if __name__ == "__main__":
    import json

    result = run_portal_sync(**command_line())
    print(json.dumps(result, default=str))
