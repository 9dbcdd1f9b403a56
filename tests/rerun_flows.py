"""The portal sync served as a deployment for the re-run tests (``tests/test_rerun.py``).

``python -m tests.rerun_flows`` serves ``portal-sync/rerun-test`` on the Prefect API of
``PREFECT_API_URL`` until it is stopped; each run is a new process, as the served deployments of
``./hausflow up`` are, with the settings of this process's environment.
"""

from __future__ import annotations

from prefect import serve

from flows.portal_sync import portal_sync

if __name__ == "__main__":
    serve(
        portal_sync.to_deployment(name="rerun-test", parameters={"profile": "test"}),
        print_starting_message=False,
    )
