"""What the container's and the pod's operator for a slimline step share (`ContainerStep`,
`PodStep`): the step and its label in Airflow's grid, no templated field (the job's JSON is data,
never a template), and the result given back as the in-process task gives it (`step_done`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from tasks.core.settings import Settings
from tasks.flow.execution import Step, step_done


class StepOperator(BaseOperator):
    """Mixed in before a provider's operator: `class PodStep(StepOperator, KubernetesPodOperator)`."""

    template_fields: Sequence[str] = ()

    def __init__(self, *, step: Step, step_label: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.step_label = step_label

    def execute(self, context: Any) -> Any:
        return step_done(Settings(), self.step, self.step_result(super().execute(context)))

    def step_result(self, returned: Any) -> Any:
        """The step's result from what the provider's operator returned."""
        return returned
