"""The demo's SMTP server (``python -m sandbox.mail``), as ``./hausflow up`` starts it: a mail sent to
it lands in its Maildir's ``new/``, readable by the owner only, and SIGTERM stops it."""

from __future__ import annotations

import signal
import smtplib
import socket
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_mail_lands_in_the_maildir_and_sigterm_stops_the_server(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tmp_path / "mail"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.mail", "--port", str(port), "--maildir", str(folder)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "the SMTP server did not start"
                time.sleep(0.1)
        mail = EmailMessage()
        mail["From"], mail["To"], mail["Subject"] = (
            "hausflow@localhost",
            "mieter@example.de",
            "Ihre Meldung 42",
        )
        mail.set_content("Grüße aus der Verwaltung")
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.send_message(mail)
        arrived = list((folder / "new").iterdir())
        assert len(arrived) == 1 and b"Ihre Meldung 42" in arrived[0].read_bytes()
        assert folder.stat().st_mode & 0o077 == 0, "mails carry names and addresses: owner only"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
