"""Where the nightly DAG's heavy steps run (settings `execution`), and what a step launched outside the
Airflow task's process needs: the task image running `slimline step variant|engine JOB`, the
settings as environment, the host folders it shares with the in-process tasks, the user it runs
as, its resources and node pool. `tasks/flow/container_step.py` and `tasks/flow/pod_step.py` turn a
`Launch` into a container or a pod; `step_done` is what every mode returns to Airflow.

A step's results travel through the artifact keys, the registry and the stores, not through the
container: so the three modes give the same registry. Where those are local (file:// stores, an
SQLite MLflow), the step sees the same folders at the same paths: bind mounts for a container,
hostPath volumes for a pod (one-node clusters only), or a ReadWriteMany claim at the home.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError

from tasks.core.config import format_errors
from tasks.core.errors import OrchestrationError
from tasks.core.settings import Resources, Settings
from tasks.engines.target import resolve_targets
from tasks.flow import lineage
from tasks.flow.engines import EngineDone, EngineJob
from tasks.flow.pipeline import VariantDone, VariantJob, VariantOutcome, load_checked_recipe, logged_recipe
from tasks.intake.data import local_source
from tasks.recipe import Recipe

Step = Literal["variant", "engine"]
Done = TypeVar("Done", VariantDone, EngineDone)


class Launch(BaseModel):
    """One step to run in an image: everything a container or a pod is made from."""

    step: Step
    label: str  # the mapped task's name in Airflow's grid
    image: str
    arguments: list[str]  # after the image's entry point, `slimline`
    environment: dict[str, str]
    mounts: list[Path]  # host folders, each at its own path; the first is the home
    read_only: list[Path]  # those of `mounts` the step only reads
    user: str | None  # uid:gid; None runs as the image's own user (uid 10001)
    resources: Resources
    gpus: int
    node_selector: dict[str, str]


def _local_path(uri: str) -> Path | None:
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return Path(parts.path)
    if parts.scheme == "sqlite":  # sqlite:////abs/path/mlflow.db
        return Path(uri.removeprefix("sqlite:///")).parent
    return None


def local_state(settings: Settings) -> list[Path]:
    """The folders of the state a step reads and writes when they are on this machine: the home
    (artifact cache, checkpoint cache), then each local store outside it. Empty when the stores are
    s3:// and MLflow a server: then a step needs no folder of this machine."""
    stores = [
        settings.store_uri,
        settings.channel_uri,
        settings.audit_log_uri,
        settings.mlflow_artifact_root,
        settings.tracking_uri,
    ]
    found = [path for path in map(_local_path, stores) if path is not None]
    if not found:
        return []
    return _outermost([settings.home, *found])


def _outermost(paths: list[Path]) -> list[Path]:
    """Each folder once, without those inside another (one mount covers them), in order."""
    kept: list[Path] = []
    for path in paths:
        if not any(path.is_relative_to(k) for k in kept):
            kept = [k for k in kept if not k.is_relative_to(path)] + [path]
    return kept


def _owner(path: Path) -> str:
    """uid:gid of the folder: a step that writes into it runs as the user the in-process tasks run
    as, so every file of the home keeps one owner."""
    path.mkdir(parents=True, exist_ok=True)
    info = os.stat(path)
    return f"{info.st_uid}:{info.st_gid}"


def _launch(
    settings: Settings,
    step: Step,
    label: str,
    job: BaseModel,
    reads: list[Path],
    resources: Resources,
    gpus: int = 0,
    node_selector: dict[str, str] | None = None,
    image: str = "",
) -> Launch:
    state = local_state(settings)
    read_only = _outermost([p for p in reads if not any(p.is_relative_to(s) for s in state)]) if state else []
    return Launch(
        step=step,
        label=label,
        image=image or settings.step_image,
        arguments=["step", step, job.model_dump_json()],
        environment=settings.environment(),
        mounts=[*state, *read_only],
        read_only=read_only,
        user=_owner(settings.home) if state else None,
        resources=resources,
        gpus=gpus,
        node_selector=node_selector or {},
    )


def _data_folder(recipe: Recipe) -> list[Path]:
    path = local_source(recipe.dataset.source)
    return [path.parent] if path is not None else []


def variant_launch(settings: Settings, job: VariantJob) -> Launch:
    """A variant of a prepared checkpoint, on the variant pool (a GPU worker trains on its GPU); it
    reads the recipe, its data and the targets."""
    recipe = load_checked_recipe(job.prepared.recipe_path, job.prepared.recipe_digest)
    pool = settings.variant_pool
    return _launch(
        settings,
        "variant",
        job.variant,
        job,
        [job.prepared.recipe_path.parent, *_data_folder(recipe), settings.targets_dir],
        settings.variant_resources,
        gpus=pool.gpus,
        node_selector=pool.node_selector,
        image=pool.image,
    )


def engine_launch(settings: Settings, job: EngineJob) -> Launch:
    """An engine build, on the target's build pool (its GPUs, node labels and image); it reads the
    run's recipe's data (the canary set) and the targets."""
    target = resolve_targets(settings.targets_dir, [job.target])[job.target]
    recipe = logged_recipe(settings, job.parent_run_id, job.recipe_digest)
    return _launch(
        settings,
        "engine",
        f"{job.model_version} {job.target}",
        job,
        [*_data_folder(recipe), settings.targets_dir],
        settings.engine_resources,
        gpus=target.build_gpus,
        node_selector=target.build.node_selector,
        image=target.build.image,
    )


def launch(settings: Settings, step: Step, job: dict[str, Any]) -> Launch:
    """The launch of one mapped task from its job, as the DAG's plan tasks return it."""
    if step == "variant":
        return variant_launch(settings, VariantJob.model_validate(job))
    return engine_launch(settings, EngineJob.model_validate(job))


def step_done(settings: Settings, step: Step, result: object) -> dict[str, Any]:
    """What a step's task returns in every mode, from its result (the model in-process, the JSON a
    container or pod gave back), with the task's lineage reported as the in-process task does."""
    if step == "variant":
        done = _parsed(VariantDone, result)
        if isinstance(done.outcome, VariantOutcome):  # a failed variant made no model
            lineage.variant_compressed(done.prepared, done.outcome)
        return done.model_dump(mode="json")
    built = _parsed(EngineDone, result)
    lineage.engine_built(settings, built.outcome)
    return built.model_dump(mode="json")


def _parsed(model: type[Done], result: object) -> Done:
    if isinstance(result, model):
        return result
    try:
        if isinstance(result, str):
            return model.model_validate_json(result)
        return model.model_validate(result)
    except ValidationError as exc:
        shown = str(result)[:200]
        raise OrchestrationError(
            f"the step gave back no {model.__name__} ({format_errors(exc)}); it returned {shown!r}"
        ) from None
