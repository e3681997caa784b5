"""MLflow: one parent run per DAG run and checkpoint, one child run per variant, and model
versions with lineage tags for the variants that pass their gates.

Everything goes through an explicit MlflowClient and run ids (no global active run), so
each Airflow task can pick up where the previous one left off.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Literal

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from tasks.core.errors import ConfigError, RegistryError
from tasks.core.settings import Settings
from tasks.recipe import Recipe

log = logging.getLogger(__name__)

TAG = "slimline."
CANDIDATE_ALIAS = "candidate"

LOG_BATCH_METRICS = 1000  # MLflow's limit per log_batch call


def client(settings: Settings) -> MlflowClient:
    settings.home.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def registered_model_name(settings: Settings, recipe: Recipe) -> str:
    return f"{settings.registered_model_prefix}{recipe.registered_model}"


def experiment_id(mlflow: MlflowClient, settings: Settings, recipe: Recipe) -> str:
    name = f"slimline/{recipe.name}"
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(mlflow.create_experiment(name, f"{settings.mlflow_artifact_root}/{recipe.name}"))
    except MlflowException:
        # Created concurrently by another task.
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def _tags(values: dict[str, Any]) -> list[RunTag]:
    return [RunTag(f"{TAG}{k}", str(v)[:5000]) for k, v in values.items()]


def _find_runs(mlflow: MlflowClient, experiment: str, tags: dict[str, str], extra: str = "") -> list[Run]:
    """The runs with these tags (and `extra` filter clauses), newest first."""
    clauses = " and ".join([f"tags.`{TAG}{k}` = '{v}'" for k, v in tags.items()] + ([extra] if extra else []))
    return list(mlflow.search_runs([experiment], clauses, order_by=["start_time DESC"]))


def _find_run(mlflow: MlflowClient, experiment: str, tags: dict[str, str]) -> str | None:
    runs = _find_runs(mlflow, experiment, tags)
    return str(runs[0].info.run_id) if runs else None


def start_parent_run(
    settings: Settings,
    recipe: Recipe,
    run_label: str,
    tags: dict[str, Any],
) -> str:
    """The parent run for (run_label, checkpoint): reused when a retried task asks again."""
    mlflow = client(settings)
    experiment = experiment_id(mlflow, settings, recipe)
    key = {
        "run_label": run_label,
        "checkpoint_digest": str(tags["checkpoint_digest"]),
        "kind": "checkpoint",
    }
    existing = _find_run(mlflow, experiment, key)
    if existing:
        return existing
    run = mlflow.create_run(experiment, run_name=f"{recipe.name}:{str(tags['checkpoint_digest'])[:12]}")
    mlflow.log_batch(run.info.run_id, tags=_tags(key | tags))
    return str(run.info.run_id)


def resume_dead_run(
    settings: Settings, recipe: Recipe, checkpoint_digest: str, label_prefix: str
) -> str | None:
    """The run label of the newest parent run for this checkpoint and recipe left RUNNING under a
    label starting with `label_prefix`, so that the caller's run continues it; older ones are ended
    KILLED. The caller must hold the lock that every run of that label family holds while alive
    (tasks.core.locks.run_lock): then a RUNNING one is one whose process died."""
    mlflow = client(settings)
    experiment = experiment_id(mlflow, settings, recipe)
    key = {"kind": "checkpoint", "checkpoint_digest": checkpoint_digest, "recipe_digest": recipe.digest}
    dead = _find_runs(
        mlflow,
        experiment,
        key,
        f"tags.`{TAG}run_label` LIKE '{label_prefix}%' and attributes.status = 'RUNNING'",
    )
    for older in dead[1:]:
        log.info("ending parent run %s of a run that died: KILLED", older.info.run_id)
        mlflow.set_terminated(older.info.run_id, "KILLED")
    if not dead:
        return None
    log.info("resuming parent run %s of a run that died", dead[0].info.run_id)
    return str(dead[0].data.tags[f"{TAG}run_label"])


def log_metrics(settings: Settings, run_id: str, metrics: dict[str, float]) -> None:
    client(settings).log_batch(run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()])


def log_variant_run(
    settings: Settings,
    recipe: Recipe,
    parent_run_id: str,
    variant: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, Any],
    artifacts: dict[str, Path],
    curves: dict[str, list[tuple[int, float]]] | None = None,
    json_artifacts: dict[str, dict[str, Any]] | None = None,
    status: Literal["FINISHED", "FAILED"] = "FINISHED",
) -> str:
    """A child run for one variant, ended `status` (FAILED: its technique failed for good): params,
    metrics, verdict tags, manifests and predictions, and `curves` (metric name → (step, value)
    points, e.g. training losses) as stepped metrics. A retried task finds the child it already
    logged; a child left RUNNING by a task that died while logging it is ended KILLED, and a new one
    logged."""
    mlflow = client(settings)
    experiment = experiment_id(mlflow, settings, recipe)
    key = {"parent_run_id": parent_run_id, "variant": variant, "kind": "variant"}
    earlier = _find_runs(mlflow, experiment, key)
    finished = [r for r in earlier if r.info.status == status]
    if finished:
        return str(finished[0].info.run_id)
    for dead in (r for r in earlier if r.info.status == "RUNNING"):
        mlflow.set_terminated(dead.info.run_id, "KILLED")
    run = mlflow.create_run(
        experiment,
        run_name=variant,
        tags={"mlflow.parentRunId": parent_run_id},
    )
    run_id = str(run.info.run_id)
    mlflow.log_batch(
        run_id,
        metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)[:6000]) for k, v in params.items()],
        tags=_tags(key | tags),
    )
    stepped = [
        Metric(name, float(v), 0, step) for name, points in (curves or {}).items() for step, v in points
    ]
    for start in range(0, len(stepped), LOG_BATCH_METRICS):
        mlflow.log_batch(run_id, metrics=stepped[start : start + LOG_BATCH_METRICS])
    for artifact_path, local in artifacts.items():
        mlflow.log_artifact(run_id, str(local), artifact_path)
    for name, payload in (json_artifacts or {}).items():
        log_json(settings, run_id, name, payload)
    mlflow.set_terminated(run_id, status)
    return run_id


def set_tags(settings: Settings, run_id: str, tags: dict[str, Any]) -> None:
    client(settings).log_batch(run_id, tags=_tags(tags))


def log_text(settings: Settings, run_id: str, name: str, text: str) -> None:
    """Log `text` as the artifact `name` at the root of the run (replacing one of that name)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(text, encoding="utf-8")
        client(settings).log_artifact(run_id, str(path))


