"""The accuracy-against-latency chart, drawn the same way for the benchmark and the release report."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, Field

from tasks.search.study import SearchRecord

LEGEND = "green = passed its gates, hollow red = failed, blue = baseline"


class ChartPoint(BaseModel):
    """One model on the chart."""

    name: str
    p50_ms: float = Field(gt=0, description="batch-1 p50 latency (the x axis is logarithmic)")
    accuracy: float = Field(ge=0, le=1, description="fraction correct; drawn as a percentage")
    size_mb: float = Field(ge=0, description="size on disk; the marker area grows with it")
    passed: bool | None = Field(description="gate verdict; None for the baseline")


def accuracy_latency_chart(
    points: list[ChartPoint],
    title: str,
    reference_p50_ms: float | None,
    path_or_buffer: Path | str | BinaryIO,
    *,
    y_label: str = "accuracy (%)",
    note: str = "",
) -> None:
    """Write a PNG of accuracy against p50 latency: green = passed, hollow red = failed,
    blue = baseline, marker area ∝ size, and a dashed "2× faster than reference" line when a
    reference latency is given. `note` is appended to the legend line of the title."""
    # Figure + the Agg canvas directly, not pyplot: no global backend switch and no figure left
    # open in pyplot's registry, so it is safe inside a long-lived worker or a test process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig = Figure(figsize=(9, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for point in points:
        colour = {True: "tab:green", False: "tab:red", None: "tab:blue"}[point.passed]
        ax.scatter(
            point.p50_ms,
            100 * point.accuracy,
            s=8 * point.size_mb + 20,
            facecolors=colour if point.passed is not False else "none",
            edgecolors=colour,
            linewidths=1.5,
            alpha=0.7,
        )
        ax.annotate(
            point.name,
            (point.p50_ms, 100 * point.accuracy),
            fontsize=8,
            xytext=(6, 6),
            textcoords="offset points",
        )
    if reference_p50_ms is not None:
        ax.axvline(reference_p50_ms / 2, color="grey", linestyle="--", linewidth=1)
        ax.text(
            reference_p50_ms / 2,
            ax.get_ylim()[0],
            " 2× faster than reference",
            fontsize=8,
            color="grey",
            va="bottom",
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    low, high = ax.get_xlim()
    # Plain numbers on the minor ticks read well up to about a decade and a half (the benchmark's
    # range); across several decades (tiny test models next to a PyTorch baseline) they collide.
    ax.xaxis.set_minor_formatter(ScalarFormatter() if high / low <= 30 else NullFormatter())
    ax.set_xlabel("p50 latency, batch 1 (ms, log scale)")
    ax.set_ylabel(y_label)
    ax.set_title(
        f"{title}: accuracy vs latency (marker area ∝ size on disk)\n{LEGEND}{f'; {note}' if note else ''}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path_or_buffer, format="png", dpi=120)


def search_chart(record: SearchRecord, title: str, path_or_buffer: Path | str | BinaryIO) -> None:
    """Write a PNG of a search: accuracy against the p50 speed-up over the reference, one marker
    per point measured (green passed, hollow red failed; marker area ∝ size) labelled with its trial
    number, the feasible Pareto front joined by a line and named in bold."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    measured = [t for t in record.trials if t.measured is not None and t.duplicate_of is None]
    for trial in measured:
        assert trial.measured is not None
        colour = "tab:green" if trial.state == "passed" else "tab:red"
        ax.scatter(
            trial.measured.speedup,
            100 * trial.measured.accuracy,
            s=8 * trial.measured.size_mb + 20,
            facecolors=colour if trial.state == "passed" else "none",
            edgecolors=colour,
            linewidths=1.5,
            alpha=0.7,
        )
    front = sorted(
        (m for t in measured if t.on_front and (m := t.measured) is not None), key=lambda m: m.speedup
    )
    if front:
        ax.plot([m.speedup for m in front], [100 * m.accuracy for m in front], color="tab:green", linewidth=1)
    for trial in measured:
        if trial.measured is not None:
            ax.annotate(
                f"#{trial.number} {trial.name.removeprefix('search-')}"
                if trial.on_front
                else f"#{trial.number}",
                (trial.measured.speedup, 100 * trial.measured.accuracy),
                fontsize=8,
                fontweight="bold" if trial.on_front else "normal",
                xytext=(6, 6),
                textcoords="offset points",
            )
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(f"p50 speed-up over {record.reference}, timed side by side (×)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(
        f"{title}: {len(measured)} points measured (#trial), the front joined and named\n"
        "green = passed its gates, hollow red = failed; marker area ∝ size on disk",
        fontsize=9,
    )
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path_or_buffer, format="png", dpi=120)
