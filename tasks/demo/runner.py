"""`slimline demo`: fine-tune the teacher, put it in the checkpoint store, run the real
nightly DAG on it, and print the variant table."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from pydantic import BaseModel
from rich.console import Console

from tasks.core.artifacts import StepResult
from tasks.core.settings import Settings
from tasks.core.store import FileStore, open_store, upload_tree
from tasks.demo.teacher import MODEL_SUBDIR, TeacherConfig, base_encoder_dir, finetune
from tasks.flow import orchestration
from tasks.intake.checkpoints import fetch, list_checkpoints, verify_folder
from tasks.intake.data import prepare_splits
from tasks.recipe import Recipe, load_recipe
from tasks.registry import tracking
from tasks.registry.engines import EngineOutcome, logged_outcomes
from tasks.report.console import engine_table, print_summary
from tasks.report.html import report_path
from tasks.report.summary import Summary

log = logging.getLogger(__name__)

DEMO_PREFIX = "demo"


class DemoResult(BaseModel):
    checkpoint_uri: str
    teacher_seconds: float
    teacher_cached: bool
    dag_run: orchestration.DagRunResult
    summary: Summary
    engines: list[EngineOutcome]
    total_seconds: float


def publish_checkpoint(settings: Settings, folder: Path, name: str) -> str:
    """Put a local model folder into the checkpoint store (config.json last, so listers never
    see a partial checkpoint); skip the upload when the store already holds the same content."""
    store = open_store(settings.store_uri, settings.s3_endpoint_url)
    if isinstance(store, FileStore):
        store.root.mkdir(parents=True, exist_ok=True)
    uri = f"{store.uri}/{DEMO_PREFIX}/{name}"
    digest, _ = verify_folder(uri, folder, settings)
    listed = {c.uri for c in list_checkpoints(settings, DEMO_PREFIX)}
    if uri in listed and fetch(settings, uri).digest == digest:
        return uri
    upload_tree(store, folder, f"{DEMO_PREFIX}/{name}", last="config.json")
    return uri


def demo_checkpoint(settings: Settings, recipe: Recipe, teacher: TeacherConfig) -> tuple[StepResult, str]:
    """The demo teacher, fine-tuned on the recipe's training split (cached), published to the
    checkpoint store; returns the fine-tuning step and the checkpoint URI."""
    split = prepare_splits(settings, recipe.dataset)
    trained = finetune(settings.artifacts_dir, teacher, recipe.dataset, split, base_encoder_dir())
    return trained, publish_checkpoint(settings, trained.path / MODEL_SUBDIR, f"{recipe.name}-teacher")


def run_demo(settings: Settings, recipe_path: Path, teacher: TeacherConfig, console: Console) -> DemoResult:
    started = time.perf_counter()
    recipe = load_recipe(recipe_path)
    console.rule("1/3 teacher")
    trained, uri = demo_checkpoint(settings, recipe, teacher)
    teacher_seconds = trained.manifest.seconds
    console.print(
        f"teacher {'reused from cache' if trained.reused else 'fine-tuned'} "
        f"({teacher_seconds:.0f}s to train): {trained.path / MODEL_SUBDIR}"
    )
    console.print(f"checkpoint in store: {uri}")

    console.rule("2/3 nightly_compression DAG run (airflow dags test)")
    dag_run = orchestration.dags_test(
        settings,
        "nightly_compression",
        {"recipe": str(Path(recipe_path).resolve()), "checkpoints": [uri]},
    )
    console.print(
        f"DAG run {dag_run.run_id}: {dag_run.state} in {dag_run.seconds:.0f}s, "
        f"peak memory {dag_run.peak_rss_mb:.0f} MB; log {dag_run.log_path}"
    )

    console.rule("3/3 results")
    summary = summary_for(settings, recipe_path, dag_run.run_label)
    print_summary(summary, console)
    engines = logged_outcomes(settings, summary.parent_run_id) or []
    console.print(engine_table(engines))
    console.print(f"release report: {report_path(settings, summary)}")
    console.print(
        "\nOpen the MLflow UI on this store:\n"
        f"  {Path(sys.executable).with_name('mlflow')} ui "
        f"--backend-store-uri {settings.tracking_uri} --port 5000"
    )
    return DemoResult(
        checkpoint_uri=uri,
        teacher_seconds=teacher_seconds,
        teacher_cached=trained.reused,
        dag_run=dag_run,
        summary=summary,
        engines=engines,
        total_seconds=round(time.perf_counter() - started, 1),
    )


def summary_for(settings: Settings, recipe_path: Path, run_label: str) -> Summary:
    """The summary the DAG run's publish task logged to its parent run."""
    recipe = load_recipe(recipe_path)
    mlflow = tracking.client(settings)
    runs = mlflow.search_runs(
        [tracking.experiment_id(mlflow, settings, recipe)],
        f"tags.`{tracking.TAG}run_label` = '{run_label}' and tags.`{tracking.TAG}status` = 'published'",
        max_results=1,
    )
    if not runs:
        raise orchestration.OrchestrationError(f"no published run found for {run_label}")
    return Summary.model_validate(tracking.load_summary(settings, runs[0].info.run_id))
