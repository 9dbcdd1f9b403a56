"""The portal sync spread over several workers, on Prefect's own distribution.

A parent run (this flow) splits the released objects into ranges and starts one run of the
deployment ``portal-sync/partition`` per range with ``run_deployment``; the workers of the
``process`` work pool take them, one each (docs/scale-out.md). Each run applies the rules to the
whole ERP and writes only the records its partition owns (:mod:`tasks.partitions`): the
properties and units of its objects, and the contacts whose contracts all lie there. No two
partitions write the same record, and a partition's records name only records it wrote itself
or the portal holds. The partition runs go in phases, each waiting for the one before:

1. properties, units and contacts;
2. documents (only with ``licences.documents_messages``): they name contacts of any partition.

Then one closing run of the same deployment over everything: the run that sees the whole desired
state writes what names records of several partitions (contacts with contracts in two ranges,
the responsibilities, documents for such contacts), archives, withdraws and anonymises, runs the
rest of the exchange (messages, e-mails, the portal's tickets) and otherwise finds nothing to do.

A partition run whose worker died (its flow-run heartbeats stop: the automation that
``./hausflow cluster up`` installs marks it Crashed) is run again, after this run has settled
the writes it left pending: the exactly-once load reads them back, so nothing is sent twice.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, get_args

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.runtime import flow_run
from sqlalchemy import func, select

from config.settings import HausflowSettings, ProfileName, load_settings
from connectors.erp import schema
from connectors.erp.database import make_engine
from connectors.state_store import StateStore
from flows.deposit_sync import deposit_gate
from tasks.deposit_tasks import DEPOSIT, deposit_object_weights
from tasks.licensing import licensed
from tasks.partitions import Partition, split_objects
from tasks.portal_rules import released_objects
from tasks.portal_tasks import PORTAL
from tasks.sync.load import check_partner, recover_pending_writes
from tasks.sync.partner import Partner
from tasks.systems import claim_system, switched_off

PARTITION_DEPLOYMENT = "portal-sync/partition"
MASTER_PHASES: tuple[tuple[str, ...], ...] = (("properties", "units", "contacts"),)
"""What the partition runs write, phase by phase; documents follow in a phase of their own where
licensed (they name contacts of other partitions). The responsibilities go with the closing run:
they name caretakers of any partition."""
SUMMED = ("planned_writes", "confirmed", "failed")
"""Counts that add up over the runs; skipped, quarantined and unchanged are the closing run's,
which sees every record."""


class PartitionLostError(RuntimeError):
    """A partition run crashed again and again (or was cancelled): the sync stops before the next
    phase, whose records would name what that partition did not write."""


@dataclass
class ChildRun:
    """One run the parent started, and what it reported."""

    phase: str
    partition: str
    run: FlowRun
    summary: dict[str, Any]
    replaced: bool = False  # crashed, and run again

    def row(self) -> dict[str, Any]:
        """Its line in the combined protocol."""
        state = self.run.state
        return {
            "run": self.run.name,
            "phase": self.phase,
            "objects": self.partition,
            "state": f"{state.name if state else 'unknown'}{' (run again)' if self.replaced else ''}",
            **{k: self.summary.get(k, 0) for k in (*SUMMED, "skipped", "quarantined", "unchanged")},
        }


@flow(name="portal-sync-partitioned", log_prints=False)
async def portal_sync_partitioned(
    partitions: int = 2,
    full_resync: bool = False,
    profile: str | None = None,
    deployment: str = PARTITION_DEPLOYMENT,
    attempts: int = 2,
    start_timeout_s: float = 600.0,
) -> dict[str, Any]:
    """The portal sync in ``partitions`` runs at once, on the work pool's workers.

    Args:
        partitions: how many runs share the objects (one per worker that takes partition runs).
        full_resync: send every record again, even if unchanged since the last confirmation.
        profile: settings profile; default ``HAUSFLOW_PROFILE``.
        deployment: the deployment of ``portal-sync`` that the partition runs are runs of.
        attempts: how often a partition run whose worker died is started (1: never again).
        start_timeout_s: how long a run may wait for a worker before the sync stops (and how long
            this run waits for runs of the same flows still under way before it starts).

    Returns:
        The combined protocol: the summed writes of every run, the closing run's skipped,
        quarantined and unchanged counts, and one line per run (``runs``).
    """
    settings, stop = licensed(load_settings(profile), "portal")
    stop = stop or switched_off(settings, "portal")
    if stop is not None:
        return stop
    phases = list(MASTER_PHASES)
    if settings.licences.documents_messages:
        phases.append(("documents",))
    common = {"profile": profile, "full_resync": full_resync}
    steps = [Step(deployment, {**common, "entities": list(p)}, "+".join(p), start_timeout_s) for p in phases]
    closing = [Step(deployment, {"profile": profile}, "closing", start_timeout_s)]
    return await partitioned_sync(
        PORTAL,
        settings,
        "portal-sync-partitioned",
        partial(object_weights, settings),
        partitions,
        steps,
        closing,
        attempts,
    )


@dataclass(frozen=True)
class Step:
    """Runs of one deployment with these parameters: one per partition (a phase), or one over
    everything (a closing run)."""

    deployment: str
    parameters: dict[str, Any]
    label: str
    start_timeout_s: float = 600.0  # a run no worker took by then is cancelled, and the parent stops


async def run_partitioned(
    partner: Partner,
    settings: HausflowSettings,
    run_id: str,
    parts: Sequence[Partition],
    phases: Sequence[Step],
    closing: Sequence[Step],
    attempts: int,
    children: list[ChildRun],
) -> None:
    """The phases in turn, each a run per partition at once, then the closing runs one by one;
    each run the parent started goes into ``children`` as soon as it ended (a parent that stops
    halfway still reports what ran).

    A partition run that crashed runs again once the parent settled what it left pending
    (``attempts`` in all); a closing run is not repeated: the next scheduled run does its work.
    """
    store = StateStore(settings.state_url)
    for step in phases:
        await _phase(partner, settings, run_id, parts, step, attempts, children)
    for step in closing:
        run = await _start(step, step.parameters, step.label)
        children.append(ChildRun(step.label, "all", run, _summary(store, run)))


async def _phase(
    partner: Partner,
    settings: HausflowSettings,
    run_id: str,
    parts: Sequence[Partition],
    step: Step,
    attempts: int,
    done: list[ChildRun],
) -> None:
    """Run one phase: a run per partition, all at once; a run that crashed runs again."""
    logger = get_run_logger()
    store = StateStore(settings.state_url)
    phase = step.label
    todo = list(parts)
    for attempt in range(1, attempts + 1):
        runs = await asyncio.gather(
            *[
                _start(
                    step,
                    {**step.parameters, "partition": p.parameter()},
                    f"{phase}-{p.index + 1}of{p.count}",
                )
                for p in todo
            ]
        )
        lost = []
        crashed: list[ChildRun] = []
        for part, run in zip(todo, runs, strict=True):
            done.append(ChildRun(phase, f"{part.first}..{part.last}", run, _summary(store, run)))
            if run.state is None or run.state.is_crashed():
                lost.append(part)
                crashed.append(done[-1])
            elif run.state.is_cancelled():
                raise PartitionLostError(f"partition run {run.name} was cancelled: the sync stops here")
        if not lost:
            return
        names = ", ".join(f"{p.first}..{p.last}" for p in lost)
        if attempt == attempts:
            raise PartitionLostError(
                f"phase {phase}: the run of objects {names} crashed {attempts} times (see its worker's log); "
                "the sync stops before the next phase. What was confirmed stays; the next run goes on from there."
            )
        logger.warning(
            "Phase %s: the run of objects %s crashed (its worker or host stopped). Its writes left pending are "
            "read back at the partner, then it runs again (attempt %d of %d).",
            phase,
            names,
            attempt + 1,
            attempts,
        )
        await recover_pending_writes(partner, settings, run_id)
        for child in crashed:
            child.replaced = True
        todo = lost


async def _start(step: Step, parameters: dict[str, Any], label: str) -> FlowRun:
    """One run of the step's deployment, awaited until it ends (in the Prefect UI: a subflow of
    this run).

    Why not ``run_deployment`` alone, which waits too: a run that never starts (no worker of its
    queue online) sends no heartbeat, so nothing marks it Crashed, and the parent would wait for
    ever, holding its deployment's concurrency slot.

    Raises:
        PartitionLostError: no worker took the run within ``step.start_timeout_s``; the run is
            cancelled first, so no worker starts it later.
    """
    from prefect import get_client
    from prefect.states import Cancelled

    parent = flow_run.get_name() or "partitioned"
    limit = step.start_timeout_s
    deployment = step.deployment
    async with get_client() as client:
        run: FlowRun = await run_deployment(  # type: ignore[misc]
            deployment,
            parameters=parameters,
            flow_run_name=f"{parent}-{label}",
            timeout=0,
            as_subflow=True,
            client=client,
        )
        began = time.monotonic()
        while run.state is None or not run.state.is_final():
            started = run.state is not None and not (run.state.is_scheduled() or run.state.is_pending())
            if not started and time.monotonic() - began > limit:
                await client.set_flow_run_state(run.id, Cancelled(message="no worker took it"), force=True)
                raise PartitionLostError(
                    f"run {run.name} of {deployment} waited {limit:.0f} s and no worker took it: is a worker of "
                    f"its work queue online? It was cancelled; the sync stops here."
                )
            await asyncio.sleep(1)
            run = await client.read_flow_run(run.id)
    return run


async def _wait_for_others(deployments: Sequence[str], timeout_s: float) -> None:
    """Wait until no run of these deployments is under way (waiting, starting or running).

    Why: partition runs a parent left behind (the parent's own worker died, and they went on),
    or a run of the partition deployment started by hand, write to the same partner. Reading back
    their pending writes while they send them, and starting the same ranges again, could write a
    record twice. A deployment that does not exist has no runs.

    Raises:
        RuntimeError: they still run after ``timeout_s``, named with their state.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound

    logger = get_run_logger()
    under_way = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
    began = time.monotonic()
    told = False
    async with get_client() as client:
        ids = []
        for name in deployments:
            try:
                ids.append((await client.read_deployment_by_name(name)).id)
            except ObjectNotFound:
                continue
        if not ids:
            return
        while True:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=ids),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=under_way)),
                ),
            )
            now = datetime.now(UTC)
            runs = [r for r in runs if r.expected_start_time is None or r.expected_start_time <= now]
            if not runs:
                return
            names = ", ".join(f"{r.name} ({r.state.name if r.state else '?'})" for r in runs)
            if time.monotonic() - began > timeout_s:
                raise RuntimeError(
                    f"runs of {', '.join(deployments)} are still under way after {timeout_s:.0f} s: {names}. Let them "
                    "end or cancel them in the Prefect UI, then start this run again."
                )
            if not told:
                logger.warning("Waiting for runs under way to end before this one starts: %s.", names)
                told = True
            await asyncio.sleep(5)


