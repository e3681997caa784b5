"""What the benchmarks run on the lent GPU machine share: the demo teacher, which travels there in
FP16 (the device's upload limit) and runs in FP32 as on the CPU, and their command line (`run` on
the GPU machine, `chart` here from the committed JSON)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.compress.technique import TechniqueContext
    from tasks.core.models import ModelRef
    from tasks.gate.gates import GateConfig
    from tasks.recipe import Recipe

RESULTS = Path(__file__).resolve().parent / "results"


def teacher_context(
    teacher_dir: Path, split_dir: Path, work: Path, labels: list[str], max_length: int
) -> TechniqueContext:
    """The techniques' context: the FP16 teacher saved again in FP32 under `work`, and the split."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from tasks.compress.technique import TechniqueContext
    from tasks.core.models import ModelRef

    fp32 = work / "teacher"
    network = AutoModelForSequenceClassification.from_pretrained(teacher_dir, torch_dtype=torch.float32)
    network.save_pretrained(fp32, safe_serialization=True)
    for tokenizer_file in teacher_dir.iterdir():
        if tokenizer_file.name.startswith(("tokenizer", "vocab", "special_tokens")):
            (fp32 / tokenizer_file.name).write_bytes(tokenizer_file.read_bytes())
    return TechniqueContext(
        split_dir=split_dir,
        split_key="bench",
        labels=labels,
        max_length=max_length,
        teacher=ModelRef(path=fp32, format="hf"),
        teacher_key="bench-teacher",
        artifacts_dir=work / "artifacts",
    )


class Judge:
    """Models judged as the gates judge them: predictions on the evaluation tweets (ONNX Runtime on
    the CPU for ONNX models), accuracy, agreement with the teacher and the paired bootstrap interval
    of the accuracy drop with the recipe's gate settings."""

    def __init__(self, context: TechniqueContext, split_dir: Path, gates: GateConfig) -> None:
        import numpy as np

        from tasks.intake.data import load_split

        self.context, self.gates = context, gates
        evaluation = load_split(split_dir, "eval")
        self.texts = [e.text for e in evaluation]
        self.labels = np.array([e.label for e in evaluation])
        self.teacher = self.predict(context.teacher)
        self.teacher_accuracy = float((self.teacher == self.labels).mean())

    def predict(self, model: ModelRef) -> Any:
        from tasks.core.inference import Encoder, batched_logits, load_predictor

        encoder = Encoder(model.path, self.context.max_length)
        return batched_logits(load_predictor(model), encoder, self.texts, 64).argmax(axis=1)

    def __call__(self, model: ModelRef) -> dict[str, Any]:
        from tasks.gate.gates import paired_bootstrap_drop

        predictions = self.predict(model)
        g = self.gates
        drop = paired_bootstrap_drop(
            self.labels, self.teacher, predictions, g.bootstrap_resamples, g.confidence, g.seed
        )
        return {
            "accuracy": float((predictions == self.labels).mean()),
            "agreement": float((predictions == self.teacher).mean()),
            "drop_pts": drop.model_dump(),
        }


def machine() -> dict[str, Any]:
    """The GPU and the library versions a GPU benchmark's results name."""
    import onnxruntime
    import torch

    return {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_cores": len(os.sched_getaffinity(0)),  # the CPUs the run was held to (taskset)
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def judged_context(args: argparse.Namespace, recipe: Recipe, work: Path) -> tuple[TechniqueContext, Judge]:
    """The techniques' context on the carried teacher and split (`run --teacher T --split S`), and the
    judge of the recipe's gates."""
    context = teacher_context(
        args.teacher, args.split, work, recipe.dataset.labels, recipe.dataset.max_length
    )
    return context, Judge(context, args.split, recipe.gates)


def main(
    description: str,
    name: str,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    table: Callable[[dict[str, Any]], str],
    chart: Callable[[dict[str, Any], Path], None],
    *,
    data_required: bool,
) -> int:
    """`run --out DIR [--teacher T --split S]` writes DIR/NAME.json; `chart` redraws
    bench/results/NAME.png from bench/results/NAME.json. Both print the table."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help=f"measure on this machine's GPU and write DIR/{name}.json")
    run_parser.add_argument("--out", type=Path, required=True, help="folder for the JSON")
    run_parser.add_argument(
        "--teacher",
        type=Path,
        required=data_required,
        help="the demo teacher's folder (FP16 safetensors and tokenizer)",
    )
    run_parser.add_argument(
        "--split", type=Path, required=data_required, help="the demo split's folder (train.jsonl, eval.jsonl)"
    )
    sub.add_parser("chart", help=f"table and chart again from bench/results/{name}.json")
    args = parser.parse_args()
    if args.command == "run":
        results = run(args)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    else:
        results = json.loads((RESULTS / f"{name}.json").read_text())
        chart(results, RESULTS / f"{name}.png")
    print(table(results))
    return 0
