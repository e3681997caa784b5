"""What a technique is: its typed config, the context it may read, and the registry recipes name it in.

A technique is a function `run(model, config, output_dir, context) -> model` registered
under the name recipes use; `context` gives data-driven techniques (calibration, pruning,
distillation) the data split and the original checkpoint as teacher. Modules here import
only pydantic at import time; torch, transformers and onnxruntime are imported inside
`run`, so loading a recipe (or parsing a DAG) stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from tasks.core.errors import ConfigError
from tasks.core.models import ModelFormat, ModelRef


class TechniqueContext(BaseModel):
    """What a technique may read besides its input model."""

    split_dir: Path  # train.jsonl, eval.jsonl, calibration.jsonl (see tasks.intake.data)
    split_key: str  # digest of the split, for keys of intermediate artifacts
    labels: list[str]
    max_length: int
    teacher: ModelRef  # the checkpoint the variant starts from
    teacher_key: str  # its content digest
    artifacts_dir: Path  # root for intermediate artifacts (tasks.core.artifacts.run_step)


class TechniqueConfig(BaseModel):
    """Base of technique configs: unknown fields are errors, so a typo fails at load time."""

    model_config = ConfigDict(extra="forbid", frozen=True)


C = TypeVar("C", bound=TechniqueConfig)
RunFn = Callable[[ModelRef, Any, Path, TechniqueContext], ModelRef]


@dataclass(frozen=True)
class Technique:
    name: str
    config: type[TechniqueConfig]
    accepts: tuple[ModelFormat, ...]
    produces: ModelFormat
    uses_data: bool  # reads the split or the teacher: its cache key must include them
    run: RunFn

    @property
    def summary(self) -> str:
        return (self.run.__doc__ or "").strip().splitlines()[0]


TECHNIQUES: dict[str, Technique] = {}


TypedRun = Callable[[ModelRef, C, Path, TechniqueContext], ModelRef]


def technique(
    name: str,
    config: type[C],
    accepts: tuple[ModelFormat, ...],
    produces: ModelFormat,
    uses_data: bool = False,
) -> Callable[[TypedRun[C]], TypedRun[C]]:
    """Register `run` under `name`; recipes refer to it by that name."""

    def register(run: TypedRun[C]) -> TypedRun[C]:
        TECHNIQUES[name] = Technique(name, config, accepts, produces, uses_data, run)
        return run

    return register


def get_technique(name: str) -> Technique:
    try:
        return TECHNIQUES[name]
    except KeyError:
        raise ConfigError(f"unknown technique {name!r}; allowed: {', '.join(sorted(TECHNIQUES))}") from None
