"""Release gates: a variant passes only if every configured check passes, each with its reason
and the numbers behind it.

Checks, each optional except the first:
- accuracy drop against the baseline: the upper end of a paired bootstrap interval;
- McNemar's exact test on the discordant pairs: fails when the variant is significantly worse;
- per-class recall drop: no class may lose more than the budget;
- agreement with the baseline's predictions;
- size budgets (recipe-wide and per deployment target);
- p95 latency budgets (recipe-wide and per deployment target), judged apart by `latency_checks` on
  the side-by-side timing of all models (tasks.gate.timing), not on an evaluation's own latency;
- no regression against the version holding the `production` alias, on the same examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from tasks.core.config import SLUG, Strict
from tasks.gate.evaluate import EvalMetrics


class Interval(BaseModel):
    """Accuracy drop (reference − variant) in points, with its paired bootstrap interval."""

    point: float
    low: float
    high: float
    confidence: float


class GateCheck(BaseModel):
    """One gate's outcome: its name, pass or fail, a one-line reason and the numbers behind it."""

    name: str
    passed: bool
    reason: str
    numbers: dict[str, float | int | str | None]


class Verdict(BaseModel):
    passed: bool
    checks: list[GateCheck]
    accuracy_drop: Interval

    @property
    def reasons(self) -> list[str]:
        """The failed checks when there are any (prefixed FAIL), else every passed check."""
        failed = [f"FAIL {c.reason}" for c in self.checks if not c.passed]
        return failed or [c.reason for c in self.checks]

    @property
    def summary(self) -> str:
        return "; ".join(self.reasons)


class ProductionReference(BaseModel):
    """The released model's predictions on the same evaluation examples as the variant's."""

    version: str
    predictions: list[int]


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


def mcnemar_exact(labels: np.ndarray, baseline: np.ndarray, variant: np.ndarray) -> tuple[int, int, float]:
    """(b, c, two-sided p): b examples only the baseline gets right, c only the variant; the
    exact binomial test of b against Binomial(b + c, 1/2), computed in integers."""
    base_right, variant_right = baseline == labels, variant == labels
    b = int(np.sum(base_right & ~variant_right))
    c = int(np.sum(~base_right & variant_right))
    n = b + c
    if n == 0:
        return b, c, 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return b, c, min(1.0, 2 * tail / 2**n)


def recall_drops(
    labels: np.ndarray, baseline: np.ndarray, variant: np.ndarray, names: Sequence[str]
) -> dict[str, float]:
    """Per class present in `labels`: baseline recall − variant recall, in points."""
    drops = {}
    for index, name in enumerate(names):
        members = labels == index
        if members.any():
            recall_base = float(np.mean(baseline[members] == index))
            recall_variant = float(np.mean(variant[members] == index))
            drops[name] = round(100 * (recall_base - recall_variant), 4)
    return drops


SIZE_REASON = "%s {value:.1f} {op} {budget:.1f} MB"


def _budget(name: str, value: float, budget: float, reason: str) -> GateCheck:
    """An at-most check; `reason` is a format string over `value`, `op` (≤ or >) and `budget`."""
    ok = value <= budget
    return GateCheck(
        name=name,
        passed=ok,
        reason=reason.format(value=value, op="≤" if ok else ">", budget=budget),
        numbers={"value": round(value, 4), "budget": budget},
    )


