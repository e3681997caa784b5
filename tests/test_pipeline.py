"""The whole pipeline in one process (`slimline run`), on file:// and on S3 (moto server)."""

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tasks.core.errors import CheckpointRefused, DataValidationError
from tasks.core.settings import Settings
from tasks.flow.local import run_local
from tasks.flow.pipeline import discover
from tasks.gate.candidate import RULE
from tests.tiny import publish, write_tiny_recipe


def registry(settings: Settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


@pytest.mark.parametrize("store", ["file", "s3"])
def test_run_registers_passing_variants_once(store, settings, tiny_checkpoint, tmp_path, request):
    if store == "s3":
        endpoint = request.getfixturevalue("moto_endpoint")
        bucket = request.getfixturevalue("s3_bucket")
        settings = Settings(
            home=settings.home, checkpoint_store=f"s3://{bucket}/models", s3_endpoint_url=endpoint
        )
    recipe = write_tiny_recipe(tmp_path / "recipe")
    uri = publish(settings, tiny_checkpoint, "nightly/tiny-a")

    first = run_local(settings, recipe, uri)
    assert [r.name for r in first.rows] == ["baseline", "onnx-fp32", "onnx-int8-dynamic"]
    assert all(r.passed for r in first.rows[1:])
    assert sorted(first.new_versions) == ["1", "2"]
    # Both variants and the baseline were timed side by side; the candidate, chosen on that table,
    # is registered last, so the newest version is the candidate.
    assert first.timing is not None
    assert [m.name for m in first.timing.models] == ["baseline", "onnx-fp32", "onnx-int8-dynamic"]
    assert first.timing.rounds == 2 and all(len(m.p50_ms_per_round) == 2 for m in first.timing.models)
    assert first.candidate == "2"
    chosen = next(r for r in first.rows if r.version == first.candidate)
    fastest = min(first.timing.models[1:], key=lambda m: m.p50_ms)
    assert first.candidate_reason.startswith(f"{fastest.name} fastest by median p50 over 2 rounds")
    if "tied with" in first.candidate_reason:
        assert f"; {chosen.name} chosen for " in first.candidate_reason
    else:
        assert chosen.name == fastest.name
    assert first.steps_computed == 7 and first.steps_reused == 1

    client = registry(settings)
    versions = client.search_model_versions("name = 'tiny-sentiment'")
    assert len(versions) == 2
    tags = client.get_model_version("tiny-sentiment", "2").tags
    assert tags["slimline.checkpoint_uri"] == uri
    assert tags["slimline.checkpoint_digest"] == first.checkpoint_digest
    assert tags["slimline.variant"] == chosen.name
    assert tags["slimline.gate"].startswith("passed: acc drop 95% upper")
    for key in ("recipe_digest", "dataset_digest", "code_commit", "run_id", "parent_run_id", "steps"):
        assert tags[f"slimline.{key}"], key
    assert str(client.get_model_version_by_alias("tiny-sentiment", "candidate").version) == "2"
    child = client.get_run(tags["slimline.run_id"])
    assert child.data.tags["mlflow.parentRunId"] == first.parent_run_id
    assert child.data.metrics["accuracy"] == chosen.metrics.accuracy
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"predictions", "manifests", "model"} <= artifacts
    parent = client.get_run(first.parent_run_id)
    for model in first.timing.models:
        assert parent.data.metrics[f"timing/{model.name}/p50_ms"] == pytest.approx(model.p50_ms)
        assert parent.data.metrics[f"timing/{model.name}/p95_ms"] == pytest.approx(model.p95_ms)
    logged = json.loads(
        Path(client.download_artifacts(first.parent_run_id, "timing.json", str(tmp_path))).read_text()
    )
    assert logged["table"] == first.timing.model_dump(mode="json") and logged["rule"] == RULE
    assert logged["choice"]["reason"] == first.candidate_reason

    second = run_local(settings, recipe, uri)
    assert second.new_versions == []
    assert second.steps_computed == 0 and second.steps_reused == 8
    assert second.timing == first.timing  # the timing step is reused with everything else
    assert len(client.search_model_versions("name = 'tiny-sentiment'")) == 2
    assert second.candidate == "2"
    assert discover(settings, recipe, "nightly") == []


def test_failing_variant_is_logged_but_never_registered(settings, tiny_checkpoint, tmp_path):
    # A 0.05 MB size budget fails every variant; each still has its run, none is registered.
    recipe = write_tiny_recipe(tmp_path / "recipe", max_size_mb=0.05)
    uri = publish(settings, tiny_checkpoint, "nightly/tiny-b")
    summary = run_local(settings, recipe, uri)
    assert [r.passed for r in summary.rows[1:]] == [False, False]
    assert all("FAIL size" in r.reason for r in summary.rows[1:])
    assert summary.new_versions == [] and summary.candidate is None
    client = registry(settings)
    assert client.search_model_versions("name = 'tiny-sentiment'") == []
    parent = client.get_run(summary.parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{summary.parent_run_id}'"
    )
    assert {c.data.tags["slimline.passed"] for c in children} == {"False"}


