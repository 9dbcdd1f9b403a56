"""Run the deposit sandbox: ``python -m sandbox.deposit --port 8766 --db var/sandbox/deposit.sqlite``.

One process, access log off, log level ``warning``; uvicorn stops cleanly on SIGINT and SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from sandbox.portal.__main__ import _exit_cleanly


def main(argv: Sequence[str] | None = None) -> int:
    """Start uvicorn with the deposit sandbox and serve until SIGINT/SIGTERM."""
    import uvicorn

    from sandbox.deposit.app import create_app

    parser = argparse.ArgumentParser(prog="python -m sandbox.deposit", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--db", default="var/sandbox/deposit.sqlite", help="the sandbox's SQLite file")
    parser.add_argument("--key", default="demo-client", help="client user name the sandbox accepts")
    parser.add_argument("--secret", default="demo-password", help="web-service password the sandbox accepts")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    app = create_app(args.db, args.key, args.secret)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        lifespan="on",
        timeout_keep_alive=30,
        backlog=2048,
    )
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
