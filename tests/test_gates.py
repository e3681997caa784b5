"""Release gates: the accuracy gate judges the paired bootstrap interval, not the point estimate;
the optional gates (McNemar, per-class recall, agreement, target budgets, no regression against
production) each fail on constructed predictions whose true difference is known."""

import numpy as np
import pytest

from tasks.gate.evaluate import EvalMetrics
from tasks.gate.gates import (
    GateConfig,
    ProductionReference,
    TargetBudget,
    judge,
    latency_checks,
    mcnemar_exact,
    paired_bootstrap_drop,
    recall_drops,
    with_checks,
)


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
    # The evaluation's own p95 is over budget, but budgets are judged on the side-by-side p95 only.
    verdict = judge(config, labels, base, variant, metrics(p95=9.0, size=15_000_000))
    assert verdict.passed
    assert len(verdict.reasons) == 2
    assert "size 15.0 ≤ 20.0 MB" in verdict.summary and "p95" not in verdict.summary
    timed = with_checks(verdict, latency_checks(config, [], 2.0))
    assert timed.passed and len(timed.reasons) == 3
    assert "p95 side by side 2.00 ms ≤ 5.00 ms budget (recipe)" in timed.summary


@pytest.mark.parametrize(
    ("p95", "size", "failing"),
    [
        (9.0, 1_000_000, "FAIL p95 side by side 9.00 ms > 5.00 ms budget (recipe)"),
        (1.0, 30_000_000, "FAIL size 30.0 > 20.0 MB"),
    ],
)
def test_budgets_fail_on_their_own(p95, size, failing):
    labels, base, _ = pairs(300, base_only=0, variant_only=0, both=250)
    config = GateConfig(max_p95_latency_ms=5, max_size_mb=20)
    verdict = judge(config, labels, base, base.copy(), metrics(size=size))
    verdict = with_checks(verdict, latency_checks(config, [], p95))
    assert not verdict.passed
    assert verdict.reasons == [failing]


def test_misaligned_predictions_are_refused():
    with pytest.raises(ValueError, match="aligned"):
        paired_bootstrap_drop(np.zeros(3), np.zeros(3), np.zeros(2), 100, 0.95, 0)


def test_mcnemar_exact_p_value_on_known_counts():
    # 10 discordant pairs, all lost by the variant: two-sided p = 2 / 2**10.
    labels, base, variant = pairs(200, base_only=10, variant_only=0, both=150)
    assert mcnemar_exact(labels, base, variant) == (10, 0, pytest.approx(2 / 1024))
    # Balanced disagreements are no evidence either way.
    labels, base, variant = pairs(200, base_only=6, variant_only=6, both=150)
    assert mcnemar_exact(labels, base, variant)[2] == pytest.approx(1.0)
    # b=7, c=1: p = 2 * (1 + 8) / 256.
    labels, base, variant = pairs(200, base_only=7, variant_only=1, both=150)
    assert mcnemar_exact(labels, base, variant)[2] == pytest.approx(18 / 256)


def test_mcnemar_gate_fails_only_a_significantly_worse_variant():
    config = GateConfig(max_accuracy_drop=10.0, mcnemar_alpha=0.05, bootstrap_resamples=200)
    labels, base, variant = pairs(400, base_only=12, variant_only=1, both=300)
    worse = judge(config, labels, base, variant, metrics())
    assert not worse.passed and [c.name for c in worse.checks if not c.passed] == ["mcnemar"]
    assert "12 lost vs 1 gained" in worse.summary and "significantly worse" in worse.summary
    labels, base, variant = pairs(400, base_only=1, variant_only=12, both=300)
    better = judge(config, labels, base, variant, metrics())
    assert better.passed  # significantly *better* is no reason to block a release
    assert "1 lost vs 12 gained" in better.summary and "(significantly better)" in better.summary


def test_recall_drop_names_the_class_that_lost_most():
    labels = np.array([0] * 50 + [1] * 50 + [2] * 50)
    base = labels.copy()
    variant = labels.copy()
    variant[50:60] = 0  # class 1 loses 10 of 50: 20 points; accuracy loses only 6.7
    drops = recall_drops(labels, base, variant, ["neg", "neu", "pos"])
    assert drops == {"neg": 0.0, "neu": 20.0, "pos": 0.0}
    config = GateConfig(max_accuracy_drop=15.0, max_recall_drop=5.0, bootstrap_resamples=200)
    verdict = judge(config, labels, base, variant, metrics(), label_names=["neg", "neu", "pos"])
    (failed,) = [c for c in verdict.checks if not c.passed]
    assert failed.name == "recall_drop" and failed.numbers["drop_neu"] == 20.0
    assert verdict.reasons == ["FAIL recall drop worst neu +20.00 > 5.00 pts"]


def test_agreement_with_the_baseline():
    labels, base, variant = pairs(1000, base_only=30, variant_only=30, both=800)
    config = GateConfig(max_accuracy_drop=5.0, min_agreement=0.97, bootstrap_resamples=200)
    verdict = judge(config, labels, base, variant, metrics())
    (check,) = [c for c in verdict.checks if c.name == "agreement"]
    assert check.numbers["value"] == pytest.approx(0.94) and not verdict.passed
    assert judge(config.model_copy(update={"min_agreement": 0.9}), labels, base, variant, metrics()).passed


def test_target_budgets_judge_size_always_and_latency_when_timed_here():
    labels, base, _ = pairs(300, base_only=0, variant_only=0, both=250)
    targets = [
        TargetBudget(name="edge-cpu", max_p95_latency_ms=1.5, max_size_mb=8),
        TargetBudget(name="gpu", max_p95_latency_ms=0.1, max_size_mb=50),
    ]
    verdict = judge(GateConfig(), labels, base, base.copy(), metrics(size=10_000_000), targets=targets)
    # Only the targets whose runtime the side-by-side timing ran get a latency check.
    verdict = with_checks(verdict, latency_checks(GateConfig(), targets[:1], 2.0))
    names = {c.name: c.passed for c in verdict.checks}
    assert names == {
        "accuracy_drop": True,
        "size[edge-cpu]": False,
        "size[gpu]": True,
        "latency_p95[edge-cpu]": False,
    }
    assert verdict.reasons == [
        "FAIL edge-cpu size 10.0 > 8.0 MB",
        "FAIL p95 side by side 2.00 ms > 1.50 ms budget (target edge-cpu)",
    ]


def test_no_regression_against_production_uses_the_paired_interval():
    # The variant matches the baseline but the released model is 3 points better on these examples.
    labels, production, variant = pairs(1000, base_only=40, variant_only=10, both=700)
    config = GateConfig(max_accuracy_drop=1.0, max_regression_vs_production=1.0, bootstrap_resamples=500)
    released = ProductionReference(version="7", predictions=production.tolist())
    verdict = judge(config, labels, variant, variant.copy(), metrics(), production=released)
    (check,) = [c for c in verdict.checks if c.name == "no_regression"]
    assert not check.passed and check.numbers["point"] == pytest.approx(3.0)
    assert check.reason.startswith("vs production v7 95% upper +")
    # Without a production version the gate has nothing to compare with and adds no check.
    assert [c.name for c in judge(config, labels, variant, variant.copy(), metrics()).checks] == [
        "accuracy_drop"
    ]
