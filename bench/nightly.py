"""The nightly run's wall time, task by task: the demo's real nightly DAG (`airflow dags test`) on the
demo teacher, in a fresh home where only the teacher (fine-tuned before the DAG runs) and the data
split are cached, so every step of the night runs. Each run is kept under a label in
bench/results/nightly.json (a `before` and an `after` sit side by side): the DAG run's wall time
(`dag_run_seconds`), each task instance's time, each computed artifact's step time, and the
variants' accuracy, interval, p50 and size as the run's side-by-side timing measured them.

    python bench/nightly.py --label after                    # run the demo DAG now and record it
    python bench/nightly.py --label before --record HOME      # record a finished `slimline demo
                                                              #   --json HOME/demo.json` run in HOME
    python bench/nightly.py --chart                          # redraw the chart from the JSON only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
CACHED_STEPS = ("teacher.finetune", "dataset.split")  # made before the DAG run starts
RECIPE = REPO / "recipes" / "minilm-sentiment.yaml"


def run_demo(label: str, work: Path, teacher_home: Path, recipe: Path) -> Path:
    """`slimline demo` in a fresh home holding only the cached teacher and split; returns the home."""
    home = work / label
    shutil.rmtree(home, ignore_errors=True)
    for step in CACHED_STEPS:
        if (teacher_home / "artifacts" / step).is_dir():
            shutil.copytree(teacher_home / "artifacts" / step, home / "artifacts" / step)
    if (teacher_home / "data").is_dir():
        shutil.copytree(teacher_home / "data", home / "data")
    env = {**os.environ, "SLIMLINE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "tasks.cli",
        "demo",
        "--recipe",
        str(recipe),
        "--json",
        str(home / "demo.json"),
    ]
    subprocess.run(command, cwd=REPO, env=env, check=True)
    return home


def step_times(artifacts: Path, skip: Collection[str] = ()) -> dict[str, dict[str, float]]:
    """Each step's artifacts computed under `artifacts`, from their manifests: how many, and their
    seconds together (steps in `skip` were made before the run)."""
    steps: dict[str, list[float]] = defaultdict(list)
    for manifest in sorted(artifacts.glob("*/*/manifest.json")):
        found = json.loads(manifest.read_text())
        if found["step"] not in skip:
            steps[found["step"]].append(found["seconds"])
    return {step: {"count": len(s), "seconds": round(sum(s), 1)} for step, s in sorted(steps.items())}


def record(label: str, home: Path) -> dict[str, Any]:
    """One run's entry, from the demo's JSON, its DAG log and the artifacts it computed."""
    from tasks.core.version import code_commit
    from tasks.flow.orchestration import task_times

    demo = json.loads((home / "demo.json").read_text())
    dag_run, summary = demo["dag_run"], demo["summary"]
    variants = [row["name"] for row in summary["rows"] if row["passed"] is not None]
    tasks = []
    for task in task_times(Path(dag_run["log_path"])):
        variant = variants[task.map_index] if task.task == "run_variant" else None
        tasks.append({"task": task.label, "variant": variant, "seconds": task.seconds})
    timing = {m["name"]: m for m in (summary.get("timing") or {}).get("models", [])}
    rows = []
    for row in summary["rows"]:
        rows.append(
            {
                "name": row["name"],
                "accuracy": row["metrics"]["accuracy"],
                "drop_high_pts": row["drop"]["high"] if row["drop"] else None,
                "passed": row["passed"],
                "p50_ms": timing[row["name"]]["p50_ms"] if row["name"] in timing else None,
                "size_mb": round(row["metrics"]["size_bytes"] / 1e6, 2),
            }
        )
    return {
        "label": label,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_commit": summary.get("code_commit") or code_commit(),
        "recipe_digest": summary["recipe_digest"],
        "machine": f"{os.cpu_count()} cores, {cpu_model()}",
        "teacher_cached": demo["teacher_cached"],
        "dag_run_seconds": dag_run["seconds"],
        "candidate": next(
            (r["name"] for r in summary["rows"] if r.get("version") == summary["candidate"]), None
        ),
        "candidate_reason": summary.get("candidate_reason", ""),
        "tasks": tasks,
        "steps": step_times(home / "artifacts", skip=CACHED_STEPS),
        "variants": rows,
    }


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def group(task: dict[str, Any]) -> str:
    """The chart's segment a task belongs to."""
    if task["variant"]:
        return task["variant"]
    name = task["task"].split("[")[0]
    return {"build_engine": "engines", "plan_engines": "engines", "record_engines": "engines"}.get(
        name, "discover, prepare, publish"
    )


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(results["runs"].values())
    segments: list[str] = []
    for entry in runs:
        for task in entry["tasks"]:
            if group(task) not in segments:
                segments.append(group(task))
    colours = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(12, 1.8 + 0.9 * len(runs)))
    for y, entry in enumerate(runs):
        totals: dict[str, float] = defaultdict(float)
        for task in entry["tasks"]:
            totals[group(task)] += task["seconds"] / 60
        left = 0.0
        for index, segment in enumerate(segments):
            width = totals.get(segment, 0.0)
            ax.barh(y, width, left=left, color=colours(index % 20), label=segment if y == 0 else None)
            if width > 1.2:
                ax.text(left + width / 2, y, f"{width:.1f}", ha="center", va="center", fontsize=7)
            left += width
        ax.text(left + 0.2, y, f"{entry['dag_run_seconds'] / 60:.1f} min", va="center", fontsize=9)
    ax.set_yticks(range(len(runs)), [f"{e['label']}\n{e['code_commit'][:8]}" for e in runs])
    ax.axvline(10, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlabel(
        "minutes of the DAG run (segments: tasks, variants by name; a step variants share "
        "counts for the variant that ran it first)",
        fontsize=8,
    )
    ax.set_title("the demo's nightly DAG run, teacher cached", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(runs[0]["machine"] if runs else "", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--label", default="after", help="name this run is kept under (default after)")
    parser.add_argument(
        "--record", type=Path, metavar="HOME", help="record a finished demo run in HOME instead"
    )
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="recipe (default the demo's)")
    parser.add_argument(
        "--teacher-home",
        type=Path,
        default=REPO / ".slimline",
        help="home whose teacher and split are copied",
    )
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/slimline-nightly"), help="where homes are made"
    )
    parser.add_argument("--chart", action="store_true", help="only redraw the chart from the JSON")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "nightly.json"
    empty: dict[str, Any] = {"benchmark": "demo nightly DAG run", "runs": {}}
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else empty
    if not args.chart:
        home = args.record or run_demo(args.label, args.work, args.teacher_home, args.recipe)
        entry = record(args.label, home)
        results["runs"][args.label] = entry
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{args.label}: DAG run {entry['dag_run_seconds']:.0f} s; candidate {entry['candidate']}")
    chart(results, RESULTS / "nightly.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
