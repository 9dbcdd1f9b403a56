"""Run the portal sandbox as a separate process, for tests, benchmarks and the demo command.

Why a process and not a thread: the sandbox must be a real server on a real socket, with its own
event loop and CPU, so that a client's throughput and failure handling are measured as they will be
against the real portal (and a restart can be tested by stopping the process).

    with SandboxServer() as portal:
        client = PortalClient(portal.base_url, portal.key, portal.secret)
        ...
        assert portal.counters()["duplicate_writes"] == 0
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class SandboxServerError(RuntimeError):
    """The sandbox process did not come up (the message carries the end of its log)."""


class SandboxServer:
    """The portal sandbox in a child process (``python -m sandbox.portal``).

    Args:
        db_url: SQLAlchemy URL of the sandbox's state; ``None``: a SQLite file in a temporary folder
            that ``close()`` (or leaving the ``with`` block) removes.
        key, secret: credentials the sandbox accepts.
        host: loopback address to bind.
        port: fixed port, or ``None`` for a free one picked at ``start()``.
        startup_timeout_s: how long ``start()`` waits for ``GET /openapi.json`` to answer.
        max_upload_bytes: largest document content the sandbox takes (``None``: its default, 100 MB).

    The documents' content lives in a folder beside the database file (``portal-content/``).
    Another partner's sandbox subclasses it with its ``module``, its ``api_prefix`` (the path its
    API lives under) and its command-line arguments (:meth:`server_args`).
    """

    module: ClassVar[str] = "sandbox.portal"
    api_prefix: ClassVar[str] = ""

    def __init__(
        self,
        db_url: str | None = None,
        *,
        key: str = "sandbox-key",
        secret: str = "sandbox-secret",
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout_s: float = 30.0,
        max_upload_bytes: int | None = None,
    ) -> None:
        self._tmpdir: str | None = None
        if db_url is None:
            self._tmpdir = tempfile.mkdtemp(prefix="portal-sandbox-")
            db_url = f"sqlite:///{self._tmpdir}/portal.sqlite"
        self.db_url = db_url
        self.key = key
        self.secret = secret
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.max_upload_bytes = max_upload_bytes
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(self._tmpdir or tempfile.mkdtemp(prefix="portal-sandbox-log-")) / "server.log"
        self._http: httpx.Client | None = None
        self.last_returncode: int | None = None
        """Exit code of the process the last ``stop()`` ended (0 after a clean shutdown)."""

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def origin(self) -> str:
        """``http://host:port`` of the running sandbox (no trailing slash)."""
        if self.port is None:
            raise SandboxServerError("the sandbox has not been started")
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API's address a client is configured with: :attr:`origin` plus :attr:`api_prefix`."""
        return f"{self.origin}{self.api_prefix}"

    def server_args(self) -> list[str]:
        """The sandbox process's arguments after host and port: database, credentials, limits."""
        args = ["--db", self.db_url, "--key", self.key, "--secret", self.secret]
        if self.max_upload_bytes is not None:
            args += ["--max-upload-bytes", str(self.max_upload_bytes)]
        return args

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> SandboxServer:
        """Launch the process and wait until it answers; returns ``self``.

        Raises:
            SandboxServerError: the process died or did not answer within ``startup_timeout_s``.
        """
        if self.running:
            return self
        if self.port is None:
            self.port = free_port(self.host)
        command = [sys.executable, "-m", self.module, "--host", self.host, "--port", str(self.port)]
        command += self.server_args()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise SandboxServerError(
                    f"the sandbox exited with code {self.process.returncode}: {self._log_tail()}"
                )
            try:
                if httpx.get(f"{self.origin}/openapi.json", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise SandboxServerError(
            f"the sandbox did not answer within {self.startup_timeout_s} s: {self._log_tail()}"
        )

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the process with SIGTERM (a clean shutdown), SIGKILL after ``timeout_s``.

        The database stays; ``start()`` again serves the same state (on the same port).
        """
        if self._http is not None:
            self._http.close()
            self._http = None
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            self.last_returncode = None if process is None else process.returncode
            return
        process.send_signal(signal.SIGTERM)
        try:
            self.last_returncode = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            self.last_returncode = process.wait(timeout=timeout_s)

    def restart(self) -> SandboxServer:
        """Stop and start again on the same port and database."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and remove the temporary folder (when the sandbox made one)."""
        self.stop()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- sandbox-only endpoints --------------------------------------------------------------
    @property
    def http(self) -> httpx.Client:
        """A plain client for the sandbox's own endpoints (no token)."""
        if self._http is None:
            self._http = httpx.Client(base_url=self.origin, timeout=30.0)
        return self._http

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def counters(self) -> dict[str, Any]:
        """``GET /_sandbox/counters``: requests, writes, duplicate writes, faults, records."""
        result: dict[str, Any] = self._call("GET", "/_sandbox/counters")
        return result

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """``POST /_sandbox/faults`` with these keys (``status_rates``, ``drop_rate``, ...)."""
        result: dict[str, Any] = self._call("POST", "/_sandbox/faults", json=faults)
        return result

    def clear_faults(self) -> None:
        """``DELETE /_sandbox/faults``."""
        self._call("DELETE", "/_sandbox/faults")

    def reset(self) -> None:
        """``POST /_sandbox/reset``: no records, no counters, no faults (tokens stay valid)."""
        self._call("POST", "/_sandbox/reset")

    def set_token_ttl(self, seconds: float) -> None:
        """Tokens issued from now on expire after ``seconds``."""
        self._call("GET", "/_sandbox/token-ttl", params={"seconds": seconds})

    def set_max_upload_bytes(self, max_bytes: int) -> None:
        """The largest document content the sandbox takes from now on (``413`` above)."""
        self._call("POST", "/_sandbox/upload-limit", json={"maxBytes": max_bytes})

    @property
    def pid(self) -> int | None:
        """Process id of the running sandbox (to watch its memory), ``None`` when stopped."""
        return self.process.pid if self.running and self.process is not None else None

    def write_log(self, entity: str, ref_id: str) -> list[dict[str, Any]]:
        """Every write the sandbox accepted for one record, oldest first."""
        result = self._call("GET", "/_sandbox/write-log", params={"entity": entity, "id": ref_id})
        writes: list[dict[str, Any]] = result["writes"]
        return writes

    def token(self) -> str:
        """Authenticate with the sandbox's credentials and return a fresh token."""
        result = self._call("POST", "/v2/authenticate", json={"key": self.key, "secret": self.secret})
        return str(result["token"])
