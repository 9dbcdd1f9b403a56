"""Run the portal sandbox: ``python -m sandbox.portal --port 8765 --db sqlite:///var/sandbox/portal.sqlite``.

One process, access log off, log level ``warning``: the sandbox must not be the bottleneck of a
throughput benchmark. uvicorn stops cleanly on SIGINT and SIGTERM (the store is committed and
closed in the app's lifespan).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from types import FrameType


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of the sandbox."""
    parser = argparse.ArgumentParser(prog="python -m sandbox.portal", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--db", default="sqlite:///var/sandbox/portal.sqlite", help="SQLAlchemy URL of the state"
    )
    parser.add_argument("--key", default="demo-key", help="API key the sandbox accepts")
    parser.add_argument("--secret", default="demo-secret", help="API secret the sandbox accepts")
    parser.add_argument(
        "--content-dir", default=None, help="folder of the documents' content (default: beside the database)"
    )
    parser.add_argument(
        "--max-upload-bytes",
        type=int,
        default=100 * 1024 * 1024,
        help="largest document content taken (413 above); default 100 MB",
    )
    parser.add_argument("--log-level", default="warning")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Start uvicorn with the sandbox app and serve until SIGINT/SIGTERM."""
    import uvicorn

    from sandbox.portal.app import create_app

    args = parse_args(argv)
    app = create_app(args.db, args.key, args.secret, args.content_dir, args.max_upload_bytes)
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
    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal; with this
    # handler in place the re-raised signal ends the process with code 0 instead of -15.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.Server(config).run()
    return 0


def _exit_cleanly(signum: int, _frame: FrameType | None) -> None:
    """Turn the signal uvicorn re-raises after its graceful shutdown into a normal exit."""
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
