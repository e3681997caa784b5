"""Kill and rerun loses nothing: a real `slimline run` killed (SIGKILL) while logging a child run, in
the middle of a variant step, then between registering a model version and moving the alias, and run
once more, ends with the registry, artifacts and report of a run that was never interrupted."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tasks.core.errors import RegistryError
from tasks.core.settings import Settings
from tasks.recipe import load_recipe
from tasks.registry.tracking import client, experiment_id, load_summary, register_version, set_alias
from tests.tiny import publish, write_tiny_recipe

REPO = Path(__file__).resolve().parents[1]
MODEL = "tiny-sentiment"
# The first run ends (set_terminated) is the first variant's child run: nothing ends the parent before.
LOGGING_CHILD = "mlflow.tracking.client:MlflowClient.set_terminated"
MID_STEP = "onnxruntime.quantization:quantize_dynamic"  # inside quantize.onnx_dynamic_int8's run
BEFORE_ALIAS = "tasks.registry.tracking:set_alias"


def slimline(home: Path, store: Path, recipe: Path, uri: str, kill_at: str | None = None) -> float:
    """Run `slimline run` in a process of its own (killed at `kill_at`, if given); its seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIMLINE_")}
    env |= {
        "PYTHONPATH": str(REPO),
        "SLIMLINE_HOME": str(home),
        "SLIMLINE_CHECKPOINT_STORE": store.as_uri(),
        "HF_HUB_OFFLINE": "1",
    }
    entry = ["-m", "tests.killpoint", kill_at] if kill_at else ["-m", "tasks.cli"]
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, *entry, "run", "--checkpoint", uri, "--recipe", str(recipe)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    expected = -signal.SIGKILL if kill_at else 0
    assert result.returncode == expected, result.stderr[-3000:]
    return time.perf_counter() - started


def registry(home: Path) -> MlflowClient:
    uri = Settings(home=home).tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def versions(home: Path) -> list[tuple[str, str, str]]:
    """(variant, artifact key, status) of every registered version, in version order."""
    found = sorted(registry(home).search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version))
    return [(v.tags["slimline.variant"], v.tags["slimline.artifact_key"], v.status) for v in found]


def aliases(home: Path) -> dict[str, str]:
    """Alias → variant of the version it names."""
    client = registry(home)
    if not client.search_registered_models(f"name = '{MODEL}'"):
        return {}
    return {
        alias: client.get_model_version(MODEL, version).tags["slimline.variant"]
        for alias, version in client.get_registered_model(MODEL).aliases.items()
    }


def runs(home: Path, kind: str) -> list[Any]:
    client = registry(home)
    experiment = client.get_experiment_by_name("slimline/tiny")
    assert experiment is not None
    return list(client.search_runs([experiment.experiment_id], f"tags.`slimline.kind` = '{kind}'"))


def entries(home: Path) -> tuple[set[str], set[str]]:
    """(artifact folders as step/key, hidden leftovers anywhere under artifacts and cache)."""
    folders: set[str] = set()
    hidden: set[str] = set()
    for step in sorted(os.listdir(home / "artifacts")):
        for name in os.listdir(home / "artifacts" / step):
            (hidden if name.startswith(".") else folders).add(f"{step}/{name}")
    hidden |= {f"cache/{n}" for n in os.listdir(home / "cache") if n.startswith(".")}
    return folders, hidden


def summary_rows(home: Path, parent_run_id: str) -> list[tuple[Any, ...]]:
    summary = load_summary(Settings(home=home), parent_run_id)
    return [(r["name"], r["passed"], r["metrics"]["accuracy"], r["steps"]) for r in summary["rows"]]


