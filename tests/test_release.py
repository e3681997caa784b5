"""Release gating against what is released: the no-regression gate compares a new checkpoint's
variants with the version holding `production`, and `slimline gate check` re-judges a registered
version from its lineage with exit status 0 (pass) or 10 (fail)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from transformers import AutoTokenizer

from tasks.cli import main
from tasks.compress.training import TrainItem, TrainSettings, train_student
from tasks.core.models import load_classifier
from tasks.core.settings import Settings
from tasks.flow.local import run_local
from tasks.intake.data import read_examples, split
from tasks.recipe import load_recipe
from tests.factories import make_checkpoint
from tests.tiny import publish, write_tiny_recipe


def trained_copy(base: Path, recipe_path: Path, dest: Path) -> Path:
    """`base` fine-tuned on the recipe's training split: clearly better than the random base."""
    dataset = load_recipe(recipe_path).dataset
    train = split(read_examples(Path(dataset.source), dataset), dataset)["train"]
    model, tokenizer = load_classifier(base), AutoTokenizer.from_pretrained(base)
    settings = TrainSettings(epochs=8, learning_rate=5e-3, batch_size=16, kl_weight=0.0, hard_weight=1.0)
    train_student(
        model, None, [TrainItem(e.text, e.label) for e in train], settings, tokenizer=tokenizer, max_length=32
    )
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def gate_check(settings: Settings, version: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["--home", str(settings.home), "gate", "check", "--model-version", version])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_no_regression_against_production_and_gate_check_exit_statuses(
    settings: Settings, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    recipe = write_tiny_recipe(tmp_path / "recipe", max_regression_vs_production=1.0)
    registry = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)

    # Night 1: a random checkpoint. Nothing is released yet, so only its own baseline judges it.
    random_night = run_local(settings, recipe, publish(settings, tiny_checkpoint, "nightly/random"))
    assert random_night.new_versions == ["1", "2"]
    # Night 2: a trained checkpoint; its candidate is released to production.
    trained = trained_copy(tiny_checkpoint, recipe, tmp_path / "trained")
    trained_night = run_local(settings, recipe, publish(settings, trained, "nightly/trained"))
    assert trained_night.new_versions == ["3", "4"]
    trained_accuracy = trained_night.rows[0].metrics.accuracy
    assert trained_accuracy > random_night.rows[0].metrics.accuracy + 0.2
    registry.set_registered_model_alias("tiny-sentiment", "production", trained_night.candidate or "")

    # The released version passes its own gates again: exit 0.
    code, out = gate_check(settings, "tiny-sentiment/production", capsys)
    assert code == 0, out
    assert "tiny-sentiment/4 passes its gates" in out and "no_regression" in out
    # Timed again beside the baseline: the table and the side-by-side p95 are printed.
    assert "side-by-side timing: 2 interleaved rounds" in out and "p95 side by side" in out
    assert "tiny-sentiment/4" in out and "baseline" in out
    # The random night's candidate now regresses against production: exit 10, the gate named.
    code, out = gate_check(settings, f"tiny-sentiment/{random_night.candidate}", capsys)
    assert code == 10, out
    assert "FAIL vs production v4" in out and "fails its gates" in out

    # Night 3: another random checkpoint. Its variants match their own baseline but are far
    # worse than production, so none is registered and the candidate stays where it was.
    other = make_checkpoint(tmp_path / "other", seed=3)
    night = run_local(settings, recipe, publish(settings, other, "nightly/other"))
    assert [r.passed for r in night.rows[1:]] == [False, False]
    assert all("FAIL vs production v4" in r.reason for r in night.rows[1:])
    assert night.new_versions == [] and len(registry.search_model_versions("name = 'tiny-sentiment'")) == 4
    assert str(registry.get_model_version_by_alias("tiny-sentiment", "candidate").version) == "4"


def test_gate_check_refuses_unknown_versions_with_one_line(
    settings: Settings, capsys: pytest.CaptureFixture[str]
):
    code, out = gate_check(settings, "tiny-sentiment/9", capsys)
    assert code == 2 and out.strip().count("\n") == 0
    assert "no model version tiny-sentiment/9" in out
    code, out = gate_check(settings, "no-slash", capsys)
    assert code == 2 and "expected NAME/VERSION" in out
