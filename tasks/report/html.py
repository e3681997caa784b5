"""The per-checkpoint release report: one self-contained HTML file (inline CSS, the chart as a
base64 data URI, no scripts, no external assets) that opens the same from a laptop, an MLflow
artifact view or a mail attachment, and that a reviewer can archive as it is."""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Run
from pydantic import BaseModel, ValidationError

from tasks.core.errors import ConfigError
from tasks.core.files import write_atomic
from tasks.core.settings import Settings
from tasks.gate.candidate import RULE
from tasks.gate.gates import BUDGET_TIMING
from tasks.intake.validation import REPORT as VALIDATION_ARTIFACT
from tasks.intake.validation import SuiteResult, ValidationReport
from tasks.registry import tracking
from tasks.registry.engines import EngineOutcome
from tasks.report.charts import ChartPoint, accuracy_latency_chart, search_chart
from tasks.report.console import (
    ENGINE_HEADERS,
    SEARCH_HEADERS,
    TIMING_HEADERS,
    engine_notes,
    engine_rows,
    search_comparison,
    search_rows,
    signed_interval,
    timing_caption,
    timing_rows,
    verdict_text,
    versions_text,
)
from tasks.report.page import dl, document, escape, table, td, td_list
from tasks.report.summary import Summary

REPORT_ARTIFACT = "report.html"
SUMMARY_ARTIFACT = "summary.json"  # what pipeline.publish logs on the parent run

Model = TypeVar("Model", bound=BaseModel)


def class_labels(summary: Summary) -> list[str]:
    """Every class any row reports a recall for, in the order the rows first name them."""
    return list(dict.fromkeys(label for row in summary.rows for label in row.metrics.recall_per_class))


def chart_p50(summary: Summary, name: str, own_p50_ms: float) -> float:
    """The side-by-side median p50 of a timed model; a model's own p50 when it was not timed."""
    timed = {m.name: m.p50_ms for m in summary.timing.models} if summary.timing else {}
    return timed.get(name, own_p50_ms)


def chart_points(summary: Summary) -> list[ChartPoint]:
    return [
        ChartPoint(
            name=row.name,
            p50_ms=chart_p50(summary, row.name, row.metrics.latency_p50_ms),
            accuracy=row.metrics.accuracy,
            size_mb=row.metrics.size_bytes / 1e6,
            passed=row.passed,
        )
        for row in summary.rows
    ]


def chart_png(summary: Summary) -> bytes:
    buffer = io.BytesIO()
    accuracy_latency_chart(
        chart_points(summary),
        f"{summary.recipe} on checkpoint {summary.checkpoint_digest[:12]}",
        None,  # a run has no reference variant; the benchmark draws its 2× line
        buffer,
        y_label=f"accuracy on {summary.rows[0].metrics.examples} held-out examples (%)",
    )
    return buffer.getvalue()


def _header(summary: Summary, started: datetime | None) -> str:
    when = f"run started {started:%Y-%m-%d %H:%M} UTC" if started else "run start unknown"
    return "\n".join(
        [
            f"<h1>Release report: {escape(summary.recipe)}</h1>",
            f'<p class="meta">checkpoint <code>{escape(summary.checkpoint_uri)}</code></p>',
            f'<p class="meta">digest <code>sha256:{escape(summary.checkpoint_digest)}</code></p>',
            f'<p class="meta">{escape(when)}; MLflow parent run '
            f"<code>{escape(summary.parent_run_id)}</code></p>",
        ]
    )


