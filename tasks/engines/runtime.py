"""What every engine runtime provides: build an engine folder from a registered model, and load
one as a predictor. Runtimes are modules under `tasks.engines.runtimes` (`tasks.engines.build.
runtime_of` imports the one a target names, so a device needs only its own runtime installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
from pydantic import BaseModel

from tasks.engines.info import EngineInfo
from tasks.engines.target import Target


class BuildSource(BaseModel):
    """What a build starts from: the registered model and what it was trained and calibrated on."""

    onnx: Path  # the registered ONNX graph (model.onnx)
    onnx_digest: str
    torch_model: Path | None = None  # the PyTorch (Hugging Face) folder behind the ONNX, if one reproduces it
    tokenizer_dir: Path  # folder holding the tokenizer files and config.json
    calibration: Path | None = None  # canary-format JSON of calibration inputs (TensorRT INT8)
    inputs: list[str]  # the graph's input names, in order


class Built(BaseModel):
    """What a runtime's build wrote into the engine folder."""

    entry: str  # the file its loader opens
    runtime_version: str
    requires: dict[str, object] = {}  # requirements the build adds to the target's (e.g. CPU flags)
    notes: list[str] = []


class Predictor(Protocol):
    """A loaded engine: token ids and attention mask (int64, [batch, sequence]) to logits."""

    device: str

    def predict(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


class Runtime(Protocol):
    def build(self, source: BuildSource, target: Target, out_dir: Path) -> Built: ...

    def load(self, engine_dir: Path, info: EngineInfo, device: str | None) -> Predictor:
        """The engine in `engine_dir` (already verified) on `device` (None: the target's own)."""
        ...

    def version(self) -> str | None:
        """The installed runtime's version, or None when it is not installed here."""
        ...