def log_json(settings: Settings, run_id: str, name: str, payload: dict[str, Any]) -> None:
    log_text(settings, run_id, name, json.dumps(payload, indent=2, default=str))


def finish_parent_run(
    settings: Settings, run_id: str, tags: dict[str, Any], status: str = "FINISHED"
) -> None:
    """End the parent run; only a FINISHED one marks its checkpoint as processed."""
    mlflow = client(settings)
    mlflow.log_batch(run_id, tags=_tags(tags))
    mlflow.set_terminated(run_id, status)


def processed(settings: Settings, recipe: Recipe, checkpoint_digest: str) -> bool:
    """Whether a finished parent run exists for this checkpoint digest and recipe digest."""
    mlflow = client(settings)
    experiment = experiment_id(mlflow, settings, recipe)
    query = (
        f"tags.`{TAG}checkpoint_digest` = '{checkpoint_digest}' and "
        f"tags.`{TAG}recipe_digest` = '{recipe.digest}' and attributes.status = 'FINISHED'"
    )
    return bool(mlflow.search_runs([experiment], query, max_results=1))


def _earlier_version(mlflow: MlflowClient, name: str, artifact_key: str) -> ModelVersion | None:
    """The READY version of `name` holding this content key, if any. A failed registration does not
    count (a new one replaces it); a pending one cannot be judged yet: a transient RegistryError."""
    found = mlflow.search_model_versions(f"name = '{name}' and tags.`{TAG}artifact_key` = '{artifact_key}'")
    pending = [v for v in found if v.status == "PENDING_REGISTRATION"]
    if pending:
        raise RegistryError(
            f"{name} version {pending[0].version} of this model is still pending; retry later"
        )
    ready = sorted((v for v in found if v.status == "READY"), key=lambda v: int(v.version))
    return ready[0] if ready else None