def _summary(store: StateStore, run: FlowRun) -> dict[str, Any]:
    return store.run_summary(str(run.id)) or {}


def combined(children: Sequence[ChildRun]) -> dict[str, Any]:
    """The parent's protocol: writes summed over the runs, the last closing run's other counts."""
    closing = next((c.summary for c in reversed(children) if c.partition == "all"), {})
    summary: dict[str, Any] = {k: sum(int(c.summary.get(k, 0) or 0) for c in children) for k in SUMMED}
    for key in ("skipped", "quarantined", "unchanged"):
        summary[key] = closing.get(key, 0)
    summary["not_completed"] = sum(
        1 for c in children if not c.replaced and (c.run.state is None or not c.run.state.is_completed())
    )
    summary["runs"] = [c.row() for c in children]
    return summary


def object_weights(settings: HausflowSettings) -> dict[str, int]:
    """The objects released for the portal, each with its number of units (two small queries)."""
    o, g, u = schema.objects, schema.object_groups, schema.units
    engine = make_engine(settings.erp_url)
    try:
        with engine.connect() as conn:
            objects = [str(r[0]) for r in conn.execute(select(o.c.object_no))]
            groups = [(str(r[0]), str(r[1])) for r in conn.execute(select(g.c.group_name, g.c.object_no))]
            units = {
                str(r[0]): int(r[1])
                for r in conn.execute(select(u.c.object_no, func.count()).group_by(u.c.object_no))
            }
    finally:
        engine.dispose()
    import pandas as pd

    frame = pd.DataFrame(groups, columns=["group_name", "object_no"])
    released = released_objects(objects, frame, settings.portal.object_range, settings.portal.object_group)
    return {obj: units.get(obj, 0) for obj in released}


