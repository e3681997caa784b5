"""Shared fixtures: offline Hugging Face, isolated settings, a tiny checkpoint, a moto S3 server."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Never reach the Hugging Face Hub; give boto3 (and moto) credentials and a region.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# The developer's own SLIMLINE_* settings must not leak into the tests.
for _name in [n for n in os.environ if n.startswith("SLIMLINE_")]:
    del os.environ[_name]

from tasks.core.settings import Settings  # noqa: E402
from tests.factories import make_checkpoint  # noqa: E402
from tests.fleet_fixtures import fleet_release  # noqa: E402, F401  (the session release, for every module)
from tests.image_builds import images, podman_api  # noqa: E402, F401  (the images, podman's Docker API)
from tests.k8s_cluster import k8s_cluster  # noqa: E402, F401  (the local Kubernetes cluster's kubeconfig)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    home = tmp_path / "home"
    home.mkdir()
    return Settings(home=home)


@pytest.fixture(scope="session")
def _tiny_checkpoint_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("template") / "ckpt-src")


@pytest.fixture
def tiny_checkpoint(tmp_path: Path, _tiny_checkpoint_template: Path) -> Path:
    """A fresh, writable copy of make_checkpoint()'s output (built once: it is deterministic)."""
    return Path(shutil.copytree(_tiny_checkpoint_template, tmp_path / "ckpt-src"))


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    # One log record per HTTP request is noise in a failure report (and costs time).
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> str:
    import boto3

    name = f"slimline-test-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=name)
    return name
