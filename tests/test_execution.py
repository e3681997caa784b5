"""Where the DAG's heavy steps run (settings `execution`): the launch each step gets, and the pods
the `kubernetes` mode would create, rendered by the provider itself (`build_pod_request_obj`, no
cluster needed) and validated against the Kubernetes schema; the containers and the pods run for
real in tests/test_images.py and tests/test_k8s.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.core.settings import Settings
from tasks.flow.engines import EngineJob
from tasks.flow.execution import engine_launch, local_state, step_done, variant_launch
from tasks.flow.pipeline import VariantJob, prepare
from tasks.recipe import load_recipe
from tests.tiny import publish, write_tiny_recipe

REPO = Path(__file__).resolve().parents[1]
KUBE_VERSION = "1.30.0"


@pytest.fixture
def variant_job(settings: Settings, tiny_checkpoint: Path, tmp_path: Path) -> VariantJob:
    recipe = write_tiny_recipe(tmp_path / "recipe")
    uri = publish(settings, tiny_checkpoint, "nightly/tiny")
    return VariantJob(prepared=prepare(settings, recipe, uri, "local-test"), variant="onnx-int8-dynamic")


def engine_job(settings: Settings, target: str, folder: Path) -> EngineJob:
    """A job as plan_engines makes it; its run's recipe already in the home's recipe cache (where
    the DAG's tasks read the recipe a run logged)."""
    recipe_path = write_tiny_recipe(folder / "recipe")
    digest = load_recipe(recipe_path).digest
    cached = settings.cache_dir / "recipes" / f"{digest}.yaml"
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(recipe_path, cached)
    return EngineJob(
        model_version="tiny-sentiment/3", target=target, parent_run_id="0" * 32, recipe_digest=digest
    )


def test_local_state_is_the_home_and_the_local_stores_outside_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    inside = Settings(home=home)
    assert local_state(inside) == [home.resolve()]
    outside = Settings(home=home, fleet_channel=(tmp_path / "channel").as_uri())
    assert local_state(outside) == [home.resolve(), tmp_path / "channel"]
    # Every store remote and MLflow a server: a step needs no folder of this machine.
    remote = Settings(
        home=home,
        checkpoint_store="s3://ckpt/in",
        fleet_channel="s3://fleet/ch",
        audit_log="s3://audit/log",
        artifact_root="s3://mlflow/artifacts",
        mlflow_tracking_uri="http://mlflow:5000",
    )
    assert local_state(remote) == []


def test_a_variant_launch_shares_the_state_and_reads_the_recipe(
    settings: Settings, variant_job: VariantJob
) -> None:
    launch = variant_launch(settings, variant_job)
    recipe_folder = variant_job.prepared.recipe_path.parent
    assert launch.image == settings.step_image and launch.step == "variant"
    assert launch.mounts == [settings.home, recipe_folder, settings.targets_dir]
    assert launch.read_only == [recipe_folder, settings.targets_dir]
    assert launch.arguments[:2] == ["step", "variant"]
    assert VariantJob.model_validate_json(launch.arguments[2]) == variant_job
    assert launch.environment["SLIMLINE_HOME"] == str(settings.home)
    assert launch.user == f"{settings.home.stat().st_uid}:{settings.home.stat().st_gid}"
    assert (launch.gpus, launch.node_selector) == (0, {})


def test_a_variant_pool_puts_variant_steps_on_a_gpu_worker(
    settings: Settings, variant_job: VariantJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = {"gpus": 1, "node_selector": {"pool": "gpu"}, "image": "registry/slimline-gpu-worker:0.1.0"}
    monkeypatch.setenv("SLIMLINE_VARIANT_POOL", json.dumps(pool))
    configured = settings.model_copy(update={"variant_pool": Settings().variant_pool})
    launch = variant_launch(configured, variant_job)
    assert (launch.gpus, launch.node_selector, launch.image) == (1, {"pool": "gpu"}, pool["image"])
    assert json.loads(launch.environment["SLIMLINE_VARIANT_POOL"]) == pool
    monkeypatch.setenv("SLIMLINE_VARIANT_POOL", '{"gpus": -1}')
    with pytest.raises(ValueError, match="gpus"):
        Settings()


def test_an_engine_launch_takes_the_target_build_pool(settings: Settings, tmp_path: Path) -> None:
    gpu = engine_launch(settings, engine_job(settings, "h100", tmp_path))
    assert gpu.gpus == 1
    assert gpu.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert gpu.image == "localhost/slimline-gpu-worker:0.1.0"
    assert gpu.resources == settings.engine_resources
    # The canary set comes from the run's data: its folder is mounted read-only.
    assert gpu.read_only == [tmp_path / "recipe", settings.targets_dir]
    cpu = engine_launch(settings, engine_job(settings, "cpu-avx2", tmp_path))
    assert (cpu.gpus, cpu.node_selector, cpu.image) == (0, {}, settings.step_image)


def test_a_step_that_gives_back_no_result_fails_with_what_it_returned(settings: Settings) -> None:
    from tasks.core.errors import OrchestrationError

    with pytest.raises(OrchestrationError, match=r"no VariantDone .*it returned 'Killed'"):
        step_done(settings, "variant", "Killed")
    with pytest.raises(OrchestrationError, match=r"no EngineDone"):
        step_done(settings, "engine", None)


RENDER = """
import json, sys
from kubernetes.client import ApiClient
from tasks.core.settings import Settings
from tasks.flow.execution import launch
from tasks.flow.pod_step import PodStep, pod_defaults, pod_kwargs

settings = Settings()
pods = []
for step, job in json.load(sys.stdin):
    made = launch(settings, step, job)
    op = PodStep(task_id="t", **pod_defaults(settings, step), **pod_kwargs(settings, made))
    pod = ApiClient().sanitize_for_serialization(op.build_pod_request_obj(dry_run=True))
    pods.append({"apiVersion": "v1", "kind": "Pod", **pod})
print(json.dumps(pods))
"""


def render_pods(settings: Settings, jobs: list[tuple[str, Any]], tmp_path: Path) -> list[dict[str, Any]]:
    """The pods KubernetesPodOperator would create, built by the provider in a process that has no
    kubeconfig (no cluster is asked)."""
    env = {**settings.environment(), "KUBECONFIG": str(tmp_path / "absent"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", RENDER],
        input=json.dumps(jobs),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    pods: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return pods


def validate(pods: list[dict[str, Any]], tmp_path: Path) -> None:
    manifests = tmp_path / "pods.yaml"
    manifests.write_text(yaml.safe_dump_all(pods))
    checked = subprocess.run(
        [
            str(Path(sys.executable).with_name("kubernetes-validate")),
            "--strict",
            "-k",
            KUBE_VERSION,
            str(manifests),
        ],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0 and "WARN" not in checked.stdout, checked.stdout + checked.stderr


def test_pods_of_the_kubernetes_mode_render_valid_and_locked_down(
    settings: Settings, variant_job: VariantJob, tmp_path: Path
) -> None:
    jobs = [
        ("variant", variant_job.model_dump(mode="json")),
        ("engine", engine_job(settings, "h100", tmp_path / "engine").model_dump(mode="json")),
    ]
    variant, gpu = render_pods(settings.model_copy(update={"execution": "kubernetes"}), jobs, tmp_path)
    validate([variant, gpu], tmp_path)

    base = variant["spec"]["containers"][0]
    assert base["image"] == settings.step_image
    assert base["args"][:2] == ["step", "variant"] and base["args"][-2:] == [
        "--output",
        "/airflow/xcom/return.json",
    ]
    assert VariantJob.model_validate_json(base["args"][2]) == variant_job
    assert base["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi"},
        "limits": {"memory": "8Gi"},
    }
    assert base["securityContext"]["readOnlyRootFilesystem"] is True
    assert base["securityContext"]["allowPrivilegeEscalation"] is False
    assert base["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "SLIMLINE_HOME", "value": str(settings.home)} in base["env"]
    # The local state, the recipe and the targets at their own paths (hostPath: a one-node cluster).
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in base["volumeMounts"]}
    recipe_folder = str(variant_job.prepared.recipe_path.parent)
    assert mounts[str(settings.home)] is False and mounts[recipe_folder] is True
    assert mounts["/tmp"] is False  # the one writable place off the state
    assert variant["metadata"]["labels"]["app.kubernetes.io/part-of"] == "slimline"
    assert variant["spec"]["automountServiceAccountToken"] is False
    # The result comes back through the provider's sidecar.
    assert [c["name"] for c in variant["spec"]["containers"]] == ["base", "airflow-xcom-sidecar"]

    engine = gpu["spec"]["containers"][0]
    assert engine["image"] == "localhost/slimline-gpu-worker:0.1.0"
    assert engine["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert gpu["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_with_remote_state_a_pod_runs_as_the_image_user_and_mounts_only_its_claim(
    settings: Settings, tmp_path: Path
) -> None:
    remote = Settings(
        home=settings.home,
        execution="kubernetes",
        checkpoint_store="s3://ckpt/in",
        fleet_channel="s3://fleet/ch",
        audit_log="s3://audit/log",
        artifact_root="s3://mlflow/artifacts",
        mlflow_tracking_uri="http://mlflow:5000",
        kubernetes_home_claim="slimline-home",
    )
    job = engine_job(remote, "cpu-avx2", tmp_path)
    (pod,) = render_pods(remote, [("engine", job.model_dump(mode="json"))], tmp_path)
    validate([pod], tmp_path)
    assert pod["spec"]["securityContext"] == {"fsGroup": 10001, "runAsGroup": 10001, "runAsUser": 10001}
    assert pod["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] is True
    claims = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert [c["persistentVolumeClaim"]["claimName"] for c in claims] == ["slimline-home"]
    assert not [v for v in pod["spec"]["volumes"] if "hostPath" in v]
    assert "nodeSelector" not in pod["spec"] or not pod["spec"]["nodeSelector"]


def test_a_container_run_without_a_docker_api_fails_before_it_starts(
    settings: Settings, tmp_path: Path
) -> None:
    from tasks.core.errors import OrchestrationError
    from tasks.flow.orchestration import dags_test

    absent = settings.model_copy(
        update={"execution": "container", "docker_url": f"unix://{tmp_path}/no.sock"}
    )
    with pytest.raises(
        OrchestrationError, match=r"no Docker API answers at unix://.*no\.sock .*make podman-api"
    ):
        dags_test(absent, "nightly_compression", {})
    assert not (settings.home / "logs").exists()  # no run was started