def command_line(argv: Sequence[str] | None = None) -> tuple[str, dict[str, Any]]:
    """The partner and the parent flow's parameters from ``python -m flows.scale_out [...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.scale_out",
        description="A partner's sync in partitions, each run on a worker of the work pool "
        "(./hausflow cluster up starts one on this machine); its summary printed as one JSON line last.",
    )
    parser.add_argument("partner", nargs="?", choices=("portal", "deposit"), default="portal")
    parser.add_argument("--partitions", type=int, default=2, help="runs at once (default 2)")
    parser.add_argument("--full-resync", action="store_true", help="send every record again")
    parser.add_argument("--attempts", type=int, default=2, help="starts of a partition run whose worker died")
    parser.add_argument("--profile", choices=get_args(ProfileName), help="settings profile")
    args = parser.parse_args(argv)
    if args.partitions < 1 or args.attempts < 1:
        parser.error("--partitions and --attempts must be at least 1")
    parameters: dict[str, Any] = {
        "partitions": args.partitions,
        "full_resync": args.full_resync,
        "attempts": args.attempts,
    }
    if args.profile:
        parameters["profile"] = args.profile
    return args.partner, parameters


# ---- the deposit partner: master data, then bookings, by object range --------------------------
DEPOSIT_MASTER_DEPLOYMENT = "deposit-master-data/partition"
DEPOSIT_BOOKINGS_DEPLOYMENT = "deposit-bookings/partition"
DEPOSIT_CLOSING = ("closing-master-data", "closing-bookings")
"""The labels of the deposit parent's two closing runs, in the order they run."""


