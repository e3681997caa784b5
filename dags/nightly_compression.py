"""nightly_compression: new checkpoints → compressed variants → gates → MLflow registry → engines.

Wiring only. Every task calls one function in `tasks.flow.pipeline`, which runs the same without
Airflow (`slimline run`). Top-level code imports nothing heavy: the scheduler parses this often.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from tasks.core.errors import IncompleteRun
from tasks.core.settings import Settings
from tasks.flow.dag_support import (
    CANDIDATE_ASSET_URI,
    NETWORK_RETRIES,
    fail_fast_on_permanent_errors,
    step_kwargs,
    step_task,
)

SETTINGS = Settings()


# With `execution` container or kubernetes, the variant and engine tasks start the task image; each
# mapped task's container or pod is made from its job by these (called when the task runs).
def variant_launch(job: dict[str, Any]) -> dict[str, Any]:
    return step_kwargs(SETTINGS, "variant", job)


def engine_launch(job: dict[str, Any]) -> dict[str, Any]:
    return step_kwargs(SETTINGS, "engine", job)


@dag(
    dag_id="nightly_compression",
    schedule=SETTINGS.nightly_schedule,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["slimline"],
    params={
        "recipe": Param(str(SETTINGS.recipe), type="string", description="Recipe YAML path."),
        "checkpoints": Param(
            [], type="array", description="Checkpoint URIs to process; empty: discover new ones."
        ),
        "prefix": Param("", type="string", description="Store prefix to discover under."),
    },
    doc_md=__doc__,
)
def nightly_compression() -> None:
    @task(**NETWORK_RETRIES)
    def discover() -> list[str]:
        from tasks.flow.pipeline import discover

        params = get_current_context()["params"]
        if params["checkpoints"]:
            return list(params["checkpoints"])
        with fail_fast_on_permanent_errors():
            return discover(SETTINGS, Path(params["recipe"]), params["prefix"])

    @task(**NETWORK_RETRIES)
    def prepare(checkpoint_uri: str) -> dict[str, Any]:
        from tasks.flow.pipeline import prepare

        context = get_current_context()
        run_label = f"airflow:{context['dag_run'].run_id}"
        recipe = Path(context["params"]["recipe"])
        with fail_fast_on_permanent_errors():
            return prepare(SETTINGS, recipe, checkpoint_uri, run_label).model_dump(mode="json")

    # A checkpoint whose data failed validation (or whose fetch was refused) ends its own branch;
    # plan and publish run for the others ("all_done" sees only the prepared that succeeded).
    @task(trigger_rule="all_done")
    def plan(prepared: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from tasks.flow.pipeline import Prepared, load_checked_recipe

        jobs = []
        for item in prepared:
            ready = Prepared.model_validate(item)
            recipe = load_checked_recipe(ready.recipe_path, ready.recipe_digest)
            jobs += [{"prepared": item, "variant": v.name} for v in recipe.variants]
        return jobs

    @task(map_index_template="{{ task.op_kwargs['job']['variant'] }}")
    def run_variant(job: dict[str, Any]) -> dict[str, Any]:
        from tasks.flow.execution import step_done
        from tasks.flow.pipeline import VariantJob, run_variant_job

        with fail_fast_on_permanent_errors():
            done = run_variant_job(SETTINGS, VariantJob.model_validate(job))
        return step_done(SETTINGS, "variant", done)

    # The recipe's search under the gates, one checkpoint after another, in this task's process: its
    # points are measured one at a time (Optuna proposes the next from the last), each through the
    # same cached steps as a variant task. Nothing to do for a recipe without `search:`.
    @task(trigger_rule="all_done")
    def search(prepared: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from tasks.flow import lineage
        from tasks.flow.pipeline import Prepared
        from tasks.flow.search import run_search

        searched = []
        for item in prepared:
            with fail_fast_on_permanent_errors():
                done = run_search(SETTINGS, Prepared.model_validate(item))
            for outcome in done.outcomes:  # the front, which publish may register
                lineage.variant_compressed(done.prepared, outcome)
            searched.append(done.model_dump(mode="json"))
        return searched

    # Publishing registers versions and may move `candidate`: fleet_release runs on this asset.
    @task(
        **(
            NETWORK_RETRIES
            | {
                "trigger_rule": "all_done",
                "outlets": [Asset(uri=CANDIDATE_ASSET_URI, name="slimline_candidate")],
            }
        )
    )
    def publish(
        results: list[dict[str, Any]], searches: list[dict[str, Any]] | None, checkpoints: list[str]
    ) -> list[dict[str, Any]]:
        from tasks.flow import lineage
        from tasks.flow.pipeline import Prepared, VariantDone, VariantOutcome, publish
        from tasks.flow.search import SearchDone
        from tasks.report.summary import FailedVariant

        by_checkpoint: dict[str, tuple[Prepared, list[VariantOutcome | FailedVariant]]] = {}
        for item in results:
            variant = VariantDone.model_validate(item)
            entry = by_checkpoint.setdefault(variant.prepared.parent_run_id, (variant.prepared, []))
            entry[1].append(variant.outcome)
        # A failed search task leaves `searches` empty: publish then holds back every checkpoint
        # whose recipe has a search, as it does one with an unfinished variant.
        searched = {d.prepared.parent_run_id: d for d in map(SearchDone.model_validate, searches or [])}
        published, incomplete = [], []
        for prepared, outcomes in by_checkpoint.values():
            done = searched.get(prepared.parent_run_id)
            outcomes += done.outcomes if done else []
            try:
                summary = publish(SETTINGS, prepared, outcomes, done.record if done else None)
            except IncompleteRun as exc:  # the others still publish; this one is retried tomorrow
                incomplete.append(str(exc))
                continue
            lineage.versions_registered(SETTINGS, summary, outcomes)
            published.append(summary.model_dump(mode="json"))
        # A checkpoint with no finished variant (refused, failed validation) is not in `results`;
        # with "all_done" this task would otherwise end the DAG run as a success.
        reached = {prepared.checkpoint.uri for prepared, _ in by_checkpoint.values()}
        incomplete += [f"checkpoint {uri} did not reach publish" for uri in checkpoints if uri not in reached]
        if incomplete:
            raise AirflowFailException("; ".join(incomplete))
        return published

    @task
    def plan_engines(published: list[dict[str, Any]]) -> list[dict[str, str]]:
        from tasks.flow.engines import engine_jobs
        from tasks.flow.pipeline import logged_recipe
        from tasks.report.summary import Summary

        return [
            job.model_dump(mode="json")
            for summary in published
            for job in engine_jobs(
                Summary.model_validate(summary),
                logged_recipe(SETTINGS, summary["parent_run_id"], summary["recipe_digest"]),
            )
        ]

    # One build per registered version and recipe target: a version the target's runtime cannot
    # build (precision) is skipped, one failing its canary check is recorded as failed and not
    # registered; neither stops the others.
    @task(
        map_index_template="{{ task.op_kwargs['job']['model_version'] }} "
        "{{ task.op_kwargs['job']['target'] }}"
    )
    def build_engine(job: dict[str, str]) -> dict[str, Any]:
        from tasks.flow.engines import EngineJob, run_engine_job
        from tasks.flow.execution import step_done

        with fail_fast_on_permanent_errors():
            done = run_engine_job(SETTINGS, EngineJob.model_validate(job))
        return step_done(SETTINGS, "engine", done)

    @task(**NETWORK_RETRIES)
    def record_engines(built: list[dict[str, Any]], published: list[dict[str, Any]]) -> None:
        from tasks.flow.engines import record_outcomes
        from tasks.registry.engines import EngineOutcome

        for summary in published:
            run = summary["parent_run_id"]
            outcomes = [
                EngineOutcome.model_validate(b["outcome"]) for b in built if b["parent_run_id"] == run
            ]
            record_outcomes(SETTINGS, run, outcomes)

    checkpoints = discover()
    prepared = prepare.expand(checkpoint_uri=checkpoints)
    variant_jobs = plan(prepared)
    if SETTINGS.execution == "inprocess":
        variants = run_variant.expand(job=variant_jobs)
    else:
        variants = (
            step_task(SETTINGS, "run_variant", "variant")
            .expand_kwargs(variant_jobs.map(variant_launch))
            .output
        )
    published = publish(variants, search(prepared), checkpoints)
    engine_jobs = plan_engines(published)
    if SETTINGS.execution == "inprocess":
        engines = build_engine.expand(job=engine_jobs)
    else:
        engines = (
            step_task(SETTINGS, "build_engine", "engine").expand_kwargs(engine_jobs.map(engine_launch)).output
        )
    record_engines(engines, published)


nightly_compression()
