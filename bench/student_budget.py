"""What the training budget buys the 3-layer student: the demo search's shapes, trained with more or
fewer tweets and epochs, judged by the gates' own interval against the demo teacher.

Every row runs the pipeline's techniques in order (`distill.student` from teacher layers 0, 2 and 4,
`prune.heads`, `prune.ffn`, `finetune.recover`, `trim.vocabulary`, `export.onnx`,
`optimize.ort_fusions`, `quantize.onnx_dynamic_int8`), training on the GPU, and evaluates the INT8
model with ONNX Runtime on the 2,000 evaluation tweets: accuracy, agreement with the teacher and the
paired-bootstrap drop interval (`paired_bootstrap_drop`, 2,000 resamples, 95%). Steps shared by
several rows (a student, a pruned student) are trained once. Several rows repeat with seed 1, to
show how much of a difference is the seed's.

It exists to choose the search recipe's training budget (recipes/minilm-sentiment-search.yaml):
on 2 CPU cores each row costs 5 to 15 minutes, on a GPU seconds. Latency is not measured here
(`make bench-search` times the search's points against the reference on the CPU).

    python bench/student_budget.py run --out DIR --teacher T --split S   # on the GPU machine
    python bench/student_budget.py chart                                 # table and chart from the JSON
"""

from __future__ import annotations

import argparse
import hashlib
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
from sparsity_gpu import teacher_context  # noqa: E402  (the FP16-carried teacher, in FP32)

RESULTS = REPO / "bench" / "results"
GATE_UPPER = 0.5  # points: the search recipe's max_accuracy_drop
# The nightly recipe's training (recipes/minilm-sentiment.yaml), which the rows change one at a time.
STUDENT = {
    "layers": [0, 2, 4],
    "epochs": 1,
    "learning_rate": 2e-4,
    "batch_size": 64,
    "temperature": 2.0,
    "kl_weight": 1.0,
    "hard_weight": 0.5,
    "train_examples": 6000,
    "transfer_examples": 8000,
    "precision": "fp32",
}
RECOVER = {
    "epochs": 1,
    "max_examples": 8000,
    "alpha": 0.5,
    "learning_rate": 2e-4,
    "batch_size": 64,
    "precision": "fp32",
}


