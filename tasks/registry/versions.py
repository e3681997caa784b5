"""Registered model versions as release inputs: resolve one (by number or alias), bring its files
here, and evaluate it on a split, so gates can compare a variant with what is released and
`slimline gate check` can re-judge a version from its lineage alone."""

from __future__ import annotations

import os

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from pydantic import BaseModel

from tasks.core.artifacts import StepResult
from tasks.core.errors import ConfigError, RegistryError
from tasks.core.locks import staging_dir
from tasks.core.models import ModelFormat, ModelRef
from tasks.core.settings import Settings
from tasks.gate.evaluate import EvalMetrics, evaluate, read_predictions
from tasks.gate.gates import Verdict
from tasks.gate.timing import TimingTable
from tasks.recipe import Recipe
from tasks.registry import tracking

PRODUCTION_ALIAS = "production"
RECIPE_ARTIFACT = "recipe.yaml"


class VersionRef(BaseModel):
    """One registered model version and its lineage tags (without the `slimline.` prefix)."""

    name: str
    version: str
    run_id: str
    source: str
    lineage: dict[str, str]

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}"


class Recheck(BaseModel):
    """A registered version judged again from its lineage (`slimline gate check`)."""

    version: VersionRef
    verdict: Verdict  # latency budgets judged on `timing`
    timing: TimingTable  # the version and the baseline, side by side
    metrics: EvalMetrics
    baseline: EvalMetrics
    same_data: bool  # the split digest matches the one the version was judged on


def _ref(found: ModelVersion) -> VersionRef:
    return VersionRef(
        name=found.name,
        version=str(found.version),
        run_id=str(found.run_id),
        source=str(found.source),
        lineage={
            k.removeprefix(tracking.TAG): v
            for k, v in (found.tags or {}).items()
            if k.startswith(tracking.TAG)
        },
    )


def parse_version(text: str) -> tuple[str, str]:
    """`NAME/VERSION` (VERSION a number or an alias such as `production`) into its two parts."""
    name, _, version = text.rpartition("/")
    if not name or not version:
        raise ConfigError(
            f"model version {text!r}: expected NAME/VERSION, e.g. minilm-sentiment/3 or NAME/production"
        )
    return name, version


def get_version(settings: Settings, name: str, version: str) -> VersionRef:
    """The version by number or alias; ConfigError when the registry has no such version."""
    mlflow = tracking.client(settings)
    try:
        found = (
            mlflow.get_model_version(name, version)
            if version.isdigit()
            else mlflow.get_model_version_by_alias(name, version)
        )
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise ConfigError(f"no model version {name}/{version} in {settings.tracking_uri}") from exc
        raise RegistryError(f"reading model version {name}/{version} failed: {exc.message}") from exc
    return _ref(found)


def production_version(settings: Settings, recipe: Recipe) -> VersionRef | None:
    """The version holding the `production` alias of the recipe's model, if any."""
    name = tracking.registered_model_name(settings, recipe)
    try:
        return get_version(settings, name, PRODUCTION_ALIAS)
    except ConfigError:
        return None


def fetch_version(settings: Settings, ref: VersionRef) -> ModelRef:
    """The version's model folder in the local cache, downloaded from its run once (atomically)."""
    final = settings.cache_dir / "versions" / ref.name / ref.version
    if not final.exists():
        with staging_dir(final.parent, prefix=f".{ref.version}.tmp-") as staging:
            try:
                downloaded = tracking.client(settings).download_artifacts(ref.run_id, "model", str(staging))
                os.replace(downloaded, final)
            except MlflowException as exc:
                raise RegistryError(
                    f"downloading {ref.label} from run {ref.run_id} failed: {exc.message}"
                ) from exc
            except OSError:
                if not final.exists():
                    raise
    fmt: ModelFormat = "onnx" if ref.lineage.get("format") == "onnx" else "hf"
    return ModelRef(path=final, format=fmt)


def version_key(ref: VersionRef) -> str:
    """The version's artifact key from its lineage (its label for a version registered without one)."""
    return ref.lineage.get("artifact_key") or ref.label


def evaluate_version(settings: Settings, ref: VersionRef, recipe: Recipe, split: StepResult) -> StepResult:
    """The version evaluated on `split` (cached by its artifact key and the split)."""
    return evaluate(
        settings, fetch_version(settings, ref), version_key(ref), split, recipe.dataset, recipe.evaluation
    )


def production_predictions(
    settings: Settings, recipe: Recipe, split: StepResult
) -> tuple[VersionRef, list[int]] | None:
    """The production version and its predictions on `split`'s evaluation examples, if one exists."""
    ref = production_version(settings, recipe)
    if ref is None:
        return None
    _, predictions = read_predictions(evaluate_version(settings, ref, recipe, split).path)
    return ref, [int(p) for p in predictions]
