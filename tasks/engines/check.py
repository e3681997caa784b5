"""The build-time check of an engine on the canary set: its labels and logits against the
registered model's, and, where this machine is the target's kind, its batch-1 latency and its
throughput at a larger batch. Devices run the same check before they switch to an engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tasks.engines.canary import Canary
from tasks.engines.energy import energy_counter
from tasks.engines.info import CanaryResult
from tasks.engines.runtime import Predictor
from tasks.engines.target import Target

WARMUP = 10
MIN_THROUGHPUT_SECONDS = 1.0
ENERGY_SECONDS = 2.0


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


def time_engine(predictor: Predictor, canary: Canary, target: Target) -> dict[str, Any]:
    """p50 and p95 ms at batch 1 over `latency_requests` canary requests, sequences per second at
    the target's throughput batch (the canary rows repeated to fill it), and where the device has
    an energy counter, joules per 1,000 inferences at batch 1 and per 1,000 sequences at that batch
    (each loop run for at least ENERGY_SECONDS, so the counter's resolution does not show)."""
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
    timing: dict[str, Any] = {
        "latency_p50_ms": _percentile(samples, 50),
        "latency_p95_ms": _percentile(samples, 95),
        "throughput_per_s": round(throughput, 1),
        "throughput_batch": batch,
    }
    counter, why_not = energy_counter(predictor.device)
    if counter is None:
        return timing | {"energy_note": why_not}

    def joules_per_1000(call: Callable[[int], object], items_per_call: int) -> float:
        calls, before, started = 0, counter.joules(), time.perf_counter()
        while calls < 3 or time.perf_counter() - started < ENERGY_SECONDS:
            call(calls)
            calls += 1
        return round((counter.joules() - before) / (calls * items_per_call) * 1000, 3)

    return timing | {
        "energy_j_per_1k": joules_per_1000(lambda i: predictor.predict(*requests[i % len(requests)]), 1),
        "energy_j_per_1k_batched": joules_per_1000(lambda i: predictor.predict(big_ids, big_mask), batch),
        "energy_note": counter.source,
    }


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
        result = result.model_copy(update=time_engine(predictor, canary, target))
    return result
