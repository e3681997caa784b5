"""The real-model path: `slimline demo` fine-tunes MiniLM on the tweet corpus, publishes it,
runs the nightly DAG through Airflow, and a second run recomputes nothing.

It runs every variant of the demo recipe on the real model, with training budgets cut so the test
stays within minutes on two cores: 1,600 training tweets and one epoch for each trained step
(`make bench` runs the recipe as written)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tasks.engines.capabilities import read_capabilities
from tasks.recipe import load_recipe

SLIMLINE = str(Path(sys.executable).with_name("slimline"))
RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "minilm-sentiment.yaml"


def quick_recipe(folder: Path) -> Path:
    """The demo recipe with a capped training split and one epoch per trained step."""
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["dataset"]["train_size"] = 1600
    for variant in recipe["variants"]:
        for step in variant["steps"]:
            if "epochs" in step.get("config", {}):
                step["config"]["epochs"] = 1
    path = folder / "quick.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_demo(home: Path, result: Path) -> tuple[dict, str]:
    command = [SLIMLINE, "--home", str(home), "demo", "--teacher-examples", "800", "--teacher-epochs", "1"]
    command += ["--recipe", str(quick_recipe(home.parent))]
    proc = subprocess.run([*command, "--json", str(result)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(result.read_text()), proc.stdout


@pytest.mark.slow
def test_demo_end_to_end_and_rerun_does_no_work(tmp_path):
    home = tmp_path / "home"
    first, out = run_demo(home, tmp_path / "first.json")
    summary = first["summary"]
    rows = {r["name"]: r for r in summary["rows"]}
    assert list(rows) == ["baseline", *(v.name for v in load_recipe(RECIPE).variants)]
    baseline = rows["baseline"]["metrics"]
    assert baseline["runtime"] == "pytorch" and baseline["examples"] == 2000
    # Three classes, the largest about 42% of the tweets: a fine-tuned teacher must beat that.
    assert baseline["accuracy"] > 0.5
    assert rows["onnx-int8-dynamic"]["metrics"]["size_bytes"] < 0.3 * baseline["size_bytes"]
    for name in list(rows)[1:]:
        assert rows[name]["metrics"]["runtime"] == "onnxruntime"
        assert rows[name]["drop"]["low"] <= rows[name]["drop"]["point"] <= rows[name]["drop"]["high"]
    # The demo recipe sets no latency budget: the timed variants are exactly the passing ones.
    timed = [m["name"] for m in summary["timing"]["models"]]
    assert timed == ["baseline", *(r["name"] for r in summary["rows"][1:] if r["passed"])]
    for text in (
        "Δ acc pts [95% CI]",
        "side-by-side timing: 5 interleaved rounds × 40 batch-1 requests per model",
        "onnx-int8-dynamic",
        "release report: ",
        "mlflow ui --backend-store-uri sqlite:///",
    ):
        assert text in out

    # The release report of the checkpoint's run, with every variant in it.
    report = (home / "reports" / f"{summary['parent_run_id']}.html").read_text()
    assert all(f">{name}<" in report for name in rows) and "data:image/png;base64," in report

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    passing = [r for r in summary["rows"][1:] if r["passed"]]
    versions = client.search_model_versions("name = 'minilm-sentiment'")
    assert len(versions) == len(passing) == len(summary["new_versions"])
    if passing:
        candidate = client.get_model_version_by_alias("minilm-sentiment", "candidate")
        assert candidate.tags["slimline.checkpoint_uri"] == first["checkpoint_uri"]
    # The engine step: every registered version for both CPU targets; the candidate (INT8) built
    # and reproducing the registered model on the canary set wherever this machine can build it.
    outcomes = {(o["model_version"], o["target"]): o for o in first["engines"]}
    assert len(outcomes) == 2 * len(passing)
    if passing:
        flags = read_capabilities().cpu_flags
        for target in ("cpu-avx512-vnni", "cpu-avx2"):
            outcome = outcomes[(f"minilm-sentiment/{summary['candidate']}", target)]
            buildable = target == "cpu-avx2" or {"avx512f", "avx512_vnni"} <= set(flags)
            assert outcome["status"] == ("built" if buildable else "skipped"), outcome["reason"]
            if buildable:
                assert outcome["check"]["agreement"] >= 0.98 and outcome["check"]["latency_p50_ms"] > 0
        assert "engines" in out

    second, _ = run_demo(home, tmp_path / "second.json")
    assert second["teacher_cached"] is True
    assert second["summary"]["steps_computed"] == 0
    assert second["summary"]["new_versions"] == []
    assert len(client.search_model_versions("name = 'minilm-sentiment'")) == len(passing)
    assert {o["status"] for o in second["engines"]} <= {"reused", "skipped"}
    print(
        f"\ndemo: first {first['total_seconds']}s (DAG {first['dag_run']['seconds']}s, "
        f"peak {first['dag_run']['peak_rss_mb']} MB); second {second['total_seconds']}s "
        f"(DAG {second['dag_run']['seconds']}s)"
    )
