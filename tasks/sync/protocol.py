"""A run's protocol for any partner: skips and quarantines written down, counts published as
artifacts, the run record closed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from config.settings import HausflowSettings
from connectors.state_store import ProtocolRow, StateStore
from tasks.sync.load import BatchOutcome
from tasks.sync.partner import Partner
from tasks.sync.plan import Held, Plan

OUTCOMES = ("created", "updated", "restored", "archived", "anonymised", "skipped", "quarantined", "failed")


class Reasoned(Held, Protocol):
    """A record held back with a rule and a reason (a rule's skip, a quarantine entry)."""

    @property
    def rule(self) -> str: ...

    @property
    def reason(self) -> str: ...


@task(name="record-protocol", cache_policy=NO_CACHE)
def record_protocol(
    partner: Partner,
    settings: HausflowSettings,
    run_id: str,
    plan: Plan,
    skips: Sequence[Reasoned],
    quarantined: Sequence[Reasoned],
    outcomes: list[BatchOutcome],
    dry_run: bool,
) -> dict[str, Any]:
    """Write skips to the protocol, publish the protocol table artifact, close the run record.

    Artifacts: ``<partner>-sync-protocol`` (counts per entity and outcome) and
    ``<partner>-sync-details`` (the first skipped, quarantined and failed records).
    """
    store = StateStore(settings.state_url)
    rows = [ProtocolRow(s.entity, s.ref_id, "skipped", s.reason) for s in skips]
    rows += [ProtocolRow(q.entity, q.ref_id, "quarantined", f"{q.reason} [{q.rule}]") for q in quarantined]
    store.add_protocol(run_id, rows)
    if dry_run:
        counts: dict[tuple[str, str], int] = {(e, f"planned {o}"): n for (e, o), n in plan.counts().items()}
        for r in rows:
            counts[(r.entity, r.outcome)] = counts.get((r.entity, r.outcome), 0) + 1
    else:
        counts = store.protocol_counts(run_id)
    outcomes_seen = list(OUTCOMES)
    if dry_run:
        outcomes_seen = [f"planned {o}" for o in outcomes_seen[:5]] + outcomes_seen[5:]
    table = []
    for entity in partner.entities:
        row: dict[str, Any] = {"entity": entity}
        for outcome in outcomes_seen:
            row[outcome] = counts.get((entity, outcome), 0)
        row["unchanged"] = plan.unchanged.get(entity, 0)
        table.append(row)
    title = f"{partner.name.capitalize()} sync"
    create_table_artifact(
        key=f"{partner.name}-sync-protocol",
        table=table,
        description=f"{title} {'dry run (nothing sent)' if dry_run else 'protocol'}: counts per entity and outcome.",
    )
    details = store.protocol_rows(run_id, ["skipped", "quarantined", "failed"], limit=50)
    lines = ["| entity | record | outcome | reason |", "|---|---|---|---|"]
    lines += [
        f"| {d.entity} | {d.ref_id} | {d.outcome} | {(d.reason or '').replace('|', '/')} |" for d in details
    ]
    if dry_run:
        lines += [
            "",
            "**Planned writes (first 50)**",
            "",
            "| entity | record | planned | reason |",
            "|---|---|---|---|",
        ]
        lines += [f"| {w.entity} | {w.ref_id} | {w.outcome} | {w.reason or ''} |" for w in plan.writes[:50]]
    create_markdown_artifact(
        key=f"{partner.name}-sync-details",
        markdown="\n".join(lines),
        description="First skipped, quarantined and failed records with their reasons.",
    )
    failed = sum(o.failed for o in outcomes)
    summary = {
        "run_id": run_id,
        "dry_run": dry_run,
        "planned_writes": len(plan.writes),
        "confirmed": sum(o.confirmed for o in outcomes),
        "failed": failed,
        "skipped": len(skips),
        "quarantined": len(quarantined),
        "unchanged": sum(plan.unchanged.values()),
        "counts": {f"{e}.{o}": n for (e, o), n in sorted(counts.items())},
    }
    store.finish_run(
        run_id, "DRY_RUN" if dry_run else ("COMPLETED_WITH_FAILURES" if failed else "COMPLETED"), summary
    )
    return summary
