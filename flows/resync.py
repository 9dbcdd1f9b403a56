"""Resync on demand: repair what the state store says a partner holds, then sync that partner.

check the partner -> the records the ERP names for it -> per entity: read what the partner holds,
repair the state store's entries (tasks/sync/repair.py) -> forget the memos -> the partner's sync
for the same scope (a subflow: its usual protocol)

Why: every run plans by difference against the state store, which records what the partner
confirmed. When that record is wrong (a state database restored from an old backup, entries
lost, records edited or deleted at the partner by hand) the regular runs send too much or too
little. After the repair the sync sends exactly the differences between the ERP and what the
partner really holds; ``full`` sends every record again as well (the syncs' ``full_resync``).

A dry run repairs nothing and sends nothing: it logs and publishes what the repair found.
Asynchronous like the syncs it runs.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Any, Literal, get_args

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.runtime import flow_run

from config.settings import HausflowSettings, ProfileName, load_settings
from flows.deposit_sync import deposit_bookings, deposit_master_data
from flows.portal_sync import ALL_ENTITIES, exchange_wanted, portal_sync, whole
from tasks.deposit_quiet import remember_quiet as remember_deposit_quiet
from tasks.deposit_tasks import DEPOSIT, deposit_records_named
from tasks.licensing import licensed
from tasks.portal_exchange import EXCHANGE_ENTITIES, remember_quiet
from tasks.portal_memo import MemoStore, memo_folder
from tasks.portal_tasks import (
    ENTITIES,
    PORTAL,
    apply_portal_rules,
    business_today,
    extract_erp,
    portal_records_named,
)
from tasks.sync.load import check_partner
from tasks.sync.partner import Partner
from tasks.sync.repair import Repair, repair_partner_state
from tasks.systems import claim_system

PartnerName = Literal["portal", "deposit"]
PARTNERS: dict[str, Partner] = {"portal": PORTAL, "deposit": DEPOSIT}
CHOICES = {"portal": ALL_ENTITIES, "deposit": DEPOSIT.entities}
"""What ``entities`` takes per partner: the portal sync's entities and steps, the deposit
partner's accounts and bookings."""


@flow(name="resync", log_prints=False)
async def resync(
    partner: PartnerName,
    objects: list[str] | None = None,
    entities: list[str] | None = None,
    full: bool = False,
    dry_run: bool = False,
    profile: str | None = None,
) -> dict[str, Any]:
    """Repair the state store's record of a partner from what it holds, then sync it.

    Args:
        partner: ``portal`` or ``deposit``.
        objects: portal only: these object numbers (their master data is repaired and synced).
        entities: only these (portal: as the portal sync takes them; deposit: deposit_accounts,
            bookings); default every one.
        full: send every record again, not only the differences (the syncs' ``full_resync``).
        dry_run: find and report the differences (artifact ``<partner>-resync``), change and
            send nothing.
        profile: settings profile; default ``HAUSFLOW_PROFILE``.

    Returns:
        ``repair``: per entity the counts (held as confirmed, missing, different, found);
        ``sync``: the summary of each sync run (none in a dry run).

    Raises:
        ValueError: ``entities`` names what the partner does not take, or ``objects`` is given
            for the deposit partner (its scope is the object group).
    """
    logger = get_run_logger()
    settings, stop = licensed(load_settings(profile), partner)
    stop = stop or switched_off(settings, partner)
    if stop is not None:
        return stop
    chosen = entities_to_repair(settings, partner, objects, entities)
    claim_system(settings, state_store=not dry_run)  # before the repair touches the store
    target = PARTNERS[partner]
    run_id = str(flow_run.get_id() or "local")
    logger.info(
        "Resync of the %s (profile %s)%s%s: the state store's record of it is compared with what it holds%s.",
        partner,
        settings.profile,
        f", objects {', '.join(objects)}" if objects else "",
        f", entities {', '.join(entities)}" if entities else "",
        "; dry run: nothing is changed or sent" if dry_run else ", then the differences are sent",
    )
    await check_partner(target, settings)
    named = records_named(settings, partner, objects, chosen)
    repairs = [
        await repair_partner_state(
            target, settings, entity, whole(named.get(entity, set())), not objects, run_id, dry_run
        )
        for entity in chosen
    ]
    await publish_repairs(partner, repairs, dry_run)
    summary: dict[str, Any] = {
        "run_id": run_id,
        "partner": partner,
        "dry_run": dry_run,
        "repair": {r.entity: r.counts() for r in repairs},
        "sync": {},
    }
    if dry_run:
        return summary
    if partner == "portal":
        MemoStore(memo_folder(settings, PORTAL.name)).forget()  # the next run is a full one
        remember_quiet(settings, None, run_id)  # and it compares the exchange in full
        summary["sync"]["portal-sync"] = await portal_sync(
            objects=objects, entities=entities, full_resync=full, profile=profile
        )
    else:  # bookings are planned by difference, without a cursor; the quiet marks go
        for what in ("master-data", "bookings"):
            remember_deposit_quiet(settings, what, None, run_id)
        if not entities or "deposit_accounts" in entities:
            summary["sync"]["deposit-master-data"] = await deposit_master_data(
                full_resync=full, profile=profile
            )
        if not entities or "bookings" in entities:
            summary["sync"]["deposit-bookings"] = await deposit_bookings(full_resync=full, profile=profile)
    return summary


