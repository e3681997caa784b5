"""`slimline run`: the nightly pipeline for one checkpoint in one process, without Airflow."""

from __future__ import annotations

import uuid
from pathlib import Path

from tasks.core.locks import run_lock
from tasks.core.settings import Settings
from tasks.flow.pipeline import attempt_variant, fetch_checkpoint, load_checked_recipe, prepare, publish
from tasks.flow.search import run_search
from tasks.recipe import load_recipe
from tasks.registry import tracking
from tasks.report.summary import Summary

LOCAL_LABEL = "local-"  # run labels of `slimline run`; Airflow's are its DAG run ids


def run_local(settings: Settings, recipe_path: Path, checkpoint_uri: str) -> Summary:
    """Every step for one checkpoint in this process: the DAG's work without Airflow.

    One local run of a checkpoint with a recipe at a time: a second fails at once with
    RunInProgress. A run that died (killed, machine lost) is resumed by the next: its parent run
    continues, finished steps and child runs are reused, its registered versions found again."""
    recipe = load_recipe(recipe_path)
    checkpoint = fetch_checkpoint(settings, checkpoint_uri)
    lock = settings.locks_dir / f"run-{checkpoint.digest[:24]}-{recipe.digest[:24]}.lock"
    with run_lock(lock, f"checkpoint {checkpoint.uri} with recipe {recipe.name}"):
        label = tracking.resume_dead_run(settings, recipe, checkpoint.digest, LOCAL_LABEL)
        prepared = prepare(
            settings, recipe_path, checkpoint_uri, label or f"{LOCAL_LABEL}{uuid.uuid4().hex[:12]}"
        )
        recipe = load_checked_recipe(prepared.recipe_path, prepared.recipe_digest)
        finished = [attempt_variant(settings, prepared, recipe, v) for v in recipe.variants]
        searched = run_search(settings, prepared)
        return publish(settings, prepared, [*finished, *searched.outcomes], searched.record)
