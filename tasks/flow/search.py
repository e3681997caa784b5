"""The nightly run's search under the gates: every point Optuna proposes becomes a variant that is
compressed, evaluated and gated like a hand-written one (cached steps, a child run), then timed
side by side with the recipe's reference variant. The feasible Pareto-optimal points go on to
publish, where they are timed with the other variants and registered like any of them."""

from __future__ import annotations

import logging

from pydantic import BaseModel, ValidationError

from tasks.core.config import format_errors
from tasks.core.errors import ConfigError
from tasks.core.settings import Settings
from tasks.flow.pipeline import Prepared, VariantOutcome, compress, load_checked_recipe, run_variant
from tasks.gate.evaluate import metrics_of
from tasks.gate.timing import TimedModel, time_side_by_side
from tasks.intake.checkpoints import read_verified_architecture
from tasks.recipe import Variant
from tasks.search.space import Point, point_steps
from tasks.search.study import Measured, SearchRecord, run_study

log = logging.getLogger(__name__)


class SearchDone(BaseModel):
    """What the search task returns for one checkpoint: the trials, and the front's outcomes."""

    prepared: Prepared
    record: SearchRecord | None  # None: the recipe has no search
    outcomes: list[VariantOutcome]  # the feasible Pareto-optimal points, to publish


def point_variant(point: Point, steps: list[dict[str, object]]) -> Variant:
    try:
        return Variant.model_validate(
            {"name": point.name, "description": f"search point {point.model_dump()}", "steps": steps}
        )
    except ValidationError as exc:
        raise ConfigError(f"search point {point.name}: {format_errors(exc)}") from None


def run_search(settings: Settings, prepared: Prepared) -> SearchDone:
    """Run the recipe's search on one prepared checkpoint (nothing when the recipe has none)."""
    recipe = load_checked_recipe(prepared.recipe_path, prepared.recipe_digest)
    config = recipe.search
    if config is None:
        return SearchDone(prepared=prepared, record=None, outcomes=[])
    checkpoint = prepared.checkpoint
    layers = read_verified_architecture(checkpoint.uri, checkpoint.path, settings).num_hidden_layers
    too_deep = [d for d in config.space.depth if d >= layers]
    if too_deep:
        raise ConfigError(
            f"search.space.depth {too_deep} is not below the teacher's {layers} layers "
            f"({checkpoint.uri}); allowed: 1..{layers - 1}"
        )
    reference_model, reference_steps = compress(
        settings, recipe, recipe.variant(config.reference), checkpoint, prepared.split
    )
    reference = TimedModel(name=config.reference, model=reference_model, key=reference_steps[-1].key)
    outcomes: dict[str, VariantOutcome] = {}

    def measure(point: Point) -> Measured:
        variant = point_variant(point, point_steps(point, config, layers))
        outcome = run_variant(settings, prepared, variant, tags={"search_point": point.name})
        outcomes[point.name] = outcome
        timed = TimedModel(name=point.name, model=outcome.model, key=outcome.model_key)
        table, _ = time_side_by_side(
            settings, [reference, timed], prepared.split, recipe.dataset.max_length, config.timing
        )
        metrics = metrics_of(outcome.evaluation)
        return Measured(
            accuracy=metrics.accuracy,
            drop_high=outcome.verdict.accuracy_drop.high,
            speedup=round(table.of(config.reference).p50_ms / table.of(point.name).p50_ms, 3),
            size_mb=round(metrics.size_bytes / 1e6, 2),
            passed=outcome.verdict.passed,
            reason=outcome.verdict.summary,
        )

    record = run_study(config, measure)
    log.info(
        "search: %d trials, front %s (%s)",
        len(record.trials),
        ", ".join(record.front) or "empty",
        record.stopped,
    )
    return SearchDone(prepared=prepared, record=record, outcomes=[outcomes[name] for name in record.front])
