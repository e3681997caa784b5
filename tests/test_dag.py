"""The nightly DAG, parsed by Airflow and run for real with `airflow dags test` on SQLite."""

import itertools
import json
import subprocess
import sys

import pytest
import yaml
from mlflow import MlflowClient

from tasks.core.errors import OrchestrationError
from tasks.flow.orchestration import DAGS_DIR, airflow_environment, dags_test
from tasks.registry.engines import logged_outcomes
from tasks.release.keys import generate_key_pair
from tasks.report.html import load_published_summary, report_path
from tests.tiny import lineage_edges, publish, write_tiny_recipe

PARSE = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={folder!r})
dag = bag.dags.get("nightly_compression")
print(json.dumps({{
    "errors": {{k: str(v) for k, v in bag.import_errors.items()}},
    "tasks": sorted(dag.task_ids) if dag else [],
    "schedule": str(dag.schedule) if dag else None,
    "retries": dag.get_task("prepare").retries if dag else None,
}}))
"""


def test_dag_files_import_without_errors(settings):
    out = subprocess.run(
        [sys.executable, "-c", PARSE.format(folder=str(DAGS_DIR))],
        env=airflow_environment(settings),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    parsed = json.loads(out.strip().splitlines()[-1])
    assert parsed["errors"] == {}
    assert parsed["tasks"] == [
        "build_engine",
        "discover",
        "plan",
        "plan_engines",
        "prepare",
        "publish",
        "record_engines",
        "run_variant",
        "search",
    ]
    assert parsed["schedule"] == "0 2 * * *"
    assert parsed["retries"] == 3


# A variant whose second technique refuses the first's output: it fails the same way on every try.
REFUSED_COMBINATION = {
    "name": "lowrank-then-ffn",
    "steps": [
        {"technique": "lowrank.svd", "config": {"energy": 0.5, "targets": "ffn"}},
        {"technique": "prune.ffn", "config": {"keep_fraction": 0.5}},
    ],
}


def test_nightly_dag_run_registers_with_lineage_and_is_idempotent(settings, tiny_checkpoint, tmp_path):
    recipe = write_tiny_recipe(tmp_path / "recipe", variants=[REFUSED_COMBINATION])
    uri = publish(settings, tiny_checkpoint, "nightly/tiny")

    first = dags_test(settings, "nightly_compression", {"recipe": str(recipe), "prefix": "nightly"})
    assert first.state == "success"
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    versions = {str(v.version): v for v in client.search_model_versions("name = 'tiny-sentiment'")}
    assert sorted(versions) == ["1", "2"]
    for version in versions.values():
        tags = version.tags
        assert tags["slimline.checkpoint_uri"] == uri
        assert len(tags["slimline.checkpoint_digest"]) == 64
        assert tags["slimline.recipe_name"] == "tiny"
        assert len(tags["slimline.recipe_digest"]) == 64
        assert len(tags["slimline.dataset_digest"]) == 64
        assert tags["slimline.code_commit"]
        assert tags["slimline.gate"].startswith("passed:")
        run = client.get_run(tags["slimline.run_id"])
        assert run.data.tags["slimline.variant"] == tags["slimline.variant"]
        parent = client.get_run(tags["slimline.parent_run_id"])
        assert parent.data.tags["slimline.run_label"] == first.run_label
        assert parent.info.status == "FINISHED"
    candidate = client.get_model_version_by_alias("tiny-sentiment", "candidate")
    assert str(candidate.version) == "2"
    # The variant whose technique failed for good is published as failed: a FAILED child run with
    # the reason, a line in the summary and a section of the report; the other two are registered.
    summary = load_published_summary(settings, candidate.tags["slimline.parent_run_id"])
    [failed] = summary.failed
    assert failed.name == "lowrank-then-ffn" and failed.steps == ["lowrank.svd", "prune.ffn"]
    assert failed.reason.startswith("TechniqueError: prune.ffn: the feed-forward projections are factorized")
    assert client.get_run(failed.run_id).info.status == "FAILED"
    assert client.get_run(failed.run_id).data.tags["slimline.verdict"] == failed.reason
    assert "lowrank-then-ffn" not in {r.name for r in summary.rows}
    html = report_path(settings, summary).read_text()
    assert "<h2>Failed variants</h2>" in html and "prune before factorizing" in html
    assert first.peak_rss_mb > 0 and first.log_path.exists()
    # Every task instance's time, in the order they ran, within the run's own time.
    ran = [t.label for t in first.tasks]
    assert ran[0] == "discover" and {"run_variant[0]", "run_variant[2]", "publish"} <= set(ran)
    assert all(0 <= t.started <= t.ended <= first.seconds for t in first.tasks)
    assert all(a.ended <= b.started for a, b in itertools.pairwise(first.tasks))
    assert sum(t.seconds for t in first.tasks) > 0.5 * first.seconds
    # The engine step: the INT8 version gets its cpu-avx2 engine, the FP32 one is skipped (precision).
    by_variant = {v.tags["slimline.variant"]: v for v in versions.values()}
    engine = json.loads(by_variant["onnx-int8-dynamic"].tags["slimline.engine.cpu-avx2"])
    assert engine["runtime"] == "onnxruntime-cpu" and len(engine["digest"]) == 64
    assert "slimline.engine.cpu-avx2" not in by_variant["onnx-fp32"].tags
    outcomes = logged_outcomes(settings, by_variant["onnx-fp32"].tags["slimline.parent_run_id"])
    assert outcomes is not None
    assert sorted((o.model_version, o.status) for o in outcomes) == sorted(
        [
            (f"tiny-sentiment/{by_variant['onnx-int8-dynamic'].version}", "built"),
            (f"tiny-sentiment/{by_variant['onnx-fp32'].version}", "skipped"),
        ]
    )

    # Nothing new in the store: the next night discovers nothing and registers nothing.
    second = dags_test(settings, "nightly_compression", {"recipe": str(recipe), "prefix": "nightly"})
    assert second.state == "success" and second.run_id != first.run_id
    assert len(client.search_model_versions("name = 'tiny-sentiment'")) == 2
    assert "discovered 0 checkpoint(s)" in second.log_path.read_text()

    # The INT8 version released to a fleet with no device yet (its one wave passes at once); then
    # the OpenLineage events of the three DAG runs, read back from the file, link the checkpoint to
    # the fleet by dataset names.
    int8 = by_variant["onnx-int8-dynamic"]
    label = f"tiny-sentiment/{int8.version}"
    fleet_settings = settings.model_copy(
        update={"fleets_dir": tmp_path / "fleets", "rollout_poke_seconds": 1}
    )
    (tmp_path / "fleets").mkdir()
    (tmp_path / "fleets" / "lab.yaml").write_text(
        yaml.safe_dump({"name": "lab", "targets": ["cpu-avx2"], "waves": [{"name": "canary", "limit": 1}]})
    )
    (settings.home / "channel").mkdir()
    generate_key_pair(settings.signing_key)
    dags_test(fleet_settings, "fleet_release", {"fleet": "lab", "model_version": label})
    checkpoint = ("file", uri.removeprefix("file://"))
    variant = ("slimline://artifacts", int8.tags["slimline.artifact_key"])
    registered = (f"mlflow://{settings.home}/mlflow.db", label)
    built = ("slimline://engines", f"cpu-avx2/{engine['digest']}")
    release = ("file", f"{settings.home}/channel/fleets/lab/releases/000001")
    fleet = ("file", f"{settings.home}/channel/fleets/lab")
    chain = {
        ("nightly_compression.run_variant", checkpoint, variant),
        ("nightly_compression.publish", variant, registered),
        ("nightly_compression.build_engine", registered, built),
        ("fleet_release.publish_release", built, release),
        ("fleet_release.conclude", release, fleet),
    }
    assert chain <= lineage_edges(settings), sorted(lineage_edges(settings))


def test_a_refused_checkpoint_stops_its_own_branch_only(settings, tiny_checkpoint, tmp_path):
    recipe = write_tiny_recipe(tmp_path / "recipe")
    good = publish(settings, tiny_checkpoint, "nightly/good")
    (tiny_checkpoint / "model.safetensors").unlink()
    (tiny_checkpoint / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    evil = publish(settings, tiny_checkpoint, "nightly/evil")
    conf = {"recipe": str(recipe), "checkpoints": [evil, good]}
    with pytest.raises(OrchestrationError, match=r"CheckpointRefused: checkpoint .*pickle") as caught:
        dags_test(settings, "nightly_compression", conf, echo=False)
    assert "\n" not in str(caught.value)
    # The DAG run failed, but the good checkpoint went through every step and was registered.
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    versions = client.search_model_versions("name = 'tiny-sentiment'")
    assert {v.tags["slimline.checkpoint_uri"] for v in versions} == {good}
    assert len(versions) == 2
    assert not any(settings.cache_dir.rglob("pytorch_model.bin"))


def test_failed_data_validation_fails_the_branch_with_the_expectation_named(
    settings, tiny_checkpoint, tmp_path
):
    recipe = write_tiny_recipe(tmp_path / "recipe")
    source = tmp_path / "recipe" / "tweets.csv"
    rows = source.read_text().splitlines()
    source.write_text("\n".join([*rows, *rows[1:20]]) + "\n")
    conf = {"recipe": str(recipe), "checkpoints": [publish(settings, tiny_checkpoint, "nightly/tiny")]}
    pattern = r"DataValidationError: data validation failed: .*expect_column_values_to_be_unique\(text\)"
    with pytest.raises(OrchestrationError, match=pattern):
        dags_test(settings, "nightly_compression", conf, echo=False)
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    assert client.search_registered_models() == []
