"""Publish's timing: the passing variants and the baseline timed side by side, latency budgets
judged on that timing, the candidate chosen from it, and all of it recorded on the runs."""

from __future__ import annotations

from pydantic import BaseModel

from tasks.core.artifacts import StepResult
from tasks.core.models import ModelRef
from tasks.core.settings import Settings
from tasks.engines.target import resolve_targets
from tasks.gate.candidate import RULE, Choice, Contender, choose_candidate, registration_order
from tasks.gate.evaluate import EvalMetrics
from tasks.gate.gates import Verdict, latency_checks, with_checks
from tasks.gate.timing import TimedModel, TimingTable, time_side_by_side
from tasks.recipe import Recipe
from tasks.registry import tracking

TIMING_ARTIFACT = "timing.json"


class Entrant(BaseModel):
    """A variant that passed its other gates, waiting for the side-by-side timing."""

    name: str
    model: ModelRef
    key: str
    verdict: Verdict
    metrics: EvalMetrics
    run_id: str


class SideBySide(BaseModel):
    table: TimingTable
    step: StepResult  # the timing step (computed, or reused from the cache)
    verdicts: dict[str, Verdict]  # each entrant's verdict with its latency budgets judged
    choice: Choice | None
    order: list[str]  # the variants still passing, in registration order (candidate last)


def timed_verdict(
    settings: Settings, recipe: Recipe, verdict: Verdict, table: TimingTable, name: str
) -> Verdict:
    """`verdict` with the recipe's latency budgets judged on `name`'s side-by-side p95: the
    recipe-wide budget, and those of the CPU targets when the timing ran ONNX Runtime here."""
    row = table.of(name)
    targets = resolve_targets(settings.targets_dir, [t.name for t in recipe.targets])
    timed_here = [
        t
        for t in recipe.targets
        if row.runtime == "onnxruntime" and targets[t.name].runtime == "onnxruntime-cpu"
    ]
    return with_checks(verdict, latency_checks(recipe.gates, timed_here, row.p95_ms))


def time_and_choose(
    settings: Settings, recipe: Recipe, split: StepResult, baseline: TimedModel, entrants: list[Entrant]
) -> SideBySide:
    """Time the baseline and every entrant side by side (a cached step), judge latency budgets on
    that table and choose the candidate among those still passing."""
    timed = [baseline, *(TimedModel(name=e.name, model=e.model, key=e.key) for e in entrants)]
    table, step = time_side_by_side(settings, timed, split, recipe.dataset.max_length, recipe.timing)
    verdicts = {e.name: timed_verdict(settings, recipe, e.verdict, table, e.name) for e in entrants}
    contenders = [
        Contender(
            name=e.name, accuracy=e.metrics.accuracy, size_bytes=e.metrics.size_bytes, timing=table.of(e.name)
        )
        for e in entrants
        if verdicts[e.name].passed
    ]
    choice = choose_candidate(contenders)
    return SideBySide(
        table=table, step=step, verdicts=verdicts, choice=choice, order=registration_order(contenders, choice)
    )


def record(settings: Settings, parent_run_id: str, entrants: list[Entrant], side: SideBySide) -> None:
    """The table on the parent run (timing.json and `timing/<model>/…` metrics); each variant run's
    gates.json and verdict tags brought up to date with its latency budgets."""
    for entrant in entrants:
        verdict = side.verdicts[entrant.name]
        if verdict != entrant.verdict:
            tracking.set_tags(
                settings, entrant.run_id, {"passed": verdict.passed, "verdict": verdict.summary}
            )
            tracking.log_json(settings, entrant.run_id, "gates.json", verdict.model_dump(mode="json"))
    tracking.log_json(
        settings,
        parent_run_id,
        TIMING_ARTIFACT,
        {"table": side.table.model_dump(mode="json"), "rule": RULE}
        | {"choice": side.choice.model_dump(mode="json") if side.choice else None},
    )
    tracking.log_metrics(
        settings,
        parent_run_id,
        {
            f"timing/{m.name}/{figure}": value
            for m in side.table.models
            for figure, value in (
                ("p50_ms", m.p50_ms),
                ("p95_ms", m.p95_ms),
                ("p50_min_ms", m.p50_min_ms),
                ("p50_max_ms", m.p50_max_ms),
            )
        },
    )
