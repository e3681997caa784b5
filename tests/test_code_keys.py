"""Cache keys cover the code a step runs, not the whole package: a change to report, CLI or gate
code recomputes no model; a change to pruning recomputes the pruned chains and nothing else."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.compress.techniques import TECHNIQUES
from tasks.core.version import PACKAGE_DIR, code_digest, code_modules
from tests.tiny import publish, write_tiny_recipe

# Steps that are not techniques, by the module that computes them.
STEP_MODULES = {
    "dataset.split": "tasks.intake.data",
    "validate.data": "tasks.intake.validation",
    "evaluate": "tasks.gate.evaluate",
    "timing": "tasks.gate.timing",
    "teacher.finetune": "tasks.demo.teacher",
    "training.teacher_logits": "tasks.compress.training",
}
PRUNING = {
    "prune.heads",
    "prune.ffn",
    "prune.layers",
    "prune.magnitude",
    "prune.semi_structured",
    "finetune.recover",
}
CHANGE = "\n_CHANGED_BEHAVIOUR = 1\n"


def step_modules() -> dict[str, str]:
    return STEP_MODULES | {name: spec.run.__module__ for name, spec in TECHNIQUES.items()}


def package_copy(dest: Path, edits: dict[str, str] | None = None) -> Path:
    """A copy of the package with `edits` (path inside the package → text appended)."""
    root = Path(shutil.copytree(PACKAGE_DIR, dest / "tasks", ignore=shutil.ignore_patterns("__pycache__")))
    for relative, text in (edits or {}).items():
        with (root / relative).open("a", encoding="utf-8") as handle:
            handle.write(text)
    return root


def digests(root: Path) -> dict[str, str]:
    return {step: code_digest(module, root) for step, module in step_modules().items()}


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {step for step in before if before[step] != after[step]}


def test_report_cli_gate_registry_and_settings_changes_key_no_step(tmp_path):
    base = digests(package_copy(tmp_path / "base"))
    touched = [
        "report/console.py",
        "report/html.py",
        "cli.py",
        "gate/gates.py",
        "flow/pipeline.py",
        "registry/tracking.py",
        "core/settings.py",
        "core/errors.py",
        "core/artifacts.py",
    ]
    after = digests(package_copy(tmp_path / "after", dict.fromkeys(touched, CHANGE)))
    assert changed(base, after) == set()


def test_a_pruning_change_keys_the_pruning_techniques_only(tmp_path):
    base = digests(package_copy(tmp_path / "base"))
    after = digests(package_copy(tmp_path / "after", {"compress/techniques/prune.py": CHANGE}))
    assert changed(base, after) == PRUNING


def test_shared_training_code_keys_every_trained_step(tmp_path):
    base = digests(package_copy(tmp_path / "base"))
    after = digests(package_copy(tmp_path / "after", {"compress/training.py": CHANGE}))
    assert changed(base, after) == PRUNING | {
        "distill.student",
        "training.teacher_logits",
        "teacher.finetune",
    }


def test_comments_docstrings_and_layout_key_nothing(tmp_path):
    base = digests(package_copy(tmp_path / "base"))
    prune = (PACKAGE_DIR / "compress/techniques/prune.py").read_text(encoding="utf-8")
    assert '"""' in prune
    root = package_copy(tmp_path / "after")
    reworded = prune.replace('"""', '"""Reworded. ', 1).replace("\n\n\n", "\n\n\n# a new comment\n", 1)
    (root / "compress/techniques/prune.py").write_text(reworded + "\n\n", encoding="utf-8")
    assert changed(base, digests(root)) == set()


def test_a_step_lists_the_modules_it_runs():
    modules = code_modules("tasks.compress.techniques.prune")
    assert {"tasks.compress.techniques.prune", "tasks.compress.training", "tasks.core.models"} <= set(modules)
    assert "tasks.report.console" not in modules and "tasks.core.artifacts" not in modules
    assert "tasks.compress.techniques.onnx_quantize" not in modules


def run_cli(package_root: Path, home: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIMLINE_")}
    env |= {"PYTHONPATH": str(package_root.parent), "SLIMLINE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    # The copy holds the package only; targets are the repository's.
    env["SLIMLINE_TARGETS_DIR"] = str(PACKAGE_DIR.parent / "targets")
    code = "import sys; from tasks.cli import main; sys.exit(main(sys.argv[1:]))"
    # Run from the copy's folder: `python -c` puts the working directory first on sys.path.
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=package_root.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def artifact_folders(home: Path) -> set[str]:
    return {f"{p.parent.parent.name}/{p.parent.name}" for p in (home / "artifacts").glob("*/*/manifest.json")}


@pytest.mark.parametrize(
    ("edited", "recomputed"),
    [
        ({"report/console.py": CHANGE, "gate/gates.py": CHANGE, "cli.py": CHANGE}, []),
        (
            {"compress/techniques/prune.py": CHANGE},
            # The pruned variant's new model is evaluated and timed again beside the others, and its
            # new version gets its canary set (its FP32 graph builds no engine for the INT8 target).
            ["evaluate", "release_canary", "technique_export.onnx", "technique_prune.heads", "timing"],
        ),
    ],
    ids=["report-gate-cli", "pruning"],
)
def test_a_real_rerun_recomputes_only_what_the_change_reaches(
    edited, recomputed, settings, tiny_checkpoint, tmp_path
):
    recipe = write_tiny_recipe(
        tmp_path / "recipe",
        variants=[
            {
                "name": "pruned-heads",
                "steps": [
                    {"technique": "prune.heads", "config": {"heads_to_prune": 1}},
                    {"technique": "export.onnx"},
                ],
            }
        ],
    )
    uri = publish(settings, tiny_checkpoint, "nightly/tiny")
    run_cli(package_copy(tmp_path / "v1"), settings.home, "run", "--checkpoint", uri, "--recipe", str(recipe))
    before = artifact_folders(settings.home)
    run_cli(
        package_copy(tmp_path / "v2", edited),
        settings.home,
        "run",
        "--checkpoint",
        uri,
        "--recipe",
        str(recipe),
    )
    new = sorted(folder.split("/")[0] for folder in artifact_folders(settings.home) - before)
    assert new == recomputed
