"""Flows served for the failure-alert tests (``tests/test_alerts.py``).

``python -m tests.alert_flows SECONDS`` serves ``sleepy/alert-test`` (a run sleeps SECONDS, long
past the test's "blocked" threshold) on the Prefect API of ``PREFECT_API_URL`` until it is
stopped; each run is a new process, as the served deployments of ``./hausflow up`` are.
"""

from __future__ import annotations

import sys
import time

from prefect import flow, get_run_logger, serve


@flow(name="sleepy")
def sleepy(seconds: float = 60.0) -> None:
    """Sleep ``seconds``: a run that blocks."""
    get_run_logger().info("Sleeping %s s.", seconds)
    time.sleep(seconds)


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    serve(
        sleepy.to_deployment(name="alert-test", parameters={"seconds": seconds}), print_starting_message=False
    )
