"""The container images (infra/), built by `infra/images.sh` with podman (layers cached; the first
build on a bare machine takes minutes) and run for real: the task image runs one pipeline step on a
tiny model and writes the same artifact key as the in-process run; the agent image verifies a signed
release from a file:// channel and serves predictions from it. Skipped only where podman is absent
(`make test` installs it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.core.settings import Settings
from tasks.core.store import open_store
from tasks.engines.canary import read_canary
from tasks.fleet.channel import Channel, DeviceStatus
from tasks.flow.orchestration import dags_test
from tasks.flow.pipeline import VariantDone, VariantJob, VariantOutcome, prepare, run_variant_job
from tests.fleet_fixtures import (
    FLEET,
    SIMULATED_CPUINFO,
    FleetRelease,
    desire,
    http,
    publish,
    wait_for,
)
from tests.image_builds import REPO, VERSION, podman
from tests.tiny import assert_registers_like_in_process, write_tiny_recipe
from tests.tiny import publish as publish_checkpoint

pytestmark = pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")

USER = "10001:10001"
VARIANT = "onnx-int8-dynamic"


def test_images_run_as_a_non_root_user_and_carry_the_version_and_commit(images: dict[str, str]) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    for image in images.values():
        config = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
        assert config["User"] == USER
        labels = config["Labels"]
        assert labels["org.opencontainers.image.version"] == VERSION
        assert labels["org.opencontainers.image.revision"].startswith(commit)
    # The agent image holds no PyTorch (nor transformers, MLflow, Airflow): the agent cannot need them.
    for package in ("torch", "transformers", "mlflow", "airflow"):
        found = podman(
            "run", "--rm", "--entrypoint", "python3", images["agent"], "-c", f"import {package}", check=False
        )
        assert found.returncode == 1 and f"No module named '{package}'" in found.stderr


@pytest.fixture
def agent_container(images: dict[str, str]) -> Iterator[str]:
    name = f"slimline-agent-test-{uuid.uuid4().hex[:8]}"
    yield name
    podman("rm", "--force", "--time", "5", name, check=False)


def test_the_agent_image_verifies_a_release_and_serves_predictions_from_it(
    images: dict[str, str], agent_container: str, fleet_release: FleetRelease, tmp_path: Path
) -> None:
    channel_dir = tmp_path / "channel"
    channel_dir.mkdir()
    channel = Channel(open_store(channel_dir.as_uri()), FLEET)
    publish(channel, fleet_release, "good1")
    desire(channel, fleet_release.keys.private, 1, 1)
    shutil.copy(fleet_release.keys.public, tmp_path / "release.pub")
    (tmp_path / "cpuinfo").write_text(SIMULATED_CPUINFO)
    root = tmp_path / "device"
    # The folder is mounted at its own path (:U hands it to the image's user); the root filesystem is
    # read-only; host networking so the test reaches the agent's port on 127.0.0.1.
    podman(
        "run",
        "--detach",
        "--name",
        agent_container,
        "--read-only",
        "--network",
        "host",
        "--volume",
        f"{tmp_path}:{tmp_path}:U",
        images["agent"],
        "--fleet",
        FLEET,
        "--device-id",
        "box-1",
        "--root",
        str(root),
        "--channel",
        channel_dir.as_uri(),
        "--trusted-key",
        str(tmp_path / "release.pub"),
        "--cpuinfo",
        str(tmp_path / "cpuinfo"),
        "--poll-seconds",
        "0.2",
    )

    def port() -> int | None:
        running = podman("inspect", "--format", "{{.State.Running}}", agent_container).stdout.strip()
        if running != "true":
            raise AssertionError(
                f"the agent container stopped: {podman('logs', agent_container).stderr[-3000:]}"
            )
        path = root / "agent.json"
        return int(json.loads(path.read_text())["port"]) if path.is_file() else None

    url = f"http://127.0.0.1:{wait_for(port, 120, 'the agent to listen')}"
    wait_for(lambda: http("GET", f"{url}/healthz")[0] == 200, 120, "release 1 to serve")
    code, version = http("GET", f"{url}/version")
    assert code == 200 and version["release"] == 1 and version["target"] == "cpu-a"
    assert version["model_version"] == fleet_release.model_version
    canary = read_canary(fleet_release.engines["cpu-a"] / "canary.json")
    code, answer = http("POST", f"{url}/predict", {"texts": canary.texts[:20]})
    assert code == 200 and answer["release"] == 1 and len(answer["logits"]) == 20
    expected = [canary.label_names[row.index(max(row))] for row in canary.reference_logits[:20]]
    assert sum(a == b for a, b in zip(answer["labels"], expected, strict=True)) >= 18

    # The device reports through the channel, as a process agent does.
    def reported() -> DeviceStatus | None:
        status = channel.statuses(["box-1"]).get("box-1")
        done = status and status.attempt and status.attempt.release == 1 and status.attempt.result == "active"
        return status if done else None

    status = wait_for(reported, 30, "the device's report of release 1")
    assert status.active is not None and status.active.release == 1
    podman("stop", "--time", "20", agent_container)
    assert podman("inspect", "--format", "{{.State.ExitCode}}", agent_container).stdout.strip() == "0"


def test_the_task_image_runs_a_variant_step_with_the_same_artifact_key_as_in_process(
    images: dict[str, str], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    recipe = write_tiny_recipe(tmp_path / "recipe")

    def prepared_in(home: Path) -> VariantJob:
        home.mkdir()
        settings = Settings(home=home)
        uri = publish_checkpoint(settings, tiny_checkpoint, "nightly/tiny")
        return VariantJob(prepared=prepare(settings, recipe, uri, f"local-{home.name}"), variant=VARIANT)

    # In the container: the job prepared here, the step run there against the same home, mounted at
    # its own path; the repository's targets and recipes read-only where the settings name them.
    container_home = tmp_path / "container"
    job = prepared_in(container_home)
    (tmp_path / "job.json").write_text(job.model_dump_json())
    env = Settings(home=container_home).environment()
    mounts = [f"{tmp_path}:{tmp_path}:U"] + [
        f"{REPO / d}:{REPO / d}:ro" for d in ("recipes", "targets", "fleets")
    ]
    ran = podman(
        "run",
        "--rm",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--network",
        "none",
        *[arg for mount in mounts for arg in ("--volume", mount)],
        *[arg for name, value in env.items() for arg in ("--env", f"{name}={value}")],
        images["task"],
        "step",
        "variant",
        str(tmp_path / "job.json"),
    )
    in_container = VariantDone.model_validate_json(ran.stdout.strip().splitlines()[-1])

    # In this process, in a home of its own: the same keys, so a rerun anywhere finds the artifact.
    local_home = tmp_path / "local"
    in_process = run_variant_job(Settings(home=local_home), prepared_in(local_home))
    container, local = in_container.outcome, in_process.outcome
    assert isinstance(container, VariantOutcome) and isinstance(local, VariantOutcome)
    assert container.steps_computed > 0 and local.steps_computed > 0  # each really ran the step
    assert container.model_key == local.model_key
    assert container.evaluation.key == local.evaluation.key
    assert container.verdict.passed == local.verdict.passed
    assert (container_home / "artifacts").is_dir()
    assert Path(container.evaluation.path).is_relative_to(container_home)


def test_the_nightly_dag_runs_its_steps_in_containers_and_registers_what_in_process_does(
    images: dict[str, str], podman_api: str, settings: Settings, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    recipe = write_tiny_recipe(tmp_path / "recipe")
    publish_checkpoint(settings, tiny_checkpoint, "nightly/tiny")
    in_containers = settings.model_copy(update={"execution": "container", "docker_url": podman_api})
    run = dags_test(in_containers, "nightly_compression", {"recipe": str(recipe), "prefix": "nightly"})
    assert run.state == "success"
    # Both variants and both engine builds (one built, one skipped: FP32 on an INT8 target) started
    # the task image through the API.
    started = run.log_path.read_text().count(f"Starting docker container from image {images['task']}")
    assert started == 4
    assert_registers_like_in_process(settings, recipe, tiny_checkpoint, tmp_path / "local")