def register_version(
    settings: Settings,
    recipe: Recipe,
    run_id: str,
    model_dir: Path,
    lineage: dict[str, Any],
) -> tuple[str, bool]:
    """Register a passing variant; return (version, new), `new` when the version belongs to this
    parent run (registered now, or by this run before it was killed). The model's content key
    (lineage `artifact_key`, the key of the variant's final step) finds the version registered
    earlier for the same model instead of creating a second."""
    mlflow = client(settings)
    name = registered_model_name(settings, recipe)
    try:
        earlier = _earlier_version(mlflow, name, str(lineage["artifact_key"]))
        if earlier is not None:
            parent = (earlier.tags or {}).get(f"{TAG}parent_run_id")
            return str(earlier.version), parent == str(lineage["parent_run_id"])
        try:
            mlflow.create_registered_model(name, description=recipe.description)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        mlflow.log_artifacts(run_id, str(model_dir), "model")
        source = f"{mlflow.get_run(run_id).info.artifact_uri}/model"
        tags = {f"{TAG}{k}": str(v) for k, v in lineage.items()}
        version = mlflow.create_model_version(name, source, run_id=run_id, tags=tags)
    except MlflowException as exc:
        raise RegistryError(f"registering {name} from run {run_id} failed: {exc.message}") from exc
    log.info("registered %s version %s", name, version.version)
    return str(version.version), True


def set_alias(settings: Settings, recipe: Recipe, alias: str, version: str) -> None:
    """Point the recipe's model's `alias` at `version` (see move_alias)."""
    move_alias(settings, registered_model_name(settings, recipe), alias, version)


def move_alias(settings: Settings, name: str, alias: str, version: str) -> None:
    """Point `alias` at `version`, which must be READY: an alias never names a version without files."""
    mlflow = client(settings)
    try:
        status = mlflow.get_model_version(name, version).status
        if status != "READY":
            raise RegistryError(f"not moving alias {alias} of {name} to version {version}: it is {status}")
        mlflow.set_registered_model_alias(name, alias, version)
    except MlflowException as exc:
        raise RegistryError(
            f"moving alias {alias} of {name} to version {version} failed: {exc.message}"
        ) from exc


def load_text(settings: Settings, run_id: str, name: str) -> str:
    """A text artifact at the root of the run, as logged by `log_text`."""
    mlflow = client(settings)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return Path(mlflow.download_artifacts(run_id, name, tmp)).read_text(encoding="utf-8")
    except MlflowException as exc:
        raise RegistryError(f"reading {name} of run {run_id} failed: {exc.message}") from exc


def load_json(settings: Settings, run_id: str, name: str) -> dict[str, Any]:
    """A JSON artifact at the root of the run, as logged by `log_json`."""
    return dict(json.loads(load_text(settings, run_id, name)))


def load_summary(settings: Settings, run_id: str) -> dict[str, Any]:
    return load_json(settings, run_id, "summary.json")


def get_run(settings: Settings, run_id: str) -> Run:
    """The run; ConfigError for an id the tracking store does not know (a wrong argument, so not
    worth retrying), RegistryError when the store cannot answer."""
    try:
        return client(settings).get_run(run_id)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ConfigError(f"no MLflow run {run_id!r} in {settings.tracking_uri}") from exc
        raise RegistryError(f"reading run {run_id} failed: {exc.message}") from exc


def has_artifact(settings: Settings, run_id: str, name: str) -> bool:
    """Whether the run has an artifact `name` at the root of its artifacts."""
    return any(a.path == name for a in client(settings).list_artifacts(run_id))
