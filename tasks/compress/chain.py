"""Techniques applied one after another, each a cached step: what a variant's `steps` do."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks.compress.technique import TechniqueContext
from tasks.compress.techniques import get_technique
from tasks.core.artifacts import StepResult, run_step
from tasks.core.models import ModelRef, model_size_bytes


def apply_steps(
    steps: Sequence[tuple[str, Mapping[str, Any]]], context: TechniqueContext
) -> tuple[ModelRef, list[StepResult]]:
    """Apply (technique, config) steps to the context's teacher in order, each a cached step under
    the context's artifacts folder, keyed by its input model (and, for techniques that read data,
    by the split and the teacher checkpoint)."""
    model, key = context.teacher, context.teacher_key
    results = []
    for name, step_config in steps:
        spec = get_technique(name)
        config = spec.config.model_validate(step_config)
        inputs = {"model": key}
        if spec.uses_data:
            inputs |= {"split": context.split_key, "teacher": context.teacher_key}

        def work(
            out: Path, source: ModelRef = model, cfg: Any = config, run: Any = spec.run
        ) -> dict[str, Any]:
            produced = run(source, cfg, out, context)
            return {"format": produced.format, "size_bytes": model_size_bytes(out)}

        result = run_step(
            context.artifacts_dir, f"technique/{spec.name}", config, inputs, work, code=spec.run.__module__
        )
        results.append(result)
        model, key = ModelRef(path=result.path, format=spec.produces), result.key
    return model, results
