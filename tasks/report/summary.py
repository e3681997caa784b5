"""What one checkpoint's run produced: a row per model (baseline and variants) and the
registry outcome. Logged as `summary.json` on the parent run; the terminal table and the HTML
report are drawn from it."""

from __future__ import annotations

from pydantic import BaseModel

from tasks.gate.evaluate import EvalMetrics
from tasks.gate.gates import Interval
from tasks.gate.timing import TimingTable
from tasks.intake.refusals import Refusal
from tasks.search.study import SearchRecord


class Row(BaseModel):
    """One line of the variant table."""

    name: str
    metrics: EvalMetrics
    drop: Interval | None
    passed: bool | None
    reason: str
    version: str | None = None
    steps: list[str] = []  # the techniques that produced it, in order (empty for the baseline)
    run_id: str | None = None  # its MLflow run (the parent run for the baseline)

    @property
    def verdict(self) -> str:
        """`baseline`, `pass` or `FAIL`: the word every table shows."""
        return {None: "baseline", True: "pass", False: "FAIL"}[self.passed]


class FailedVariant(BaseModel):
    """A variant whose technique failed for good (the same input fails the same way on every try):
    not measured and not registered, while the checkpoint's other variants still publish."""

    name: str
    steps: list[str]
    reason: str
    run_id: str  # its child run, ended FAILED


class Summary(BaseModel):
    recipe: str
    recipe_digest: str
    dataset_digest: str
    code_commit: str
    checkpoint_uri: str
    checkpoint_digest: str
    parent_run_id: str
    registered_model: str
    rows: list[Row]
    new_versions: list[str]
    candidate: str | None
    timing: TimingTable | None = None  # None in summaries published before side-by-side timing
    candidate_reason: str = ""
    steps_computed: int
    steps_reused: int
    refused: list[Refusal] = []  # checkpoints in this home refused so far, each with its reason
    search: SearchRecord | None = None  # the recipe's search under the gates, when it has one
    failed: list[FailedVariant] = []  # variants whose technique failed for good, with the reason
