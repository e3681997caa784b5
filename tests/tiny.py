"""A tiny recipe and store layout for pipeline, DAG and CLI tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tasks.compress.technique import TechniqueContext
from tasks.core.models import ModelRef
from tasks.core.settings import Settings
from tasks.core.store import open_store, upload_tree
from tasks.intake.data import DatasetConfig, read_examples, split
from tests.factories import LABELS, make_dataset

CPU_TARGET: dict[str, Any] = {
    "runtime": "onnxruntime-cpu",
    "precision": "int8",
    "optimization_level": "extended",
    "requires": {"cpu_flags": [], "runtime_version": {"minimum": "1.20"}},
    "profiles": [{"batch": {"min": 1, "opt": 1, "max": 16}, "sequence": {"min": 1, "opt": 32, "max": 64}}],
    "check": {"min_agreement": 0.98, "max_logit_diff": 0.05, "throughput_batch": 16, "latency_requests": 20},
}


def write_target(folder: Path, name: str, **changes: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = json.loads(json.dumps(CPU_TARGET)) | {"name": name} | changes
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def write_tiny_recipe(folder: Path, variants: list[dict[str, Any]] | None = None, **gates: Any) -> Path:
    """A recipe over a generated 240-row dataset, with both demo variants and any `variants` given."""
    folder.mkdir(parents=True, exist_ok=True)
    data = make_dataset(folder / "tweets.csv")
    recipe = {
        "name": "tiny",
        "description": "tiny BERT for tests",
        "registered_model": "tiny-sentiment",
        "dataset": {"source": str(data), "labels": LABELS, "eval_size": 60, "calibration_size": 20},
        "evaluation": {"batch_size": 16, "latency_samples": 20, "warmup": 2},
        "gates": {"max_accuracy_drop": 5.0, "bootstrap_resamples": 300, **gates},
        "timing": {"rounds": 2, "requests": 10, "warmup": 2},
        "targets": [{"name": "cpu-avx2"}],
        "variants": [
            {"name": "onnx-fp32", "steps": [{"technique": "export.onnx"}]},
            {
                "name": "onnx-int8-dynamic",
                "steps": [{"technique": "export.onnx"}, {"technique": "quantize.onnx_dynamic_int8"}],
            },
            *(variants or []),
        ],
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def publish(settings: Settings, source: Path, key: str) -> str:
    """Upload a checkpoint folder under `key` of the settings' store; return its URI."""
    if settings.store_uri.startswith("file://"):
        Path(settings.store_uri.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    store = open_store(settings.store_uri, settings.s3_endpoint_url)
    upload_tree(store, source, key, last="config.json")
    return f"{store.uri}/{key}"


def make_context(folder: Path, checkpoint: Path, calibration: int = 20) -> TechniqueContext:
    """A real split of the generated dataset, and `checkpoint` as the teacher."""
    data = make_dataset(folder / "tweets.csv")
    config = DatasetConfig(source=str(data), labels=LABELS, eval_size=40, calibration_size=calibration)
    parts = split(read_examples(data, config), config)
    split_dir = folder / "split"
    split_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in parts.items():
        (split_dir / f"{name}.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in rows))
    return TechniqueContext(
        split_dir=split_dir,
        split_key="test-split",
        labels=LABELS,
        max_length=32,
        teacher=ModelRef(path=checkpoint, format="hf"),
        teacher_key="test-teacher",
        artifacts_dir=folder / "artifacts",
    )


def lineage_edges(settings: Settings) -> set[tuple[str, tuple[str, str], tuple[str, str]]]:
    """(job, input, output) of every COMPLETE OpenLineage event in the default file transport,
    datasets as (namespace, name): the task-level edges a lineage backend draws."""
    edges = set()
    for line in settings.lineage_file.read_text().splitlines():
        event = json.loads(line)
        if event.get("eventType") != "COMPLETE":
            continue
        for source in event.get("inputs") or []:
            for made in event.get("outputs") or []:
                edges.add(
                    (
                        event["job"]["name"],
                        (source["namespace"], source["name"]),
                        (made["namespace"], made["name"]),
                    )
                )
    return edges


def registered_by_variant(settings: Settings, name: str = "tiny-sentiment") -> dict[str, dict[str, str]]:
    """The tags of each registered version of `name`, by the variant it came from."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    return {v.tags["slimline.variant"]: v.tags for v in client.search_model_versions(f"name = '{name}'")}


def assert_registers_like_in_process(settings: Settings, recipe: Path, checkpoint: Path, home: Path) -> None:
    """The versions a DAG run registered in `settings` from `checkpoint` (published at nightly/tiny)
    are those `slimline run` registers in this process, in `home`: the same variants with the same
    artifact keys, gate verdicts, data and recipe, and the INT8 version's engine for cpu-avx2 (its
    step key names the version number, which follows the side-by-side timing's choice of candidate,
    and the .ort bytes of two builds differ: compared by target, runtime and precision)."""
    from tasks.flow.engines import build_published_engines
    from tasks.flow.local import run_local

    in_dag = registered_by_variant(settings)
    local = Settings(home=home)
    uri = publish(local, checkpoint, "nightly/tiny")
    build_published_engines(local, run_local(local, recipe, uri))
    in_process = registered_by_variant(local)
    assert sorted(in_dag) == sorted(in_process) == ["onnx-fp32", "onnx-int8-dynamic"]
    for variant, tags in in_dag.items():
        for tag in (
            "slimline.artifact_key",
            "slimline.gate",
            "slimline.dataset_digest",
            "slimline.recipe_digest",
        ):
            assert tags[tag] == in_process[variant][tag], (variant, tag)
        assert tags["slimline.checkpoint_uri"].endswith("/nightly/tiny")
    engine, local_engine = (
        json.loads(tags["onnx-int8-dynamic"]["slimline.engine.cpu-avx2"]) for tags in (in_dag, in_process)
    )
    for field in ("target", "runtime", "precision"):
        assert engine[field] == local_engine[field]
    assert "slimline.engine.cpu-avx2" not in in_dag["onnx-fp32"]
