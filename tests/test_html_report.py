"""The release report: one self-contained HTML file per parent run, and `slimline report`."""

from __future__ import annotations

import base64
import html
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tasks.cli import main
from tasks.flow.local import run_local
from tasks.gate.candidate import RULE
from tasks.gate.evaluate import EvalMetrics
from tasks.gate.gates import BUDGET_TIMING, Interval
from tasks.intake.validation import ExpectationOutcome, SuiteResult, ValidationReport
from tasks.registry import tracking
from tasks.report.console import print_summary
from tasks.report.html import REPORT_ARTIFACT, render_html, write_report
from tasks.report.summary import Row, Summary
from tests.tiny import publish, write_tiny_recipe

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<script>alert(1)</script>"


class Links(HTMLParser):
    """Every tag and every src/href attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.refs += [value or "" for name, value in attrs if name in ("src", "href")]


def links(page: str) -> Links:
    parser = Links()
    parser.feed(page)
    return parser


def embedded_png(page: str) -> bytes:
    match = re.search(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match, "no embedded PNG"
    return base64.b64decode(match.group(1), validate=True)


def validation_report(example: str = "'ok' (line 3, neutral)") -> ValidationReport:
    """A report as tasks.intake.validation builds it: one passing suite, one failing with example rows."""
    unique = ExpectationOutcome(
        expectation="expect_column_values_to_be_unique",
        columns=["text"],
        description="duplicated (same text)",
        success=False,
        observed="2 of 60 rows",
        unexpected_count=2,
        examples=[example, "'same again' (line 9, negative)"],
    )
    rows = ExpectationOutcome(
        expectation="expect_table_row_count_to_equal",
        description="one row per example, 60 rows",
        success=True,
        observed="60",
    )
    return ValidationReport(
        suites=[
            SuiteResult(suite="split.train", data="train", success=True, evaluated=1, outcomes=[rows]),
            SuiteResult(suite="split.eval", data="eval", success=False, evaluated=2, outcomes=[rows, unique]),
        ]
    )


def test_report_of_a_pipeline_run_and_its_regeneration(settings, tiny_checkpoint, tmp_path, capsys):
    recipe = write_tiny_recipe(tmp_path / "recipe")
    summary = run_local(settings, recipe, publish(settings, tiny_checkpoint, "nightly/tiny"))
    validation = validation_report()
    # Where a regeneration looks for it (tasks.intake.validation.REPORT on the parent run).
    tracking.log_json(settings, summary.parent_run_id, "validation.json", validation.model_dump(mode="json"))

    path = write_report(settings, summary, validation)
    assert path == settings.home / "reports" / f"{summary.parent_run_id}.html"
    page = path.read_text(encoding="utf-8")

    for row in summary.rows:
        assert f"<td>{row.name}</td>" in page
        for recall in row.metrics.recall_per_class.values():
            assert f"{recall:.3f}" in page
        assert row.run_id and row.run_id in page
        for step in row.steps:
            assert f"<li><code>{step}</code></li>" in page
    for digest in (summary.checkpoint_digest, summary.recipe_digest, summary.dataset_digest):
        assert digest in page
    assert summary.code_commit in page
    assert "FAILED: 1 of 2 suites" in page and "split.eval on eval: failed expectations" in page
    assert "<li>&#x27;same again&#x27; (line 9, negative)</li>" in page
    assert embedded_png(page).startswith(PNG_SIGNATURE)
    timing = page[
        page.index("<h2>Side-by-side timing</h2>") : page.index("<h2>Accuracy against latency</h2>")
    ]
    assert summary.timing is not None
    assert "2 interleaved rounds × 10 batch-1 requests per model" in timing
    assert BUDGET_TIMING in timing
    for model in summary.timing.models:
        rounds = " ".join(f"{p:.2f}" for p in model.p50_ms_per_round)
        assert (
            f'<tr><td>{model.name}</td><td>{model.runtime}</td><td class="num">{rounds}</td>'
            f'<td class="num">{model.p50_ms:.2f}</td>'
        ) in timing
    assert f"<p>Rule: {html.escape(RULE)}</p>" in timing
    assert f"<p>Candidate: {html.escape(summary.candidate_reason)}</p>" in timing
    found = links(page)
    assert all(ref.startswith("data:") for ref in found.refs)
    assert not {"script", "link", "iframe"} & found.tags
    assert "http://" not in page and "https://" not in page

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    artifacts = {a.path for a in client.list_artifacts(summary.parent_run_id)}
    assert {REPORT_ARTIFACT, "summary.json"} <= artifacts
    logged = client.download_artifacts(summary.parent_run_id, REPORT_ARTIFACT, str(tmp_path))
    assert Path(logged).read_text(encoding="utf-8") == page

    # `slimline report RUN_ID` rebuilds the same file and prints the same table from MLflow alone.
    capsys.readouterr()
    print_summary(summary)
    table = capsys.readouterr().out
    path.unlink()
    home = ["--home", str(settings.home)]
    assert main([*home, "report", summary.parent_run_id]) == 0
    assert capsys.readouterr().out == f"{table}report: {path}\n"
    assert path.read_text(encoding="utf-8") == page
    out = tmp_path / "elsewhere" / "r.html"
    assert main([*home, "report", summary.parent_run_id, "--out", str(out)]) == 0
    assert capsys.readouterr().out.endswith(f"report: {out}\n")
    assert out.read_text(encoding="utf-8") == page
    assert not list(path.parent.glob(".*tmp*"))

    # Wrong ids: one line, exit 2 (a bad argument), nothing written.
    for run_id, message in (
        ("0" * 32, "no MLflow run '00000000000000000000000000000000'"),
        (summary.rows[1].run_id, f"it is a variant run; its parent run is {summary.parent_run_id}"),
    ):
        assert main([*home, "report", str(run_id)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("slimline: error: ") and message in err
        assert err.count("\n") == 1
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def _hostile_summary() -> Summary:
    """A summary whose every text field carries markup."""
    metrics = EvalMetrics(
        examples=10,
        accuracy=0.5,
        recall_per_class={"<neg>": 0.25, "pos": 0.75},
        latency_p50_ms=1.0,
        latency_p95_ms=2.0,
        size_bytes=1_000_000,
        runtime="onnxruntime",
    )
    return Summary(
        recipe="r&d",
        recipe_digest="a" * 64,
        dataset_digest="b" * 64,
        code_commit="c0ffee+dirty",
        checkpoint_uri='file:///x/"quoted"',
        checkpoint_digest="d" * 64,
        parent_run_id="p" * 32,
        registered_model="m",
        rows=[
            Row(name="baseline", metrics=metrics, drop=None, passed=None, reason="reference"),
            Row(
                name=HOSTILE,
                metrics=metrics,
                drop=Interval(point=0.0, low=-0.1, high=0.2, confidence=0.95),
                passed=False,
                reason="FAIL size 1.0 > 0.5 MB & more",
                steps=[HOSTILE],
            ),
        ],
        new_versions=[],
        candidate=None,
        steps_computed=1,
        steps_reused=0,
    )


def test_report_escapes_all_text():
    page = render_html(_hostile_summary())
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "recall &lt;neg&gt;" in page and "r&amp;d" in page and "&amp; more" in page
    assert "file:///x/&quot;quoted&quot;" in page
    assert '<td class="fail">FAIL</td>' in page
    assert "run start unknown" in page
    assert embedded_png(page).startswith(PNG_SIGNATURE)
    assert "published before side-by-side timing; no table was recorded" in page


def test_validation_section_lists_suites_and_failed_expectations():
    summary = _hostile_summary()
    page = render_html(summary, validation_report(example="<img src=x onerror=alert(1)>"))
    section = page[page.index("<h2>Data validation</h2>") : page.index("<h2>Lineage</h2>")]
    assert '<td>split.train</td><td>train</td><td class="pass">pass</td><td class="num">1/1</td>' in section
    assert '<td>split.eval</td><td>eval</td><td class="fail">FAIL</td><td class="num">1/2</td>' in section
    # Only the failed expectation is listed, with its offending rows, escaped.
    assert "expect_column_values_to_be_unique" in section
    assert "expect_table_row_count_to_equal" not in section
    assert "<li>&lt;img src=x onerror=alert(1)&gt;</li>" in section
    assert len(links(page).refs) == 1  # the chart's data URI: the page references nothing else

    passed = ValidationReport(suites=validation_report().suites[:1])
    assert '<p class="pass">passed: 1 of 1 suites</p>' in render_html(summary, passed)
    assert "No data validation results were recorded" in render_html(summary)


def test_report_command_has_help(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["report", "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: slimline report") and "RUN_ID" in out and "--out" in out