def _variants(summary: Summary) -> str:
    labels = class_labels(summary)
    headers = [
        "variant",
        "runtime",
        "accuracy",
        "Δ acc pts [95% CI]",
        *(f"recall {label}" for label in labels),
        "own p50 ms",
        "own p95 ms",
        "size MB",
        "verdict",
        "reason",
    ]
    rows = []
    for row in summary.rows:
        m = row.metrics
        recall = m.recall_per_class
        rows.append(
            [
                td(row.name),
                td(m.runtime),
                td(f"{m.accuracy:.4f}", "num"),
                td("—" if row.drop is None else signed_interval(row.drop), "num"),
                *(td(f"{recall[label]:.3f}" if label in recall else "—", "num") for label in labels),
                td(f"{m.latency_p50_ms:.2f}", "num"),
                td(f"{m.latency_p95_ms:.2f}", "num"),
                td(f"{m.size_bytes / 1e6:.1f}", "num"),
                td(verdict_text(row), row.verdict.lower()),
                td(row.reason),
            ]
        )
    return "<h2>Variants</h2>\n" + table(headers, rows) + f"\n<p>{escape(versions_text(summary))}</p>"


def _chart(summary: Summary) -> str:
    data = base64.b64encode(chart_png(summary)).decode("ascii")
    return (
        "<h2>Accuracy against latency</h2>\n"
        f'<figure><img src="data:image/png;base64,{data}" '
        'alt="accuracy against p50 latency per variant, marker area proportional to size">'
        "<figcaption>Batch-1 p50 latency on each variant's own runtime (log scale; the side-by-side "
        "median for the models timed side by side, its own evaluation's figure for the others) against "
        "accuracy on the evaluation split; marker area ∝ size on disk. Green passed its gates, hollow "
        "red failed, blue is the baseline.</figcaption></figure>"
    )


def _timing(summary: Summary) -> str:
    heading = "<h2>Side-by-side timing</h2>\n"
    if summary.timing is None:
        return heading + "<p>This run was published before side-by-side timing; no table was recorded.</p>"
    cells = [
        [td(text, "" if i < 2 else "num") for i, text in enumerate(row)]
        for row in timing_rows(summary.timing)
    ]
    return "\n".join(
        [
            heading + "<p>The baseline and every variant that passed its other gates, "
            f"{escape(timing_caption(summary.timing))}. "
            f"{escape(BUDGET_TIMING)} The “own” latencies of the variant table come from each model's "
            "evaluation alone, minutes apart, and are not comparable.</p>",
            table(TIMING_HEADERS, cells),
            f"<p>Rule: {escape(RULE)}</p>",
            f"<p>Candidate: {escape(summary.candidate_reason)}</p>",
        ]
    )


OBJECTIVE_TEXT = {
    "accuracy": "maximise accuracy",
    "latency": "maximise the p50 speed-up over the reference",
    "size": "minimise size",
}


def _search(summary: Summary) -> str:
    record = summary.search
    if record is None:
        return ""
    buffer = io.BytesIO()
    search_chart(record, f"{summary.recipe} search", buffer)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    cells = [
        [td(text, "" if i in (1, 2, 8) else "num") for i, text in enumerate(row)]
        for row in search_rows(record)
    ]
    measured = sum(t.duplicate_of is None for t in record.trials)
    return "\n".join(
        [
            "<h2>Search under the gates</h2>",
            f"<p>{len(record.trials)} trials ({measured} points measured, the others proposed again and "
            f"answered from their first measurement and not counted); stopped: {escape(record.stopped)}, "
            f"{record.seconds:.0f} s; {escape(record.sampler)}. Objectives: "
            f"{escape(', '.join(OBJECTIVE_TEXT[o] for o in record.objectives))}; every point timed side by "
            f"side with <code>{escape(record.reference)}</code>; the gates are constraints. The feasible "
            "Pareto front goes on to the run's side-by-side timing above and is registered like any "
            "variant.</p>",
            f'<figure><img src="data:image/png;base64,{data}" alt="accuracy against speed-up of every '
            'point the search measured, Pareto front joined"><figcaption>Each point measured: accuracy '
            "against its p50 speed-up over the reference; green passed its gates, hollow red failed; "
            "marker area ∝ size; #N is the trial in the table below. The feasible Pareto front is joined "
            "and named.</figcaption></figure>",
            table(SEARCH_HEADERS, cells),
            f"<p>{escape(search_comparison(summary))}</p>",
        ]
    )


