"""The accuracy gate judges the paired bootstrap interval, not the point estimate."""

import numpy as np
import pytest

from tasks.evaluate import EvalMetrics
from tasks.gates import judge, paired_bootstrap_drop
from tasks.recipe import GateConfig


def pairs(n: int, base_only: int, variant_only: int, both: int) -> tuple[np.ndarray, ...]:
    """Labels and two prediction arrays where exactly `base_only` examples are right only for
    the baseline, `variant_only` only for the variant, `both` for both; the rest for neither."""
    labels = np.zeros(n, dtype=int)
    base = np.ones(n, dtype=int)
    variant = np.ones(n, dtype=int)
    base[:base_only] = 0
    variant[base_only : base_only + variant_only] = 0
    base[base_only + variant_only : base_only + variant_only + both] = 0
    variant[base_only + variant_only : base_only + variant_only + both] = 0
    rng = np.random.default_rng(7)
    order = rng.permutation(n)
    return labels[order], base[order], variant[order]


def metrics(p95: float = 1.0, size: int = 10_000_000) -> EvalMetrics:
    return EvalMetrics(
        examples=1,
        accuracy=0.8,
        recall_per_class={},
        latency_p50_ms=p95 / 2,
        latency_p95_ms=p95,
        size_bytes=size,
        runtime="onnxruntime",
    )


def test_interval_covers_the_known_difference():
    # 2000 examples; the baseline wins 60, the variant 20: true drop = 40/2000 = 2.0 points.
    labels, base, variant = pairs(2000, base_only=60, variant_only=20, both=1500)
    interval = paired_bootstrap_drop(labels, base, variant, 4000, 0.95, seed=0)
    assert interval.point == pytest.approx(2.0)
    assert interval.low < 2.0 < interval.high
    # Paired sampling: the width comes from the 80 discordant pairs only (sd ≈ 0.45 pts).
    assert 1.2 < interval.high - interval.low < 2.4
    assert interval.low > 0.5


def test_identical_predictions_give_a_zero_width_interval():
    labels, base, _ = pairs(500, base_only=0, variant_only=0, both=400)
    interval = paired_bootstrap_drop(labels, base, base.copy(), 500, 0.95, seed=1)
    assert (interval.point, interval.low, interval.high) == (0.0, 0.0, 0.0)


def test_gate_fails_a_point_estimate_inside_budget_when_the_interval_is_not():
    # Drop of 0.6 points on 1000 examples with 30 discordant pairs: upper bound well above 1.0.
    labels, base, variant = pairs(1000, base_only=18, variant_only=12, both=700)
    config = GateConfig(max_accuracy_drop=1.0, bootstrap_resamples=2000, seed=0)
    verdict = judge(config, labels, base, variant, metrics())
    assert verdict.accuracy_drop.point == pytest.approx(0.6)
    assert verdict.accuracy_drop.high > 1.0
    assert not verdict.passed
    assert verdict.reasons[0].startswith("FAIL acc drop 95% upper")


def test_gate_passes_with_every_reason_listed():
    labels, base, variant = pairs(1000, base_only=2, variant_only=2, both=800)
    config = GateConfig(max_accuracy_drop=1.0, max_p95_latency_ms=5, max_size_mb=20)
    verdict = judge(config, labels, base, variant, metrics(p95=2.0, size=15_000_000))
    assert verdict.passed
    assert len(verdict.reasons) == 3
    assert "p95 2.00 ≤ 5.00 ms" in verdict.summary
    assert "size 15.0 ≤ 20.0 MB" in verdict.summary


@pytest.mark.parametrize(
    ("p95", "size", "failing"),
    [(9.0, 1_000_000, "FAIL p95 9.00 > 5.00 ms"), (1.0, 30_000_000, "FAIL size 30.0 > 20.0 MB")],
)
def test_budgets_fail_on_their_own(p95, size, failing):
    labels, base, _ = pairs(300, base_only=0, variant_only=0, both=250)
    config = GateConfig(max_p95_latency_ms=5, max_size_mb=20)
    verdict = judge(config, labels, base, base.copy(), metrics(p95=p95, size=size))
    assert not verdict.passed
    assert verdict.reasons == [failing]


def test_misaligned_predictions_are_refused():
    with pytest.raises(ValueError, match="aligned"):
        paired_bootstrap_drop(np.zeros(3), np.zeros(3), np.zeros(2), 100, 0.95, 0)