@flow(name="deposit-sync-partitioned", log_prints=False)
async def deposit_sync_partitioned(
    partitions: int = 2,
    full_resync: bool = False,
    profile: str | None = None,
    attempts: int = 2,
    master_deployment: str = DEPOSIT_MASTER_DEPLOYMENT,
    bookings_deployment: str = DEPOSIT_BOOKINGS_DEPLOYMENT,
    start_timeout_s: float = 600.0,
) -> dict[str, Any]:
    """The deposit partner's two jobs in ``partitions`` runs each, on the work pool's workers.

    The objects of ``deposit.object_group`` split into ranges of about as many deposit accounts
    each. First the master data of every range at once, then its bookings (a booking waits for
    its account; an account's bookings all lie in its object's range and go in order there).
    Then two closing runs over everything: the master data (archives what left the scope, settles
    what no range decided) and the bookings (the payouts of kept deposits: one pain.001 file).

    Args:
        partitions: how many runs share the objects (one per worker that takes partition runs).
        full_resync: the partition runs send every account again and read every booking in full.
        profile: settings profile; default ``HAUSFLOW_PROFILE``.
        attempts: how often a partition run whose worker died is started (1: never again).
        master_deployment: the deployment of ``deposit-master-data`` the partition runs are runs of.
        bookings_deployment: the deployment of ``deposit-bookings`` the partition runs are runs of.
        start_timeout_s: how long a run may wait for a worker before the sync stops.

    Returns:
        The combined protocol (:func:`deposit_combined`), one line per run in ``runs``.
    """
    settings, stop = licensed(load_settings(profile), "deposit")
    stop = stop or deposit_gate(settings, "partitioned sync")
    if stop is not None:
        return stop
    common = {"profile": profile, "full_resync": full_resync}
    once = {"profile": profile}  # the partitions resent what a full resync sends: the closing runs do not
    phases = [
        Step(master_deployment, common, "master-data", start_timeout_s),
        Step(bookings_deployment, common, "bookings", start_timeout_s),
    ]
    closing = [
        Step(master_deployment, once, DEPOSIT_CLOSING[0], start_timeout_s),
        Step(bookings_deployment, once, DEPOSIT_CLOSING[1], start_timeout_s),
    ]
    return await partitioned_sync(
        DEPOSIT,
        settings,
        "deposit-sync-partitioned",
        partial(deposit_object_weights, settings),
        partitions,
        phases,
        closing,
        attempts,
        deposit_combined,
    )


