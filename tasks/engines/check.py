"""The build-time check of an engine on the canary set: its labels and logits against the
registered model's, and, where this machine is the target's kind, its batch-1 latency and its
throughput at a larger batch. Devices run the same check before they switch to an engine."""

from __future__ import annotations

import time

import numpy as np

from tasks.engines.canary import Canary
from tasks.engines.info import CanaryResult
from tasks.engines.runtime import Predictor
from tasks.engines.target import Target

WARMUP = 10
MIN_THROUGHPUT_SECONDS = 1.0


def canary_requests(canary: Canary, min_sequence: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each canary example alone, unpadded (but not shorter than the profile allows): a device's
    request, and how the canary's reference logits were computed."""
    ids, mask = canary.arrays()
    requests = []
    for row_ids, row_mask in zip(ids, mask, strict=True):
        length = max(int(row_mask.sum()), min_sequence)
        requests.append((row_ids[None, :length], row_mask[None, :length]))
    return requests


def _percentile(samples_ms: list[float], q: float) -> float:
    return round(float(np.percentile(samples_ms, q)), 4)


def canary_logits(predictor: Predictor, canary: Canary, target: Target) -> np.ndarray:
    """The engine's logits on each canary example alone, as the reference was computed."""
    requests = canary_requests(canary, min(p.sequence.min for p in target.profiles))
    return np.concatenate([predictor.predict(ids, mask) for ids, mask in requests])


def time_engine(predictor: Predictor, canary: Canary, target: Target) -> tuple[float, float, float, int]:
    """(p50 ms, p95 ms) at batch 1 over `latency_requests` canary requests, and sequences per second
    at the target's throughput batch (the canary rows repeated to fill it)."""
    requests = canary_requests(canary, min(p.sequence.min for p in target.profiles))
    for i in range(WARMUP):
        predictor.predict(*requests[i % len(requests)])
    samples = []
    for i in range(target.check.latency_requests):
        started = time.perf_counter_ns()
        predictor.predict(*requests[i % len(requests)])
        samples.append((time.perf_counter_ns() - started) / 1e6)
    batch = min(target.check.throughput_batch, target.max_batch)
    ids, mask = canary.arrays()
    rows = np.arange(batch) % len(ids)
    big_ids, big_mask = ids[rows], mask[rows]
    predictor.predict(big_ids, big_mask)
    runs, started_s = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - started_s < MIN_THROUGHPUT_SECONDS:
        predictor.predict(big_ids, big_mask)
        runs += 1
    throughput = batch * runs / (time.perf_counter() - started_s)
    return _percentile(samples, 50), _percentile(samples, 95), round(throughput, 1), batch


def check_engine(
    predictor: Predictor, canary: Canary, target: Target, timing_note: str | None
) -> CanaryResult:
    """Agreement and largest logit difference against the registered model; latency and throughput
    too unless `timing_note` says why this machine cannot stand for the target."""
    logits = canary_logits(predictor, canary, target)
    reference = canary.reference
    agreement = float((logits.argmax(axis=1) == reference.argmax(axis=1)).mean())
    diff = float(np.abs(logits - reference).max())
    limits = target.check
    failures = []
    if agreement < limits.min_agreement:
        failures.append(f"agreement {agreement:.4f} < {limits.min_agreement:.4f}")
    if diff > limits.max_logit_diff:
        failures.append(f"max logit difference {diff:.4g} > {limits.max_logit_diff:.4g}")
    reason = "; ".join(failures) or (
        f"agreement {agreement:.4f} ≥ {limits.min_agreement:.4f}, "
        f"max logit difference {diff:.4g} ≤ {limits.max_logit_diff:.4g}"
    )
    result = CanaryResult(
        examples=len(reference),
        agreement=round(agreement, 6),
        max_logit_diff=round(diff, 6),
        passed=not failures,
        reason=reason,
        device=predictor.device,
        timing_note=timing_note or "",
    )
    if timing_note is None:
        p50, p95, throughput, batch = time_engine(predictor, canary, target)
        result = result.model_copy(
            update={
                "latency_p50_ms": p50,
                "latency_p95_ms": p95,
                "throughput_per_s": throughput,
                "throughput_batch": batch,
            }
        )
    return result
