"""Evaluation: accuracy overall and per class, per-example predictions, batch-1 latency on the
model's own runtime (PyTorch for checkpoints, ONNX Runtime for ONNX variants), size on disk."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from tasks.core.artifacts import StepResult, run_step
from tasks.core.config import Strict
from tasks.core.inference import Encoder, Predictor, batched_logits, load_predictor
from tasks.core.models import ModelRef, model_size_bytes
from tasks.core.settings import Settings
from tasks.intake.data import DatasetConfig, Example, load_split

PREDICTIONS = "predictions.csv"


class EvalMetrics(BaseModel):
    examples: int
    accuracy: float
    recall_per_class: dict[str, float]
    latency_p50_ms: float
    latency_p95_ms: float
    size_bytes: int
    runtime: str


def percentile_ms(samples_ns: list[int], q: float) -> float:
    return round(float(np.percentile(np.asarray(samples_ns) / 1e6, q)), 4)


def time_requests(predictor: Predictor, requests: list[dict[str, np.ndarray]]) -> list[int]:
    """Nanoseconds per request, one request at a time, as an edge device serves them."""
    timings = []
    for request in requests:
        started = time.perf_counter_ns()
        predictor.logits(request)
        timings.append(time.perf_counter_ns() - started)
    return timings


def measure(
    model: ModelRef, examples: list[Example], dataset: DatasetConfig, config: EvaluationConfig
) -> tuple[EvalMetrics, np.ndarray]:
    """Run the model over `examples`; return metrics and the logits (examples × classes)."""
    encode = Encoder(model.path, dataset.max_length)
    predictor = load_predictor(model, config.threads)
    texts = [e.text for e in examples]
    logits = batched_logits(predictor, encode, texts, config.batch_size, f"evaluate {model.path.name}")

    singles = [encode([t]) for t in texts[: max(config.latency_samples, config.warmup)]]
    time_requests(predictor, singles[: config.warmup])
    timings = time_requests(predictor, singles[: config.latency_samples])

    labels = np.array([e.label for e in examples])
    predicted = logits.argmax(axis=1)
    recall = {
        name: round(float((predicted[labels == i] == i).mean()), 6) if (labels == i).any() else 0.0
        for i, name in enumerate(dataset.labels)
    }
    metrics = EvalMetrics(
        examples=len(examples),
        accuracy=round(float((predicted == labels).mean()), 6),
        recall_per_class=recall,
        latency_p50_ms=percentile_ms(timings, 50),
        latency_p95_ms=percentile_ms(timings, 95),
        size_bytes=model_size_bytes(model.path),
        runtime=predictor.runtime,
    )
    return metrics, logits


def write_predictions(path: Path, examples: list[Example], logits: np.ndarray) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "label", "prediction", *(f"logit_{i}" for i in range(logits.shape[1]))])
        for index, (example, row) in enumerate(zip(examples, logits, strict=True)):
            writer.writerow([index, example.label, int(row.argmax()), *(f"{v:.6g}" for v in row)])


def read_predictions(result_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predictions) of an evaluation artifact, in evaluation-set order."""
    with (result_dir / PREDICTIONS).open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return (
        np.array([int(r["label"]) for r in rows]),
        np.array([int(r["prediction"]) for r in rows]),
    )


def evaluate(
    settings: Settings,
    model: ModelRef,
    model_key: str,
    split: StepResult,
    dataset: DatasetConfig,
    config: EvaluationConfig,
) -> StepResult:
    """Evaluate a model on the eval split, as a cached step keyed by model and split."""

    def work(out: Path) -> dict[str, Any]:
        examples = load_split(split.path, "eval")
        metrics, logits = measure(model, examples, dataset, config)
        write_predictions(out / PREDICTIONS, examples, logits)
        return metrics.model_dump()

    step_config = {
        "evaluation": config.model_dump(),
        "labels": dataset.labels,
        "max_length": dataset.max_length,
    }
    return run_step(
        settings.artifacts_dir,
        "evaluate",
        step_config,
        {"model": model_key, "split": split.key},
        work,
        code=__name__,
    )


def metrics_of(result: StepResult) -> EvalMetrics:
    return EvalMetrics.model_validate(result.manifest.metrics)


class EvaluationConfig(Strict):
    batch_size: int = Field(64, ge=1, le=1024, description="Batch size for accuracy runs.")
    latency_samples: int = Field(200, ge=10, description="Batch-1 requests timed per model.")
    warmup: int = Field(20, ge=0, description="Untimed batch-1 requests before timing.")
    threads: int = Field(0, ge=0, description="Intra-op threads; 0 lets each runtime choose.")
