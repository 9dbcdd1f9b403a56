"""Quiet deposit runs: a run whose inputs are as a complete, clean run of the same day left them
does nothing and says so.

Why: both flows compare everything by difference (every account rebuilt by the rules, every
booking id of the ERP against the confirmed ones): seconds at 50,000 accounts and 500,000
bookings. That is right for the daily run and wasted on a re-run the same day that finds
nothing changed (an admin re-triggering a sync to be sure).

The fingerprint of a run: what it read of the ERP, the business date (the rules are
time-driven: each day's first run compares in full), the settings and licences, the code of the
rules, and the state store's confirmed records (for the master data: the accounts'), open
quarantine and pending writes. A complete,
clean run (nothing failed, no payout left due, not a dry run) in which the state store did not
change records it with its run id; a run that finds the same fingerprint reports that run's
held-back records again and sends nothing. A run that wrote leaves no mark: the state it planned
from is no longer the store's, and another run (a resync, the other deposit flow) may have
changed the store meanwhile; the next run compares in full and, finding nothing, leaves one.

- The master-data run reads its tables as always (about a second) and digests their rows: any
  change to a row of the scope is seen, whether or not the ERP stamped ``modified_at``. The
  rules and the comparison, most of its time, are what a quiet run saves.
- The bookings run looks at aggregates only (:func:`connectors.erp.extract.deposit_signature`):
  the booking ids (count, sum, highest), amounts and texts, and the tables that decide which
  accounts are in scope. Bookings are appended by the ERP and sent by id, so these see what the
  run acts on; a text corrected to one of the same length is seen by the next day's first run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from prefect import task
from prefect.cache_policies import NO_CACHE

from config.settings import HausflowSettings
from connectors.erp.database import make_engine
from connectors.erp.extract import TableRows, deposit_signature, extract_deposit_bookings
from connectors.state_store import StateStore
from tasks.deposit_rules import ACCOUNTS, BOOKINGS, Held

TARGET = "deposit"
ROOT = Path(__file__).resolve().parent.parent
CODE = tuple(
    ROOT / p
    for p in (
        "tasks/deposit_rules.py",
        "tasks/deposit_tasks.py",
        "tasks/deposit_quiet.py",
        "connectors/erp/extract.py",
    )
)
"""A new release of the rules is a change: the first run after it compares in full."""


@task(name="check-deposit-bookings-inputs", cache_policy=NO_CACHE)
def read_bookings_inputs(settings: HausflowSettings) -> list[str]:
    """The ERP's bookings and the tables of their scope, by aggregates; the bookings held in
    quarantine in full (a few rows: a booking type corrected to one of the same length is seen)."""
    held = [
        int(q["ref_id"])
        for q in StateStore(settings.state_url).open_quarantine(TARGET)
        if q["entity"] == BOOKINGS and str(q["ref_id"]).isdigit()
    ]
    engine = make_engine(settings.erp_url)
    try:
        aggregates = deposit_signature(engine, bookings=True)
        if held:
            aggregates += tables_digest(
                {"held": extract_deposit_bookings(engine, settings.deposit.object_group, held)}
            )
    finally:
        engine.dispose()
    return aggregates


def tables_digest(tables: Mapping[str, TableRows]) -> list[str]:
    """A digest of every row the master-data run read (the extract's order is total)."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(tables):
        digest.update(orjson.dumps([name, tables[name].columns]))
        digest.update(orjson.dumps(tables[name].rows, default=str))
    return [digest.hexdigest()]


def confirmed_state(settings: HausflowSettings, what: str) -> str:
    """What the ``what`` run depends on in the state store: the confirmed records (counts and
    newest positions; for the master data the accounts' alone, so a bookings run between changes
    nothing here), the open quarantine and the pending writes."""
    store = StateStore(settings.state_url)
    held = store.open_quarantine(TARGET)
    confirmed = [store.entity_position(TARGET, ACCOUNTS)]
    if what == "master-data":
        held = [q for q in held if q["entity"] == ACCOUNTS]
    else:
        confirmed.append(store.entity_position(TARGET, BOOKINGS))
    keys = sorted((q["entity"], q["ref_id"], q["rule"]) for q in held)
    return repr((confirmed, keys, len(store.load_pending(TARGET))))


def fingerprint(settings: HausflowSettings, what: str, today: str, erp: list[str], state: str) -> str:
    """A digest of everything the ``what`` run (``master-data`` or ``bookings``) depends on: ``erp``
    is what it read of the ERP (:func:`tables_digest`, :func:`read_bookings_inputs`), ``state``
    the state store's side (:func:`confirmed_state`)."""
    parts: list[Any] = [
        what,
        today,
        settings.erp_url,
        settings.deposit.model_dump_json(),
        settings.licences.model_dump_json(),
        settings.sepa.model_dump_json() if what == "bookings" else "",
        erp,
        state,
    ]
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(repr(part).encode())
    for path in CODE:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def quiet_since(settings: HausflowSettings, what: str, digest: str, run_id: str) -> str | None:
    """The run whose complete, clean ``what`` run left this fingerprint, or ``None`` (also when
    that is this very run, retried: its protocol lines of the first attempt are gone)."""
    recorded = StateStore(settings.state_url).cursor(TARGET, f"quiet-{what}") or ""
    found, _, earlier = recorded.partition(":")
    return earlier if earlier and found == digest and earlier != run_id else None


def remember_quiet(settings: HausflowSettings, what: str, digest: str | None, run_id: str) -> None:
    """Record (or, with ``None``, forget) the fingerprint a complete, clean run left."""
    StateStore(settings.state_url).set_cursor(
        TARGET, f"quiet-{what}", f"{digest}:{run_id}" if digest else "-"
    )


def held_before(settings: HausflowSettings, run_id: str) -> tuple[list[Held], list[Held]]:
    """The records the run ``run_id`` skipped and quarantined, as it wrote them to the protocol:
    a quiet run reports them again, as a run that compared everything would."""
    rows = StateStore(settings.state_url).protocol_rows(
        run_id, outcomes=("skipped", "quarantined"), limit=10_000_000
    )
    skipped = [Held(r.entity, r.ref_id, "", r.reason or "") for r in rows if r.outcome == "skipped"]
    quarantined = []
    for r in rows:
        if r.outcome == "quarantined":
            reason, _, rule = (r.reason or "").rpartition(" [")
            quarantined.append(Held(r.entity, r.ref_id, rule.rstrip("]"), reason))
    return skipped, quarantined
