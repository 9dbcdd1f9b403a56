"""Run the deposit sandbox as a separate process, for tests, benchmarks and the demo.

    with DepositSandboxServer() as partner:
        client = DepositClient(partner.base_url, partner.key, partner.secret)
        ...
        assert partner.counters()["duplicate_writes"] == 0

The portal sandbox's :class:`~sandbox.portal.server.SandboxServer` with the deposit sandbox's
module, its API under ``/ws`` (the partner's server address ends in ``/ws``) and its arguments;
``key`` and ``secret`` are the client user name and the web-service password.
"""

from __future__ import annotations

import tempfile
from typing import Any, ClassVar

from sandbox.portal.server import SandboxServer


class DepositSandboxServer(SandboxServer):
    """The deposit sandbox in a child process (``python -m sandbox.deposit``)."""

    module: ClassVar[str] = "sandbox.deposit"
    api_prefix: ClassVar[str] = "/ws"

    def __init__(self, db_path: str | None = None, **options: Any) -> None:
        options.setdefault("key", "sandbox-client")
        options.setdefault("secret", "sandbox-password")
        super().__init__(None, **options)
        self.db_path = (
            db_path or f"{self._tmpdir or tempfile.mkdtemp(prefix='deposit-sandbox-')}/deposit.sqlite"
        )

    def server_args(self) -> list[str]:
        """Database file and credentials."""
        return ["--db", self.db_path, "--key", self.key, "--secret", self.secret]

    def token(self) -> str:
        """Log in with the sandbox's credentials and return a fresh token."""
        result = self._call(
            "POST", "/ws/v1/login", json={"clientUsername": self.key, "password": self.secret}
        )
        return str(result["token"])
