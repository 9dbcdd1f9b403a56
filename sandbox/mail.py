"""A local SMTP server for the demo: every e-mail hausflow sends lands in a Maildir folder.

``./hausflow up`` starts it, so that the demo's e-mails to contacts not registered in the portal
(docs/portal-exchange.md) arrive somewhere one can read them, with any mail program that reads a
Maildir, or as plain files. It accepts every mail and relays none.

    python -m sandbox.mail --port 8025 --maildir var/demo/mail
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m sandbox.mail", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--maildir", default="var/demo/mail", help="where the mails land (Maildir)")
    args = parser.parse_args(argv)
    folder = Path(args.maildir)
    for sub in ("tmp", "new", "cur"):  # a Maildir; mails carry names and addresses: owner only
        (folder / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    controller = Controller(Mailbox(folder), hostname=args.host, port=args.port)
    controller.start()
    print(f"SMTP on {args.host}:{args.port}, mails into {folder}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    controller.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
