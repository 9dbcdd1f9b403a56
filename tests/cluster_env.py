"""A running scale-out cluster for a test: Prefect server on PostgreSQL, the work pool, workers.

    from tests.cluster_env import running_cluster

    def test_something(...):
        with running_cluster({"HAUSFLOW_ERP_URL": ..., ...}, workers=2, crash_after=45) as cluster:
            ...  # cluster.api_url, cluster.workers: [(name, pid, pgid), ...]

Each cluster gets a free port, a folder and a Prefect database of its own on the test PostgreSQL
server (dropped afterwards). Without PostgreSQL the test is skipped with the reason; with
HAUSFLOW_REQUIRE_POSTGRES=1 (``.ci/run``) it fails instead. Talk to its API with
:func:`cluster_client` (or ``prefect.settings.temporary_settings`` with ``PREFECT_API_URL``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from flows.cluster import (
    DEFAULT_CRASH_AFTER_S,
    DEPLOYMENTS,
    Cluster,
    ClusterDeployment,
    drop_prefect_database,
    start_cluster,
)
from sandbox.portal.server import free_port

PG_URL = os.environ.get("HAUSFLOW_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("HAUSFLOW_REQUIRE_POSTGRES") == "1"

__all__ = ["PG_URL", "cluster_client", "free_port", "require_postgres", "running_cluster"]


def require_postgres() -> str:
    """The test PostgreSQL server's URL; skips (or, with HAUSFLOW_REQUIRE_POSTGRES=1, fails) without it."""
    try:
        import psycopg

        from flows.cluster import _libpq_url

        with psycopg.connect(_libpq_url(PG_URL), connect_timeout=3) as conn:
            conn.execute("select 1")
    except Exception as exc:  # the reason goes into the skip message
        reason = f"PostgreSQL not reachable at {PG_URL.split('@')[-1]}: {type(exc).__name__}: {exc}"[:300]
        if REQUIRE_PG:
            pytest.fail(f"HAUSFLOW_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    return PG_URL


@contextmanager
def running_cluster(
    env: Mapping[str, str] | None = None,
    workers: int = 2,
    crash_after: int = DEFAULT_CRASH_AFTER_S,
    directory: Path | None = None,
    deployments: Sequence[ClusterDeployment] = DEPLOYMENTS,
) -> Iterator[Cluster]:
    """Start a cluster (about 15-20 s), yield it, stop it and drop its Prefect database.

    Args:
        env: the test's HAUSFLOW_* settings (and anything else the workers' flow runs need).
        workers: partition workers; the control worker comes on top.
        crash_after: seconds without a heartbeat before a run is marked Crashed (runs send one
            every 30 s: 40-45 leaves room for a late one).
        directory: logs and ``cluster.json`` (default: a temp folder, removed afterwards).
        deployments: what to register (default: all of ``flows.cluster.DEPLOYMENTS`` whose file exists).
    """
    url = require_postgres()
    name = f"hausflow_prefect_t_{uuid.uuid4().hex[:12]}"
    folder = directory or Path(tempfile.mkdtemp(prefix="hausflow-cluster-"))
    try:
        cluster = start_cluster(
            workers=workers,
            database_url=url,
            port=free_port(),
            directory=folder,
            env=env,
            crash_after=crash_after,
            prefect_database=name,
            deployments=deployments,
        )
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        drop_prefect_database(url, name)
        if directory is None:
            shutil.rmtree(folder, ignore_errors=True)


@asynccontextmanager
async def cluster_client(cluster: Cluster) -> AsyncIterator[Any]:
    """A Prefect client of the cluster's API (whatever API the test process uses otherwise)."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: cluster.api_url}):
        async with get_client() as client:
            yield client
