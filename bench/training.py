"""Training speed of the loop behind distillation and recovery (tasks.compress.training), per
precision and device: the demo's 3-layer student (layers 0, 2, 4 of a MiniLM-shaped BERT: hidden
384, 12 heads, FFN 1536, vocabulary 30522, 3 labels) trained on tweets with the demo's batch size
and losses (soft-target KL on cached logits, hard labels), and the teacher's forward pass that
makes those logits. The weights are random with a fixed seed (they do not change the work done);
the soft targets are random too (the loss's value does not change its cost); the texts and their
lengths are the demo's training split.

Each configuration trains `--examples` examples after `--warmup` steps and records examples per
second; the teacher logits pass records examples per second. Results are kept per machine in
bench/results/training.json (this machine's CPU here, the H100 through the device tool), with a
chart of all of them.

    python bench/training.py                                   # this machine: fp32 and bf16 on CPU
    python bench/training.py --texts train.jsonl --tokenizer DIR --examples 34929   # on the GPU machine
    python bench/training.py --chart
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from engines_gpu import MINILM_SHAPE  # noqa: E402  (the same MiniLM shape as the GPU benchmark)

RESULTS = REPO / "bench" / "results"
STUDENT_LAYERS = [0, 2, 4]
BATCH = 64  # the demo recipe's distillation batch
MAX_LENGTH = 64


def default_texts() -> Path:
    """The demo home's training split, if the demo has run here."""
    found = sorted((REPO / ".slimline" / "artifacts" / "dataset.split").glob("*/train.jsonl"))
    if not found:
        raise SystemExit("bench/training.py: no demo split here; pass --texts (a split's train.jsonl)")
    return found[-1]


def machine() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        return {"device": "cuda", "name": torch.cuda.get_device_name(0), "torch": torch.__version__}
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    from tasks.compress.training import native_bf16

    native = native_bf16()
    return {
        "device": "cpu",
        "name": f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "native_bf16": native,
        "torch": torch.__version__,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tasks.compress.training import (
        TrainItem,
        TrainSettings,
        autocast,
        compute_device,
        train_student,
    )
    from tasks.core.inference import length_batches, token_lengths
    from tasks.core.models import keep_layers

    lines = (args.texts or default_texts()).read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    tokenizer: Any = AutoTokenizer.from_pretrained(args.tokenizer, trust_remote_code=False)
    config: dict[str, Any] = {**MINILM_SHAPE, "num_labels": 3}
    device = compute_device()
    results: list[dict[str, Any]] = []
    texts = [r["text"] for r in rows]
    lengths = token_lengths(tokenizer, texts, MAX_LENGTH)
    for precision in args.precisions:
        torch.manual_seed(0)
        teacher = BertForSequenceClassification(BertConfig(**config)).eval().to(device)
        count = min(args.examples, len(texts))
        batches = length_batches(lengths[:count], BATCH)
        with torch.inference_mode(), autocast(precision, device):
            for index in batches[:2]:  # warm-up
                teacher(**tokenizer([texts[i] for i in index], padding=True, return_tensors="pt").to(device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            for index in batches:
                encoded = tokenizer([texts[i] for i in index], padding=True, return_tensors="pt").to(device)
                teacher(**encoded).logits.float().cpu()
            logits_seconds = time.perf_counter() - started

        student = teacher.cpu()
        keep_layers(student, STUDENT_LAYERS)
        items = [TrainItem(r["text"], int(r["label"]) if "label" in r else None) for r in rows]
        soft = np.random.default_rng(0).normal(size=(len(items), 3)).astype(np.float32)
        settings = TrainSettings(
            epochs=1,
            learning_rate=1e-4,
            batch_size=BATCH,
            temperature=2.0,
            kl_weight=1.0,
            hard_weight=0.5,
            precision=precision,
        )
        warm = args.warmup * BATCH
        train_student(
            student,
            None,
            items[:warm],
            settings,
            tokenizer=tokenizer,
            max_length=MAX_LENGTH,
            logits=soft[:warm],
            desc=f"warm-up {precision}",
        )
        log = train_student(
            student,
            None,
            items[warm : warm + count],
            settings,
            tokenizer=tokenizer,
            max_length=MAX_LENGTH,
            logits=soft[warm : warm + count],
            desc=f"train {precision}",
        )
        results.append(
            {
                "precision": precision,
                "device": log.device,
                "train_examples": log.examples,
                "train_seconds": log.seconds,
                "train_examples_per_s": round(log.examples / log.seconds, 1),
                "teacher_logits_examples": count,
                "teacher_logits_seconds": round(logits_seconds, 2),
                "teacher_logits_examples_per_s": round(count / logits_seconds, 1),
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "workload": f"3-layer student of a MiniLM-shaped BERT, batch {BATCH}, tweets truncated at "
        f"{MAX_LENGTH} tokens, length-grouped batches, KL + hard-label loss, fused AdamW",
        "runs": results,
    }


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names, train, logits = [], [], []
    for entry in results["machines"].values():
        for run in entry["runs"]:
            names.append(f"{entry['machine']['device']} {run['precision']}\n{entry['machine']['name'][:28]}")
            train.append(run["train_examples_per_s"])
            logits.append(run["teacher_logits_examples_per_s"])
    for ax, values, title in (
        (axes[0], train, "student training, examples/s"),
        (axes[1], logits, "teacher logits, examples/s"),
    ):
        bars = ax.barh(names, values, color="#2a7")
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=Path, help="a split's train.jsonl (default the demo home's)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder (default the MiniLM package's)")
    parser.add_argument("--examples", type=int, default=2048, help="examples trained and scored per run")
    parser.add_argument("--warmup", type=int, default=4, help="warm-up steps before timing")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--out", type=Path, default=RESULTS / "training.json", help="results JSON")
    parser.add_argument("--chart", action="store_true", help="only redraw the chart from the JSON")
    args = parser.parse_args()
    if args.tokenizer is None:
        from tasks.demo.teacher import base_encoder_dir

        args.tokenizer = base_encoder_dir()
    stored: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {"machines": {}}
    if not args.chart:
        entry = run(args)
        stored["machines"][entry["machine"]["device"]] = entry
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(stored, indent=2) + "\n")
    chart(stored, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
