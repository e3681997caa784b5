"""The Helm chart (helm/slimline), offline: `helm lint --strict`, `helm template` with the default, the
production and an everything-on set of values, every rendered manifest checked against the Kubernetes
schemas (kubernetes-validate, strict), and the policies read from the manifests: non-root read-only
pods, requests and limits, no API tokens, network policies around every pod, no secret in a values
file, and values errors that name the field. helm comes from `make tools`; no cluster is involved."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import tomllib
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tasks.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "slimline"
AIRFLOW_VALUES = ROOT / "helm" / "airflow-values.yaml"
HELM = ROOT / ".tools" / "bin" / "helm"
RELEASE = "slimline"
NAMESPACE = "ml-platform"
# The oldest schemas kubernetes-validate bundles, a current release, and the newest it bundles.
KUBE_VERSIONS = ("1.25.0", "1.30.0", kubernetes_validate.latest_version())
UID = 10001

pytestmark = pytest.mark.skipif(
    not HELM.exists(),
    reason=f"{HELM.relative_to(ROOT)} is missing: `make tools` installs it (make test does)",
)

Manifest = dict[str, Any]

# Every optional template on: ingress, agents with an inline key on a shared claim, the agents'
# Service, credentials the chart turns into a Secret. Test values only.
EVERYTHING: dict[str, Any] = {
    "objectStore": {
        "endpointUrl": "https://minio.example.internal:9000",
        "accessKeyId": "test-access-key-id",
        "secretAccessKey": "test-secret-access-key",
    },
    "settings": {
        "SLIMLINE_CHECKPOINT_STORE": "s3://checkpoints/incoming",
        "SLIMLINE_FLEET_CHANNEL": "s3://fleet/channel",
        "SLIMLINE_AUDIT_LOG": "s3://audit/log",
    },
    "mlflow": {"ingress": {"enabled": True, "host": "mlflow.example.internal", "tlsSecret": "mlflow-tls"}},
    "agents": {
        "enabled": True,
        "fleet": "staging",
        "labels": {"ring": "canary"},
        "trustedKey": {"pem": "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n"},
        "state": {"persistentVolumeClaim": "slimline-agents"},
        "service": {"enabled": True},
    },
}


# --- running helm --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """helm's cache and config in a temporary folder, nothing read from or written to $HOME."""
    home = tmp_path_factory.mktemp("helm-home")
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


def helm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False
    )


def values_file(tmp_path: Path, name: str, values: dict[str, Any]) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def template(
    env: dict[str, str], *values: Path, sets: tuple[str, ...] = (), kube: str = "1.30.0"
) -> list[Manifest]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", kube]
    for path in values:
        args += ["-f", str(path)]
    for assignment in sets:
        args += ["--set", assignment]
    done = helm(env, *args)
    assert done.returncode == 0, f"helm {' '.join(args)} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def renders(helm_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Manifest]]:
    everything = values_file(tmp_path_factory.mktemp("values"), "everything", EVERYTHING)
    return {
        "default": template(helm_env),
        "production": template(helm_env, CHART / "values-production.yaml"),
        "everything": template(helm_env, everything),
    }


