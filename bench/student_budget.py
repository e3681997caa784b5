"""What the training budget buys the 3-layer student: the demo search's shapes, trained with more or
fewer tweets and epochs, judged by the gates' own interval against the demo teacher.

Every row is a point of the demo search (recipes/minilm-sentiment-search.yaml) made into its steps
by the search's own `point_steps` (`distill.student` from teacher layers 0, 2 and 4, `prune.heads`,
`prune.ffn`, `finetune.recover`, `trim.vocabulary`, `export.onnx`, `optimize.ort_fusions`,
`quantize.onnx_dynamic_int8`), with the student's and the recovery's configs taken from the
nightly recipe's `distilled-3L-ffn-vocab-int8` and changed one part at a time. The steps run as the
pipeline runs them (`apply_steps`, cached: a student or a pruned student several rows share is
trained once), training on the GPU; the INT8 model is evaluated with ONNX Runtime on the 2,000
evaluation tweets: accuracy, agreement with the teacher and the drop interval of the search
recipe's gates (`paired_bootstrap_drop`). Several rows repeat with seed 1, to show how much of a
difference is the seed's.

It exists to choose the search recipe's training budget: on 2 CPU cores each row costs 5 to 15
minutes, on a GPU seconds. Latency is not measured here (`make bench-search` times the search's
points against the reference on the CPU).

    python bench/student_budget.py run --out DIR --teacher T --split S   # on the GPU machine
    python bench/student_budget.py chart                                 # table and chart from the JSON
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from device_bench import judged_context, machine, main  # noqa: E402

RECIPES = REPO / "recipes"
NIGHTLY_VARIANT = "distilled-3L-ffn-vocab-int8"
WEEKLY = "weekly: 20k transfer, recover on 16k"
TEACHER_LAYERS = 6
# (training, changes to the nightly student, changes to the nightly recovery, shape, seed). The
# weekly rows take the search recipe's own student and recovery instead of the nightly ones.
ROWS: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], int]] = [
    ("nightly budget", {}, {}, {}, 0),
    ("nightly budget", {}, {}, {}, 1),
    ("recover 2 epochs", {}, {"epochs": 2}, {}, 0),
    ("recover on 16k", {}, {"max_examples": 16000}, {}, 0),
    ("student 2 epochs", {"epochs": 2}, {}, {}, 0),
    ("student on 20k transfer", {"transfer_examples": 20000}, {}, {}, 0),
    ("student hidden-state loss", {"hidden_weight": 1.0}, {}, {}, 0),
    ("student 12k labelled", {"train_examples": 12000}, {}, {}, 0),
    (WEEKLY, {}, {}, {}, 0),
    (WEEKLY, {}, {}, {}, 1),
    (WEEKLY, {}, {}, {"heads_to_prune": 4}, 0),
    (WEEKLY, {}, {}, {"heads_to_prune": 4}, 1),
    (WEEKLY, {}, {}, {"ffn_keep": 0.4}, 0),
    (WEEKLY, {}, {}, {"heads_to_prune": 4, "ffn_keep": 0.4}, 0),
    (WEEKLY, {}, {}, {"heads_to_prune": 4, "ffn_keep": 0.4}, 1),
    ("weekly: 20k transfer", {}, {}, {"ffn_keep": 1.0}, 0),
]
# The nightly best's shape with the search's smaller vocabulary; rows change it as they say.
SHAPE = {
    "depth": 3,
    "ffn_keep": 0.5,
    "heads_to_prune": 0,
    "vocab_min_count": 3,
    "lowrank_energy": None,
    "quantization": "int8",
}


def row_steps(
    training: str, student: dict[str, Any], recover: dict[str, Any], shape: dict[str, Any], seed: int
) -> list[dict[str, Any]]:
    """The row's point of the search, as `point_steps` makes it, trained as the row says."""
    from tasks.compress.techniques.distill import DistillConfig
    from tasks.compress.techniques.prune import RecoveryConfig
    from tasks.recipe import load_recipe
    from tasks.search.space import Point, point_steps

    search = load_recipe(RECIPES / "minilm-sentiment-search.yaml").search
    assert search is not None
    if not training.startswith("weekly"):
        nightly = load_recipe(RECIPES / "minilm-sentiment.yaml").variant(NIGHTLY_VARIANT).steps
        configs = {s.technique: s.config for s in nightly}
        search = search.model_copy(
            update={
                "student": DistillConfig.model_validate(configs["distill.student"]),
                "recover": RecoveryConfig.model_validate(configs["finetune.recover"]),
            }
        )
    search = search.model_copy(
        update={
            "student": search.student.model_copy(update=student | {"seed": seed}),
            "recover": search.recover.model_copy(update=recover | {"seed": seed}),
        }
    )
    return point_steps(Point(**(SHAPE | shape)), search, TEACHER_LAYERS)


