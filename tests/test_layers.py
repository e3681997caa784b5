"""The package's import contracts (pyproject.toml [tool.importlinter]): layers, no cycles, no
Airflow, OpenLineage or MLflow below the registry. The same checker is shown to fail on a package
with a cycle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tasks

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(cwd: Path, *args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_tasks_keeps_its_import_contracts() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_every_subpackage_says_what_it_owns() -> None:
    for init in Path(tasks.__file__).parent.glob("*/__init__.py"):
        doc = init.read_text().strip()
        assert doc.startswith('"""') and len(doc) > 80, f"{init} has no docstring saying what it owns"


def test_the_contracts_catch_a_cycle_and_a_layer_breach(tmp_path: Path) -> None:
    package = tmp_path / "flowpkg"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("")
    (package / "low" / "a.py").write_text("from flowpkg.low import b\n")
    (package / "low" / "b.py").write_text("from flowpkg.low import a\n")  # a <-> b
    (package / "high.py").write_text("")
    (package / "low" / "c.py").write_text("import flowpkg.high\n")  # low imports high
    (tmp_path / "contracts.toml").write_text(
        '[tool.importlinter]\nroot_packages = ["flowpkg"]\n\n'
        '[[tool.importlinter.contracts]]\nname = "layers"\ntype = "layers"\n'
        'layers = ["flowpkg.high", "flowpkg.low"]\n\n'
        '[[tool.importlinter.contracts]]\nname = "cycles"\ntype = "acyclic_siblings"\n'
        'ancestors = ["flowpkg"]\n'
    )
    result = lint_imports(tmp_path, "contracts.toml", pythonpath=tmp_path)
    assert result.returncode == 1
    assert "0 kept, 2 broken" in result.stdout
    assert "No cycles are allowed in flowpkg.low" in result.stdout and "flowpkg.low.c" in result.stdout