def test_latency_budgets_are_judged_side_by_side(settings, tiny_checkpoint, tmp_path):
    # No model answers in a microsecond: every variant fails its budget on the side-by-side p95.
    recipe = write_tiny_recipe(tmp_path / "recipe", max_p95_latency_ms=0.001)
    summary = run_local(settings, recipe, publish(settings, tiny_checkpoint, "nightly/tiny-c"))
    assert summary.timing is not None and summary.new_versions == [] and summary.candidate is None
    for row in summary.rows[1:]:
        p95 = summary.timing.of(row.name).p95_ms
        assert not row.passed
        assert row.reason == f"FAIL p95 side by side {p95:.2f} ms > 0.00 ms budget (recipe)"
        child = registry(settings).get_run(row.run_id or "")
        assert child.data.tags["slimline.passed"] == "False"
        assert child.data.tags["slimline.verdict"] == row.reason
        gates = json.loads(
            Path(
                registry(settings).download_artifacts(row.run_id or "", "gates.json", str(tmp_path))
            ).read_text()
        )
        assert gates["passed"] is False and gates["checks"][-1]["name"] == "latency_p95"
    assert summary.candidate_reason == "no variant passed its gates"


def test_discover_skips_processed_and_sees_new(settings, tiny_checkpoint, tmp_path):
    recipe = write_tiny_recipe(tmp_path / "recipe")
    uri = publish(settings, tiny_checkpoint, "nightly/tiny-c")
    assert discover(settings, recipe, "nightly") == [uri]
    run_local(settings, recipe, uri)
    assert discover(settings, recipe, "nightly") == []
    # A changed file makes it new again.
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config["label2id"] = dict(reversed(list(config["label2id"].items())))
    (tiny_checkpoint / "config.json").write_text(json.dumps(config))
    publish(settings, tiny_checkpoint, "nightly/tiny-c")
    assert discover(settings, recipe, "nightly") == [uri]


def test_refused_checkpoint_registers_nothing(settings, tiny_checkpoint, tmp_path):
    recipe = write_tiny_recipe(tmp_path / "recipe")
    (tiny_checkpoint / "pytorch_model.bin").write_bytes(b"not even a pickle")
    uri = publish(settings, tiny_checkpoint, "nightly/evil")
    with pytest.raises(CheckpointRefused, match="pickle"):
        run_local(settings, recipe, uri)
    assert not (settings.home / "mlflow.db").exists() or not registry(settings).search_model_versions(
        "name = 'tiny-sentiment'"
    )
    assert not (settings.home / "artifacts").exists()


def test_training_losses_are_logged_to_the_variant_run(settings, tiny_checkpoint, tmp_path):
    distilled = {
        "name": "distilled",
        "steps": [
            {
                "technique": "distill.student",
                "config": {
                    "layers": [0],
                    "epochs": 2,
                    "batch_size": 16,
                    "train_examples": 60,
                    "transfer_examples": 40,
                },
            },
            {"technique": "export.onnx"},
        ],
    }
    recipe = write_tiny_recipe(tmp_path / "recipe", variants=[distilled])
    summary = run_local(settings, recipe, publish(settings, tiny_checkpoint, "nightly/tiny-d"))
    client = registry(settings)
    parent = client.get_run(summary.parent_run_id)
    (child,) = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{summary.parent_run_id}' and tags.`slimline.variant` = 'distilled'",
    )
    steps = 2 * -(-100 // 16)
    for term in ("loss", "kl", "hard"):
        history = client.get_metric_history(child.info.run_id, f"train/0-distill.student/{term}")
        assert [m.step for m in history][-1] == steps and len(history) >= steps // 2
    artifacts = [a.path for a in client.list_artifacts(child.info.run_id, "training")]
    assert artifacts == ["training/0-distill.student"]


def test_failed_data_validation_stops_before_compute_and_is_logged(settings, tiny_checkpoint, tmp_path):
    # The source repeats rows (the split keeps equal texts together, so they stay duplicates within
    # a split): the suite names the expectation and the rows; nothing is evaluated or registered.
    recipe = write_tiny_recipe(tmp_path / "recipe")
    source = tmp_path / "recipe" / "tweets.csv"
    rows = source.read_text().splitlines()
    source.write_text("\n".join([*rows, *rows[1:40]]) + "\n")
    with pytest.raises(DataValidationError, match=r"data validation failed: train: expect_col") as caught:
        run_local(settings, recipe, publish(settings, tiny_checkpoint, "nightly/leaky"))
    assert "\n" not in str(caught.value) and "rows duplicated (same text): '" in str(caught.value)
    client = registry(settings)
    assert client.search_model_versions("name = 'tiny-sentiment'") == []
    experiment = client.get_experiment_by_name("slimline/tiny")
    assert experiment is not None
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`slimline.kind` = 'checkpoint'")
    assert parent.info.status == "FAILED"
    stored = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "validation.json", str(tmp_path))).read_text()
    )
    assert stored["success"] is False
    assert not (settings.artifacts_dir / "evaluate").exists()
