"""A model's logits on encoded batches, on its own runtime: PyTorch for checkpoints, ONNX Runtime
(CPU) for ONNX models; and the encoder that turns texts into the int64 arrays both take. Evaluation,
side-by-side timing, the engines' canary and the techniques that measure a model while they change
it all run models through these; training and inference alike batch texts of similar length."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tasks.core.models import ONNX_FILE, ModelRef

if TYPE_CHECKING:
    import torch

MEGABATCH = 50  # batches per length-sorted group (as transformers' LengthGroupedSampler)


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


def length_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator | None = None
) -> list[list[int]]:
    """Batches of indices whose texts have similar token counts, so padding wastes little compute.

    Without a generator: all indices sorted by length (inference; callers restore the order).
    With one: a random permutation cut into groups of MEGABATCH batches, each group sorted by
    length and cut into batches, and the batch order shuffled: training still sees every example
    once per epoch in a random mix, at a fraction of the padded tokens.
    """
    import torch

    if generator is None:
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    permutation = torch.randperm(len(lengths), generator=generator).tolist()
    group = batch_size * MEGABATCH
    batches = []
    for start in range(0, len(permutation), group):
        members = sorted(permutation[start : start + group], key=lengths.__getitem__, reverse=True)
        batches += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def token_lengths(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[int]:
    """Token count of each text after truncation (special tokens included)."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    return [len(ids) for ids in encoded["input_ids"]]


def batched_logits(
    predictor: Predictor, encode: Encoder, texts: Sequence[str], batch_size: int, desc: str | None = None
) -> np.ndarray:
    """The model's logits for every text, in the texts' order, computed in batches of similar length:
    little padding, so less work and, for dynamically quantized models (whose activation scales are
    the batch's), inputs closer to a device's single requests. `desc` shows a progress bar."""
    from tqdm import tqdm

    lengths = token_lengths(encode.tokenizer, texts, encode.max_length)
    logits = np.zeros((0, 0), dtype=np.float32)
    for index in tqdm(length_batches(lengths, batch_size), desc=desc, leave=False, disable=desc is None):
        found = predictor.logits(encode([texts[i] for i in index]))
        if logits.size == 0:
            logits = np.zeros((len(texts), found.shape[1]), dtype=np.float32)
        logits[index] = found
    return logits
