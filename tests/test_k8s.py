"""slimline on the local Kubernetes 1.20 cluster (infra/k8s, `make k8s-up`), the task image loaded from
podman into the cluster's containerd:
- the Helm chart: `helm install --wait` with the default values plus what this cluster needs, MLflow's
  pod Ready and answering its API, then `helm uninstall`;
- the nightly DAG with `execution: kubernetes`: each variant and engine task a pod, and the registry
  what an in-process run registers.
Marked `k8s`: not part of `make test` (the cold build takes about 7 minutes); `make test-k8s` runs it."""

from __future__ import annotations

import json
import time
import tomllib
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tasks.core.settings import Resources, Settings
from tasks.flow.orchestration import dags_test
from tests.k8s_cluster import helm, kubectl, load_images
from tests.tiny import assert_registers_like_in_process, publish, write_tiny_recipe

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"localhost/slimline-task:{VERSION}"
RELEASE = "slimline"

pytestmark = pytest.mark.k8s

# The default values, plus what a cluster without a registry or a storage provisioner needs: the image
# loaded into containerd and never pulled, and MLflow's data on an emptyDir (a claim on the default
# StorageClass would stay Pending). The NetworkPolicies stay on: 1.20 accepts them (networking.k8s.io/v1),
# though the bridge network does not enforce them.
LOCAL_CLUSTER = (
    f"--set=image.tag={VERSION}",
    "--set=image.pullPolicy=Never",
    "--set=mlflow.persistence.enabled=false",
)


def mlflow_pod(kubeconfig: Path, namespace: str) -> dict[str, Any]:
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=mlflow"
    pods = json.loads(kubectl(kubeconfig, *f"get pods -n {namespace} -o json -l {selector}".split()).stdout)[
        "items"
    ]
    assert len(pods) == 1, [pod["metadata"]["name"] for pod in pods]
    pod: dict[str, Any] = pods[0]
    return pod


def test_chart_installs_and_mlflow_answers(k8s_cluster: Path) -> None:
    timings: dict[str, float] = {}
    began = time.monotonic()
    load_images(IMAGE)
    timings["load image"] = time.monotonic() - began

    namespace = f"slimline-test-{uuid.uuid4().hex[:6]}"
    began = time.monotonic()
    install = f"install {RELEASE} helm/slimline -n {namespace} --create-namespace --wait --timeout 5m"
    helm(k8s_cluster, *install.split(), *LOCAL_CLUSTER)
    timings["helm install --wait"] = time.monotonic() - began
    try:
        pod = mlflow_pod(k8s_cluster, namespace)
        conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert conditions["Ready"] == "True", pod["status"]
        statuses = {s["name"]: s for s in pod["status"]["containerStatuses"]}
        assert statuses["mlflow"]["ready"] and statuses["mlflow"]["image"].endswith(IMAGE)
        policies = set(
            kubectl(k8s_cluster, "get", "networkpolicy", "-n", namespace, "-o", "name").stdout.split()
        )
        assert policies, "the default values' NetworkPolicies were not created"

        # From the host, by pod IP over the bridge: the health endpoint the probes use.
        with urllib.request.urlopen(f"http://{pod['status']['podIP']}:5000/health", timeout=10) as answer:
            assert answer.read().decode().strip() == "OK"
        # Inside the pod, on a host name MLflow admits: the tracking API, backed by the SQLite
        # database the init container migrated.
        search = (
            "import json, urllib.request; r = urllib.request.Request("
            "'http://localhost:5000/api/2.0/mlflow/experiments/search', data=b'{\"max_results\": 10}', "
            "headers={'Content-Type': 'application/json'}); "
            "print(urllib.request.urlopen(r, timeout=10).read().decode())"
        )
        exec_in_mlflow = f"exec -n {namespace} {pod['metadata']['name']} -c mlflow --".split()
        done = kubectl(k8s_cluster, *exec_in_mlflow, "python3", "-c", search)
        experiments = json.loads(done.stdout)["experiments"]
        assert [e["name"] for e in experiments] == ["Default"]
    finally:
        began = time.monotonic()
        helm(k8s_cluster, "uninstall", RELEASE, "--namespace", namespace, "--wait", "--timeout", "2m")
        kubectl(k8s_cluster, "delete", "namespace", namespace, "--wait=true", "--timeout=120s")
        timings["helm uninstall + namespace deleted"] = time.monotonic() - began
        print("; ".join(f"{what}: {seconds:.1f} s" for what, seconds in timings.items()))


def test_the_nightly_dag_runs_its_steps_as_pods_and_registers_what_in_process_does(
    k8s_cluster: Path,
    images: dict[str, str],
    settings: Settings,
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    began = time.monotonic()
    load_images(images["task"])
    loaded = time.monotonic() - began
    # The provider's connection: this cluster, and the result sidecar from the task image (its
    # default, alpine, would come from a registry).
    connection = {
        "conn_type": "kubernetes",
        "extra": {
            "kube_config_path": str(k8s_cluster),
            "in_cluster": False,
            "xcom_sidecar_container_image": images["task"],
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps(connection))
    recipe = write_tiny_recipe(tmp_path / "recipe")
    publish(settings, tiny_checkpoint, "nightly/tiny")
    # The node has 2 CPUs: requests small enough for a step and the sidecar to fit.
    small = Resources(cpu="500m", memory="2Gi")
    in_pods = settings.model_copy(
        update={"execution": "kubernetes", "variant_resources": small, "engine_resources": small}
    )
    run = dags_test(in_pods, "nightly_compression", {"recipe": str(recipe), "prefix": "nightly"})
    assert run.state == "success"
    log = run.log_path.read_text()
    # Two variant pods and two engine pods ran to the end and were deleted.
    assert log.count("Deleting pod: slimline-variant-") == 2, log[-3000:]
    assert log.count("Deleting pod: slimline-engine-") == 2
    print(f"image loaded in {loaded:.1f} s; DAG run with kubernetes execution: {run.seconds:.1f} s")
    assert_registers_like_in_process(settings, recipe, tiny_checkpoint, tmp_path / "local")
