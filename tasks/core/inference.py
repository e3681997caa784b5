"""A model's logits on encoded batches, on its own runtime: PyTorch for checkpoints, ONNX Runtime
(CPU) for ONNX models; and the encoder that turns texts into the int64 arrays both take. Evaluation,
side-by-side timing, the engines' canary and the techniques that measure a model while they change
it all run models through these."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tasks.core.models import ONNX_FILE, ModelRef


class Predictor(Protocol):
    runtime: str

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray: ...


class TorchPredictor:
    runtime = "pytorch"

    def __init__(self, path: Path, threads: int) -> None:
        import torch

        from tasks.core.models import load_classifier

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.model = load_classifier(path, remove_pruned_heads=True)

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        with self._torch.inference_mode():
            inputs = {k: self._torch.from_numpy(v) for k, v in batch.items()}
            return self.model(**inputs).logits.float().numpy()


class OnnxPredictor:
    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(path / ONNX_FILE), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = {i.name for i in self.session.get_inputs()}

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: v.astype(np.int64) for k, v in batch.items() if k in self.inputs}
        return np.asarray(self.session.run(["logits"], feed)[0], dtype=np.float32)


def load_predictor(model: ModelRef, threads: int = 0) -> Predictor:
    if model.format == "onnx":
        return OnnxPredictor(model.path, threads)
    return TorchPredictor(model.path, threads)


class Encoder:
    """The model's own tokenizer, truncating as the recipe says, giving int64 arrays."""

    def __init__(self, path: Path, max_length: int) -> None:
        from tasks.core.models import load_tokenizer

        self.tokenizer: Any = load_tokenizer(path)
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
        )
        return {k: np.asarray(v, dtype=np.int64) for k, v in encoded.items()}
