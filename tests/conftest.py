"""Shared fixtures: one Prefect test harness per session, PostgreSQL databases, temp SQLite URLs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

PG_ADMIN_URL = os.environ.get("HAUSFLOW_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("HAUSFLOW_REQUIRE_POSTGRES") == "1"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Start one throw-away Prefect API for the whole test session (7-9 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session", autouse=True)
def sync_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The sync memos of the whole session go to a temp folder, never into the checkout."""
    folder = str(tmp_path_factory.mktemp("sync-cache"))
    previous = os.environ.get("HAUSFLOW_CACHE_DIR")
    os.environ["HAUSFLOW_CACHE_DIR"] = folder
    yield folder
    if previous is None:
        os.environ.pop("HAUSFLOW_CACHE_DIR", None)
    else:
        os.environ["HAUSFLOW_CACHE_DIR"] = previous


@pytest.fixture
def sqlite_url(tmp_path: object) -> Callable[[str], str]:
    """Return a factory of SQLite URLs inside the test's temp folder."""

    def make(name: str) -> str:
        return f"sqlite:///{tmp_path}/{name}.sqlite"

    return make


def _pg_available() -> str | None:
    try:
        from sqlalchemy import create_engine, text

        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # the reason goes into the skip message
        return f"PostgreSQL not reachable at {PG_ADMIN_URL.split('@')[-1]}: {type(exc).__name__}: {exc}"[:300]


@pytest.fixture
def pg_database() -> Iterator[Callable[[], str]]:
    """Factory of fresh PostgreSQL databases (dropped afterwards).

    Skips with the reason when no server is reachable; with HAUSFLOW_REQUIRE_POSTGRES=1 (``.ci/run``)
    a missing server fails the test instead.
    """
    reason = _pg_available()
    if reason:
        if REQUIRE_PG:
            pytest.fail(f"HAUSFLOW_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    created: list[str] = []

    def make() -> str:
        name = f"hausflow_t_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name

    yield make
    with admin.connect() as conn:
        for name in created:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The portal sandbox as its own process on a free loopback port, one per test module."""
    from sandbox.portal.server import SandboxServer

    server = SandboxServer(db_url=f"sqlite:///{tmp_path_factory.mktemp('sandbox')}/portal.sqlite")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def deposit_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The deposit-partner sandbox as its own process on a free loopback port, one per test module."""
    from sandbox.deposit.server import DepositSandboxServer

    server = DepositSandboxServer(db_path=f"{tmp_path_factory.mktemp('deposit-sandbox')}/deposit.sqlite")
    server.start()
    yield server
    server.stop()
