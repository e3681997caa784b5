"""The nightly pipeline as plain functions: the DAG calls them task by task, and
`slimline run` calls them in one process. Inputs and outputs are small JSON-able records."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tasks import tracking
from tasks.artifacts import StepResult, run_step
from tasks.checkpoints import VerifiedCheckpoint, fetch, known_digest, list_checkpoints
from tasks.data import prepare_splits
from tasks.errors import ConfigError
from tasks.evaluate import EvalMetrics, evaluate, metrics_of, read_predictions
from tasks.evaluate import model_size_bytes as weights_bytes
from tasks.gates import Interval, Verdict, judge
from tasks.recipe import Recipe, load_recipe
from tasks.settings import Settings
from tasks.techniques import ModelRef, TechniqueContext, get_technique
from tasks.version import code_commit

log = logging.getLogger(__name__)


class Prepared(BaseModel):
    """One checkpoint, fetched, verified, with its data split and baseline evaluation."""

    recipe_path: Path
    recipe_digest: str
    run_label: str
    checkpoint: VerifiedCheckpoint
    split: StepResult
    baseline: StepResult
    parent_run_id: str
    steps_computed: int
    steps_reused: int


class VariantOutcome(BaseModel):
    variant: str
    steps: list[str]
    model: ModelRef
    model_key: str
    evaluation: StepResult
    verdict: Verdict
    run_id: str
    steps_computed: int
    steps_reused: int
    produce_seconds: float  # compute time of its technique steps, when they were computed
    seconds: float


class Row(BaseModel):
    """One line of the variant table."""

    name: str
    metrics: EvalMetrics
    drop: Interval | None
    passed: bool | None
    reason: str
    version: str | None = None


class Summary(BaseModel):
    recipe: str
    checkpoint_uri: str
    checkpoint_digest: str
    parent_run_id: str
    registered_model: str
    rows: list[Row]
    new_versions: list[str]
    candidate: str | None
    steps_computed: int
    steps_reused: int


def load_checked_recipe(path: Path, digest: str | None = None) -> Recipe:
    recipe = load_recipe(path)
    if digest is not None and recipe.digest != digest:
        raise ConfigError(
            f"recipe {path} changed during the run (digest {recipe.digest[:12]}, "
            f"expected {digest[:12]}); start a new run"
        )
    return recipe


def discover(settings: Settings, recipe_path: Path, prefix: str = "") -> list[str]:
    """Checkpoints under `prefix` not yet processed with this recipe. A checkpoint whose
    listing changed since it was last fetched counts as new; `prepare` fetches and verifies."""
    recipe = load_recipe(recipe_path)
    pending = []
    for info in list_checkpoints(settings, prefix):
        digest = known_digest(settings, info.uri, info.fingerprint)
        if digest and tracking.processed(settings, recipe, digest):
            log.info("skipping %s: digest %s already processed", info.uri, digest[:12])
            continue
        pending.append(info.uri)
    log.info("discovered %d checkpoint(s) to process", len(pending))
    return pending


def _count(results: list[StepResult]) -> tuple[int, int]:
    reused = sum(r.reused for r in results)
    return len(results) - reused, reused


def prepare(settings: Settings, recipe_path: Path, checkpoint_uri: str, run_label: str) -> Prepared:
    """Fetch and verify the checkpoint, split the data, evaluate the baseline, open the parent run."""
    recipe = load_recipe(recipe_path)
    checkpoint = fetch(settings, checkpoint_uri)
    split = prepare_splits(settings, recipe.dataset)
    baseline_model = ModelRef(path=checkpoint.path, format="hf")
    baseline = evaluate(settings, baseline_model, checkpoint.digest, split, recipe.dataset, recipe.evaluation)
    metrics = metrics_of(baseline)
    parent = tracking.start_parent_run(
        settings,
        recipe,
        run_label,
        tags={
            "checkpoint_uri": checkpoint.uri,
            "checkpoint_digest": checkpoint.digest,
            "recipe_name": recipe.name,
            "recipe_digest": recipe.digest,
            "dataset_digest": split.key,
            "code_commit": code_commit(),
        },
        metrics={
            "accuracy": metrics.accuracy,
            "latency_p50_ms": metrics.latency_p50_ms,
            "latency_p95_ms": metrics.latency_p95_ms,
            "size_mb": metrics.size_bytes / 1e6,
        },
    )
    computed, reused = _count([split, baseline])
    return Prepared(
        recipe_path=Path(recipe_path).resolve(),
        recipe_digest=recipe.digest,
        run_label=run_label,
        checkpoint=checkpoint,
        split=split,
        baseline=baseline,
        parent_run_id=parent,
        steps_computed=computed,
        steps_reused=reused,
    )


def compress(
    settings: Settings, recipe: Recipe, variant: str, checkpoint: VerifiedCheckpoint, split: StepResult
) -> tuple[ModelRef, list[StepResult]]:
    """Apply the variant's techniques in order, each a cached step keyed by its input model
    (and, for techniques that read data, by the split and the teacher checkpoint)."""
    teacher = ModelRef(path=checkpoint.path, format="hf")
    context = TechniqueContext(
        split_dir=split.path,
        split_key=split.key,
        labels=recipe.dataset.labels,
        max_length=recipe.dataset.max_length,
        teacher=teacher,
        teacher_key=checkpoint.digest,
        artifacts_dir=settings.artifacts_dir,
    )
    model, key = teacher, checkpoint.digest
    results = []
    for step in recipe.variant(variant).steps:
        spec = get_technique(step.technique)
        config = spec.config.model_validate(step.config)
        inputs = {"model": key}
        if spec.uses_data:
            inputs |= {"split": split.key, "teacher": checkpoint.digest}

        def work(
            out: Path, source: ModelRef = model, cfg: Any = config, run: Any = spec.run
        ) -> dict[str, Any]:
            produced = run(source, cfg, out, context)
            return {"format": produced.format, "size_bytes": weights_bytes(out)}

        result = run_step(settings.artifacts_dir, f"technique/{spec.name}", config, inputs, work)
        results.append(result)
        model, key = ModelRef(path=result.path, format=spec.produces), result.key
    return model, results


def run_variant(settings: Settings, prepared: Prepared, variant: str) -> VariantOutcome:
    """Compress, evaluate and gate one variant, and log it as a child run."""
    started = time.perf_counter()
    recipe = load_checked_recipe(prepared.recipe_path, prepared.recipe_digest)
    model, step_results = compress(settings, recipe, variant, prepared.checkpoint, prepared.split)
    evaluation = evaluate(
        settings, model, step_results[-1].key, prepared.split, recipe.dataset, recipe.evaluation
    )
    labels, baseline_predictions = read_predictions(prepared.baseline.path)
    _, variant_predictions = read_predictions(evaluation.path)
    metrics = metrics_of(evaluation)
    verdict = judge(recipe.gates, labels, baseline_predictions, variant_predictions, metrics)
    steps = [s.technique for s in recipe.variant(variant).steps]
    run_id = tracking.log_variant_run(
        settings,
        recipe,
        prepared.parent_run_id,
        variant,
        params={"steps": " > ".join(steps)}
        | {f"step{i}.{s.technique}": s.config for i, s in enumerate(recipe.variant(variant).steps)},
        metrics={
            "accuracy": metrics.accuracy,
            "accuracy_drop_pts": verdict.accuracy_drop.point,
            "accuracy_drop_low_pts": verdict.accuracy_drop.low,
            "accuracy_drop_high_pts": verdict.accuracy_drop.high,
            "latency_p50_ms": metrics.latency_p50_ms,
            "latency_p95_ms": metrics.latency_p95_ms,
            "size_mb": metrics.size_bytes / 1e6,
        }
        | {f"recall_{k}": v for k, v in metrics.recall_per_class.items()},
        tags={"passed": verdict.passed, "verdict": verdict.summary, "artifact_key": evaluation.key},
        artifacts={"predictions": evaluation.path / "predictions.csv"}
        | {
            f"manifests/{i}-{r.manifest.step.replace('/', '_')}": r.path / "manifest.json"
            for i, r in enumerate([*step_results, evaluation])
        },
    )
    computed, reused = _count([*step_results, evaluation])
    return VariantOutcome(
        variant=variant,
        steps=steps,
        model=model,
        model_key=step_results[-1].key,
        evaluation=evaluation,
        verdict=verdict,
        run_id=run_id,
        steps_computed=computed,
        steps_reused=reused,
        produce_seconds=round(sum(r.manifest.seconds for r in step_results), 1),
        seconds=round(time.perf_counter() - started, 2),
    )


def publish(settings: Settings, prepared: Prepared, outcomes: list[VariantOutcome]) -> Summary:
    """Register the passing variants (fastest last, so the newest version is the best one),
    move the `candidate` alias to it, and close the parent run with a summary."""
    recipe = load_checked_recipe(prepared.recipe_path, prepared.recipe_digest)
    passing = sorted(
        (o for o in outcomes if o.verdict.passed),
        key=lambda o: metrics_of(o.evaluation).latency_p50_ms,
        reverse=True,
    )
    versions: dict[str, str] = {}
    new_versions = []
    for outcome in passing:
        version, created = tracking.register_version(
            settings,
            recipe,
            outcome.run_id,
            outcome.model.path,
            lineage={
                "checkpoint_uri": prepared.checkpoint.uri,
                "checkpoint_digest": prepared.checkpoint.digest,
                "recipe_name": recipe.name,
                "recipe_digest": recipe.digest,
                "dataset_digest": prepared.split.key,
                "code_commit": code_commit(),
                "run_id": outcome.run_id,
                "parent_run_id": prepared.parent_run_id,
                "variant": outcome.variant,
                "steps": " > ".join(outcome.steps),
                "artifact_key": outcome.model_key,
                "format": outcome.model.format,
                "gate": f"passed: {outcome.verdict.summary}",
            },
        )
        versions[outcome.variant] = version
        if created:
            new_versions.append(version)
    candidate = versions[passing[-1].variant] if passing else None
    if candidate:
        tracking.set_alias(settings, recipe, tracking.CANDIDATE_ALIAS, candidate)

    rows = [
        Row(
            name="baseline",
            metrics=metrics_of(prepared.baseline),
            drop=None,
            passed=None,
            reason="reference",
        )
    ]
    rows += [
        Row(
            name=o.variant,
            metrics=metrics_of(o.evaluation),
            drop=o.verdict.accuracy_drop,
            passed=o.verdict.passed,
            reason=o.verdict.summary,
            version=versions.get(o.variant),
        )
        for o in outcomes
    ]
    summary = Summary(
        recipe=recipe.name,
        checkpoint_uri=prepared.checkpoint.uri,
        checkpoint_digest=prepared.checkpoint.digest,
        parent_run_id=prepared.parent_run_id,
        registered_model=tracking.registered_model_name(settings, recipe),
        rows=rows,
        new_versions=new_versions,
        candidate=candidate,
        steps_computed=prepared.steps_computed + sum(o.steps_computed for o in outcomes),
        steps_reused=prepared.steps_reused + sum(o.steps_reused for o in outcomes),
    )
    tracking.log_json(settings, prepared.parent_run_id, "summary.json", summary.model_dump(mode="json"))
    tracking.finish_parent_run(
        settings,
        prepared.parent_run_id,
        {
            "status": "published",
            "candidate_version": candidate or "none",
            "new_versions": ",".join(new_versions) or "none",
        },
    )
    return summary


def run_local(settings: Settings, recipe_path: Path, checkpoint_uri: str) -> Summary:
    """Every step for one checkpoint in this process: the DAG's work without Airflow."""
    prepared = prepare(settings, recipe_path, checkpoint_uri, run_label=f"local-{uuid.uuid4().hex[:12]}")
    recipe = load_checked_recipe(prepared.recipe_path, prepared.recipe_digest)
    outcomes = [run_variant(settings, prepared, v.name) for v in recipe.variants]
    return publish(settings, prepared, outcomes)
