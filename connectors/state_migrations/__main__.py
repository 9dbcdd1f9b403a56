"""Alembic's commands on a state database, for developers (see the package's docstring).

``python -m connectors.state_migrations [--url URL] <alembic command> ...``: the configuration is
the one the store migrates with, so there is no ``alembic.ini`` to keep in step.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from alembic.config import CommandLine

from connectors.state_migrations import alembic_config

DEFAULT_URL = "sqlite:///var/state.sqlite"


def main(argv: Sequence[str] | None = None) -> None:
    """Run one Alembic command against ``--url`` (default: ``HAUSFLOW_STATE_URL``)."""
    cli = CommandLine(prog="python -m connectors.state_migrations")
    cli.parser.add_argument(
        "--url",
        default=os.environ.get("HAUSFLOW_STATE_URL", DEFAULT_URL),
        help="the state database (default: HAUSFLOW_STATE_URL or %(default)s)",
    )
    options = cli.parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if not hasattr(options, "cmd"):
        cli.parser.error("too few arguments")
    cli.run_cmd(alembic_config(url=options.url), options)


if __name__ == "__main__":
    main()
