"""The nightly pipeline as plain functions: the DAG calls them task by task, and
`slimline run` calls them in one process. Inputs and outputs are small JSON-able records."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tasks.compress.chain import apply_steps
from tasks.compress.technique import TechniqueContext
from tasks.compress.training import TRAINING_LOG_FILE, TrainingLog, read_training_log
from tasks.core.artifacts import StepResult
from tasks.core.errors import (
    CheckpointRefused,
    ConfigError,
    DataValidationError,
    IncompleteRun,
    TechniqueError,
)
from tasks.core.models import ModelRef
from tasks.core.settings import Settings
from tasks.core.version import code_commit
from tasks.engines.target import resolve_targets
from tasks.flow import audit_events
from tasks.flow.sidebyside import Entrant, record, time_and_choose, timed_verdict
from tasks.gate.evaluate import PREDICTIONS, evaluate, metrics_of, read_predictions
from tasks.gate.gates import ProductionReference, Verdict, judge
from tasks.gate.timing import TimedModel, time_side_by_side
from tasks.intake.architecture import check_sequence_length
from tasks.intake.checkpoints import (
    VerifiedCheckpoint,
    fetch,
    known_digest,
    list_checkpoints,
    read_verified_architecture,
)
from tasks.intake.data import prepare_splits
from tasks.intake.refusals import forget_stale_refusal, record_refusal, refusal_of, refusals
from tasks.intake.validation import REPORT as VALIDATION_REPORT
from tasks.intake.validation import (
    ValidationReport,
    validate_predictions,
    validate_split_step,
    validate_unknown_tokens,
)
from tasks.recipe import Recipe, Variant, load_recipe
from tasks.registry import tracking
from tasks.registry.versions import (
    RECIPE_ARTIFACT,
    Recheck,
    VersionRef,
    evaluate_version,
    fetch_version,
    get_version,
    parse_version,
    production_predictions,
    version_key,
)
from tasks.report.html import write_report
from tasks.report.summary import FailedVariant, Row, Summary
from tasks.search.study import SearchRecord

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
    validation: ValidationReport  # the split's suites and the baseline's predictions suite
    steps_computed: int
    steps_reused: int


class VariantJob(BaseModel):
    """One mapped task of the nightly run: a prepared checkpoint and the variant to run on it."""

    prepared: Prepared
    variant: str


class VariantOutcome(BaseModel):
    variant: str
    steps: list[str]
    model: ModelRef
    model_key: str
    evaluation: StepResult
    verdict: Verdict
    validation: ValidationReport  # the variant's predictions suite
    run_id: str
    steps_computed: int
    steps_reused: int
    produce_seconds: float  # compute time of its technique steps, when they were computed
    step_seconds: list[float]  # the same per step (a step shared with another variant counts in both)
    seconds: float


def load_checked_recipe(path: Path, digest: str | None = None) -> Recipe:
    recipe = load_recipe(path)
    if digest is not None and recipe.digest != digest:
        raise ConfigError(
            f"recipe {path} changed during the run (digest {recipe.digest[:12]}, "
            f"expected {digest[:12]}); start a new run"
        )
    return recipe


def discover(settings: Settings, recipe_path: Path, prefix: str = "") -> list[str]:
    """Checkpoints under `prefix` not yet processed with this recipe nor refused. A checkpoint
    whose listing changed since it was last fetched or refused counts as new; `prepare` fetches
    and verifies."""
    recipe = load_recipe(recipe_path)
    pending = []
    for info in list_checkpoints(settings, prefix):
        refusal = refusal_of(settings, info.uri, info.fingerprint, recipe.digest)
        if refusal:
            log.info("skipping %s: refused until it changes (%s)", info.uri, refusal.reason)
            continue
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


def fetch_checkpoint(settings: Settings, uri: str) -> VerifiedCheckpoint:
    """`fetch`, with a refusal (before the contents were verified) written to the audit log."""
    try:
        return fetch(settings, uri)
    except CheckpointRefused as exc:
        audit_events.checkpoint_refused(settings, uri, str(exc), None, exc.exit_code)
        raise


def prepare(settings: Settings, recipe_path: Path, checkpoint_uri: str, run_label: str) -> Prepared:
    """Fetch and verify the checkpoint, split the data, check the checkpoint's position embeddings
    and tokenizer against it, validate the data, evaluate the baseline, open the parent run. A
    refused checkpoint (verification, inputs longer than its positions, too many unknown tokens)
    is recorded and raises CheckpointRefused before the parent run exists: nothing of it reaches
    the registry. Failed data validation is logged to the parent run, which ends FAILED (so the
    next night tries the checkpoint again), and raises DataValidationError before any compute."""
    recipe = load_recipe(recipe_path)
    resolve_targets(
        settings.targets_dir, [t.name for t in recipe.targets]
    )  # a bad target fails before any work
    checkpoint = fetch_checkpoint(settings, checkpoint_uri)
    split = prepare_splits(settings, recipe.dataset)
    try:
        arch = read_verified_architecture(checkpoint.uri, checkpoint.path, settings)
        check_sequence_length(checkpoint.uri, arch, recipe.dataset.max_length)
        tokens = validate_unknown_tokens(
            checkpoint.uri, checkpoint.path, split.path, recipe.dataset.max_length, recipe.validation
        )
    except CheckpointRefused as exc:
        uri, fingerprint = checkpoint.uri, checkpoint.fingerprint
        record_refusal(settings, uri, fingerprint, exc, checkpoint.digest, recipe.digest)
        audit_events.checkpoint_refused(settings, uri, str(exc), checkpoint.digest, exc.exit_code)
        raise
    forget_stale_refusal(settings, checkpoint.uri, checkpoint.fingerprint, recipe.digest)
    audit_events.checkpoint_verified(
        settings, checkpoint.uri, checkpoint.digest, checkpoint.fingerprint, recipe.digest
    )
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
    )
    tracking.log_text(settings, parent, RECIPE_ARTIFACT, Path(recipe_path).read_text(encoding="utf-8"))
    validation = validate_split_step(settings.artifacts_dir, split, recipe.dataset, recipe.validation)
    validation = ValidationReport(suites=tokens.suites + validation.suites)
    baseline = None
    if validation.success:
        baseline = evaluate_baseline(settings, recipe, checkpoint, split)
        validation = ValidationReport(
            suites=validation.suites + check_predictions(recipe, baseline, "baseline").suites
        )
    tracking.log_json(settings, parent, VALIDATION_REPORT, validation.model_dump(mode="json"))
    audit_events.data_validated(settings, split.key, checkpoint.uri, validation)
    if baseline is None or not validation.success:
        tracking.finish_parent_run(settings, parent, {"status": "data validation failed"}, status="FAILED")
        raise DataValidationError(validation.message())
    metrics = metrics_of(baseline)
    tracking.log_metrics(
        settings,
        parent,
        {
            "baseline_accuracy": metrics.accuracy,
            "baseline_latency_p50_ms": metrics.latency_p50_ms,
            "baseline_latency_p95_ms": metrics.latency_p95_ms,
            "baseline_size_mb": metrics.size_bytes / 1e6,
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
        validation=validation,
        steps_computed=computed,
        steps_reused=reused,
    )


def baseline_model(checkpoint: VerifiedCheckpoint) -> TimedModel:
    """The checkpoint as published, keyed by its digest: the reference every variant faces."""
    return TimedModel(
        name="baseline", model=ModelRef(path=checkpoint.path, format="hf"), key=checkpoint.digest
    )


def evaluate_baseline(
    settings: Settings, recipe: Recipe, checkpoint: VerifiedCheckpoint, split: StepResult
) -> StepResult:
    """The checkpoint itself evaluated on the split (cached by its digest): what variants face."""
    baseline = baseline_model(checkpoint)
    return evaluate(settings, baseline.model, baseline.key, split, recipe.dataset, recipe.evaluation)


def check_predictions(recipe: Recipe, evaluation: StepResult, name: str) -> ValidationReport:
    """The predictions suite over one evaluation, named after the model it judged."""
    report = validate_predictions(
        evaluation.path / PREDICTIONS,
        recipe.dataset.labels,
        metrics_of(evaluation).examples,
        recipe.validation,
    )
    return ValidationReport(suites=[s.model_copy(update={"data": name}) for s in report.suites])


def compress(
    settings: Settings, recipe: Recipe, variant: Variant, checkpoint: VerifiedCheckpoint, split: StepResult
) -> tuple[ModelRef, list[StepResult]]:
    """Apply the variant's techniques to the checkpoint, in order (see `apply_steps`)."""
    context = TechniqueContext(
        split_dir=split.path,
        split_key=split.key,
        labels=recipe.dataset.labels,
        max_length=recipe.dataset.max_length,
        teacher=ModelRef(path=checkpoint.path, format="hf"),
        teacher_key=checkpoint.digest,
        artifacts_dir=settings.artifacts_dir,
    )
    return apply_steps([(s.technique, s.config) for s in variant.steps], context)