def of_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[Manifest]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(what, pod metadata, pod spec) of every pod the manifests make, workloads and bare pods alike."""
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "Pod":
            yield f"Pod/{name}", doc["metadata"], doc["spec"]
        elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            yield f"{kind}/{name}", doc["spec"]["template"]["metadata"], doc["spec"]["template"]["spec"]
        elif kind == "CronJob":
            pod = doc["spec"]["jobTemplate"]["spec"]["template"]
            yield f"{kind}/{name}", pod["metadata"], pod["spec"]


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers") or []
    yield from spec["containers"]


# --- lint, render, schemas -----------------------------------------------------------------------


@pytest.mark.parametrize("values", ["values.yaml", "values-production.yaml"])
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_helm_lint_strict(helm_env: dict[str, str], values: str, kube: str) -> None:
    done = helm(helm_env, "lint", "--strict", "--kube-version", kube, str(CHART), "-f", str(CHART / values))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("values", ["default", "production", "everything"])
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_manifests_valid_for_kubernetes(
    helm_env: dict[str, str], tmp_path: Path, values: str, kube: str
) -> None:
    """Strict: unknown fields fail; a kind or apiVersion the release lacks (a CLI warning) fails too."""
    files = {
        "default": [],
        "production": [CHART / "values-production.yaml"],
        "everything": [values_file(tmp_path, "everything", EVERYTHING)],
    }[values]
    docs = template(helm_env, *files, kube=kube)
    assert len(docs) >= 9
    problems = []
    for doc in docs:
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, kube, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{what}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{what}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_validation_catches_a_bad_manifest() -> None:
    """The check above can fail: a misspelt field and an API version 1.25 no longer serves."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolcy": "Never"}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, "1.30.0", strict=True)
    cronjob = {"apiVersion": "batch/v1beta1", "kind": "CronJob", "metadata": {"name": "c"}, "spec": {}}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(cronjob, "1.25.0", strict=True)


def test_kubernetes_version_floor(helm_env: dict[str, str]) -> None:
    """kubeVersion >=1.20: 1.19 is refused; on 1.20 the PodDisruptionBudget uses the API that exists there."""
    done = helm(helm_env, "template", RELEASE, str(CHART), "--kube-version", "1.19.0")
    assert done.returncode != 0 and "kubeVersion" in done.stderr
    production = CHART / "values-production.yaml"
    old = of_kind(template(helm_env, production, kube="1.20.0"), "PodDisruptionBudget")
    new = of_kind(template(helm_env, production, kube="1.30.0"), "PodDisruptionBudget")
    assert [pdb["apiVersion"] for pdb in old] == ["policy/v1beta1"]
    assert [pdb["apiVersion"] for pdb in new] == ["policy/v1"]
    # The agents' node-local Service: internalTrafficPolicy from 1.22 on (1.20 rejects the field).
    for kube, policy in (("1.20.0", None), ("1.21.0", None), ("1.22.0", "Local"), ("1.30.0", "Local")):
        service = one(template(helm_env, production, kube=kube), "Service", f"{RELEASE}-agent")
        assert service["spec"].get("internalTrafficPolicy") == policy, kube


def test_chart_metadata_and_default_images(renders: dict[str, list[Manifest]]) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["kubeVersion"] == ">=1.20.0-0"
    assert chart["appVersion"] == project["version"]
    images = {
        (container["image"], container["imagePullPolicy"])
        for _, _, spec in pod_specs(renders["default"])
        for container in containers(spec)
    }
    assert images == {(f"localhost/slimline-task:{project['version']}", "IfNotPresent")}
    agent_images = {
        container["image"]
        for what, _, spec in pod_specs(renders["production"])
        if what.startswith("DaemonSet/")
        for container in containers(spec)
    }
    assert agent_images == {f"localhost/slimline-agent:{project['version']}"}


# --- pod policies --------------------------------------------------------------------------------


@pytest.mark.parametrize("values", ["default", "production", "everything"])
def test_every_pod_runs_non_root_on_a_read_only_root(renders: dict[str, list[Manifest]], values: str) -> None:
    pods = list(pod_specs(renders[values]))
    assert pods
    for what, _, spec in pods:
        pod = spec.get("securityContext") or {}
        assert not any(spec.get(key) for key in ("hostNetwork", "hostPID", "hostIPC")), what
        volumes = {volume["name"]: volume for volume in spec.get("volumes") or []}
        for container in containers(spec):
            where = f"{what} container {container['name']}"
            own = container.get("securityContext") or {}
            effective = {**pod, **own}
            assert effective.get("runAsNonRoot") is True, where
            assert effective.get("runAsUser") == UID, where
            assert (effective.get("seccompProfile") or {}).get("type") == "RuntimeDefault", where
            assert own.get("allowPrivilegeEscalation") is False, where
            assert own.get("readOnlyRootFilesystem") is True, where
            assert own.get("privileged") is not True, where
            assert "ALL" in (own.get("capabilities") or {}).get("drop", []), where
            assert not (own.get("capabilities") or {}).get("add"), where
            tmp = [mount for mount in container.get("volumeMounts") or [] if mount["mountPath"] == "/tmp"]
            assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: /tmp is no emptyDir"
        for volume in volumes.values():
            if "hostPath" in volume:
                # Only the agent keeps state on its node, in a folder that must already exist.
                assert what.startswith("DaemonSet/") and volume["hostPath"]["type"] == "Directory", what


