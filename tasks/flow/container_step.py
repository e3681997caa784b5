"""`execution: container`: one `slimline step` in the task image, started through a Docker-compatible
API (podman's socket here, Docker's elsewhere) by Airflow's Docker provider. The step's result is the
last line of its output; the task returns what the in-process task returns."""

from __future__ import annotations

from typing import Any

from airflow.providers.docker.operators.docker import DockerOperator

from tasks.core.settings import Settings
from tasks.flow.execution import Launch, Step
from tasks.flow.step_operator import StepOperator

MEMORY_UNITS = {"Ki": "k", "Mi": "m", "Gi": "g", "Ti": "t", "K": "k", "M": "m", "G": "g", "T": "t"}


class ContainerStep(StepOperator, DockerOperator):
    """DockerOperator for a slimline step; its result is the container's last line of output."""

    def step_result(self, returned: Any) -> Any:
        # The provider reads stdout and stderr as one stream, split at newlines only: a progress bar
        # that ended with a carriage return shares the result's line.
        return returned.rsplit("\r", 1)[-1] if isinstance(returned, str) else returned


def container_step(settings: Settings, task_id: str, step: Step) -> Any:
    """The mapped task: `.expand_kwargs(...)` with `container_kwargs` of each job's launch."""
    return ContainerStep.partial(task_id=task_id, **container_defaults(settings, step))


def container_defaults(settings: Settings, step: Step) -> dict[str, Any]:
    """What every container of `step` shares."""
    return dict(
        step=step,
        docker_url=settings.docker_url,
        # The step reaches what the task that starts it reaches (an S3 endpoint or MLflow server on
        # this host's loopback included).
        network_mode="host",
        auto_remove="success",
        mount_tmp_dir=False,
        do_xcom_push=True,
        map_index_template="{{ task.step_label }}",
    )


def container_kwargs(launch: Launch) -> dict[str, Any]:
    from docker.types import DeviceRequest, Mount

    memory = launch.resources.memory
    for unit, short in MEMORY_UNITS.items():
        if memory.endswith(unit):
            memory = memory.removesuffix(unit) + short
            break
    cpus = launch.resources.cpu
    return {
        "step_label": launch.label,
        "image": launch.image,
        "command": launch.arguments,
        "environment": launch.environment,
        "mounts": [
            Mount(target=str(path), source=str(path), type="bind", read_only=path in launch.read_only)
            for path in launch.mounts
        ],
        "user": launch.user,
        "cpus": float(cpus.removesuffix("m")) / 1000 if cpus.endswith("m") else float(cpus),
        "mem_limit": memory,
        "device_requests": [DeviceRequest(count=launch.gpus, capabilities=[["gpu"]])]
        if launch.gpus
        else None,
    }
