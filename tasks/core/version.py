"""What code produced an artifact: the git commit for lineage, and for cache keys the digest of
exactly the code a step runs.

A step's code is its module and every `tasks` module it imports, transitively (imports inside
functions count). Each module is digested by its syntax tree without docstrings, so comments,
docstrings and formatting change no key; the modules that only key, record or configure steps
(`NEUTRAL`) are left out, so editing them recomputes nothing. A change to report, CLI or gate code
therefore leaves every model's key as it was, and a change to pruning changes the keys of the
pruning techniques and, through their inputs, of the steps after them.
"""

from __future__ import annotations

import ast
import hashlib
import subprocess
from functools import cache
from pathlib import Path

PACKAGE = "tasks"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = PACKAGE_DIR.parent
# Cache keys and manifests (artifacts, version), settings values and error messages: none of them
# changes what a step computes.
NEUTRAL = frozenset(
    {"tasks.core.artifacts", "tasks.core.version", "tasks.core.settings", "tasks.core.errors"}
)


def module_file(name: str, root: Path = PACKAGE_DIR) -> Path | None:
    """The source file of module `name` of the package under `root`, or None if it has none."""
    parts = name.split(".")[1:]
    for candidate in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
        if parts and candidate.is_file():
            return candidate
    return None


def _without_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and body:
            first = body[0]
            value = first.value if isinstance(first, ast.Expr) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@cache
def _parsed(name: str, root: Path) -> tuple[str, frozenset[str]]:
    """(digest of the module's syntax tree without docstrings, the `tasks` modules it imports)."""
    path = module_file(name, root)
    if path is None:
        raise ValueError(f"no module {name} under {root}")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from tasks.x import y`: y is a submodule or a name defined in tasks.x.
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                imported.add(sub if module_file(sub, root) else node.module)
    ours = frozenset(m for m in imported if m.split(".")[0] == PACKAGE and module_file(m, root))
    tree_text = ast.dump(_without_docstrings(tree), annotate_fields=False)
    return hashlib.sha256(tree_text.encode()).hexdigest(), ours


@cache
def code_modules(name: str, root: Path = PACKAGE_DIR) -> tuple[str, ...]:
    """`name` and the `tasks` modules it imports, transitively, less the NEUTRAL ones; sorted."""
    seen: set[str] = set()
    pending = [name]
    while pending:
        current = pending.pop()
        if current in seen or current in NEUTRAL:
            continue
        seen.add(current)
        pending.extend(_parsed(current, root)[1])
    return tuple(sorted(seen))


@cache
def code_digest(name: str, root: Path = PACKAGE_DIR) -> str:
    """sha256 over the code of module `name` as `code_modules` delimits it."""
    digest = hashlib.sha256()
    for module in code_modules(name, root):
        digest.update(f"{module}\0{_parsed(module, root)[0]}\n".encode())
    return digest.hexdigest()


@cache
def code_commit() -> str:
    """The git commit of the checkout (with `+dirty` for uncommitted changes), or `unknown`."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_DIR), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit


def package_version() -> str:
    """slimline's release version (the images are tagged with it)."""
    import importlib.metadata

    return importlib.metadata.version("slimline")
