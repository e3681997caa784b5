"""fleet_release: a registered version → engines for the fleet's targets → a signed release in the
fleet channel → approval (fleets that require it) → waves, each judged on the devices' own canary
health → the fleet alias moved, or the whole fleet rolled back.

Wiring only: every task calls one function in `tasks.flow.fleet_release`, which runs the same
without Airflow (`slimline fleet release`). Runs when the nightly run moves `candidate` (the
asset below; the default fleet) or by hand with params.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Asset, Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tasks.core.settings import Settings
from tasks.flow.approval import APPROVAL_TASK, PUBLISH_TASK
from tasks.flow.dag_support import CANDIDATE_ASSET_URI, NETWORK_RETRIES, fail_fast_on_permanent_errors

SETTINGS = Settings()
# The sensor's backstop; each wave's own timeout (the fleet file) decides long before it.
ROLLOUT_TIMEOUT = timedelta(days=7)


class FleetApproval(ApprovalOperator):
    """The release's approval, asked only for fleets that require it, with the fleet's own timeout
    (a timeout chooses Reject). Who answered and when is the task's return value; the asking goes
    to the audit log as the task starts waiting."""

    def execute(self, context: Any) -> Any:
        from tasks.flow.fleet_release import Published, ask_approval

        published = context["ti"].xcom_pull(task_ids=PUBLISH_TASK)
        self.response_timeout = timedelta(minutes=float(published["approval_timeout_minutes"]))
        ask_approval(SETTINGS, Published.model_validate(published))
        return super().execute(context)


@dag(
    dag_id="fleet_release",
    schedule=[Asset(uri=CANDIDATE_ASSET_URI, name="slimline_candidate")],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["slimline"],
    params={
        "model_version": Param(
            "",
            type="string",
            description="NAME/VERSION or NAME/ALIAS; empty: the candidate of the recipe's model.",
        ),
        "fleet": Param("staging", type="string", description="Fleet file name (fleets/<name>.yaml)."),
    },
    doc_md=__doc__,
)
def fleet_release() -> None:
    @task(**NETWORK_RETRIES)
    def plan() -> dict[str, Any]:
        from tasks.flow.fleet_release import plan_release

        params = get_current_context()["params"]
        with fail_fast_on_permanent_errors():
            planned = plan_release(SETTINGS, params["fleet"], params["model_version"] or None)
        if planned.already_released:
            raise AirflowSkipException(planned.reason)
        return planned.model_dump(mode="json")

    @task
    def build_engines(planned: dict[str, Any]) -> None:
        from tasks.flow import lineage
        from tasks.flow.fleet_release import FleetPlan, build_fleet_engines

        with fail_fast_on_permanent_errors():
            outcomes = build_fleet_engines(SETTINGS, FleetPlan.model_validate(planned))
        for outcome in outcomes:
            lineage.engine_built(SETTINGS, outcome)

    @task(**(NETWORK_RETRIES | {"task_id": PUBLISH_TASK}))
    def publish(planned: dict[str, Any]) -> dict[str, Any]:
        from tasks.flow import lineage
        from tasks.flow.fleet_release import FleetPlan, publish_release

        with fail_fast_on_permanent_errors():
            published = publish_release(SETTINGS, FleetPlan.model_validate(planned))
        lineage.release_published(SETTINGS, published)
        return published.model_dump(mode="json")

    @task.branch
    def needs_approval(published: dict[str, Any]) -> str:
        return APPROVAL_TASK if published["approval_required"] else "start_rollout"

    approve = FleetApproval(
        task_id=APPROVAL_TASK,
        subject="Release {{ ti.xcom_pull(task_ids='publish_release')['release'] }} of "
        "{{ ti.xcom_pull(task_ids='publish_release')['model_version'] }} to fleet "
        "{{ ti.xcom_pull(task_ids='publish_release')['fleet'] }}",
        body="{{ ti.xcom_pull(task_ids='publish_release')['summary'] }}",
        defaults=["Reject"],
        params={"comment": Param("", type="string", description="Why; kept with the release.")},
    )

    @task(trigger_rule="none_failed_min_one_success", **NETWORK_RETRIES)
    def start_rollout(published: dict[str, Any]) -> None:
        from tasks.flow.fleet_release import Published, begin_rollout

        answer = get_current_context()["ti"].xcom_pull(task_ids=APPROVAL_TASK)
        with fail_fast_on_permanent_errors():
            begin_rollout(SETTINGS, Published.model_validate(published), answer)

    # One poke per interval: publish the wave's desired state, read its devices' reports, judge it,
    # go on to the next wave or stop. Reschedule mode frees the worker slot between pokes.
    @task.sensor(
        poke_interval=SETTINGS.rollout_poke_seconds,
        mode="reschedule",
        timeout=ROLLOUT_TIMEOUT.total_seconds(),
    )
    def roll_out() -> bool:
        from tasks.flow.fleet_release import Published, advance_rollout

        published = get_current_context()["ti"].xcom_pull(task_ids=PUBLISH_TASK)
        with fail_fast_on_permanent_errors():
            return advance_rollout(SETTINGS, Published.model_validate(published))

    # Runs whatever happened before it: a rejected release is recorded, an aborted rollout rolls the
    # whole fleet back (and fails the run), a finished one moves the fleet's alias.
    @task(trigger_rule="all_done", **NETWORK_RETRIES)
    def conclude() -> dict[str, Any]:
        from tasks.flow import lineage
        from tasks.flow.fleet_release import Published, conclude_rollout

        ti = get_current_context()["ti"]
        published, answer = ti.xcom_pull(task_ids=PUBLISH_TASK), ti.xcom_pull(task_ids=APPROVAL_TASK)
        if published is None:
            raise AirflowSkipException("nothing was published")
        with fail_fast_on_permanent_errors():
            conclusion = conclude_rollout(SETTINGS, Published.model_validate(published), answer)
        lineage.fleet_concluded(SETTINGS, conclusion)
        return conclusion.model_dump(mode="json")

    # `conclude` runs whatever happened, so it cannot say whether the run failed: a task that failed
    # before it would otherwise end as a skipped leaf and the run as a success.
    @task(trigger_rule="one_failed")
    def watcher() -> None:
        raise AirflowFailException("a task of this run failed; see its log")

    planned = plan()
    built = build_engines(planned)
    published = publish(planned)
    built >> published
    started = start_rollout(published)
    branch = needs_approval(published)
    branch >> [approve, started]
    watched = roll_out()
    concluded = conclude()
    approve >> started >> watched >> concluded
    [planned, built, published, branch, approve, started, watched, concluded] >> watcher()


fleet_release()
