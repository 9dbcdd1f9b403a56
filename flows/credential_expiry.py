"""The daily credential-expiry check (seed 002): e-mail the admins 30, 7 and 1 days before a
partner secret, the portal's token, the mail login's OAuth2 client secret or the licence expires.

collect the credentials' ends (settings, licence file, one portal login) -> the warnings due on the
business date that were not sent yet -> e-mail them to ``alerts.recipients`` -> remember each as sent

Rules and state: :mod:`tasks.credential_expiry`. Not a licensed module: it warns about the licence
itself. A credential whose end cannot be read (the portal refuses the login, a broken licence
file) fails the run after the other warnings went out, so the failure alert names it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any, get_args

from prefect import flow, get_run_logger

from config.settings import ProfileName, load_settings
from tasks.credential_expiry import (
    business_today,
    collect_expiries,
    plan_expiry_warnings,
    send_expiry_warnings,
)
from tasks.systems import claim_system


@flow(name="credential-expiry", log_prints=False)
def credential_expiry(profile: str | None = None) -> dict[str, Any]:
    """Warn the admins by e-mail of credentials about to expire, each warning once.

    Args:
        profile: settings profile (production, test, demo); default ``HAUSFLOW_PROFILE``.

    Returns:
        ``business_date``, ``checked`` (credential: end date), ``due`` and ``sent`` (warnings by
        ``<credential>:<threshold>``), ``refused`` (recipient: the server's answer).

    Raises:
        RuntimeError: a credential's end could not be read (after the other warnings were sent).
    """
    logger = get_run_logger()
    settings = load_settings(profile)
    claim_system(settings)  # it records the warnings sent in the state store
    today = business_today(settings)
    expiries, problems = collect_expiries(settings, today)
    warnings = plan_expiry_warnings(settings, expiries, today)
    result = send_expiry_warnings(settings, warnings)
    checked = {e.key: e.expires.isoformat() for e in expiries}
    logger.info(
        "Credential expiry on %s: %d credentials with an end date checked (%s), %d warnings due, %d sent.",
        f"{today:%d.%m.%Y}",
        len(expiries),
        ", ".join(f"{k} {v}" for k, v in checked.items()) or "none configured",
        len(warnings),
        len(result["sent"]),
    )
    if problems:
        raise RuntimeError("; ".join(problems))
    return {
        "business_date": today.isoformat(),
        "checked": checked,
        "due": [w.cursor_name for w in warnings],
        "sent": result["sent"],
        "refused": result["refused"],
    }


def command_line(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m flows.credential_expiry [--profile P]``: the flow's parameters."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.credential_expiry",
        description="Warn the admins (alerts.recipients) of credentials about to expire; the summary is "
        "printed as one JSON line.",
    )
    parser.add_argument("--profile", choices=get_args(ProfileName))
    args = parser.parse_args(argv)
    return {"profile": args.profile} if args.profile else {}


if __name__ == "__main__":
    print(json.dumps(credential_expiry(**command_line()), default=str))
