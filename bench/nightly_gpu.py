"""The nightly recipe's variant steps on a GPU worker: what `SLIMLINE_VARIANT_POOL` with a GPU buys the
night. Every variant of recipes/minilm-sentiment.yaml runs its steps as a variant task runs them
(`apply_steps`, cached: the student the distilled variants share is trained once, the teacher's
logits are computed once per shard), on this machine's GPU (training and the teacher's logits on
CUDA; the recipe's `precision: auto` is fp32 there). Each variant is then judged as the gates judge
it: ONNX Runtime on the CPU, the evaluation tweets, the recipe's drop interval. Each step's time
sits beside the same step's time in the CPU nights recorded in bench/results/nightly.json.

Only the variant steps run here: the device machine has no Airflow, MLflow or podman, so the DAG's
other tasks (prepare, evaluation, side-by-side timing, publish, engines) keep their CPU times from
nightly.json.

    taskset -c 0,1 python bench/nightly_gpu.py run --out DIR --teacher T --split S   # GPU machine
                          # (2 cores, as a worker pod asks for them: export and quantization run there)
    python bench/nightly_gpu.py chart                                 # table and chart from the JSON
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from device_bench import RESULTS, judged_context, machine, main  # noqa: E402
from nightly import step_times  # noqa: E402

RECIPE = REPO / "recipes" / "minilm-sentiment.yaml"
LOGITS = "teacher.logits"  # the teacher's logit shards, computed inside the training steps
CPU_NIGHTS = ("after", "after-amd")  # the CPU nights of nightly.json this run is set beside


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tasks.compress.chain import apply_steps
    from tasks.core.models import model_size_bytes
    from tasks.recipe import load_recipe

    recipe = load_recipe(RECIPE)
    results: dict[str, Any] = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "recipe": RECIPE.name,
        "recipe_digest": recipe.digest,
        "machine": machine(),
        "evaluation": "ONNX Runtime on the CPU, the evaluation tweets, batches of 64",
        "gate_upper_pts": recipe.gates.max_accuracy_drop,
        "variants": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        context, judge = judged_context(args, recipe, work)
        results["teacher_accuracy"] = judge.teacher_accuracy
        for variant in recipe.variants:
            started = time.perf_counter()
            model, _ = apply_steps([(s.technique, s.config) for s in variant.steps], context)
            seconds = time.perf_counter() - started
            judged = judge(model)
            results["variants"].append(
                {
                    "name": variant.name,
                    "steps_wall_seconds": round(seconds, 1),
                    **judged,
                    "size_mb": round(model_size_bytes(model.path) / 1e6, 2),
                }
            )
            drop = judged["drop_pts"]
            print(
                f"{variant.name}: {seconds:.1f} s of steps, {judged['accuracy']:.4f}, "
                f"drop {drop['point']:+.2f} [{drop['low']:+.2f}, {drop['high']:+.2f}]",
                flush=True,
            )
        # Every artifact under `work` was computed here: the techniques' and the teacher's logits.
        results["steps"] = step_times(work / "artifacts")
    results["steps_wall_seconds"] = round(sum(v["steps_wall_seconds"] for v in results["variants"]), 1)
    return results


def cpu_nights() -> dict[str, dict[str, Any]]:
    """The recorded CPU nights this run is compared with, by label (those present)."""
    nightly = json.loads((RESULTS / "nightly.json").read_text())["runs"]
    return {label: nightly[label] for label in CPU_NIGHTS if label in nightly}


def night_label(night: dict[str, Any]) -> str:
    return f"{night['label']}: {night['machine']}"


def gpu_label(results: dict[str, Any]) -> str:
    machine = results["machine"]
    return f"GPU worker: {machine['gpu']} and {machine['cpu_cores']} CPU cores"


def step_rows(
    results: dict[str, Any], nights: dict[str, dict[str, Any]]
) -> list[tuple[str, list[float | None]]]:
    """Each technique step (and the teacher's logits within them): seconds in each CPU night, then here."""
    names = sorted(results["steps"], key=lambda n: (n == LOGITS, n))
    return [
        (
            name,
            [
                *(n["steps"].get(name, {}).get("seconds") for n in nights.values()),
                results["steps"][name]["seconds"],
            ],
        )
        for name in names
    ]


def table(results: dict[str, Any]) -> str:
    nights = cpu_nights()
    heads = [*(night_label(n) for n in nights.values()), gpu_label(results)]
    lines = [
        "| step | " + " | ".join(heads) + " |",
        "| --- |" + " ---: |" * len(heads),
    ]
    for name, seconds in step_rows(results, nights):
        cells = ["—" if s is None else f"{s:.1f} s" for s in seconds]
        shown = f"{name} (inside the training steps)" if name == LOGITS else name
        lines.append(f"| {shown} | " + " | ".join(cells) + " |")
    totals = [
        sum(v["seconds"] for k, v in n["steps"].items() if k.startswith("technique/"))
        for n in nights.values()
    ]
    here = sum(v["seconds"] for k, v in results["steps"].items() if k.startswith("technique/"))
    lines.append(
        "| **all technique steps** | " + " | ".join(f"**{t:.1f} s**" for t in [*totals, here]) + " |"
    )
    lines += [
        "",
        f"teacher accuracy {results['teacher_accuracy']:.4f}; "
        f"gate: drop upper ≤ {results['gate_upper_pts']} pts",
        "",
        "| variant | accuracy (GPU-trained) | drop [95%] | size MB | "
        + " | ".join(f"accuracy, drop upper ({n['label']})" for n in nights.values())
        + " |",
        "| --- | ---: | --- | ---: |" + " ---: |" * len(nights),
    ]
    for v in results["variants"]:
        d = v["drop_pts"]
        cpu = []
        for night in nights.values():
            match = next((r for r in night["variants"] if r["name"] == v["name"]), None)
            cpu.append(
                "—"
                if match is None or match["drop_high_pts"] is None
                else f"{match['accuracy']:.4f}, {match['drop_high_pts']:+.2f}"
            )
        lines.append(
            f"| {v['name']} | {v['accuracy']:.4f} | {d['point']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] | "
            f"{v['size_mb']:.1f} | " + " | ".join(cpu) + " |"
        )
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    nights = cpu_nights()
    rows = step_rows(results, nights)
    labels = [*(night_label(n) for n in nights.values()), gpu_label(results)]
    fig = Figure(figsize=(9, 0.5 * len(rows) + 1.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots()
    height = 0.8 / len(labels)
    for j, label in enumerate(labels):
        values = [seconds[j] or 0.0 for _, seconds in rows]
        axes.barh([i + j * height for i in range(len(rows))], values, height=height, label=label)
    axes.set_yticks(
        [i + height * (len(labels) - 1) / 2 for i in range(len(rows))], [n for n, _ in rows], fontsize=8
    )
    axes.invert_yaxis()
    axes.set_xlabel("seconds computed in the night (a step several variants share counts once)")
    axes.set_title("The nightly recipe's technique steps: 2 CPU cores against a GPU worker", fontsize=9)
    axes.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)


if __name__ == "__main__":
    raise SystemExit(main(__doc__, "nightly-gpu", run, table, chart, data_required=True))
