"""Engines for registered versions: what a build starts from (the registered ONNX graph, the
PyTorch model behind it where one reproduces it, the canary set), the builds per target, and
their record in the registry. `slimline engine build` and the DAG's engine step call this."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from tasks.core.artifacts import StepResult, load_manifest
from tasks.core.digests import file_sha256
from tasks.core.errors import EngineCheckFailed, EngineError
from tasks.core.models import ONNX_FILE
from tasks.core.settings import Settings
from tasks.engines.build import build_engine
from tasks.engines.canary import CALIBRATION_FILE, calibration_step, canary_step
from tasks.engines.info import CanaryResult, read_info
from tasks.engines.runtime import BuildSource
from tasks.engines.target import Target, resolve_targets
from tasks.flow import audit_events
from tasks.flow.pipeline import logged_recipe, version_recipe
from tasks.gate.gates import TargetBudget
from tasks.intake.checkpoints import fetch
from tasks.intake.data import prepare_splits
from tasks.recipe import Recipe
from tasks.registry.engines import EngineOutcome, log_outcomes, record_engine
from tasks.registry.versions import VersionRef, fetch_version, get_version, parse_version, version_key
from tasks.report.html import load_logged_validation, load_published_summary, write_report
from tasks.report.summary import Summary

EXPORT = "export.onnx"
# Steps after export that leave the exported network's function as it was (graph fusions), so the
# PyTorch model before export still stands for the registered graph on a GPU.
FUNCTION_PRESERVING = frozenset({"optimize.ort_fusions"})


def torch_model_of(settings: Settings, ref: VersionRef) -> tuple[Path | None, str]:
    """The PyTorch folder exported to the version's graph, if no later step changed what the graph
    computes; else None and why. Found through the step manifests in the local artifact cache."""
    steps = [s.strip() for s in ref.lineage.get("steps", "").split(">") if s.strip()]
    if EXPORT not in steps:
        return None, f"{ref.label} was not exported by {EXPORT}"
    export = steps.index(EXPORT)
    changed = [s for s in steps[export + 1 :] if s not in FUNCTION_PRESERVING]
    if changed:
        return None, (
            f"{ref.label} applies {', '.join(changed)} after export, which no PyTorch program reproduces; "
            "build GPU targets from a floating-point variant"
        )
    key = ref.lineage.get("artifact_key", "")
    for step in reversed(steps[export:]):
        folder = settings.artifacts_dir / f"technique_{step}" / key[:24]
        if not (folder / "manifest.json").is_file():
            return None, f"step {step} of {ref.label} is not in this machine's artifact cache ({folder})"
        key = load_manifest(folder).inputs["model"]
    if export == 0:
        checkpoint = fetch(settings, ref.lineage["checkpoint_uri"])
        if checkpoint.digest != key:
            return None, f"checkpoint {checkpoint.uri} changed since {ref.label} was produced"
        return checkpoint.path, ""
    folder = settings.artifacts_dir / f"technique_{steps[export - 1]}" / key[:24]
    return (folder, "") if folder.is_dir() else (None, f"{folder} is not in this machine's artifact cache")


def build_source(settings: Settings, ref: VersionRef) -> BuildSource:
    model = fetch_version(settings, ref)
    if model.format != "onnx":
        raise EngineError(
            f"{ref.label} is a {model.format} model; engines are built from registered ONNX graphs"
        )
    import onnx

    inputs = [i.name for i in onnx.load(str(model.path / ONNX_FILE), load_external_data=False).graph.input]
    torch_model, _ = torch_model_of(settings, ref)
    return BuildSource(
        onnx=model.path / ONNX_FILE,
        onnx_digest=file_sha256(model.path / ONNX_FILE),
        torch_model=torch_model,
        tokenizer_dir=model.path,
        calibration=None,
        inputs=inputs,
    )


def version_canary(settings: Settings, ref: VersionRef, recipe: Recipe | None = None) -> StepResult:
    """The canary set of a version: the first examples of the evaluation split of `recipe`
    (default: the recipe it was produced with)."""
    recipe = recipe or version_recipe(settings, ref)
    split = prepare_splits(settings, recipe.dataset)
    return canary_step(
        settings,
        fetch_version(settings, ref),
        version_key(ref),
        split,
        recipe.dataset.labels,
        recipe.dataset.max_length,
        settings.canary_examples,
    )


def latency_over_budget(
    budget: TargetBudget | None, target: Target, check: CanaryResult | None
) -> str | None:
    """Why an engine's build-time p95 breaks its recipe's latency budget for the target, if it does.
    Only where the side-by-side timing did not judge it already (CPU targets are judged there) and
    only when the build machine timed the engine (it is of the target's kind)."""
    if budget is None or budget.max_p95_latency_ms is None or target.runtime == "onnxruntime-cpu":
        return None
    if check is None or check.latency_p95_ms is None or check.latency_p95_ms <= budget.max_p95_latency_ms:
        return None
    return (
        f"p95 {check.latency_p95_ms:.2f} ms on {check.device} > {budget.max_p95_latency_ms:.2f} ms budget "
        f"(target {target.name})"
    )


def build_engines(
    settings: Settings,
    model_version: str,
    target_names: list[str] | None = None,
    *,
    recipe: Recipe | None = None,
    strict: bool = True,
) -> list[EngineOutcome]:
    """Build, check and record the version's engine for each target (default: the recipe's).
    `recipe` (default: the one the version was produced with) gives the canary set's data and
    the default targets; a nightly run passes its own, which may have found an earlier version
    of the same model.

    `strict` (the CLI) raises on the first target that cannot be built or fails its check; the
    nightly run (`strict=False`) records it as skipped or failed and goes on with the others."""
    ref = get_version(settings, *parse_version(model_version))
    recipe = recipe or version_recipe(settings, ref)
    names = target_names or [t.name for t in recipe.targets]
    targets = resolve_targets(settings.targets_dir, names)
    budgets = {b.name: b for b in recipe.targets}
    source = build_source(settings, ref)
    canary = version_canary(settings, ref, recipe)
    if any(t.runtime == "tensorrt" and t.precision == "int8" for t in targets.values()):
        # TensorRT calibrates INT8 itself, on the recipe's calibration split.
        split = prepare_splits(settings, recipe.dataset)
        calibration = calibration_step(
            settings, fetch_version(settings, ref), version_key(ref), split, recipe.dataset.max_length
        )
        source = source.model_copy(update={"calibration": calibration.path / CALIBRATION_FILE})
    outcomes = []
    for name, target in targets.items():
        try:
            if target.runtime == "torch-cuda" and source.torch_model is None:
                raise EngineError(f"target {name}: {torch_model_of(settings, ref)[1]}")
            result = build_engine(settings, source, target, canary, ref.label, version_key(ref))
            info = read_info(result.path)
            over = latency_over_budget(budgets.get(name), target, info.check)
            if over:
                raise EngineCheckFailed(f"engine of {ref.label} for {name}: {over}; not registered")
        except (EngineCheckFailed, EngineError) as exc:
            if strict:
                raise
            status: Literal["failed", "skipped"] = (
                "failed" if isinstance(exc, EngineCheckFailed) else "skipped"
            )
            outcomes.append(
                EngineOutcome(model_version=ref.label, target=name, status=status, reason=str(exc))
            )
            continue
        digest = str(result.manifest.metrics["digest"])
        record = record_engine(settings, ref, result.path, result.key, digest, info)
        audit_events.engine_built(settings, ref.label, name, digest, "reused" if result.reused else "built")
        outcomes.append(
            EngineOutcome(
                model_version=ref.label,
                target=name,
                status="reused" if result.reused else "built",
                reason=info.check.reason if info.check else "",
                record=record,
                check=info.check,
                size_bytes=int(result.manifest.metrics["size_bytes"]),
                build_seconds=info.build_seconds,
                path=result.path,
            )
        )
    return outcomes


class EngineJob(BaseModel):
    """One engine build of the nightly run: a registered version, a target of its run's recipe."""

    model_version: str  # NAME/VERSION
    target: str
    parent_run_id: str
    recipe_digest: str


class EngineDone(BaseModel):
    """What an engine task returns: the run it belongs to and the build's outcome."""

    parent_run_id: str
    outcome: EngineOutcome


def engine_jobs(summary: Summary, recipe: Recipe) -> list[EngineJob]:
    """Every version a published run registered or found, with every target of its recipe: the
    nightly run's engine builds."""
    labels = [f"{summary.registered_model}/{row.version}" for row in summary.rows if row.version]
    return [
        EngineJob(
            model_version=label,
            target=target.name,
            parent_run_id=summary.parent_run_id,
            recipe_digest=summary.recipe_digest,
        )
        for label in labels
        for target in recipe.targets
    ]


def run_engine_job(settings: Settings, job: EngineJob, recipe: Recipe | None = None) -> EngineDone:
    """An engine task's work, the same in-process, in a container or in a pod (`slimline step engine`):
    a target that cannot build the version is recorded as skipped, a failed check as failed."""
    recipe = recipe or logged_recipe(settings, job.parent_run_id, job.recipe_digest)
    (outcome,) = build_engines(settings, job.model_version, [job.target], recipe=recipe, strict=False)
    return EngineDone(parent_run_id=job.parent_run_id, outcome=outcome)


def build_published_engines(settings: Settings, summary: Summary) -> list[EngineOutcome]:
    """Every engine of a published run (see `engine_jobs`), built or skipped, recorded on its run."""
    recipe = logged_recipe(settings, summary.parent_run_id, summary.recipe_digest)
    outcomes = [run_engine_job(settings, job, recipe).outcome for job in engine_jobs(summary, recipe)]
    record_outcomes(settings, summary.parent_run_id, outcomes)
    return outcomes


def record_outcomes(settings: Settings, parent_run_id: str, outcomes: list[EngineOutcome]) -> None:
    """The night's engine outcomes on its parent run, and its release report written again with
    them."""
    log_outcomes(settings, parent_run_id, outcomes)
    summary = load_published_summary(settings, parent_run_id)
    write_report(settings, summary, load_logged_validation(settings, parent_run_id), engines=outcomes)
