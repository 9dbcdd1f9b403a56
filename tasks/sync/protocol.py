"""A run's protocol for any partner: skips and quarantines written down, counts and details
published as artifacts, the run record closed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from config.settings import HausflowSettings
from connectors.state_store import ProtocolRow, StateStore
from tasks.sync.load import BatchOutcome, details_key
from tasks.sync.partner import Partner
from tasks.sync.plan import Held, Plan

OUTCOMES = (
    "created",
    "updated",
    "restored",
    "archived",
    "anonymised",
    "skipped",
    "quarantined",
    "failed",
    "note",
)
WRITTEN = OUTCOMES[:5]
NOTED = (*WRITTEN, "note")  # the writes section lists the notes on values the rules cleaned too
HELD = ("failed", "quarantined", "skipped")  # in the order the details list them: the most urgent first
DETAILS_LIMIT = 1_000
"""Rows of each section of the details artifact: a full first sync writes ~140,000 records, and
only what is shown is read from the state store (the rest is counted)."""


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
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write skips to the protocol, publish the protocol table artifact, close the run record.

    ``extra``: more figures of the run for its summary (returned and recorded with the run).

    Artifacts: ``<partner>-sync-protocol`` (counts per entity and outcome) and
    ``<partner>-sync-details`` (:func:`details_markdown`: the run's writes, or a dry run's
    planned ones, and the records held back, the first :data:`DETAILS_LIMIT` of each).
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
    others = sorted(
        {e for e, _ in counts} - set(partner.entities)
    )  # another partner's step in the run (e-mails)
    for entity in (*partner.entities, *others):
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
    if dry_run:
        written = _by_outcome(plan.counts(), WRITTEN)
        writes = [ProtocolRow(w.entity, w.ref_id, w.outcome, w.reason) for w in plan.writes[:DETAILS_LIMIT]]
    else:
        written = _by_outcome(counts, NOTED)
        writes = _first_rows(store, run_id, written, DETAILS_LIMIT)
    held = _by_outcome(counts, HELD)
    create_markdown_artifact(
        key=details_key(partner),
        markdown=details_markdown(
            writes, written, _first_rows(store, run_id, held, DETAILS_LIMIT), held, run_id, dry_run
        ),
        description=(
            f"{title} {'dry run: the planned writes' if dry_run else 'details: the writes'} and the records "
            f"held back (skipped, quarantined, failed) with their reasons; the first {DETAILS_LIMIT:,} of each."
        ),
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
        **(extra or {}),
    }
    store.finish_run(
        run_id, "DRY_RUN" if dry_run else ("COMPLETED_WITH_FAILURES" if failed else "COMPLETED"), summary
    )
    return summary


def _by_outcome(counts: dict[tuple[str, str], int], outcomes: Sequence[str]) -> dict[str, int]:
    """Totals over all entities of ``outcomes`` that occur, in the order given."""
    totals = {o: sum(n for (_, out), n in counts.items() if out == o) for o in outcomes}
    return {o: n for o, n in totals.items() if n}


def _first_rows(store: StateStore, run_id: str, totals: dict[str, int], limit: int) -> list[ProtocolRow]:
    """The first ``limit`` protocol rows of the run, outcome by outcome in the order of ``totals``:
    one indexed read per outcome, never more rows than are shown."""
    rows: list[ProtocolRow] = []
    for outcome in totals:
        if len(rows) >= limit:
            break
        rows += store.protocol_rows(run_id, [outcome], limit=limit - len(rows))
    return rows


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "/").replace("\n", " ")


def _section(title: str, rows: Sequence[ProtocolRow], totals: dict[str, int], rest: str) -> list[str]:
    total = sum(totals.values())
    if not total:
        return [f"## {title}: none", ""]
    parts = ", ".join(f"{n:,} {outcome}" for outcome, n in totals.items())
    lines = [f"## {title}: {total:,} ({parts})", ""]
    if total > len(rows):
        lines += [f"The first {len(rows):,} are listed; {rest.format(more=total - len(rows))}", ""]
    lines += ["| entity | record | outcome | reason |", "|---|---|---|---|"]
    lines += [f"| {r.entity} | {r.ref_id} | {r.outcome} | {_cell(r.reason)} |" for r in rows]
    return [*lines, ""]


def details_markdown(
    writes: Sequence[ProtocolRow],
    written: dict[str, int],
    held: Sequence[ProtocolRow],
    held_back: dict[str, int],
    run_id: str,
    dry_run: bool,
) -> str:
    """The details artifact: two sections, the writes and the records held back, each with its
    counts per outcome and its first rows; where a section is cut, it says how many rows are left
    out and where they are."""
    where = f"the state database's `protocol` table (run_id '{run_id}')"
    held_rest = f"the other {{more:,}} are in {where}; quarantined records also in the `quarantine` table."
    if dry_run:
        title, write_rest = "Planned writes (dry run, nothing sent)", "the other {more:,} are not listed."
    else:
        title, write_rest = "Writes", f"the other {{more:,}} are in {where}."
    return "\n".join(
        _section(title, writes, written, write_rest) + _section("Held back", held, held_back, held_rest)
    ).rstrip()
