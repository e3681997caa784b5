"""What the DAG files share: retries for steps that touch the network, and the rule that a
permanent error (a refused checkpoint, a bad recipe, a refused release) fails without retries.
Airflow is imported only when an error is raised, so the rest of tasks.flow runs without it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from tasks.core.errors import SlimlineError
from tasks.core.settings import Settings

if TYPE_CHECKING:
    from tasks.flow.execution import Step

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


def step_task(settings: Settings, task_id: str, step: Step) -> Any:
    """The mapped task that runs a step in the task image (`execution` container or kubernetes)."""
    if settings.execution == "container":
        from tasks.flow.container_step import container_step

        return container_step(settings, task_id, step)
    from tasks.flow.pod_step import pod_step

    return pod_step(settings, task_id, step)


def step_kwargs(settings: Settings, step: Step, job: dict[str, Any]) -> dict[str, Any]:
    """The container's or the pod's arguments for one job of `step_task`."""
    from tasks.flow.execution import launch

    made = launch(settings, step, job)
    if settings.execution == "container":
        from tasks.flow.container_step import container_kwargs

        return container_kwargs(made)
    from tasks.flow.pod_step import pod_kwargs

    return pod_kwargs(settings, made)