def deposit_combined(children: Sequence[ChildRun]) -> dict[str, Any]:
    """The deposit parent's protocol: :func:`combined`, but held-back and unchanged counts of both
    closing runs (one counts the accounts, the other the bookings), and the closing bookings
    run's waiting bookings and payouts."""
    summary = combined(children)
    closing = {c.phase: c.summary for c in children if c.partition == "all"}
    for key in ("skipped", "quarantined", "unchanged"):
        summary[key] = sum(int(s.get(key, 0) or 0) for s in closing.values())
    bookings = closing.get(DEPOSIT_CLOSING[1], {})
    summary["waiting"] = bookings.get("waiting", 0)
    summary["payouts"] = bookings.get("payouts") or {}
    return summary


async def partitioned_sync(
    partner: Partner,
    settings: HausflowSettings,
    name: str,
    weights: Callable[[], Mapping[str, int]],
    partitions: int,
    phases: Sequence[Step],
    closing: Sequence[Step],
    attempts: int,
    combine: Callable[[Sequence[ChildRun]], dict[str, Any]] = combined,
) -> dict[str, Any]:
    """The body of a parent run of any partner, once its licence and switch let it go ahead.

    It records itself as run ``name``, settles the writes earlier runs left pending (its
    partition runs do not: they run at once and must not read back each other's), splits the
    objects by ``weights`` into ``partitions`` ranges, runs the phases and closing runs
    (:func:`run_partitioned`), and reports ``combine`` of what they reported: recorded, as the
    table artifact ``name``, and in one log line.

    Raises:
        ValueError: ``partitions`` or ``attempts`` below 1.
        PartitionLostError: a partition run crashed ``attempts`` times, or was cancelled.
        RuntimeError: some runs did not complete (each has its own protocol).
    """
    logger = get_run_logger()
    if partitions < 1 or attempts < 1:
        raise ValueError("partitions and attempts must be at least 1")
    claim_system(settings)
    run_id = str(flow_run.get_id() or "local")
    store = StateStore(settings.state_url)
    store.start_run(run_id, name, partner.name, False)
    children: list[ChildRun] = []
    try:
        await check_partner(partner, settings)
        steps = (*phases, *closing)
        await _wait_for_others(sorted({s.deployment for s in steps}), max(s.start_timeout_s for s in steps))
        await recover_pending_writes(partner, settings, run_id)
        ranges = split_objects(weights(), partitions)
        parts = [Partition(i, len(ranges), first, last) for i, (first, last) in enumerate(ranges)]
        logger.info(
            "%s in %d partitions (%s): %s, each at once over the partitions; then %s over everything.",
            name,
            len(parts),
            "; ".join(f"{p.first}..{p.last}" for p in parts),
            ", ".join(step.label for step in phases),
            ", ".join(step.label for step in closing),
        )
        await run_partitioned(partner, settings, run_id, parts, phases, closing, attempts, children)
        summary = combine(children)
    except Exception:
        store.finish_run(run_id, "FAILED", {"runs": [c.row() for c in children]})
        raise
    store.finish_run(
        run_id, "FAILED" if summary["failed"] or summary["not_completed"] else "COMPLETED", summary
    )
    await acreate_table_artifact(
        key=name,
        table=summary["runs"],
        description=(
            f"{name}: {summary['confirmed']} writes confirmed, {summary['failed']} failed over {len(children)} "
            f"runs; each run's own protocol lists its records (artifacts {partner.name}-sync-protocol and "
            f"{partner.name}-sync-details of that run)."
        ),
    )
    logger.info(
        "%s done: %d writes confirmed, %d failed, %d unchanged, %d skipped, %d quarantined.",
        name,
        summary["confirmed"],
        summary["failed"],
        summary["unchanged"],
        summary["skipped"],
        summary["quarantined"],
    )
    if summary["not_completed"]:
        raise RuntimeError(
            f"{summary['not_completed']} of the {len(children)} runs did not complete (listed in the artifact "
            f"{name}, each with its own protocol); the next run retries what they left."
        )
    return summary


if __name__ == "__main__":
    import json

    partner, parameters = command_line()
    parent = portal_sync_partitioned if partner == "portal" else deposit_sync_partitioned
    result = asyncio.run(parent(**parameters))
    print(json.dumps(result, default=str))
