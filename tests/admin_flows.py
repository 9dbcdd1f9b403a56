"""Two small flows served as deployments for the tests of ``./hausflow run``.

``python -m tests.admin_flows`` serves ``greet/cli-test`` and ``fail-on-purpose/cli-test`` on the
Prefect API of ``PREFECT_API_URL`` until it is stopped; every run is a new process, as served
deployments of ``./hausflow up`` are.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, serve


@flow(name="greet")
def greet(name: str = "world") -> str:
    """Log a greeting and return it."""
    get_run_logger().info("Hello, %s, from a served run.", name)
    return f"Hello, {name}"


@flow(name="fail-on-purpose")
def fail_on_purpose() -> None:
    """Log a line, then fail."""
    get_run_logger().info("About to fail on purpose.")
    raise ValueError("this run fails on purpose")


if __name__ == "__main__":
    serve(
        greet.to_deployment(name="cli-test"),
        fail_on_purpose.to_deployment(name="cli-test"),
        print_starting_message=False,
    )