def judge(
    config: GateConfig,
    labels: np.ndarray,
    baseline_predictions: np.ndarray,
    variant_predictions: np.ndarray,
    metrics: EvalMetrics,
    *,
    label_names: Sequence[str] = (),
    targets: Sequence[TargetBudget] = (),
    production: ProductionReference | None = None,
) -> Verdict:
    """Apply the recipe's gates to one variant's predictions and measurements."""
    level = f"{round(100 * config.confidence)}%"
    drop = paired_bootstrap_drop(
        labels,
        baseline_predictions,
        variant_predictions,
        config.bootstrap_resamples,
        config.confidence,
        config.seed,
    )
    ok = drop.high <= config.max_accuracy_drop
    checks = [
        GateCheck(
            name="accuracy_drop",
            passed=ok,
            reason=f"acc drop {level} upper {drop.high:+.2f} {'≤' if ok else '>'} "
            f"{config.max_accuracy_drop:.2f} pts",
            numbers=drop.model_dump() | {"budget": config.max_accuracy_drop},
        )
    ]
    if config.mcnemar_alpha is not None:
        b, c, p = mcnemar_exact(labels, baseline_predictions, variant_predictions)
        significant = p < config.mcnemar_alpha
        worse = significant and b > c
        direction = (" (significantly worse)" if worse else " (significantly better)") if significant else ""
        checks.append(
            GateCheck(
                name="mcnemar",
                passed=not worse,
                reason=f"McNemar {b} lost vs {c} gained, p={p:.3g} "
                f"{'<' if significant else '≥'} {config.mcnemar_alpha:g}{direction}",
                numbers={"baseline_only": b, "variant_only": c, "p_value": p, "alpha": config.mcnemar_alpha},
            )
        )
    if config.max_recall_drop is not None:
        names = list(label_names) or [str(i) for i in range(int(labels.max()) + 1)]
        drops = recall_drops(labels, baseline_predictions, variant_predictions, names)
        worst = max(drops, key=drops.__getitem__)
        ok = drops[worst] <= config.max_recall_drop
        checks.append(
            GateCheck(
                name="recall_drop",
                passed=ok,
                reason=f"recall drop worst {worst} {drops[worst]:+.2f} {'≤' if ok else '>'} "
                f"{config.max_recall_drop:.2f} pts",
                numbers={f"drop_{k}": v for k, v in drops.items()} | {"budget": config.max_recall_drop},
            )
        )
    if config.min_agreement is not None:
        agreement = float(np.mean(baseline_predictions == variant_predictions))
        ok = agreement >= config.min_agreement
        checks.append(
            GateCheck(
                name="agreement",
                passed=ok,
                reason=f"agreement {agreement:.4f} {'≥' if ok else '<'} {config.min_agreement:.4f}",
                numbers={"value": round(agreement, 6), "minimum": config.min_agreement},
            )
        )
    size_mb = metrics.size_bytes / 1e6
    if config.max_size_mb is not None:
        checks.append(_budget("size", size_mb, config.max_size_mb, SIZE_REASON % "size"))
    for target in targets:
        if target.max_size_mb is not None:
            checks.append(
                _budget(
                    f"size[{target.name}]", size_mb, target.max_size_mb, SIZE_REASON % f"{target.name} size"
                )
            )
    if config.max_regression_vs_production is not None and production is not None:
        regression = paired_bootstrap_drop(
            labels,
            np.asarray(production.predictions),
            variant_predictions,
            config.bootstrap_resamples,
            config.confidence,
            config.seed,
        )
        ok = regression.high <= config.max_regression_vs_production
        checks.append(
            GateCheck(
                name="no_regression",
                passed=ok,
                reason=f"vs production v{production.version} {level} upper {regression.high:+.2f} "
                f"{'≤' if ok else '>'} {config.max_regression_vs_production:.2f} pts",
                numbers=regression.model_dump()
                | {"budget": config.max_regression_vs_production, "production_version": production.version},
            )
        )
    return Verdict(passed=all(c.passed for c in checks), checks=checks, accuracy_drop=drop)


BUDGET_TIMING = "Latency budgets are judged on the median p95 of the side-by-side timing."


LATENCY_REASON = "p95 side by side {value:.2f} ms {op} {budget:.2f} ms budget (%s)"


def latency_checks(config: GateConfig, targets: Sequence[TargetBudget], p95_ms: float) -> list[GateCheck]:
    """The p95 latency budgets, judged on a model's side-by-side p95. `targets` are those whose
    runtime the side-by-side timing ran; a budget for another runtime (a GPU) is judged where
    its engine is built."""
    checks = []
    if config.max_p95_latency_ms is not None:
        checks.append(_budget("latency_p95", p95_ms, config.max_p95_latency_ms, LATENCY_REASON % "recipe"))
    for target in targets:
        if target.max_p95_latency_ms is not None:
            checks.append(
                _budget(
                    f"latency_p95[{target.name}]",
                    p95_ms,
                    target.max_p95_latency_ms,
                    LATENCY_REASON % f"target {target.name}",
                )
            )
    return checks


def with_checks(verdict: Verdict, checks: Sequence[GateCheck]) -> Verdict:
    """The verdict with `checks` added: it passes only if it passed and they all pass."""
    return verdict.model_copy(
        update={
            "checks": [*verdict.checks, *checks],
            "passed": verdict.passed and all(c.passed for c in checks),
        }
    )


class GateConfig(Strict):
    max_accuracy_drop: float = Field(
        1.0, ge=0, le=100, description="Largest accuracy drop allowed, in points (upper 95% bound)."
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Level of the bootstrap interval.")
    bootstrap_resamples: int = Field(2000, ge=100, le=100_000, description="Paired resamples.")
    seed: int = Field(0, description="Seed of the bootstrap.")
    max_p95_latency_ms: float | None = Field(
        None, gt=0, description="Batch-1 p95 latency budget, judged on the side-by-side timing."
    )
    max_size_mb: float | None = Field(None, gt=0, description="Size budget on disk.")
    mcnemar_alpha: float | None = Field(
        None, gt=0, lt=0.5, description="Also fail a variant McNemar's exact test finds worse at this level."
    )
    max_recall_drop: float | None = Field(
        None, ge=0, le=100, description="Largest recall drop allowed for any class, in points."
    )
    min_agreement: float | None = Field(
        None, ge=0, le=1, description="Smallest share of examples predicted as the baseline does."
    )
    max_regression_vs_production: float | None = Field(
        None,
        ge=0,
        le=100,
        description="Largest accuracy drop against the `production` version, in points (upper bound).",
    )


class TargetBudget(Strict):
    """A recipe's budgets for one target (a file in `targets/`, which says its runtime)."""

    name: str = Field(pattern=SLUG, description="Target name: targets/<name>.yaml.")
    max_p95_latency_ms: float | None = Field(
        None,
        gt=0,
        description="Batch-1 p95 latency budget, judged on the side-by-side timing for CPU targets "
        "and on the engine's build-time check on a matching machine.",
    )
    max_size_mb: float | None = Field(None, gt=0, description="Size budget on disk for this target.")