def switched_off(settings: HausflowSettings, partner: str) -> dict[str, Any] | None:
    """The summary of a run that does nothing because the partner's interface is off, or ``None``."""
    if getattr(settings, partner).enabled:
        return None
    get_run_logger().warning(
        "The %s interface is switched off in profile %r (%s.enabled = false): nothing is read or sent.",
        partner,
        settings.profile,
        partner,
    )
    return {"status": "disabled", "profile": settings.profile}


def entities_to_repair(
    settings: HausflowSettings, partner: str, objects: list[str] | None, entities: list[str] | None
) -> list[str]:
    """The partner's entities whose entries the run repairs, in write order.

    The portal's exchange (documents, messages) only where its licence is on, and not in a run
    for some objects (an exchange record's object is not in its state entry). Raises
    ``ValueError`` for what the partner does not take.
    """
    unknown = sorted(set(entities or ()) - set(CHOICES[partner]))
    if unknown:
        raise ValueError(f"the {partner} takes no entities {unknown}; it takes {', '.join(CHOICES[partner])}")
    if objects and partner != "portal":
        raise ValueError(f"objects are for the portal; the {partner}'s scope is its object group")
    streams = PARTNERS[partner].entities
    if partner == "portal":
        exchange = () if objects or not exchange_wanted(settings, entities) else EXCHANGE_ENTITIES
        streams = tuple(e for e in streams if e in ENTITIES or e in exchange)
    return [e for e in streams if not entities or e in entities]


def records_named(
    settings: HausflowSettings, partner: str, objects: list[str] | None, chosen: Sequence[str]
) -> dict[str, set[str]]:
    """The records the ERP names for the partner in this scope (see :mod:`tasks.sync.repair`):
    the portal's master data by its rules, the deposit partner's accounts and bookings."""
    if partner == "deposit":
        return deposit_records_named(settings)
    if not set(chosen) & set(ENTITIES):
        return {}  # the exchange's records: only those the state store knows are repaired
    tables = extract_erp(settings)
    desired, _released = apply_portal_rules(settings, whole(tables), objects, business_today(settings))
    return portal_records_named(desired)


async def publish_repairs(partner: str, repairs: list[Repair], dry_run: bool) -> None:
    """The artifact ``<partner>-resync``: what the repair found, per entity."""
    await acreate_table_artifact(
        key=f"{partner}-resync",
        table=[r.counts() for r in repairs],
        description=(
            f"Resync of the {partner}{' (dry run: nothing changed or sent)' if dry_run else ''}: per entity, "
            "the state store's entries the partner holds as confirmed, those it does not hold (missing: sent "
            "again), those it holds with other content (different: the ERP's version is sent where it "
            "differs), and records it holds that the state store had lost (found: recorded, not sent again)."
        ),
    )


def run_resync(**parameters: Any) -> dict[str, Any]:
    """Run the flow from synchronous code (scripts, tests) and return its summary."""
    return asyncio.run(resync(**parameters))


def command_line(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The flow's parameters from ``python -m flows.resync {portal,deposit} [...]``.

    Unknown arguments end the process with exit code 2 and the usage (argparse).
    """
    parser = argparse.ArgumentParser(
        prog="python -m flows.resync",
        description="Repair the state store's record of what a partner holds from what it really holds, "
        "then sync the partner; the summary printed as one JSON line last.",
        epilog="Settings come from config/profiles/<profile>.toml and HAUSFLOW_* variables; the run "
        "reports to the Prefect API of PREFECT_API_URL.",
    )
    parser.add_argument("partner", choices=get_args(PartnerName))
    parser.add_argument(
        "--objects",
        nargs="+",
        action="extend",
        metavar="NUMBER",
        help="portal only: these object numbers (space or comma separated)",
    )
    parser.add_argument(
        "--entities",
        nargs="+",
        action="extend",
        choices=sorted({*ALL_ENTITIES, *DEPOSIT.entities}),
        metavar="ENTITY",
        help=f"only these: portal {', '.join(ALL_ENTITIES)}; deposit {', '.join(DEPOSIT.entities)}",
    )
    parser.add_argument(
        "--full", action="store_true", help="send every record again, not only the differences"
    )
    parser.add_argument("--dry-run", action="store_true", help="report what differs, change and send nothing")
    parser.add_argument("--profile", choices=get_args(ProfileName), help="settings profile")
    args = parser.parse_args(argv)
    parameters: dict[str, Any] = {"partner": args.partner, "full": args.full, "dry_run": args.dry_run}
    if args.objects is not None:
        objects = [n.strip() for arg in args.objects for n in arg.split(",") if n.strip()]
        if not objects:
            parser.error("--objects needs at least one object number")
        parameters["objects"] = objects
    if args.entities:
        parameters["entities"] = list(dict.fromkeys(args.entities))
    if args.profile:
        parameters["profile"] = args.profile
    return parameters


if __name__ == "__main__":
    import json

    print(json.dumps(run_resync(**command_line()), default=str))
