"""The variant table, the side-by-side timing table and the search's trials, as the terminal shows them."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from tasks.gate.candidate import RULE
from tasks.gate.gates import BUDGET_TIMING, Interval
from tasks.gate.timing import TimingTable
from tasks.registry.engines import EngineOutcome
from tasks.registry.versions import Recheck
from tasks.report.summary import Row, Summary
from tasks.report.terminal import console
from tasks.search.study import SearchRecord


def signed_interval(drop: Interval) -> str:
    """The change as variant − baseline, in points (`+ 0.0` turns -0.00 into +0.00)."""
    low, point, high = (-v + 0.0 for v in (drop.high, drop.point, drop.low))
    return f"{point:+.2f} [{low:+.2f}, {high:+.2f}]"


def verdict_text(row: Row) -> str:
    """The verdict word with the registered version, e.g. `pass (v3)`."""
    return row.verdict + (f" (v{row.version})" if row.version else "")


def versions_text(summary: Summary) -> str:
    """The registry outcome of a run, in one line."""
    new = ", ".join(f"v{v}" for v in summary.new_versions) or "none"
    candidate = f"v{summary.candidate}" if summary.candidate else "none"
    return (
        f"registered model {summary.registered_model}: new versions {new}; alias candidate → {candidate}; "
        f"steps computed {summary.steps_computed}, reused {summary.steps_reused}"
    )


def variant_table(summary: Summary) -> Table:
    table = Table(
        title=f"{summary.recipe} on checkpoint {summary.checkpoint_digest[:12]} ({summary.checkpoint_uri})",
        title_justify="left",
    )
    for column, justify in (
        ("variant", "left"),
        ("runtime", "left"),
        ("accuracy", "right"),
        ("Δ acc pts [95% CI]", "right"),
        ("own p50 ms", "right"),
        ("own p95 ms", "right"),
        ("size MB", "right"),
        ("verdict", "left"),
        ("reason", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in summary.rows:
        m = row.metrics
        delta = "—" if row.drop is None else signed_interval(row.drop)
        colour = {"pass": "green", "FAIL": "red"}.get(row.verdict)
        verdict = f"[{colour}]{verdict_text(row)}[/]" if colour else verdict_text(row)
        table.add_row(
            row.name,
            m.runtime,
            f"{m.accuracy:.4f}",
            delta,
            f"{m.latency_p50_ms:.2f}",
            f"{m.latency_p95_ms:.2f}",
            f"{m.size_bytes / 1e6:.1f}",
            verdict,
            row.reason,
        )
    return table


def timing_caption(timing: TimingTable) -> str:
    return (
        f"{timing.rounds} interleaved rounds × {timing.requests} batch-1 requests per model, "
        f"{timing.threads} intra-op thread(s) each, model order rotating each round"
    )


def timing_rows(timing: TimingTable) -> list[list[str]]:
    """Per model: runtime, round p50s, median p50, spread, median p95 (ms), as the tables show them."""
    return [
        [
            m.name,
            m.runtime,
            " ".join(f"{p:.2f}" for p in m.p50_ms_per_round),
            f"{m.p50_ms:.2f}",
            f"{m.p50_min_ms:.2f}–{m.p50_max_ms:.2f}",
            f"{m.p95_ms:.2f}",
        ]
        for m in timing.models
    ]


TIMING_HEADERS = ["model", "runtime", "p50 ms per round", "median p50 ms", "p50 spread ms", "median p95 ms"]


def timing_table(timing: TimingTable) -> Table:
    table = Table(title=f"side-by-side timing: {timing_caption(timing)}", title_justify="left")
    for column in TIMING_HEADERS:
        table.add_column(column, justify="left" if column in ("model", "runtime") else "right")
    for cells in timing_rows(timing):
        table.add_row(*cells)
    return table


SEARCH_HEADERS = [
    "#",
    "point",
    "result",
    "accuracy",
    "Δ acc upper pts",
    "speed-up ×",
    "size MB",
    "seconds",
    "front",
]


def search_rows(record: SearchRecord) -> list[list[str]]:
    """One row per trial; a point proposed again shows the trial whose measurement it reuses."""
    rows = []
    for trial in record.trials:
        m = trial.measured
        result = trial.state if trial.duplicate_of is None else f"{trial.state} (as #{trial.duplicate_of})"
        rows.append(
            [
                str(trial.number),
                trial.name,
                result if trial.state != "error" else f"error: {trial.reason.removeprefix('ERROR ')}",
                f"{m.accuracy:.4f}" if m else "—",
                f"{m.drop_high:+.2f}" if m else "—",
                f"{m.speedup:.2f}" if m else "—",
                f"{m.size_mb:.1f}" if m else "—",
                f"{trial.seconds:.0f}",
                "front" if trial.on_front else "",
            ]
        )
    return rows


def search_comparison(summary: Summary) -> str:
    """The fastest search point against the fastest hand-written variant, in the run's own
    side-by-side timing (the same rounds, against the same reference)."""
    record, timing = summary.search, summary.timing
    if record is None or timing is None:
        return ""
    timed = {m.name: m.p50_ms for m in timing.models}
    passing = [r for r in summary.rows if r.passed and r.name in timed]
    searched = [r for r in passing if r.name in record.front]
    written = [r for r in passing if r.name not in record.front]
    reference = timed.get(record.reference)

    def describe(kind: str, rows: list[Row]) -> str:
        if not rows:
            return f"no {kind} passed"
        best = min(rows, key=lambda r: timed[r.name])
        ratio = f", {reference / timed[best.name]:.2f}× {record.reference}" if reference else ""
        upper = f", Δ acc upper {best.drop.high:+.2f} pts" if best.drop else ""
        return (
            f"fastest {kind}: {best.name}, p50 {timed[best.name]:.2f} ms{ratio}, accuracy "
            f"{best.metrics.accuracy:.4f}{upper}, {best.metrics.size_bytes / 1e6:.1f} MB"
        )

    return (
        f"In this run's side-by-side timing: {describe('search point', searched)}; "
        f"{describe('hand-written variant', written)}."
    )


def search_table(record: SearchRecord) -> Table:
    front = ", ".join(record.front) or "empty"
    table = Table(
        title=f"search: {len(record.trials)} trials, {record.stopped}, front {front}",
        title_justify="left",
    )
    for column in SEARCH_HEADERS:
        table.add_column(column, justify="left" if column in ("point", "result", "front") else "right")
    for cells in search_rows(record):
        table.add_row(*cells)
    return table


def print_summary(summary: Summary, out: Console | None = None) -> None:
    out = out or console()
    out.print(variant_table(summary))
    if summary.timing is not None:
        out.print(timing_table(summary.timing))
        out.print(f"candidate: {summary.candidate_reason}")
        out.print(f"rule: {RULE} {BUDGET_TIMING}")
    if summary.search is not None:
        out.print(search_table(summary.search))
        out.print(search_comparison(summary))
    out.print(versions_text(summary))
    for failure in summary.failed:
        out.print(f"failed: {failure.name}: {failure.reason}", markup=False, highlight=False)
    for refusal in summary.refused:
        out.print(f"refused: {refusal.reason}", markup=False, highlight=False)


def gate_table(result: Recheck) -> Table:
    """One row per gate of a re-judged version, with the numbers behind it."""
    m, b = result.metrics, result.baseline
    p95, base_p95 = result.timing.of(result.version.label).p95_ms, result.timing.of("baseline").p95_ms
    title = (
        f"{result.version.label}: accuracy {m.accuracy:.4f} (baseline {b.accuracy:.4f}), "
        f"p95 side by side {p95:.2f} ms (baseline {base_p95:.2f} ms), {m.size_bytes / 1e6:.1f} MB"
        + ("" if result.same_data else " — judged on a data split that differs from its registration")
    )
    table = Table(title=title, title_justify="left")
    for column in ("gate", "result", "reason"):
        table.add_column(column)
    for check in result.verdict.checks:
        table.add_row(check.name, "[green]pass[/]" if check.passed else "[red]FAIL[/]", check.reason)
    return table


ENGINE_HEADERS = [
    "version",
    "target",
    "status",
    "size MB",
    "build s",
    "agreement",
    "max Δlogit",
    "p50 ms",
    "p95 ms",
    "seq/s (batch)",
    "J/1k (batch 1, batch)",
]


def engine_rows(outcomes: list[EngineOutcome]) -> list[list[str]]:
    """Per (version, target): what happened and the canary check's figures, as the tables show them."""

    def fmt(value: float | None, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    rows = []
    for o in outcomes:
        check = o.check
        throughput = energy = "—"
        if check is not None and check.throughput_per_s is not None:
            throughput = f"{check.throughput_per_s:,.0f} ({check.throughput_batch})"
        if check is not None and check.energy_j_per_1k is not None:
            energy = f"{check.energy_j_per_1k:.3g}, {check.energy_j_per_1k_batched:.3g}"
        rows.append(
            [
                o.model_version,
                o.target,
                o.status if o.status in ("built", "reused") else f"{o.status}: {o.reason}",
                fmt(o.size_bytes / 1e6 if o.size_bytes is not None else None, ".2f"),
                fmt(o.build_seconds, ".2f"),
                fmt(check.agreement if check else None, ".4f"),
                fmt(check.max_logit_diff if check else None, ".3g"),
                fmt(check.latency_p50_ms if check else None, ".2f"),
                fmt(check.latency_p95_ms if check else None, ".2f"),
                throughput,
                energy,
            ]
        )
    return rows


def engine_notes(outcomes: list[EngineOutcome]) -> str:
    """Why some engines were not timed, and which energy counter was read or why none was, once each."""
    checks = [o.check for o in outcomes if o.check]
    notes = {c.timing_note for c in checks} | {c.energy_note for c in checks}
    return "; ".join(sorted(note for note in notes if note))


def engine_table(outcomes: list[EngineOutcome]) -> Table:
    table = Table(title="engines (canary check against the registered model)", title_justify="left")
    for column in ENGINE_HEADERS:
        table.add_column(column, justify="left" if column in ("version", "target", "status") else "right")
    for cells in engine_rows(outcomes):
        table.add_row(*cells)
    table.caption = engine_notes(outcomes) or None
    return table