def _failed_expectations(suite: SuiteResult) -> str:
    rows = [
        [
            td(o.expectation),
            td(", ".join(o.columns) or "(table)"),
            td(o.description),
            td(o.observed),
            td("" if o.unexpected_count is None else o.unexpected_count, "num"),
            td_list(o.examples),
        ]
        for o in suite.failures()
    ]
    headers = ["expectation", "columns", "meaning", "observed", "offending rows", "examples"]
    return f"<h3>{escape(suite.suite)} on {escape(suite.data)}: failed expectations</h3>\n" + table(
        headers, rows
    )


def _validation(validation: ValidationReport | None) -> str:
    heading = "<h2>Data validation</h2>\n"
    if validation is None:
        return heading + "<p>No data validation results were recorded for this run.</p>"
    failed = [suite for suite in validation.suites if not suite.success]
    verdict = (
        f'<p class="fail">FAILED: {len(failed)} of {len(validation.suites)} suites</p>'
        if failed
        else f'<p class="pass">passed: {len(validation.suites)} of {len(validation.suites)} suites</p>'
    )
    rows = [
        [
            td(suite.suite),
            td(suite.data),
            td("pass" if suite.success else "FAIL", "pass" if suite.success else "fail"),
            td(f"{suite.evaluated - len(suite.failures())}/{suite.evaluated}", "num"),
        ]
        for suite in validation.suites
    ]
    suites = table(["suite", "data", "result", "expectations passed"], rows)
    return "\n".join([heading + verdict, suites, *(_failed_expectations(suite) for suite in failed)])


def _lineage(summary: Summary) -> str:
    parts = ["<h2>Lineage</h2>"]
    for row in summary.rows:
        steps = (
            "<ol>" + "".join(f"<li><code>{escape(s)}</code></li>" for s in row.steps) + "</ol>"
            if row.steps
            else "none (the checkpoint as published)"
        )
        items = [
            ("checkpoint", f"<code>{escape(summary.checkpoint_uri)}</code>"),
            ("checkpoint digest", f"<code>sha256:{escape(summary.checkpoint_digest)}</code>"),
            ("recipe digest", f"<code>{escape(summary.recipe_digest)}</code>"),
            ("dataset digest", f"<code>{escape(summary.dataset_digest)}</code>"),
            ("code commit", f"<code>{escape(summary.code_commit)}</code>"),
            ("steps", steps),
            ("MLflow run", f"<code>{escape(row.run_id or 'unknown')}</code>"),
        ]
        if row.version:
            items.append(("registered", escape(f"{summary.registered_model} v{row.version}")))
        parts.append(f"<h3>{escape(row.name)}</h3>\n{dl(items)}")
    return "\n".join(parts)


def _failed(summary: Summary) -> str:
    """Variants whose technique failed for good: nothing measured or registered, the others published."""
    if not summary.failed:
        return ""
    rows = [
        [td(f.name), td(" › ".join(f.steps)), td(f.reason), f"<td><code>{escape(f.run_id)}</code></td>"]
        for f in summary.failed
    ]
    note = (
        "<p>A technique refused its input or could not reach its target, which fails the same way on "
        "every try: the variant is recorded with the reason and not registered, and the checkpoint's "
        "other variants are published.</p>"
    )
    return "<h2>Failed variants</h2>\n" + table(["variant", "steps", "reason", "MLflow run"], rows) + note


def _refused(summary: Summary) -> str:
    """Checkpoints refused before any compute, with the reason: not retried until they change."""
    if not summary.refused:
        return ""
    rows = [
        [
            f"<td><code>{escape(r.uri)}</code></td>",
            td(r.reason),
            td(r.exit_code, "num"),
            td(r.refused_at.strftime("%Y-%m-%d %H:%M UTC")),
        ]
        for r in summary.refused
    ]
    note = "<p>Not retried until their files change.</p>"
    return (
        "<h2>Refused checkpoints</h2>\n"
        + table(["checkpoint", "reason", "exit code", "refused"], rows)
        + note
    )


