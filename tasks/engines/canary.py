"""The canary set: a fixed slice of the evaluation split (its first examples), tokenized, with the
registered model's logits on it. Every engine build is checked against it, and it travels in the
release bundle so each device reproduces it before it switches to a new engine.

It is JSON (token ids, not text alone), so a device checks an engine without a tokenizer library
and without unpickling anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ValidationError

from tasks.core.artifacts import StepResult, run_step
from tasks.core.errors import EngineError
from tasks.core.models import ModelRef

if TYPE_CHECKING:  # settings are passed in; a device loading engines needs no pydantic-settings
    from tasks.core.settings import Settings

CANARY_FILE = "canary.json"
CALIBRATION_FILE = "calibration.json"


class Canary(BaseModel):
    label_names: list[str]
    texts: list[str]
    labels: list[int]  # the true labels, for accuracy on the device
    input_ids: list[list[int]]  # padded to one length
    attention_mask: list[list[int]]
    # The registered model (ONNX Runtime, CPU) on each example alone, unpadded, as a device serves
    # a request: dynamic quantization scales activations per batch, so batching would change them.
    reference_logits: list[list[float]]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.input_ids, dtype=np.int64), np.asarray(self.attention_mask, dtype=np.int64)

    @property
    def reference(self) -> np.ndarray:
        return np.asarray(self.reference_logits, dtype=np.float32)


def read_canary(path: Path) -> Canary:
    try:
        return Canary.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))
    except OSError as exc:
        raise EngineError(f"canary set {path}: cannot be read ({exc.strerror})") from None
    except (ValueError, ValidationError) as exc:
        raise EngineError(f"canary set {path}: malformed ({str(exc).splitlines()[0]})") from None


def canary_step(
    settings: Settings,
    model: ModelRef,
    model_key: str,
    split: StepResult,
    label_names: list[str],
    max_length: int,
    size: int,
) -> StepResult:
    """The canary set of a registered model (cached by the model, the split and the size)."""

    def work(out: Path) -> dict[str, Any]:
        from tasks.core.inference import Encoder, OnnxPredictor
        from tasks.intake.data import load_split

        examples = load_split(split.path, "eval")[:size]
        encode = Encoder(model.path, max_length)
        batch = encode([e.text for e in examples])
        predictor = OnnxPredictor(model.path, threads=1)
        reference = np.concatenate([predictor.logits(encode([e.text])) for e in examples])
        canary = Canary(
            label_names=label_names,
            texts=[e.text for e in examples],
            labels=[e.label for e in examples],
            input_ids=batch["input_ids"].tolist(),
            attention_mask=batch["attention_mask"].tolist(),
            reference_logits=[[round(float(v), 6) for v in row] for row in reference],
        )
        (out / CANARY_FILE).write_text(canary.model_dump_json())
        accuracy = float((reference.argmax(axis=1) == np.asarray(canary.labels)).mean())
        return {"examples": len(examples), "sequence": len(canary.input_ids[0]), "accuracy": accuracy}

    if model.format != "onnx":
        raise EngineError(
            f"the canary set's reference is the registered ONNX graph; {model.path} is {model.format}"
        )
    config = {"size": size, "max_length": max_length, "labels": label_names}
    return run_step(
        settings.artifacts_dir,
        "release/canary",
        config,
        {"model": model_key, "split": split.key},
        work,
        __name__,
    )


def calibration_step(
    settings: Settings, model: ModelRef, model_key: str, split: StepResult, max_length: int
) -> StepResult:
    """The calibration split tokenized for the model (padded to one length), for engine builders
    that calibrate INT8 themselves (TensorRT): `{"input_ids": [...], "attention_mask": [...]}`."""

    def work(out: Path) -> dict[str, Any]:
        from tasks.core.inference import Encoder
        from tasks.intake.data import load_split

        examples = load_split(split.path, "calibration")
        if not examples:
            raise EngineError("the recipe's calibration split is empty; set dataset.calibration_size > 0")
        batch = Encoder(model.path, max_length)([e.text for e in examples])
        tokens = {name: batch[name].tolist() for name in ("input_ids", "attention_mask")}
        (out / CALIBRATION_FILE).write_text(json.dumps(tokens))
        return {"examples": len(examples), "sequence": len(tokens["input_ids"][0])}

    config = {"max_length": max_length}
    inputs = {"model": model_key, "split": split.key}
    return run_step(settings.artifacts_dir, "release/calibration", config, inputs, work, __name__)
