"""A device's check of an engine before it switches to it: one smoke inference, then every canary
example alone, as a request is served (tasks.engines.check.canary_requests): label agreement with
the release's expected labels (the reference logits' argmax), accuracy against the true labels and
its drop from the expected labels' own, batch-1 latency, failed inferences; judged against the
fleet's health criteria (DesiredState.health)."""

from __future__ import annotations

import time

import numpy as np

from tasks.engines.canary import Canary
from tasks.engines.check import canary_requests
from tasks.engines.info import EngineInfo
from tasks.engines.runtime import Predictor
from tasks.fleet.channel import HealthReport
from tasks.fleet.spec import Health


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _judge(report: dict[str, float], errors: int, examples: int, criteria: Health) -> list[str]:
    failures = []
    if report["agreement"] < criteria.min_agreement:
        failures.append(f"agreement {report['agreement']:.4f} < {criteria.min_agreement:.4f}")
    if report["accuracy_drop"] > criteria.max_accuracy_drop:
        failures.append(f"accuracy drop {report['accuracy_drop']:.4f} > {criteria.max_accuracy_drop:.4f}")
    if report["p95_ms"] > criteria.max_p95_ms:
        failures.append(f"p95 {report['p95_ms']:.2f} ms > {criteria.max_p95_ms:.2f} ms")
    if errors:
        failures.append(f"{errors} of {examples} canary inferences failed")
    return failures


def check_health(predictor: Predictor, info: EngineInfo, canary: Canary, criteria: Health) -> HealthReport:
    """The engine's health on the canary set; `passed` when it meets every criterion."""
    requests = canary_requests(canary, min(p.sequence.min for p in info.profiles))
    expected = canary.reference.argmax(axis=1)
    truth = np.asarray(canary.labels)
    expected_accuracy = float((expected == truth).mean())
    try:
        predictor.predict(*requests[0])
    except Exception as exc:  # any runtime's failure: the engine does not run here
        return HealthReport(
            examples=len(requests),
            agreement=0.0,
            accuracy=0.0,
            expected_accuracy=expected_accuracy,
            accuracy_drop=expected_accuracy,
            p50_ms=0.0,
            p95_ms=0.0,
            errors=1,
            passed=False,
            reason=f"smoke inference failed: {_first_line(exc)}",
        )
    labels = np.full(len(requests), -1)
    samples_ms: list[float] = []
    errors = 0
    for index, (ids, mask) in enumerate(requests):
        started = time.perf_counter_ns()
        try:
            logits = predictor.predict(ids, mask)
        except Exception:  # counted: a device that fails some inputs is not healthy
            errors += 1
            continue
        samples_ms.append((time.perf_counter_ns() - started) / 1e6)
        labels[index] = int(logits.argmax(axis=1)[0])
    accuracy = float((labels == truth).mean())
    measured = {
        "agreement": round(float((labels == expected).mean()), 6),
        "accuracy": round(accuracy, 6),
        "accuracy_drop": round(expected_accuracy - accuracy, 6),
        "p50_ms": round(float(np.percentile(samples_ms, 50)), 4) if samples_ms else 0.0,
        "p95_ms": round(float(np.percentile(samples_ms, 95)), 4) if samples_ms else 0.0,
    }
    failures = _judge(measured, errors, len(requests), criteria)
    reason = "; ".join(failures) or (
        f"agreement {measured['agreement']:.4f} ≥ {criteria.min_agreement:.4f}, accuracy "
        f"{accuracy:.4f} (expected {expected_accuracy:.4f}), p95 {measured['p95_ms']:.2f} ms "
        f"≤ {criteria.max_p95_ms:.2f} ms"
    )
    return HealthReport(
        examples=len(requests),
        expected_accuracy=round(expected_accuracy, 6),
        errors=errors,
        passed=not failures,
        reason=reason,
        **measured,
    )
