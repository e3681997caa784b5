"""slimline's images for the tests that run them (tests/test_images.py, tests/test_k8s.py): `images`
builds both with infra/images.sh (layers cached; the first build on a bare machine takes minutes),
`podman_api` serves podman's Docker-compatible API on a socket of its own for the Docker provider
(`serve_podman_api`, which bench/execution.py uses too),
`podman(...)` runs podman with the project's containers.conf. The fixtures are registered in
tests/conftest.py."""

from __future__ import annotations

import os
import subprocess
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.fleet_fixtures import wait_for

REPO = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGES = {"task": f"localhost/slimline-task:{VERSION}", "agent": f"localhost/slimline-agent:{VERSION}"}
PODMAN_ENV = {"CONTAINERS_CONF": str(REPO / "infra" / "containers.conf")}


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args], env=os.environ | PODMAN_ENV, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args[:3])}… exited {result.returncode}: {result.stderr[-3000:]}"
        )
    return result


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    built = subprocess.run(
        [str(REPO / "infra" / "images.sh"), "all"],
        cwd=REPO,
        env=os.environ | PODMAN_ENV,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    print(built.stdout)  # build times and sizes, in the test log
    return IMAGES


@contextmanager
def serve_podman_api(folder: Path) -> Iterator[str]:
    """podman's Docker-compatible API on a socket of its own in `folder`, for the time of the block."""
    socket = folder / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        env=os.environ | PODMAN_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: socket.exists() or None, 30, "podman's API socket")
        yield f"unix://{socket}"
    finally:
        service.terminate()
        service.wait(timeout=30)


@pytest.fixture(scope="session")
def podman_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """podman's Docker-compatible API for the Docker provider, for the whole session."""
    with serve_podman_api(tmp_path_factory.mktemp("podman-api")) as url:
        yield url