def training_curves(
    steps: list[str], trainings: dict[int, TrainingLog | None]
) -> dict[str, list[tuple[int, float]]]:
    """MLflow metric series of every trained step: `train/<i>-<technique>/<term>` by optimizer step."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for i, training in trainings.items():
        for point in training.curve if training else []:
            for term, value in point.items():
                if term != "step":
                    curves.setdefault(f"train/{i}-{steps[i]}/{term}", []).append((int(point["step"]), value))
    return curves


def gate_verdict(
    settings: Settings,
    recipe: Recipe,
    name: str,
    baseline: StepResult,
    evaluation: StepResult,
    split: StepResult,
) -> tuple[Verdict, ValidationReport]:
    """Validate a model's predictions and apply the recipe's gates: the one judgment behind the
    nightly run and `slimline gate check`. Invalid predictions raise DataValidationError."""
    validation = check_predictions(recipe, evaluation, name)
    if not validation.success:
        raise DataValidationError(f"{name}: {validation.message()}")
    labels, baseline_predictions = read_predictions(baseline.path)
    _, predictions = read_predictions(evaluation.path)
    production = None
    if recipe.gates.max_regression_vs_production is not None:
        released = production_predictions(settings, recipe, split)
        if released is not None:
            production = ProductionReference(version=released[0].version, predictions=released[1])
    verdict = judge(
        recipe.gates,
        labels,
        baseline_predictions,
        predictions,
        metrics_of(evaluation),
        label_names=recipe.dataset.labels,
        targets=recipe.targets,
        production=production,
    )
    return verdict, validation


def logged_recipe(settings: Settings, parent_run_id: str, recipe_digest: str) -> Recipe:
    """The recipe a parent run logged (cached by digest). A recipe logged under an older schema
    that no longer parses fails with ConfigError naming the run."""
    recipe_path = settings.cache_dir / "recipes" / f"{recipe_digest}.yaml"
    if not recipe_path.exists():
        recipe_path.parent.mkdir(parents=True, exist_ok=True)
        text = tracking.load_text(settings, parent_run_id, RECIPE_ARTIFACT)
        staging = recipe_path.with_suffix(f".tmp-{uuid.uuid4().hex}")
        staging.write_text(text, encoding="utf-8")
        staging.replace(recipe_path)
    try:
        return load_checked_recipe(recipe_path, recipe_digest)
    except ConfigError as exc:
        raise ConfigError(f"the recipe logged on run {parent_run_id} no longer loads: {exc}") from None


def version_recipe(settings: Settings, ref: VersionRef) -> Recipe:
    """The recipe a version was produced with, from its parent run."""
    missing = [k for k in ("parent_run_id", "recipe_digest") if k not in ref.lineage]
    if missing:
        raise ConfigError(
            f"{ref.label} lacks lineage tags {', '.join(missing)}; it was not registered by slimline"
        )
    return logged_recipe(settings, ref.lineage["parent_run_id"], ref.lineage["recipe_digest"])


def recheck_version(settings: Settings, model_version: str) -> Recheck:
    """Judge NAME/VERSION again: its recipe from its parent run, its checkpoint from the store
    (the digest must still match), the data split, the baseline and the version evaluated and
    timed side by side (cached artifacts: unchanged models, data and code reuse them)."""
    ref = get_version(settings, *parse_version(model_version))
    lineage = ref.lineage
    missing = [
        k
        for k in ("parent_run_id", "checkpoint_uri", "checkpoint_digest", "recipe_digest")
        if k not in lineage
    ]
    if missing:
        raise ConfigError(
            f"{ref.label} lacks lineage tags {', '.join(missing)}; it was not registered by slimline"
        )
    recipe = version_recipe(settings, ref)
    checkpoint = fetch(settings, lineage["checkpoint_uri"])
    if checkpoint.digest != lineage["checkpoint_digest"]:
        raise ConfigError(
            f"{ref.label}: checkpoint {checkpoint.uri} now has digest {checkpoint.digest[:12]}, not the "
            f"{lineage['checkpoint_digest'][:12]} it was produced from; its baseline is gone"
        )
    split = prepare_splits(settings, recipe.dataset)
    baseline = evaluate_baseline(settings, recipe, checkpoint, split)
    evaluation = evaluate_version(settings, ref, recipe, split)
    verdict, _ = gate_verdict(settings, recipe, ref.label, baseline, evaluation, split)
    version = TimedModel(name=ref.label, model=fetch_version(settings, ref), key=version_key(ref))
    table, _ = time_side_by_side(
        settings, [baseline_model(checkpoint), version], split, recipe.dataset.max_length, recipe.timing
    )
    return Recheck(
        version=ref,
        verdict=timed_verdict(settings, recipe, verdict, table, ref.label),
        timing=table,
        metrics=metrics_of(evaluation),
        baseline=metrics_of(baseline),
        same_data=split.key == lineage.get("dataset_digest"),
    )


def gate_lineage(prepared: Prepared, model_key: str) -> dict[str, str]:
    """What a variant's gate record joins on: its model's artifact key and where it came from."""
    return {
        "artifact_key": model_key,
        "recipe_digest": prepared.recipe_digest,
        "code_commit": code_commit(),
        "checkpoint_uri": prepared.checkpoint.uri,
        "checkpoint_digest": prepared.checkpoint.digest,
        "dataset_digest": prepared.split.key,
        "parent_run_id": prepared.parent_run_id,
    }


def run_variant(
    settings: Settings, prepared: Prepared, variant: Variant, tags: dict[str, str] | None = None
) -> VariantOutcome:
    """Compress, evaluate and gate one variant (the recipe's, or a search point), and log it as a
    child run with `tags` besides the verdict's."""
    started = time.perf_counter()
    recipe = load_checked_recipe(prepared.recipe_path, prepared.recipe_digest)
    model, step_results = compress(settings, recipe, variant, prepared.checkpoint, prepared.split)
    evaluation = evaluate(
        settings, model, step_results[-1].key, prepared.split, recipe.dataset, recipe.evaluation
    )
    verdict, validation = gate_verdict(
        settings, recipe, variant.name, prepared.baseline, evaluation, prepared.split
    )
    metrics = metrics_of(evaluation)
    steps = [s.technique for s in variant.steps]
    trainings = {i: read_training_log(r.path) for i, r in enumerate(step_results)}
    run_id = tracking.log_variant_run(
        settings,
        recipe,
        prepared.parent_run_id,
        variant.name,
        params=_variant_params(variant),
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
        tags={"passed": verdict.passed, "verdict": verdict.summary, "artifact_key": evaluation.key}
        | (tags or {}),
        json_artifacts={
            "gates.json": verdict.model_dump(mode="json"),
            VALIDATION_REPORT: validation.model_dump(mode="json"),
        },
        artifacts={"predictions": evaluation.path / "predictions.csv"}
        | {
            f"manifests/{i}-{r.manifest.step.replace('/', '_')}": r.path / "manifest.json"
            for i, r in enumerate([*step_results, evaluation])
        }
        | {
            f"training/{i}-{steps[i]}": r.path / TRAINING_LOG_FILE
            for i, r in enumerate(step_results)
            if trainings[i]
        },
        curves=training_curves(steps, trainings),
    )
    lineage = gate_lineage(prepared, step_results[-1].key)
    audit_events.variant_gated(settings, variant.name, run_id, verdict, lineage, stage="gates")
    computed, reused = _count([*step_results, evaluation])
    return VariantOutcome(
        variant=variant.name,
        steps=steps,
        model=model,
        model_key=step_results[-1].key,
        evaluation=evaluation,
        verdict=verdict,
        validation=validation,
        run_id=run_id,
        steps_computed=computed,
        steps_reused=reused,
        produce_seconds=round(sum(r.manifest.seconds for r in step_results), 1),
        step_seconds=[round(r.manifest.seconds, 1) for r in step_results],
        seconds=round(time.perf_counter() - started, 2),
    )


def _variant_params(variant: Variant) -> dict[str, Any]:
    return {"steps": " > ".join(s.technique for s in variant.steps)} | {
        f"step{i}.{s.technique}": s.config for i, s in enumerate(variant.steps)
    }


def attempt_variant(
    settings: Settings, prepared: Prepared, recipe: Recipe, variant: Variant
) -> VariantOutcome | FailedVariant:
    """`run_variant`, where a technique that fails for good (TechniqueError: a mixed precision that
    cannot reach its agreement, a combination a technique refuses) fails this variant alone: it is
    logged as a FAILED child run with the reason and published as failed, and the checkpoint's
    other variants still publish. Any other error propagates: a transient one is retried, and an
    unfinished variant holds the checkpoint back (IncompleteRun)."""
    try:
        return run_variant(settings, prepared, variant)
    except TechniqueError as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("variant %s failed: %s", variant.name, reason)
        run_id = tracking.log_variant_run(
            settings,
            recipe,
            prepared.parent_run_id,
            variant.name,
            params=_variant_params(variant),
            metrics={},
            tags={"passed": False, "verdict": reason[:5000]},
            artifacts={},
            status="FAILED",
        )
        steps = [s.technique for s in variant.steps]
        return FailedVariant(name=variant.name, steps=steps, reason=reason, run_id=run_id)


class VariantDone(BaseModel):
    """What a variant's task returns: its job's prepared checkpoint and the outcome (or failure)."""

    prepared: Prepared
    outcome: VariantOutcome | FailedVariant


def run_variant_job(settings: Settings, job: VariantJob) -> VariantDone:
    """A variant task's work, the same in-process, in a container or in a pod (`slimline step variant`)."""
    recipe = load_checked_recipe(job.prepared.recipe_path, job.prepared.recipe_digest)
    outcome = attempt_variant(settings, job.prepared, recipe, recipe.variant(job.variant))
    return VariantDone(prepared=job.prepared, outcome=outcome)


def publish(
    settings: Settings,
    prepared: Prepared,
    finished: Sequence[VariantOutcome | FailedVariant],
    search: SearchRecord | None = None,
) -> Summary:
    """Time the passing variants (the recipe's and the search's front) and the baseline side by
    side, judge latency budgets on that timing, register the variants still passing (the candidate
    last, so the newest version is the candidate), move the `candidate` alias to it, and close the
    parent run with a summary listing the variants that failed. Every variant of the recipe must
    have finished, measured or failed, and a recipe's search too (`search`)."""
    recipe = load_checked_recipe(prepared.recipe_path, prepared.recipe_digest)
    outcomes = [o for o in finished if isinstance(o, VariantOutcome)]
    failed = [o for o in finished if isinstance(o, FailedVariant)]
    missing = sorted(
        {v.name for v in recipe.variants} - {o.variant for o in outcomes} - {f.name for f in failed}
    )
    if recipe.search is not None and search is None:
        missing.append("the search")
    if missing:
        tracking.finish_parent_run(
            settings, prepared.parent_run_id, {"status": f"incomplete: {', '.join(missing)}"}, status="FAILED"
        )
        raise IncompleteRun(
            f"checkpoint {prepared.checkpoint.uri}: variant(s) {', '.join(missing)} did not finish; "
            "nothing of it is registered"
        )
    entrants = [
        Entrant(
            name=o.variant,
            model=o.model,
            key=o.model_key,
            verdict=o.verdict,
            metrics=metrics_of(o.evaluation),
            run_id=o.run_id,
        )
        for o in outcomes
        if o.verdict.passed
    ]
    side = time_and_choose(settings, recipe, prepared.split, baseline_model(prepared.checkpoint), entrants)
    record(settings, prepared.parent_run_id, entrants, side)
    for o in outcomes:
        timed = side.verdicts.get(o.variant)
        if timed is not None and timed.passed != o.verdict.passed:
            lineage = gate_lineage(prepared, o.model_key)
            audit_events.variant_gated(settings, o.variant, o.run_id, timed, lineage, stage="timing")
    outcomes = [o.model_copy(update={"verdict": side.verdicts.get(o.variant, o.verdict)}) for o in outcomes]
    passing = [next(o for o in outcomes if o.variant == name) for name in side.order]
    versions: dict[str, str] = {}
    new_versions = []
    for outcome in passing:
        version, new = tracking.register_version(
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
        if new and version not in new_versions:  # a search point may be a hand-written variant
            new_versions.append(version)
            label = f"{tracking.registered_model_name(settings, recipe)}/{version}"
            audit_events.version_registered(settings, label, outcome.run_id, outcome.model_key)
    candidate = versions[passing[-1].variant] if passing else None
    if candidate:
        tracking.set_alias(settings, recipe, tracking.CANDIDATE_ALIAS, candidate)
        label = f"{tracking.registered_model_name(settings, recipe)}/{candidate}"
        audit_events.alias_moved(settings, label, tracking.CANDIDATE_ALIAS, audit_events.NIGHTLY)

    rows = [
        Row(
            name="baseline",
            metrics=metrics_of(prepared.baseline),
            drop=None,
            passed=None,
            reason="reference",
            run_id=prepared.parent_run_id,
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
            steps=o.steps,
            run_id=o.run_id,
        )
        for o in outcomes
    ]
    timing_computed, timing_reused = _count([side.step])
    summary = Summary(
        recipe=recipe.name,
        recipe_digest=recipe.digest,
        dataset_digest=prepared.split.key,
        code_commit=code_commit(),
        checkpoint_uri=prepared.checkpoint.uri,
        checkpoint_digest=prepared.checkpoint.digest,
        parent_run_id=prepared.parent_run_id,
        registered_model=tracking.registered_model_name(settings, recipe),
        rows=rows,
        new_versions=new_versions,
        candidate=candidate,
        timing=side.table,
        candidate_reason=side.choice.reason if side.choice else "no variant passed its gates",
        steps_computed=prepared.steps_computed + sum(o.steps_computed for o in outcomes) + timing_computed,
        steps_reused=prepared.steps_reused + sum(o.steps_reused for o in outcomes) + timing_reused,
        refused=refusals(settings),
        search=search,
        failed=failed,
    )
    validation = ValidationReport(
        suites=[*prepared.validation.suites, *(s for o in outcomes for s in o.validation.suites)]
    )
    tracking.log_json(settings, prepared.parent_run_id, "summary.json", summary.model_dump(mode="json"))
    tracking.log_json(settings, prepared.parent_run_id, VALIDATION_REPORT, validation.model_dump(mode="json"))
    write_report(settings, summary, validation)
    tracking.finish_parent_run(
        settings,
        prepared.parent_run_id,
        {
            "status": "published",
            "candidate_version": candidate or "none",
            "new_versions": ",".join(new_versions) or "none",
            "failed_variants": ",".join(f.name for f in failed) or "none",
        },
    )
    return summary