def test_kill_and_rerun_ends_as_an_uninterrupted_run(tmp_path, tiny_checkpoint):
    # The size budget passes the int8 variant (about 0.10 MB) and fails fp32 (about 0.14 MB), so the
    # candidate does not depend on measured latencies and both verdicts are compared.
    recipe = write_tiny_recipe(tmp_path / "recipe", max_size_mb=0.12)
    store = tmp_path / "store"
    uri = publish(
        Settings(home=tmp_path / "publisher", checkpoint_store=store.as_uri()), tiny_checkpoint, "tiny"
    )
    home, reference = tmp_path / "killed", tmp_path / "reference"
    seconds = {}

    # Kill 1: while the first variant's child run is logged, before it is ended.
    seconds["kill logging a child run"] = slimline(home, store, recipe, uri, kill_at=LOGGING_CHILD)
    (parent,) = runs(home, "checkpoint")
    assert parent.info.status == "RUNNING"
    assert [(r.data.tags["slimline.variant"], r.info.status) for r in runs(home, "variant")] == [
        ("onnx-fp32", "RUNNING")
    ]

    # Kill 2: the rerun resumes the parent run, ends the dead child KILLED, logs a new one, and dies
    # inside the quantization step of the second variant.
    seconds["kill mid-step"] = slimline(home, store, recipe, uri, kill_at=MID_STEP)
    _, hidden = entries(home)
    assert any(h.startswith("technique_quantize.onnx_dynamic_int8/.") for h in hidden), hidden
    assert [(r.info.run_id, r.info.status) for r in runs(home, "checkpoint")] == [
        (parent.info.run_id, "RUNNING")
    ]
    assert sorted(r.info.status for r in runs(home, "variant")) == ["FINISHED", "KILLED"]
    assert versions(home) == [] and aliases(home) == {}

    # Kill 3: the rerun resumes the parent run again, registers the passing variant and dies before the alias.
    seconds["kill before alias"] = slimline(home, store, recipe, uri, kill_at=BEFORE_ALIAS)
    assert [(r.info.run_id, r.info.status) for r in runs(home, "checkpoint")] == [
        (parent.info.run_id, "RUNNING")
    ]
    assert [(variant, status) for variant, _, status in versions(home)] == [("onnx-int8-dynamic", "READY")]
    assert aliases(home) == {}
    assert entries(home)[1] == set()  # the dead writer's staging folder went with the rerun

    # The last rerun completes, finding the version registered before the kill.
    seconds["final rerun"] = slimline(home, store, recipe, uri)
    seconds["uninterrupted"] = slimline(reference, store, recipe, uri)

    assert versions(home) == versions(reference)
    assert aliases(home) == aliases(reference) == {"candidate": "onnx-int8-dynamic"}
    folders, hidden = entries(home)
    assert (folders, hidden) == (entries(reference)[0], set())
    (finished,) = runs(home, "checkpoint")
    (other,) = runs(reference, "checkpoint")
    assert (
        finished.info.run_id == parent.info.run_id and finished.info.status == other.info.status == "FINISHED"
    )
    assert summary_rows(home, finished.info.run_id) == summary_rows(reference, other.info.run_id)
    for side, run in ((home, finished), (reference, other)):
        summary = load_summary(Settings(home=side), run.info.run_id)
        assert summary["new_versions"] == ["1"] and summary["candidate"] == "1"
        assert (side / "reports" / f"{run.info.run_id}.html").is_file()
        assert not [n for n in os.listdir(side / "reports") if n.startswith(".")]
    children = sorted((r.data.tags["slimline.variant"], r.info.status) for r in runs(home, "variant"))
    assert children == [("onnx-fp32", "FINISHED"), ("onnx-fp32", "KILLED"), ("onnx-int8-dynamic", "FINISHED")]
    finished_children = sorted((v, s) for v, s in children if s == "FINISHED")
    assert finished_children == sorted(
        (r.data.tags["slimline.variant"], r.info.status) for r in runs(reference, "variant")
    )
    print("seconds:", {k: round(v, 1) for k, v in seconds.items()})


def set_status(settings: Settings, version: str, status: str) -> None:
    """Leave a version in `status` in the registry's database, as a registration that died would."""
    with sqlite3.connect(settings.home / "mlflow.db") as db:
        db.execute(
            "UPDATE model_versions SET status = ? WHERE name = ? AND version = ?",
            (status, MODEL, int(version)),
        )


def test_registration_is_found_by_content_key_and_aliases_need_a_ready_version(settings, tmp_path):
    recipe = load_recipe(write_tiny_recipe(tmp_path / "recipe"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"onnx")
    mlflow = client(settings)
    parent = mlflow.create_run(experiment_id(mlflow, settings, recipe)).info.run_id
    child = mlflow.create_run(experiment_id(mlflow, settings, recipe)).info.run_id
    lineage = {"artifact_key": "k" * 64, "parent_run_id": parent, "variant": "v"}

    assert register_version(settings, recipe, child, model, lineage) == ("1", True)
    assert register_version(settings, recipe, child, model, lineage) == ("1", True)  # the same parent run
    assert register_version(settings, recipe, child, model, lineage | {"parent_run_id": "later"}) == (
        "1",
        False,
    )

    set_status(settings, "1", "PENDING_REGISTRATION")
    with pytest.raises(RegistryError, match="version 1 of this model is still pending"):
        register_version(settings, recipe, child, model, lineage)
    with pytest.raises(RegistryError) as refused:
        set_alias(settings, recipe, "candidate", "1")
    assert str(refused.value) == (
        "not moving alias candidate of tiny-sentiment to version 1: it is PENDING_REGISTRATION"
    )

    set_status(settings, "1", "FAILED_REGISTRATION")
    assert register_version(settings, recipe, child, model, lineage) == ("2", True)
    set_alias(settings, recipe, "candidate", "2")
    assert str(mlflow.get_model_version_by_alias(MODEL, "candidate").version) == "2"
