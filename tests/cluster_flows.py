"""A flow the cluster tests deploy on the partition queue: it says where it runs, then waits."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from prefect import flow


@flow(name="cluster-probe")
def cluster_probe(report: str, wait_s: float = 120.0) -> None:
    """Write this run's process id, group and working directory to ``report``, then wait."""
    Path(report).write_text(json.dumps({"pid": os.getpid(), "pgid": os.getpgid(0), "cwd": os.getcwd()}))
    time.sleep(wait_s)
