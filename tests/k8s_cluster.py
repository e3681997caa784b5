"""The local Kubernetes cluster (v1.20.2, one node on 127.0.0.1, infra/k8s/) for tests marked `k8s`.

- `k8s_cluster` (session fixture, registered in tests/conftest.py): runs infra/k8s/up.sh unless the
  cluster is already up, yields the kubeconfig's path (.tools/k8s/kubeconfig, or under
  $SLIMLINE_K8S_RUN) and, at the end of the session, runs infra/k8s/down.sh only if it started the
  cluster itself (and SLIMLINE_K8S_KEEP is not set). The binaries come from infra/k8s/build.sh
  (`make k8s-build`, about 7 minutes cold); the fixture does not build them.
- `kubectl(kubeconfig, *args)` and `helm(kubeconfig, *args)`: the project's binaries (.tools/bin, from
  `make tools`) pointed at that cluster, helm's cache and config kept out of $HOME.
- `load_images(*images)`: podman images into the cluster's containerd (infra/k8s/load-image.sh);
  there is no registry, so pods must use imagePullPolicy: Never (or IfNotPresent with a fixed tag).

The cluster has no kube-proxy, no cluster DNS and no storage provisioner: Service IPs do not route
(reach pods by pod IP, `kubectl exec` or `kubectl port-forward`), and PersistentVolumeClaims of a
default StorageClass stay Pending. The bridge network does not enforce NetworkPolicies.

    from tests.k8s_cluster import kubectl

    @pytest.mark.k8s
    def test_something(k8s_cluster: Path) -> None:
        kubectl(k8s_cluster, "get", "nodes")
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra" / "k8s"
RUN = Path(os.environ.get("SLIMLINE_K8S_RUN") or ROOT / ".tools" / "k8s")
KUBECONFIG = RUN / "kubeconfig"
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
HELM = ROOT / ".tools" / "bin" / "helm"
COMPONENTS = ("containerd", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")


def cluster_is_up() -> bool:
    """Every component's saved PID is alive and the kubeconfig exists (what up.sh checks too)."""
    if not KUBECONFIG.exists():
        return False
    for name in COMPONENTS:
        try:
            pid = int((RUN / "pids" / f"{name}.pid").read_text())
            # The state after the command name; Z: a zombie that PID 1 has not reaped, not running.
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return False
        if state == "Z":
            return False
    return True


def _script(name: str, *args: str, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(INFRA / name), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"infra/k8s/{name} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def _env(kubeconfig: Path) -> dict[str, str]:
    home = RUN / "helm-home"
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "KUBECONFIG": str(kubeconfig),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


def _tool(
    tool: Path, kubeconfig: Path, args: tuple[str, ...], timeout: float, check: bool
) -> subprocess.CompletedProcess[str]:
    """`tool ARGS` against the cluster, from the repository root; with check, a failure raises with
    the tool's stderr."""
    done = subprocess.run(
        [str(tool), *args],
        capture_output=True,
        text=True,
        env=_env(kubeconfig),
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{tool.name} {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}"
        )
    return done


def kubectl(
    kubeconfig: Path, *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`kubectl ARGS` against the cluster."""
    return _tool(KUBECTL, kubeconfig, args, timeout, check)


def helm(
    kubeconfig: Path, *args: str, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`helm ARGS` against the cluster, run from the repository root (chart paths are relative)."""
    return _tool(HELM, kubeconfig, args, timeout, check)


def load_images(*images: str) -> str:
    """Load podman images into the cluster's containerd (skipped when already there); returns the log."""
    return _script("load-image.sh", *images)


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[Path]:
    """The local cluster's kubeconfig; starts the cluster if needed and stops it only if it started it."""
    for tool in (KUBECTL, HELM):
        if not tool.exists():
            pytest.fail(f"{tool.relative_to(ROOT)} is missing: `make tools` installs it")
    started = not cluster_is_up()
    if started:
        _script("up.sh")
    try:
        yield KUBECONFIG
    finally:
        if started and not os.environ.get("SLIMLINE_K8S_KEEP"):
            _script("down.sh", timeout=120)