def row(
    name: str,
    *,
    student: dict[str, Any] | None = None,
    recover: dict[str, Any] | None = None,
    heads: int = 0,
    ffn: float = 0.5,
    vocab: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """One row: the techniques and configs of a 3-layer student, as a recipe writes its steps."""
    seeded = {"seed": seed} if seed else {}
    steps: list[tuple[str, dict[str, Any]]] = [("distill.student", STUDENT | (student or {}) | seeded)]
    if heads:
        steps.append(("prune.heads", {"heads_to_prune": heads, "importance_batches": 32}))
    if ffn < 1:
        steps.append(("prune.ffn", {"keep_fraction": ffn, "importance_batches": 32}))
    if heads or ffn < 1:
        steps.append(("finetune.recover", RECOVER | (recover or {}) | seeded))
    steps += [
        ("trim.vocabulary", {"min_count": vocab}),
        ("export.onnx", {"opset": 17}),
        ("optimize.ort_fusions", {}),
        ("quantize.onnx_dynamic_int8", {"per_channel": True}),
    ]
    shape = f"{'h4 ' if heads else ''}ffn{round(ffn * 100)} v{vocab}"
    return {"name": name, "shape": shape, "seed": seed, "steps": steps}


def weekly(**shape: Any) -> dict[str, Any]:
    """The search recipe's budget: the student on 20,000 transfer tweets, recovery on 16,000."""
    return row(
        "weekly: 20k transfer, recover on 16k",
        student={"transfer_examples": 20000},
        recover={"max_examples": 16000},
        **shape,
    )


ROWS = [
    row("nightly budget"),
    row("nightly budget", seed=1),
    row("recover 2 epochs", recover={"epochs": 2}),
    row("recover on 16k", recover={"max_examples": 16000}),
    row("student 2 epochs", student={"epochs": 2}),
    row("student on 20k transfer", student={"transfer_examples": 20000}),
    row("student hidden-state loss", student={"hidden_weight": 1.0}),
    row("student 12k labelled", student={"train_examples": 12000}),
    weekly(),
    weekly(seed=1),
    weekly(heads=4),
    weekly(heads=4, seed=1),
    weekly(ffn=0.4),
    weekly(heads=4, ffn=0.4),
    weekly(heads=4, ffn=0.4, seed=1),
    row("weekly: 20k transfer", student={"transfer_examples": 20000}, ffn=1.0),
]


def _produce(steps: list[tuple[str, dict[str, Any]]], context: Any, work: Path) -> tuple[Any, float]:
    """The chain's final model and the seconds its new steps took; a step already produced by an
    earlier row with the same chain before it is reused."""
    from tasks.compress.techniques import TECHNIQUES
    from tasks.core.models import ModelRef

    model, chain, seconds = context.teacher, "", 0.0
    for name, config in steps:
        chain = hashlib.sha256(f"{chain}{name}{json.dumps(config, sort_keys=True)}".encode()).hexdigest()
        folder, done = work / chain[:16], work / f"{chain[:16]}.json"
        if done.exists():
            model = ModelRef.model_validate_json(done.read_text())
            continue
        folder.mkdir(parents=True)
        technique = TECHNIQUES[name]
        started = time.perf_counter()
        model = technique.run(model, technique.config.model_validate(config), folder, context)
        seconds += time.perf_counter() - started
        done.write_text(model.model_dump_json())
    return model, seconds


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import onnxruntime
    import torch

    from tasks.core.inference import Encoder, batched_logits, load_predictor
    from tasks.gate.gates import paired_bootstrap_drop
    from tasks.intake.data import load_split

    results: dict[str, Any] = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "evaluation": "ONNX Runtime INT8 on the CPU, 2,000 evaluation tweets, batches of 64",
        "gate_upper_pts": GATE_UPPER,
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        context = teacher_context(args.teacher, args.split, work)
        evaluation = load_split(args.split, "eval")
        texts, labels = [e.text for e in evaluation], np.array([e.label for e in evaluation])

        def predict(model: Any) -> Any:
            encoder = Encoder(model.path, context.max_length)
            return batched_logits(load_predictor(model), encoder, texts, 64).argmax(axis=1)

        teacher = predict(context.teacher)
        results["teacher_accuracy"] = float((teacher == labels).mean())
        for spec in ROWS:
            model, seconds = _produce(spec["steps"], context, work / "steps")
            predictions = predict(model)
            drop = paired_bootstrap_drop(labels, teacher, predictions, 2000, 0.95, 0)
            size = sum(f.stat().st_size for f in model.path.glob("*.onnx*"))
            measured = {
                "name": spec["name"],
                "shape": spec["shape"],
                "seed": spec["seed"],
                "steps": [{"technique": n, "config": c} for n, c in spec["steps"]],
                "accuracy": float((predictions == labels).mean()),
                "agreement": float((predictions == teacher).mean()),
                "drop_pts": drop.model_dump(),
                "size_mb": round(size / 1e6, 2),
                "new_step_seconds": round(seconds, 1),
            }
            results["rows"].append(measured)
            print(
                f"{spec['name']} [{spec['shape']}, seed {spec['seed']}]: {measured['accuracy']:.4f}, "
                f"drop {drop.point:+.2f} [{drop.low:+.2f}, {drop.high:+.2f}]",
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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="train and evaluate every row; write DIR/student-budget.json")
    run_parser.add_argument("--out", type=Path, required=True, help="folder for the JSON")
    run_parser.add_argument(
        "--teacher", type=Path, required=True, help="the demo teacher's folder (FP16 safetensors, tokenizer)"
    )
    run_parser.add_argument(
        "--split", type=Path, required=True, help="the demo split's folder (train.jsonl, eval.jsonl)"
    )
    sub.add_parser("chart", help="table and chart again from bench/results/student-budget.json")
    args = parser.parse_args()
    if args.command == "run":
        results = run(args)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "student-budget.json").write_text(json.dumps(results, indent=2) + "\n")
    else:
        results = json.loads((RESULTS / "student-budget.json").read_text())
        chart(results, RESULTS / "student-budget.png")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
