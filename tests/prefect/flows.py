"""Flows the Prefect end-to-end tests deploy to pushpool-served pools (tests/prefect_e2e)."""

import os
import time

from prefect import flow, get_run_logger


@flow(log_prints=True, persist_result=True, result_serializer="json")
def hello(name: str = "world") -> str:
    """Logs a greeting, appends the flow run id to $PUSHPOOL_TEST_JOURNAL if set, returns
    `hello <name>` (persisted as JSON under $PREFECT_LOCAL_STORAGE_PATH, so Prefect shows it)."""
    get_run_logger().info("hello from pushpool, %s", name)
    journal = os.environ.get("PUSHPOOL_TEST_JOURNAL")
    if journal:
        with open(journal, "a") as f:
            f.write(os.environ.get("PREFECT__FLOW_RUN_ID", "?") + "\n")
    return f"hello {name}"


@flow
def boom() -> None:
    """Raises: the run ends FAILED."""
    raise ValueError("boom from the flow")


@flow
def sleepy(seconds: float = 120) -> None:
    """Sleeps (a run to cancel); writes its pid to $PUSHPOOL_TEST_PIDFILE first."""
    pidfile = os.environ.get("PUSHPOOL_TEST_PIDFILE")
    if pidfile:
        with open(pidfile, "w") as f:
            f.write(str(os.getpid()))
    time.sleep(seconds)