def shape_label(shape: dict[str, Any]) -> str:
    point = SHAPE | shape
    heads = f"h{point['heads_to_prune']} " if point["heads_to_prune"] else ""
    return f"{heads}ffn{round(point['ffn_keep'] * 100)} v{point['vocab_min_count']}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tasks.compress.chain import apply_steps
    from tasks.core.models import model_size_bytes
    from tasks.recipe import load_recipe

    recipe = load_recipe(RECIPES / "minilm-sentiment-search.yaml")
    results: dict[str, Any] = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "evaluation": "ONNX Runtime INT8 on the CPU, the evaluation tweets, batches of 64",
        "gate_upper_pts": recipe.gates.max_accuracy_drop,
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        context, judge = judged_context(args, recipe, Path(tmp))
        results["teacher_accuracy"] = judge.teacher_accuracy
        for training, student, recover, shape, seed in ROWS:
            steps = row_steps(training, student, recover, shape, seed)
            model, produced = apply_steps([(s["technique"], s["config"]) for s in steps], context)
            judged = judge(model)
            measured = {
                "name": training,
                "shape": shape_label(shape),
                "seed": seed,
                "steps": steps,
                **judged,
                "size_mb": round(model_size_bytes(model.path) / 1e6, 2),
                "new_step_seconds": round(sum(r.manifest.seconds for r in produced if not r.reused), 1),
            }
            results["rows"].append(measured)
            drop = judged["drop_pts"]
            print(
                f"{training} [{measured['shape']}, seed {seed}]: {judged['accuracy']:.4f}, "
                f"drop {drop['point']:+.2f} [{drop['low']:+.2f}, {drop['high']:+.2f}]",
                flush=True,
            )
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        f"teacher accuracy {results['teacher_accuracy']:.4f}; "
        f"gate: drop upper ≤ {results['gate_upper_pts']} pts",
        "",
        "| training | shape | seed | accuracy | agreement | drop, pts [95%] | size MB | drop gate |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for r in results["rows"]:
        d = r["drop_pts"]
        lines.append(
            f"| {r['name']} | {r['shape']} | {r['seed']} | {r['accuracy']:.4f} | {r['agreement']:.4f} | "
            f"{d['point']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] | {r['size_mb']:.1f} | "
            f"{'yes' if d['high'] <= results['gate_upper_pts'] else 'no'} |"
        )
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = results["rows"]
    fig = Figure(figsize=(9, 0.38 * len(rows) + 1.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots()
    for i, r in enumerate(rows):
        d = r["drop_pts"]
        passed = d["high"] <= results["gate_upper_pts"]
        axes.errorbar(
            d["point"],
            i,
            xerr=[[d["point"] - d["low"]], [d["high"] - d["point"]]],
            fmt="o",
            color="tab:green" if passed else "tab:red",
            capsize=3,
        )
    axes.axvline(results["gate_upper_pts"], color="grey", linestyle="--", linewidth=1)
    axes.axvline(0, color="lightgrey", linewidth=1)
    axes.set_yticks(
        range(len(rows)), [f"{r['name']} · {r['shape']} · seed {r['seed']}" for r in rows], fontsize=7
    )
    axes.invert_yaxis()
    axes.set_xlabel("accuracy drop against the teacher, points (95% interval); gate at the dashed line")
    axes.set_title(f"3-layer INT8 students by training budget ({results['machine']['gpu']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)


if __name__ == "__main__":
    raise SystemExit(main(__doc__, "student-budget", run, table, chart, data_required=True))
