"""Content-addressed step outputs with manifests.

Each step writes a folder keyed by a digest of (step, config, input digests, code digest), where
the code digest covers the modules the step runs and nothing else (see tasks.core.version).
The folder appears under its final name only when complete (written beside it, then renamed),
so a rerun with the same inputs finds it and does no work, and a step that died half-way
leaves nothing a reader could mistake for a result (its staging folder, hidden, is removed by the
next run of the same step; see tasks.core.locks). Chained manifests are the lineage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tasks.core.locks import staging_dir
from tasks.core.version import code_commit, code_digest, code_modules

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class Manifest(BaseModel):
    step: str
    key: str
    config: dict[str, Any]
    inputs: dict[str, str]
    code_digest: str
    code_modules: list[str] = []  # the modules code_digest covers
    code_commit: str
    created_at: str
    seconds: float
    metrics: dict[str, Any]


class StepResult(BaseModel):
    """Where a step's output lies, its manifest, and whether it was reused from the cache."""

    path: Path
    manifest: Manifest
    reused: bool

    @property
    def key(self) -> str:
        return self.manifest.key


def _plain(config: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(config, BaseModel):
        return config.model_dump(mode="json")
    return json.loads(json.dumps(dict(config), sort_keys=True, default=str))


def step_key(step: str, config: dict[str, Any], inputs: Mapping[str, str], code: str) -> str:
    """The artifact key: `code` is the digest of the code the step runs."""
    payload = {"step": step, "config": config, "inputs": dict(inputs), "code": code}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def load_manifest(path: Path) -> Manifest:
    return Manifest.model_validate_json((path / MANIFEST).read_text())


def run_step(
    root: Path,
    step: str,
    config: BaseModel | Mapping[str, Any],
    inputs: Mapping[str, str],
    work: Callable[[Path], dict[str, Any]],
    code: str,
) -> StepResult:
    """Return the cached output of `step` for these inputs, or run `work(out_dir)` to make it.

    `work` writes its files into `out_dir` and returns the step's metrics. `code` names the module
    whose code (with the `tasks` modules it imports) computes the step: it keys the result.
    """
    plain = _plain(config)
    key = step_key(step, plain, inputs, code_digest(code))
    final = root / step.replace("/", "_") / key[:24]
    if (final / MANIFEST).exists():
        log.info("%s: reusing %s", step, final)
        return StepResult(path=final, manifest=load_manifest(final), reused=True)

    started = time.perf_counter()
    # Held by this process while written; a run killed here leaves it for the next writer to remove.
    with staging_dir(final.parent, prefix=f".{key[:24]}.tmp-") as staging:
        metrics = work(staging)
        manifest = Manifest(
            step=step,
            key=key,
            config=plain,
            inputs=dict(inputs),
            code_digest=code_digest(code),
            code_modules=list(code_modules(code)),
            code_commit=code_commit(),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            seconds=round(time.perf_counter() - started, 3),
            metrics=metrics,
        )
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        try:
            os.replace(staging, final)
        except OSError:
            # Another worker finished the same step first; its result is identical.
            return StepResult(path=final, manifest=load_manifest(final), reused=True)
    log.info("%s: computed in %.1fs -> %s", step, manifest.seconds, final)
    return StepResult(path=final, manifest=manifest, reused=False)
