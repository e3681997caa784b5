"""What the DAG files share: retries for steps that touch the network, and the rule that a
permanent error (a refused checkpoint, a bad recipe, a refused release) fails without retries.
Airflow is imported only when an error is raised, so the rest of tasks.flow runs without it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from tasks.core.errors import SlimlineError

# The asset the nightly run updates when it publishes (and may move `candidate`); fleet_release
# runs on it.
CANDIDATE_ASSET_URI = "slimline://registry/candidate"

# Steps that touch the object store or the tracking server retry with back-off.
NETWORK_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}


@contextmanager
def fail_fast_on_permanent_errors() -> Iterator[None]:
    """A refused checkpoint or a bad recipe fails the same way on every try: no retries."""
    try:
        yield
    except SlimlineError as exc:
        if exc.transient:
            raise
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
