"""The licence check every flow makes first (seed 002: modules depend on their licence).

A flow starts with::

    settings, stop = licensed(load_settings(profile), "deposit")
    if stop is not None:
        return stop

Without the module (or with an expired licence) the run logs one line saying so and returns
``stop``, a summary with ``status = "not licensed"``: it ends Completed, having read and sent
nothing, because an unlicensed module is a decision, not a failure. A licence file that cannot be
used (missing, changed after signing) raises :class:`~connectors.licence.LicenceError`: the run
ends Failed with that message, and the failure alert reaches the admins.

The settings handed back carry the licence in force in ``settings.licences`` (the file's modules
as the booleans), so every rule that asks ``settings.licences.owner`` (the portal rules) or
``.documents_messages`` (the exchange) follows the licence file, and the portal memo, which
fingerprints the licences, rebuilds when the licence changes.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from prefect import get_run_logger

from config.settings import HausflowSettings
from connectors.licence import MODULES, Licence, LicenceError, licence_from_settings

__all__ = ["LicenceError", "licence_in_force", "licensed"]

BERLIN = ZoneInfo("Europe/Berlin")


def _today(settings: HausflowSettings) -> date:
    return settings.business_date or datetime.now(BERLIN).date()


def licence_in_force(settings: HausflowSettings) -> Licence:
    """The licence of ``settings`` (file or booleans). Raises :class:`LicenceError` as the file does."""
    return licence_from_settings(settings.licences)


def licensed(settings: HausflowSettings, module: str) -> tuple[HausflowSettings, dict[str, Any] | None]:
    """Check ``module`` against the licence in force on the business date.

    Args:
        settings: the run's settings.
        module: one of :data:`connectors.licence.MODULES` (``portal``, ``sepa``, ``deposit``, ...).

    Returns:
        The settings with the licence in force in ``settings.licences``, and ``None`` when the
        module may run, else the summary the flow returns (``status``, ``module``, ``reason``).

    Raises:
        LicenceError: the licence file is missing, unreadable or does not match its signature.
        ValueError: ``module`` is not a licensable module (a programming error).
    """
    if module not in MODULES:
        raise ValueError(f"unknown licence module {module!r}; one of {', '.join(MODULES)}")
    logger = get_run_logger()
    try:
        licence = licence_in_force(settings)
    except LicenceError as exc:
        logger.error("The licence cannot be used, nothing is read or sent: %s.", exc)
        raise
    today = _today(settings)
    reason = licence.why_not(module, today)
    if reason is not None:
        logger.warning("Not licensed, nothing is read or sent: %s.", reason)
        return settings, {
            "status": "not licensed",
            "profile": settings.profile,
            "module": module,
            "reason": reason,
        }
    in_force = {name: licence.has(name, today) for name in MODULES}
    return settings.model_copy(update={"licences": settings.licences.model_copy(update=in_force)}), None
