"""`execution: kubernetes`: one `slimline step` in the task image as a pod, by the cncf-kubernetes
provider's KubernetesPodOperator: requests and limits per step, the target's GPU node pool for
engine builds, a non-root user and a read-only root filesystem. The step writes its result where
the provider's sidecar collects it; the task returns what the in-process task returns."""

from __future__ import annotations

from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s

from tasks.core.settings import Settings
from tasks.flow.execution import Launch, Step
from tasks.flow.step_operator import StepOperator

RESULT_FILE = "/airflow/xcom/return.json"  # where the provider's sidecar reads a pod's result
# Labels the chart's NetworkPolicy admits to MLflow (helm/slimline, networkPolicy.mlflowClients).
POD_LABELS = {"app.kubernetes.io/part-of": "slimline", "app.kubernetes.io/component": "task"}
IMAGE_USER = 10001  # the images' own user (infra/*.Containerfile)


class PodStep(StepOperator, KubernetesPodOperator):
    """KubernetesPodOperator for a slimline step; the provider's sidecar reads its result file."""


def pod_step(settings: Settings, task_id: str, step: Step) -> Any:
    """The mapped task: `.expand_kwargs(...)` with `pod_kwargs` of each job's launch."""
    return PodStep.partial(task_id=task_id, **pod_defaults(settings, step))


def pod_defaults(settings: Settings, step: Step) -> dict[str, Any]:
    """What every pod of `step` shares."""
    return dict(
        step=step,
        name=f"slimline-{step}",
        kubernetes_conn_id=settings.kubernetes_conn_id,
        namespace=settings.kubernetes_namespace,
        labels=POD_LABELS,
        get_logs=True,
        do_xcom_push=True,
        on_finish_action="delete_pod",
        image_pull_policy="IfNotPresent",
        automount_service_account_token=False,  # a step never talks to the Kubernetes API
        startup_timeout_seconds=600,  # a cold node pulls a multi-GB image
        map_index_template="{{ task.step_label }}",
    )


def pod_kwargs(settings: Settings, launch: Launch) -> dict[str, Any]:
    requests = {"cpu": launch.resources.cpu, "memory": launch.resources.memory}
    limits = {"memory": launch.resources.memory}
    tolerations = []
    if launch.gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(launch.gpus)
        # GPU node pools are commonly tainted so that only pods asking for a GPU land there.
        tolerations = [k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
    volumes = [k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource())]
    mounts = [k8s.V1VolumeMount(name="tmp", mount_path="/tmp")]
    user = launch.user
    if settings.kubernetes_home_claim:
        # The home on a claim every step pod shares: steps reuse each other's artifacts on any node.
        # Recipes and targets come from the image, at the paths the Airflow workers (same image) see.
        volumes.append(
            k8s.V1Volume(
                name="home",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                    claim_name=settings.kubernetes_home_claim
                ),
            )
        )
        mounts.append(k8s.V1VolumeMount(name="home", mount_path=str(settings.home)))
        user = None
    else:
        # Local state on hostPath volumes: a one-node cluster on the machine that holds it.
        for index, path in enumerate(launch.mounts):
            volumes.append(
                k8s.V1Volume(
                    name=f"host-{index}",
                    host_path=k8s.V1HostPathVolumeSource(path=str(path), type="Directory"),
                )
            )
            mounts.append(
                k8s.V1VolumeMount(
                    name=f"host-{index}", mount_path=str(path), read_only=path in launch.read_only
                )
            )
    uid, gid = map(int, (user or f"{IMAGE_USER}:{IMAGE_USER}").split(":"))
    return {
        "step_label": launch.label,
        "image": launch.image,
        "arguments": [*launch.arguments, "--output", RESULT_FILE],
        "env_vars": [k8s.V1EnvVar(name=k, value=v) for k, v in launch.environment.items()],
        "container_resources": k8s.V1ResourceRequirements(requests=requests, limits=limits),
        "node_selector": launch.node_selector,
        "tolerations": tolerations,
        "volumes": volumes,
        "volume_mounts": mounts,
        "security_context": k8s.V1PodSecurityContext(run_as_user=uid, run_as_group=gid, fs_group=gid),
        "container_security_context": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": uid != 0,
        },
    }