def _engines(engines: list[EngineOutcome] | None) -> str:
    heading = "<h2>Engines</h2>\n"
    if engines is None:
        return heading + "<p>The engine step had not run when this report was written.</p>"
    if not engines:
        return heading + "<p>No version was registered, so no engine was built.</p>"
    cells = [[td(text, "" if i < 3 else "num") for i, text in enumerate(row)] for row in engine_rows(engines)]
    notes = engine_notes(engines)
    return (
        heading + "<p>Each registered version built for each target of the recipe and checked on the canary "
        "set (the first examples of the evaluation split) against the registered model: label "
        "agreement, largest logit difference, and batch-1 latency and throughput where this machine "
        "is of the target's kind, with the energy per 1,000 inferences (at batch 1, and at the "
        "throughput batch) where the device has a real energy counter (NVML on GPUs, RAPL on CPUs). "
        "A failed check registers nothing.</p>"
        + table(ENGINE_HEADERS, cells)
        + (f"<p>{escape(notes)}</p>" if notes else "")
    )


def render_html(
    summary: Summary,
    validation: ValidationReport | None = None,
    started: datetime | None = None,
    engines: list[EngineOutcome] | None = None,
) -> str:
    """The whole report as one HTML document. `started` (the parent run's start) is the date it
    shows: the run's date, not the rendering's, so a report regenerated later is the same file."""
    body = "\n".join(
        [
            _header(summary, started),
            _variants(summary),
            _failed(summary),
            _timing(summary),
            _chart(summary),
            _search(summary),
            _engines(engines),
            _validation(validation),
            _refused(summary),
            _lineage(summary),
        ]
    )
    title = f"slimline release report: {summary.recipe} on {summary.checkpoint_digest[:12]}"
    return document(title, body)


def run_started(run: Run) -> datetime:
    return datetime.fromtimestamp(run.info.start_time / 1000, UTC)


def report_path(settings: Settings, summary: Summary) -> Path:
    return settings.home / "reports" / f"{summary.parent_run_id}.html"


def write_report(
    settings: Settings,
    summary: Summary,
    validation: ValidationReport | None = None,
    out: Path | None = None,
    engines: list[EngineOutcome] | None = None,
) -> Path:
    """Write the report to `out` (default `<home>/reports/<parent_run_id>.html`) and log it to the
    parent run as `report.html`; return the path written."""
    started = run_started(tracking.get_run(settings, summary.parent_run_id))
    text = render_html(summary, validation, started, engines)
    path = out or report_path(settings, summary)
    write_atomic(path, text)
    tracking.log_text(settings, summary.parent_run_id, REPORT_ARTIFACT, text)
    return path


def _logged_model(settings: Settings, run_id: str, name: str, model: type[Model]) -> Model:
    """A JSON artifact of the run as `model`; ConfigError (one line) if this version cannot read it."""
    payload: dict[str, Any] = tracking.load_json(settings, run_id, name)
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"run {run_id}: {name} does not match this slimline version ({where}: {first['msg']})"
        ) from exc


def load_published_summary(settings: Settings, run_id: str) -> Summary:
    """The summary a published parent run logged; ConfigError (one line) when the run is unknown,
    is not a published parent run, or logged a summary this version cannot read."""
    run = tracking.get_run(settings, run_id)
    if not tracking.has_artifact(settings, run_id, SUMMARY_ARTIFACT):
        parent = run.data.tags.get("mlflow.parentRunId")
        hint = f"it is a variant run; its parent run is {parent}" if parent else "not a published parent run"
        raise ConfigError(f"run {run_id} has no {SUMMARY_ARTIFACT}: {hint}")
    return _logged_model(settings, run_id, SUMMARY_ARTIFACT, Summary)


def load_logged_validation(settings: Settings, run_id: str) -> ValidationReport | None:
    """The data validation report logged on the run as validation.json, if there is one."""
    if not tracking.has_artifact(settings, run_id, VALIDATION_ARTIFACT):
        return None
    return _logged_model(settings, run_id, VALIDATION_ARTIFACT, ValidationReport)