def quantity(value: str | int | float) -> Fraction:
    units: dict[str, Fraction] = {
        "m": Fraction(1, 1000),
        "k": Fraction(10**3),
        "M": Fraction(10**6),
        "G": Fraction(10**9),
        "Ki": Fraction(2**10),
        "Mi": Fraction(2**20),
        "Gi": Fraction(2**30),
    }
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match and match.group(2) in ("", *units), f"not a quantity: {value!r}"
    return Fraction(match.group(1)) * units.get(match.group(2), Fraction(1))


@pytest.mark.parametrize("values", ["default", "production", "everything"])
def test_every_container_has_requests_and_limits(renders: dict[str, list[Manifest]], values: str) -> None:
    count = 0
    for what, _, spec in pod_specs(renders[values]):
        for container in containers(spec):
            resources = container.get("resources") or {}
            for resource in ("cpu", "memory"):
                request = (resources.get("requests") or {}).get(resource)
                limit = (resources.get("limits") or {}).get(resource)
                assert request is not None and limit is not None, f"{what} {container['name']}: {resource}"
                assert quantity(request) <= quantity(limit), f"{what} {container['name']}: {resource}"
            count += 1
    assert count >= 2


@pytest.mark.parametrize("values", ["default", "production", "everything"])
def test_no_pod_gets_an_api_token(renders: dict[str, list[Manifest]], values: str) -> None:
    """No pod of the chart calls the Kubernetes API: every token mount is off, said explicitly, and
    the chart makes no Role or binding."""
    docs = renders[values]
    accounts = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "ServiceAccount")}
    assert accounts
    for name, account in accounts.items():
        assert account.get("automountServiceAccountToken") is False, f"ServiceAccount {name}"
    for what, _, spec in pod_specs(docs):
        assert spec.get("automountServiceAccountToken") is False, what
        assert spec.get("serviceAccountName", "default") in {*accounts, "default"}, what
    rbac = [
        doc["kind"]
        for doc in docs
        if doc["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
    ]
    assert rbac == []


# --- network policies ----------------------------------------------------------------------------


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if (
            (operator == "In" and labels.get(key) not in values)
            or (operator == "NotIn" and key in labels and labels[key] in values)
            or (operator == "Exists" and key not in labels)
            or (operator == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def allowed(
    policies: list[Manifest], direction: str, pod: dict[str, str], peer: dict[str, str], port: int
) -> bool:
    """Whether `pod` may receive from (Ingress) or send to (Egress) a pod labelled `peer` in the same
    namespace on `port`, under these policies; a pod no policy isolates is open."""
    isolating = [
        policy
        for policy in policies
        if selects(policy["spec"]["podSelector"], pod) and direction in policy["spec"].get("policyTypes", [])
    ]
    if not isolating:
        return True
    field, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in isolating:
        for rule in policy["spec"].get(field) or []:
            if not any(entry["port"] == port for entry in rule["ports"]):
                continue
            for entry in rule[peers]:
                # Peers with a namespaceSelector name other namespaces; ipBlocks name addresses.
                if set(entry) == {"podSelector"} and selects(entry["podSelector"], peer):
                    return True
    return False


MLFLOW = {
    "app.kubernetes.io/name": "slimline",
    "app.kubernetes.io/instance": RELEASE,
    "app.kubernetes.io/component": "mlflow",
}
AIRFLOW_TASK = {"tier": "airflow", "component": "worker", "release": "airflow"}
SLIMLINE_TASK = {"app.kubernetes.io/part-of": "slimline", "app.kubernetes.io/component": "task"}


@pytest.mark.parametrize("values", ["default", "production", "everything"])
def test_network_policies_isolate_every_pod(renders: dict[str, list[Manifest]], values: str) -> None:
    docs = renders[values]
    policies = of_kind(docs, "NetworkPolicy")
    for what, metadata, _ in pod_specs(docs):
        labels = metadata["labels"]
        types = {
            kind
            for policy in policies
            if selects(policy["spec"]["podSelector"], labels)
            for kind in policy["spec"]["policyTypes"]
        }
        assert types == {"Ingress", "Egress"}, f"{what} is not isolated both ways: {types}"
    # No rule opens a direction to everything: each names its peers and its ports.
    for policy in policies:
        for field, peers in (("ingress", "from"), ("egress", "to")):
            for rule in policy["spec"].get(field) or []:
                assert rule.get(peers) and rule.get("ports"), (
                    f"{policy['metadata']['name']}: open {field} rule"
                )


@pytest.mark.parametrize("values", ["default", "production"])
def test_mlflow_reachable_only_from_task_pods_on_its_port(
    renders: dict[str, list[Manifest]], values: str
) -> None:
    docs = renders[values]
    policies = of_kind(docs, "NetworkPolicy")
    port = one(docs, "Service", f"{RELEASE}-mlflow")["spec"]["ports"][0]["port"]
    test_pod = one(docs, "Pod", f"{RELEASE}-test-mlflow")["metadata"]["labels"]
    for client in (AIRFLOW_TASK, SLIMLINE_TASK, test_pod):
        assert allowed(policies, "Ingress", MLFLOW, client, port), client
    for stranger in ({"tier": "airflow", "component": "api-server"}, {"app": "anything"}, {}):
        assert not allowed(policies, "Ingress", MLFLOW, stranger, port), stranger
    assert not allowed(policies, "Ingress", MLFLOW, AIRFLOW_TASK, 22)
    # The test pod may speak to MLflow and to nothing else.
    assert allowed(policies, "Egress", test_pod, MLFLOW, port)
    assert not allowed(policies, "Egress", test_pod, AIRFLOW_TASK, 8080)


def test_mlflow_egress_follows_its_stores(renders: dict[str, list[Manifest]]) -> None:
    """SQLite and local artifacts: MLflow talks to nothing but DNS. PostgreSQL and S3: to those ports."""

    def egress_ports(values: str) -> set[int]:
        policy = one(renders[values], "NetworkPolicy", f"{RELEASE}-mlflow")
        return {entry["port"] for rule in policy["spec"].get("egress") or [] for entry in rule["ports"]}

    assert egress_ports("default") == set()
    assert egress_ports("production") == {5432, 443}


def test_agents_take_connections_only_from_their_clients(renders: dict[str, list[Manifest]]) -> None:
    docs = renders["production"]
    policies = of_kind(docs, "NetworkPolicy")
    agent = one(docs, "DaemonSet", f"{RELEASE}-agent")["spec"]["template"]["metadata"]["labels"]
    assert allowed(policies, "Ingress", agent, {"slimline.io/agent-client": "true"}, 8700)
    assert not allowed(policies, "Ingress", agent, AIRFLOW_TASK, 8700)
    assert not allowed(policies, "Egress", agent, MLFLOW, 5000)


# --- settings, secrets ---------------------------------------------------------------------------

SETTINGS_ENV = {f"SLIMLINE_{name.upper()}" for name in Settings.model_fields}
# Outside slimline's settings, the ConfigMap carries only what MLflow's and boto3's clients read.
OTHER_KEYS = {"MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION"}


def settings_data(docs: list[Manifest]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap", f"{RELEASE}-settings")["data"]
    return data


@pytest.mark.parametrize("values", ["default", "production", "everything"])
def test_settings_configmap_is_slimline_settings(
    renders: dict[str, list[Manifest]], values: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every key is a setting slimline reads (a typo would be ignored silently by pydantic-settings),
    the tracking URI is the chart's MLflow Service, and the whole map loads into Settings."""
    docs = renders[values]
    data = settings_data(docs)
    assert set(data) - OTHER_KEYS <= SETTINGS_ENV
    service = one(docs, "Service", f"{RELEASE}-mlflow")
    port = service["spec"]["ports"][0]["port"]
    assert data["SLIMLINE_MLFLOW_TRACKING_URI"] == f"http://{RELEASE}-mlflow.{NAMESPACE}.svc:{port}"
    for name in [name for name in os.environ if name.startswith("SLIMLINE_")]:
        monkeypatch.delenv(name)
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.tracking_uri == data["SLIMLINE_MLFLOW_TRACKING_URI"]
    assert settings.mlflow_artifact_root == data["SLIMLINE_ARTIFACT_ROOT"]
    if values != "default":
        assert settings.store_uri.startswith("s3://")
        assert settings.channel_uri.startswith("s3://")
        assert settings.audit_log_uri.startswith("s3://")


def test_schema_names_every_slimline_setting() -> None:
    """The values schema lists exactly slimline's settings (the S3 endpoint comes from objectStore), so
    a new setting is settable and a misspelt one fails."""
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    properties = schema["properties"]["settings"]["properties"]
    assert set(properties) == SETTINGS_ENV - {"SLIMLINE_S3_ENDPOINT_URL"}
    assert schema["properties"]["settings"]["additionalProperties"] is False


def test_numbers_in_settings_render_exactly(
    helm_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A values file's numbers reach the templates as floats; 8 GiB must not become 8.589934592e+09."""
    values = values_file(
        tmp_path,
        "numbers",
        {"settings": {"SLIMLINE_MAX_CHECKPOINT_BYTES": 8589934592, "SLIMLINE_ROLLOUT_POKE_SECONDS": 7.5}},
    )
    data = settings_data(template(helm_env, values))
    assert data["SLIMLINE_MAX_CHECKPOINT_BYTES"] == "8589934592"
    assert data["SLIMLINE_ROLLOUT_POKE_SECONDS"] == "7.5"
    monkeypatch.setenv("SLIMLINE_MAX_CHECKPOINT_BYTES", data["SLIMLINE_MAX_CHECKPOINT_BYTES"])
    assert Settings().max_checkpoint_bytes == 8 * 2**30


SECRET_KEYS = re.compile(
    r"(password|passwd|pass|secretaccesskey|accesskeyid|sessiontoken|token|apikey|secretkey|fernetkey|jwtsecret|privatekey)$",
    re.IGNORECASE,
)
CREDENTIAL_IN_URI = re.compile(r"://[^/\s:@]+:[^/\s@]+@")


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")
    else:
        yield path, node


@pytest.mark.parametrize(
    "path", [CHART / "values.yaml", CHART / "values-production.yaml", AIRFLOW_VALUES], ids=lambda p: p.name
)
def test_no_plaintext_secret_in_values_files(path: Path) -> None:
    leaves = list(walk(yaml.safe_load(path.read_text())))
    assert leaves
    for where, value in leaves:
        key = re.sub(r"\[\d+\]$", "", where).rsplit(".", 1)[-1]
        # existingSecret, existingSecretKey: names of a Secret and of its key, not secrets
        if SECRET_KEYS.search(key) and not key.startswith("existing"):
            assert value in ("", None) or isinstance(value, bool), f"{path.name}: {where} holds a value"
        if isinstance(value, str):
            assert not CREDENTIAL_IN_URI.search(value), f"{path.name}: {where} has credentials in a URI"
            assert "PRIVATE KEY" not in value, f"{path.name}: {where} holds a private key"


def test_secrets_come_only_from_the_user(
    helm_env: dict[str, str], renders: dict[str, list[Manifest]]
) -> None:
    """No values set, no Secret; credentials set, a Secret of exactly those; existingSecret, theirs."""
    assert of_kind(renders["default"], "Secret") == []
    assert of_kind(renders["production"], "Secret") == []
    docs = template(
        helm_env, sets=("objectStore.accessKeyId=AKIDTEST", "objectStore.secretAccessKey=s3cr3t-test")
    )
    (secret,) = of_kind(docs, "Secret")
    decoded = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    assert decoded == {"AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": "s3cr3t-test"}
    mlflow = one(docs, "Deployment", f"{RELEASE}-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert mlflow["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    docs = template(helm_env, sets=("objectStore.existingSecret=mine", "objectStore.accessKeyId=AKIDTEST"))
    assert of_kind(docs, "Secret") == []
    mlflow = one(docs, "Deployment", f"{RELEASE}-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert mlflow["envFrom"] == [{"secretRef": {"name": "mine"}}]
    half = helm(helm_env, "template", RELEASE, str(CHART), "--set", "objectStore.accessKeyId=AKIDTEST")
    assert half.returncode != 0 and "secretAccessKey" in half.stderr


def test_mlflow_database_password_stays_in_its_secret(renders: dict[str, list[Manifest]]) -> None:
    docs = renders["production"]
    spec = one(docs, "Deployment", f"{RELEASE}-mlflow")["spec"]["template"]["spec"]
    for container in containers(spec):
        (uri,) = [env for env in container["env"] if env["name"] == "MLFLOW_BACKEND_STORE_URI"]
        assert uri == {
            "name": "MLFLOW_BACKEND_STORE_URI",
            "valueFrom": {"secretKeyRef": {"name": "slimline-mlflow-db", "key": "uri"}},
        }
        assert not any(
            "postgresql" in arg for arg in container.get("args", []) + container.get("command", [])
        )


# --- the workloads -------------------------------------------------------------------------------


def test_mlflow_server_answers_its_service_names(renders: dict[str, list[Manifest]]) -> None:
    """MLflow refuses Host headers outside --allowed-hosts; the Service's names must be in it."""
    container = one(renders["everything"], "Deployment", f"{RELEASE}-mlflow")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["command"] == ["mlflow"] and container["args"][0] == "server"
    (hosts,) = [
        arg.split("=", 1)[1].split(",") for arg in container["args"] if arg.startswith("--allowed-hosts=")
    ]
    service = f"{RELEASE}-mlflow"
    for host in (service, f"{service}:*", f"{service}.{NAMESPACE}.svc:*", f"{service}.{NAMESPACE}.svc.*"):
        assert host in hosts
    assert "mlflow.example.internal" in hosts
    assert "--host=0.0.0.0" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"


def test_sqlite_backend_admits_one_replica(helm_env: dict[str, str]) -> None:
    done = helm(helm_env, "template", RELEASE, str(CHART), "--set", "mlflow.replicas=2")
    assert done.returncode != 0 and "mlflow.replicas" in done.stderr


@pytest.mark.parametrize("values", ["production", "everything"])
def test_agent_daemonset(renders: dict[str, list[Manifest]], values: str) -> None:
    daemonset = one(renders[values], "DaemonSet", f"{RELEASE}-agent")
    spec = daemonset["spec"]["template"]["spec"]
    (agent,) = spec["containers"]
    assert agent["image"].startswith("localhost/slimline-agent:")
    args = agent["args"]
    for expected in (
        "--device-id=$(NODE_NAME)",
        "--host=0.0.0.0",
        "--port=8700",
        "--root=/var/lib/slimline-agent/root",
    ):
        assert expected in args
    assert any(arg.startswith("--channel=s3://") for arg in args)
    assert any(arg.startswith("--trusted-key=/etc/slimline/keys/") for arg in args)
    (node,) = [env for env in agent["env"] if env["name"] == "NODE_NAME"]
    assert node["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    # Ready only while an engine is active (/healthz answers 503 before); alive while it listens.
    assert agent["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert agent["livenessProbe"]["tcpSocket"] == {"port": "http"}
    assert "httpGet" not in agent["livenessProbe"]
    assert spec["nodeSelector"] == {"slimline.io/edge-device": "true"}
    state = [mount for mount in agent["volumeMounts"] if mount["mountPath"] == "/var/lib/slimline-agent"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    if values == "everything":
        assert state[0]["subPathExpr"] == "$(NODE_NAME)"
        assert volumes["state"]["persistentVolumeClaim"] == {"claimName": "slimline-agents"}
        key = one(renders[values], "ConfigMap", f"{RELEASE}-release-key")
        assert "BEGIN PUBLIC KEY" in key["data"]["release.pub"]
    else:
        assert volumes["state"]["hostPath"] == {"path": "/var/lib/slimline-agent", "type": "Directory"}
        assert volumes["trusted-key"]["configMap"]["name"] == "slimline-release-key"


def test_agents_off_by_default(renders: dict[str, list[Manifest]]) -> None:
    assert of_kind(renders["default"], "DaemonSet") == []


# --- bad values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"mlflow": {"replicas": "two"}}, "mlflow.replicas: Invalid type"),
        ({"mlflow": {"replica": 2}}, "Additional property replica is not allowed"),
        ({"settings": {"SLIMLINE_CHEKPOINT_STORE": "s3://b/p"}}, "SLIMLINE_CHEKPOINT_STORE"),
        ({"settings": {"SLIMLINE_CANARY_EXAMPLES": "many"}}, "settings.SLIMLINE_CANARY_EXAMPLES"),
        (
            {"mlflow": {"backendStore": {"uri": "postgresql://mlflow:in-values@db/mlflow"}}},
            "mlflow.backendStore.uri",
        ),
        (
            # null deletes a default in Helm's merge: a values file that drops the limits
            {"mlflow": {"resources": {"limits": None}}},
            "mlflow.resources: limits is required",
        ),
        ({"agents": {"enabled": True}}, "agents.fleet"),
        ({"networkPolicy": {"objectStore": {"to": []}}}, "networkPolicy.objectStore.to"),
        ({"imagePullPolicy": "Always"}, "Additional property imagePullPolicy is not allowed"),
    ],
    ids=[
        "wrong-type",
        "unknown-field",
        "unknown-setting",
        "setting-type",
        "password-in-uri",
        "no-limits",
        "agents-without-fleet",
        "open-egress",
        "unknown-top-level",
    ],
)
def test_bad_values_file_fails_naming_the_field(
    helm_env: dict[str, str], tmp_path: Path, values: dict[str, Any], named: str
) -> None:
    path = values_file(tmp_path, "bad", values)
    done = helm(helm_env, "template", RELEASE, str(CHART), "-f", str(path))
    assert done.returncode != 0
    assert named in done.stderr, done.stderr


# --- the official Airflow chart's values ---------------------------------------------------------


def test_airflow_values_fit_this_chart(renders: dict[str, list[Manifest]]) -> None:
    """helm/airflow-values.yaml and the chart agree: Airflow runs from the task image with the DAGs
    inside, on KubernetesExecutor, and loads the ConfigMap and Secret this chart's releases name."""
    airflow = yaml.safe_load(AIRFLOW_VALUES.read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    production = yaml.safe_load((CHART / "values-production.yaml").read_text())
    assert airflow["executor"] == "KubernetesExecutor"
    assert (airflow["defaultAirflowRepository"], airflow["defaultAirflowTag"]) == (
        "localhost/slimline-task",
        chart["appVersion"],
    )
    assert airflow["config"]["core"]["dags_folder"] == "/opt/slimline/share/dags"
    assert not airflow.get("dags", {}).get("gitSync", {}).get("enabled", False)
    env_from = yaml.safe_load(airflow["extraEnvFrom"])
    assert {"configMapRef": {"name": f"{RELEASE}-settings"}} in env_from
    assert {"secretRef": {"name": production["objectStore"]["existingSecret"]}} in env_from
    one(renders["production"], "ConfigMap", f"{RELEASE}-settings")
    # The signing key's mount in the task pods is where the production settings say it is.
    (mount,) = airflow["workers"]["extraVolumeMounts"]
    assert production["settings"]["SLIMLINE_SIGNING_KEY"] == f"{mount['mountPath']}/release.key"
    # The task image's entry point is `slimline`: every Airflow command goes through /usr/bin/env.
    for component in ("scheduler", "dagProcessor", "triggerer", "apiServer", "workers", "migrateDatabaseJob"):
        assert airflow[component]["command"] == ["/usr/bin/env"], component
