"""The technique catalogue: each compression step a recipe can name, with its typed config.

A technique is a function `run(model, config, output_dir) -> model` registered under the
name recipes use. Modules here import only pydantic at import time; torch, transformers
and onnxruntime are imported inside `run`, so loading a recipe (or parsing a DAG) stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from tasks.errors import ConfigError

ModelFormat = Literal["hf", "onnx"]


class ModelRef(BaseModel):
    """A model folder: `hf` (config.json + safetensors) or `onnx` (model.onnx); both carry the
    tokenizer files and config.json so any step can tokenize and name labels."""

    path: Path
    format: ModelFormat


class TechniqueConfig(BaseModel):
    """Base of technique configs: unknown fields are errors, so a typo fails at load time."""

    model_config = ConfigDict(extra="forbid", frozen=True)


C = TypeVar("C", bound=TechniqueConfig)
RunFn = Callable[[ModelRef, Any, Path], ModelRef]


@dataclass(frozen=True)
class Technique:
    name: str
    config: type[TechniqueConfig]
    accepts: tuple[ModelFormat, ...]
    produces: ModelFormat
    run: RunFn

    @property
    def summary(self) -> str:
        return (self.run.__doc__ or "").strip().splitlines()[0]


TECHNIQUES: dict[str, Technique] = {}


def technique(
    name: str, config: type[C], accepts: tuple[ModelFormat, ...], produces: ModelFormat
) -> Callable[[Callable[[ModelRef, C, Path], ModelRef]], Callable[[ModelRef, C, Path], ModelRef]]:
    """Register `run` under `name`; recipes refer to it by that name."""

    def register(
        run: Callable[[ModelRef, C, Path], ModelRef],
    ) -> Callable[[ModelRef, C, Path], ModelRef]:
        TECHNIQUES[name] = Technique(name, config, accepts, produces, run)
        return run

    return register


def get_technique(name: str) -> Technique:
    try:
        return TECHNIQUES[name]
    except KeyError:
        raise ConfigError(f"unknown technique {name!r}; allowed: {', '.join(sorted(TECHNIQUES))}") from None


# Registration happens on import; these modules are cheap to import.
from tasks.techniques import onnx_export, onnx_quantize  # noqa: E402

__all__ = [
    "TECHNIQUES",
    "ModelRef",
    "Technique",
    "TechniqueConfig",
    "get_technique",
    "onnx_export",
    "onnx_quantize",
]
