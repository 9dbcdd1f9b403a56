"""What keeps the production and the test system apart when a run starts (docs/operations.md,
*Production and test systems*).

A flow starts with its licence check, then::

    stop = stop or switched_off(settings, "sepa")     # the interface off: one line, nothing done
    if stop is not None:
        return stop
    claim_system(settings, folders=[settings.sepa.output_dir])

``switched_off`` is the one line a run with its interface off logs (the test system has every
interface off until it is switched on). ``claim_system`` records on first use that the state store
and the output folders belong to the run's system, and refuses a run of another system with
:class:`~config.settings.SystemMixError` before anything is read or written: the durable half of
the separation that :func:`config.settings.load_settings` checks in the settings.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prefect import get_run_logger

from config.settings import HausflowSettings, system_env_prefix
from connectors.sepa.writing import claim_output_dir
from connectors.state_store import StateStore

# interface -> what it is called in the line, and what the run then does not do
INTERFACES = {
    "portal": ("portal", "nothing is read or sent"),
    "deposit": ("deposit", "nothing is read or sent"),
    "sepa": ("SEPA (bank files and statements)", "no file is read or written"),
}


def switched_off(settings: HausflowSettings, interface: str) -> dict[str, Any] | None:
    """The summary of a run whose interface is off (``None`` when it is on), after one log line.

    Args:
        settings: the run's settings.
        interface: ``portal``, ``deposit`` or ``sepa`` (the section whose ``enabled`` decides).
    """
    if getattr(settings, interface).enabled:
        return None
    label, nothing = INTERFACES[interface]
    get_run_logger().warning(
        "The %s interface is switched off in profile %r (%s.enabled = false): %s. Switch it on in "
        "config/profiles/%s.toml or with %s%s__ENABLED=true.",
        label,
        settings.profile,
        interface,
        nothing,
        settings.profile,
        system_env_prefix(settings.profile),
        interface.upper(),
    )
    return {"status": "disabled", "profile": settings.profile}


def claim_system(settings: HausflowSettings, folders: Iterable[str] = (), state_store: bool = True) -> None:
    """Record that the state store and ``folders`` belong to the run's system, or refuse the run.

    Args:
        settings: the run's settings (``profile`` is the system).
        folders: output folders the run writes (created owner-only when missing, marked).
        state_store: also the state store (off for a run that must not create it, a dry run).

    Raises:
        SystemMixError: the store or a folder belongs to another system; nothing was written.
    """
    if state_store:
        StateStore(settings.state_url).claim_system(settings.profile)
    for folder in folders:
        claim_output_dir(Path(folder), settings.profile)
