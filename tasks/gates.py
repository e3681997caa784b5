"""Release gates: a variant passes only if every configured check passes, each with its reason."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from tasks.evaluate import EvalMetrics
from tasks.recipe import GateConfig


class Interval(BaseModel):
    """Accuracy drop (baseline − variant) in points, with its paired bootstrap interval."""

    point: float
    low: float
    high: float
    confidence: float


class Verdict(BaseModel):
    passed: bool
    reasons: list[str]
    accuracy_drop: Interval

    @property
    def summary(self) -> str:
        return "; ".join(self.reasons)


def paired_bootstrap_drop(
    labels: np.ndarray,
    baseline: np.ndarray,
    variant: np.ndarray,
    resamples: int,
    confidence: float,
    seed: int,
) -> Interval:
    """Percentile interval of the accuracy drop, resampling examples with both predictions
    kept together, so the interval reflects how the two models differ on the same inputs."""
    if not (len(labels) == len(baseline) == len(variant)) or len(labels) == 0:
        raise ValueError("labels and both prediction arrays must be non-empty and aligned")
    diff = (baseline == labels).astype(np.float64) - (variant == labels).astype(np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    # Chunked so memory stays bounded for large eval sets.
    chunk = max(1, 2_000_000 // len(diff))
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        index = rng.integers(0, len(diff), size=(count, len(diff)))
        means[start : start + count] = diff[index].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(
        point=round(100 * float(diff.mean()), 4),
        low=round(100 * float(low), 4),
        high=round(100 * float(high), 4),
        confidence=confidence,
    )


def judge(
    config: GateConfig,
    labels: np.ndarray,
    baseline_predictions: np.ndarray,
    variant_predictions: np.ndarray,
    metrics: EvalMetrics,
) -> Verdict:
    """Apply the recipe's gates to one variant."""
    drop = paired_bootstrap_drop(
        labels,
        baseline_predictions,
        variant_predictions,
        config.bootstrap_resamples,
        config.confidence,
        config.seed,
    )
    failures: list[str] = []
    passes: list[str] = []

    def check(ok: bool, text: str) -> None:
        (passes if ok else failures).append(text)

    level = f"{round(100 * config.confidence)}%"
    ok = drop.high <= config.max_accuracy_drop
    check(
        ok, f"acc drop {level} upper {drop.high:+.2f} {'≤' if ok else '>'} {config.max_accuracy_drop:.2f} pts"
    )
    if config.max_p95_latency_ms is not None:
        ok = metrics.latency_p95_ms <= config.max_p95_latency_ms
        check(ok, f"p95 {metrics.latency_p95_ms:.2f} {'≤' if ok else '>'} {config.max_p95_latency_ms:.2f} ms")
    if config.max_size_mb is not None:
        size_mb = metrics.size_bytes / 1e6
        ok = size_mb <= config.max_size_mb
        check(ok, f"size {size_mb:.1f} {'≤' if ok else '>'} {config.max_size_mb:.1f} MB")
    if failures:
        return Verdict(passed=False, reasons=[f"FAIL {r}" for r in failures], accuracy_drop=drop)
    return Verdict(passed=True, reasons=passes, accuracy_drop=drop)
