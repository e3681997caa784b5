"""2:4 sparsity on a GPU: PyTorch's semi-structured sparse kernels against dense FP16, and what the
2:4 pattern costs the demo teacher in accuracy before and after recovery.

Speed (`speed`): a MiniLM-L6-shaped BERT (the GPU engine benchmark's shape, random weights, 64-token
inputs) pruned to 2:4 by `prune.semi_structured`'s own function, in FP16 on the GPU. Dense runs the
pruned weights as ordinary tensors; sparse replaces every encoder projection's weight by
torch.sparse.to_sparse_semi_structured (cuSPARSELt or CUTLASS). Both eager and torch.compile'd
(default options; the torch-cuda engine exports first and compiles with its own settings), at
batch 1 (latency) and 64 and 256
(throughput), in two interleaved rounds; energy from NVML where the counter exists. Then the single
projections alone, dense against sparse, at the demo's and at larger shapes.

Accuracy (`accuracy`, with --teacher and --split): the demo teacher (carried in FP16, run in FP32)
on the evaluation tweets; pruned to 2:4 (`prune.semi_structured`); recovered with
`finetune.recover` (keep_zeros) on the GPU; each with its paired-bootstrap drop interval against
the teacher (the gates' own function). The recovered model is then run with the sparse kernels and
compared with its dense run.

    python bench/sparsity_gpu.py run --out DIR [--teacher T --split S]   # on the GPU machine
    python bench/sparsity_gpu.py chart                                   # table and chart from the JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from device_bench import main, teacher_context  # noqa: E402
from engines_gpu import (  # noqa: E402  (the GPU engine benchmark's shape, inputs and timing)
    LABELS,
    MINILM_SHAPE,
    SEQUENCE,
    Energy,
    _random_inputs,
    _summarise_latency,
    _summarise_throughput,
    _timed_loop,
    make_model,
)

BATCHES = (64, 256)
ROUNDS = 2
LOOP_SECONDS = 2.0
# (inputs, outputs) of single projections: the demo's FFN pair, then BERT-base's and a large one.
LINEARS = ((384, 1536), (1536, 384), (768, 3072), (3072, 768), (4096, 4096), (8192, 8192))
LINEAR_ROWS = (64, 16_384, 65_536)  # batch x tokens: one 64-token request, batch 256, batch 1024


def _sparse_projections(network: Any) -> int:
    """Every encoder projection's weight as a semi-structured sparse tensor; returns how many."""
    import torch
    from torch.sparse import to_sparse_semi_structured

    from tasks.core.models import PROJECTIONS, encoder_layers, get_submodule

    count = 0
    for layer in encoder_layers(network):
        for name in PROJECTIONS:
            linear = get_submodule(layer, name)
            linear.weight = torch.nn.Parameter(
                to_sparse_semi_structured(linear.weight.detach()), requires_grad=False
            )
            count += 1
    return count


def _variants(model_dir: Path) -> dict[str, Any]:
    """dense and sparse FP16, eager and compiled, all from the same 2:4-pruned weights."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from tasks.compress.techniques.prune import two_of_four

    def load() -> Any:
        network = AutoModelForSequenceClassification.from_pretrained(model_dir, torch_dtype=torch.float16)
        network = network.to("cuda").eval()
        two_of_four(network, "both")
        return network

    dense, sparse = load(), load()
    _sparse_projections(sparse)
    made: dict[str, Any] = {"dense eager": dense, "sparse eager": sparse}
    for name, network in (("dense compiled", dense), ("sparse compiled", sparse)):
        made[name] = torch.compile(network)
    return made


def step_speed(model_dir: Path, energy: Energy) -> dict[str, Any]:
    import torch

    models = _variants(model_dir)
    vocab = MINILM_SHAPE["vocab_size"]
    inputs = {
        batch: [(torch.from_numpy(i).cuda(), torch.from_numpy(m).cuda()) for i, m in sets]
        for batch in (1, *BATCHES)
        for sets in [_random_inputs(batch, SEQUENCE, vocab, 8, seed=batch)]
    }
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    outputs: dict[str, Any] = {}

    def caller(network: Any, batch: int) -> Callable[[int], None]:
        def call(index: int) -> None:
            ids, mask = inputs[batch][index % len(inputs[batch])]
            with torch.inference_mode():
                network(input_ids=ids, attention_mask=mask)

        return call

    for name, network in list(models.items()):  # warm-up, compilation, and the first outputs
        try:
            for batch in (1, *BATCHES):
                caller(network, batch)(0)
            ids, mask = inputs[1][0]
            with torch.inference_mode():
                outputs[name] = network(input_ids=ids, attention_mask=mask).logits.float()
        except Exception as exc:  # a variant this torch cannot run is recorded, not fatal
            failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            del models[name]
    loops: dict[str, dict[int, list[dict[str, Any]]]] = {n: {b: [] for b in (1, *BATCHES)} for n in models}
    for _ in range(ROUNDS):
        for name, network in models.items():
            for batch in (1, *BATCHES):
                loop = _timed_loop(caller(network, batch), torch.cuda.synchronize, LOOP_SECONDS, 20, energy)
                loops[name][batch].append(loop)
    for name in models:
        results[name] = {
            "batch_1": _summarise_latency(loops[name][1], energy),
            **{f"batch_{b}": _summarise_throughput(loops[name][b], b, energy) for b in BATCHES},
            "max_logit_diff_vs_dense_eager": float((outputs[name] - outputs["dense eager"]).abs().max()),
        }
        for figure in results[name].values():
            if isinstance(figure, dict):
                figure.pop("times", None)
    return {"models": results, "failed": failed}


def backends() -> dict[str, Any]:
    """Which semi-structured backend this torch uses here, and whether the other one runs."""
    import torch
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    weight = torch.zeros(64, 64, dtype=torch.float16, device="cuda")
    weight[:, ::2] = 1.0
    found: dict[str, Any] = {
        "default": type(to_sparse_semi_structured(weight)).__name__,
        "cusparselt_version": torch.backends.cusparselt.version(),
    }
    SparseSemiStructuredTensor._FORCE_CUTLASS = True
    try:
        torch.mm(to_sparse_semi_structured(weight), torch.ones(64, 64, dtype=torch.float16, device="cuda"))
        found["cutlass"] = "runs"
    except RuntimeError as exc:
        found["cutlass"] = str(exc).splitlines()[0][:300]
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = False
    return found


def step_linears(energy: Energy) -> list[dict[str, Any]]:
    """Single projections, dense FP16 against 2:4 sparse, median of timed loops."""
    import torch
    from torch.sparse import to_sparse_semi_structured

    rows = []
    for inputs, outputs in LINEARS:
        weight = torch.randn(outputs, inputs, dtype=torch.float16, device="cuda")
        groups = weight.view(outputs, inputs // 4, 4)
        groups.scatter_(-1, groups.abs().argsort(dim=-1)[..., :2], 0.0)
        sparse = to_sparse_semi_structured(weight)
        for tokens in LINEAR_ROWS:
            x = torch.randn(tokens, inputs, dtype=torch.float16, device="cuda")
            timing = {}
            for name, w in (("dense", weight), ("sparse", sparse)):

                def call(_index: int, x: Any = x, w: Any = w) -> None:
                    torch.nn.functional.linear(x, w)

                call(0)
                loop = _timed_loop(call, torch.cuda.synchronize, 1.0, 50, energy)
                timing[name] = statistics.median(loop["times"]) * 1000
            rows.append(
                {
                    "inputs": inputs,
                    "outputs": outputs,
                    "tokens": tokens,
                    "dense_ms": timing["dense"],
                    "sparse_ms": timing["sparse"],
                    "speedup": timing["dense"] / timing["sparse"],
                }
            )
    return rows


def _accuracy(model_dir: Path, texts: list[str], labels: list[int]) -> tuple[Any, Any]:
    """(predictions, logits) of a folder's model on `texts`, FP32 on the GPU, batches of 256."""
    import numpy as np
    import torch

    from tasks.core.models import load_classifier, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    network = load_classifier(model_dir).to("cuda").eval()
    logits = []
    with torch.inference_mode():
        for start in range(0, len(texts), 256):
            encoded = tokenizer(
                texts[start : start + 256],
                padding=True,
                truncation=True,
                max_length=SEQUENCE,
                return_tensors="pt",
            ).to("cuda")
            logits.append(network(**encoded).logits.float().cpu().numpy())
    values = np.concatenate(logits)
    return values.argmax(axis=1), values


def step_accuracy(teacher_dir: Path, split_dir: Path, work: Path, energy: Energy) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification

    from tasks.compress.techniques.prune import (
        RecoveryConfig,
        SemiStructuredConfig,
        finetune_recover,
        prune_semi_structured,
    )
    from tasks.core.models import load_tokenizer
    from tasks.gate.gates import paired_bootstrap_drop
    from tasks.intake.data import load_split
    from tasks.recipe import load_recipe

    gates = load_recipe(REPO / "recipes" / "minilm-sentiment.yaml").gates  # the demo recipe's interval
    context = teacher_context(teacher_dir, split_dir, work, LABELS, SEQUENCE)
    fp32 = context.teacher.path
    evaluation = load_split(split_dir, "eval")
    texts, labels = [e.text for e in evaluation], np.array([e.label for e in evaluation])
    teacher_predictions, _ = _accuracy(fp32, texts, list(labels))
    (work / "pruned").mkdir()
    pruned = prune_semi_structured(context.teacher, SemiStructuredConfig(), work / "pruned", context)
    (work / "recovered").mkdir()
    config = RecoveryConfig(
        epochs=1, max_examples=8000, batch_size=64, learning_rate=2e-4, alpha=0.5, keep_zeros=True
    )
    started = time.perf_counter()
    recovered = finetune_recover(pruned, config, work / "recovered", context)
    recover_seconds = time.perf_counter() - started
    rows: dict[str, Any] = {"teacher": {"accuracy": float((teacher_predictions == labels).mean())}}
    for name, folder in (("2:4 pruned", pruned.path), ("2:4 pruned, recovered", recovered.path)):
        predictions, _ = _accuracy(folder, texts, list(labels))
        drop = paired_bootstrap_drop(
            labels, teacher_predictions, predictions, gates.bootstrap_resamples, gates.confidence, gates.seed
        )
        rows[name] = {
            "accuracy": float((predictions == labels).mean()),
            "drop_pts": drop.model_dump(),
            "agreement": float((predictions == teacher_predictions).mean()),
        }
    rows["2:4 pruned, recovered"]["recover_seconds"] = round(recover_seconds, 1)
    # The recovered weights through the sparse kernels: the same predictions as dense FP16?
    dense = AutoModelForSequenceClassification.from_pretrained(recovered.path, torch_dtype=torch.float16)
    dense = dense.to("cuda").eval()
    sparse = AutoModelForSequenceClassification.from_pretrained(recovered.path, torch_dtype=torch.float16)
    sparse = sparse.to("cuda").eval()
    _sparse_projections(sparse)
    tokenizer = load_tokenizer(recovered.path)
    encoded = tokenizer(
        texts[:512], padding=True, truncation=True, max_length=SEQUENCE, return_tensors="pt"
    ).to("cuda")
    with torch.inference_mode():
        a, b = dense(**encoded).logits.float(), sparse(**encoded).logits.float()
    rows["sparse kernels vs dense FP16, recovered"] = {
        "max_logit_diff": float((a - b).abs().max()),
        "agreement": float((a.argmax(1) == b.argmax(1)).float().mean()),
        "examples": 512,
    }
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    energy = Energy()
    results: dict[str, Any] = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "gpu": torch.cuda.get_device_name(0),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
        },
        "shape": MINILM_SHAPE,
        "sequence": SEQUENCE,
        "energy": energy.reason or "NVML",
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = make_model(work / "minilm", MINILM_SHAPE)
        results["speed"] = step_speed(model, energy)
        print(json.dumps(results["speed"], indent=1), flush=True)
        results["linears"] = step_linears(energy)
        results["backends"] = backends()
        if args.teacher and args.split:
            (work / "acc").mkdir()
            results["accuracy"] = step_accuracy(args.teacher, args.split, work / "acc", energy)
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        "| model (FP16) | batch-1 p50 ms | seq/s at 64 | seq/s at 256 | J/1k at 256 | max logit diff |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in results["speed"]["models"].items():
        joules = m["batch_256"].get("energy_j_per_1000_sequences")
        lines.append(
            f"| {name} | {m['batch_1']['p50_ms']:.3f} | {m['batch_64']['sequences_per_s']:,.0f} | "
            f"{m['batch_256']['sequences_per_s']:,.0f} | {'—' if joules is None else f'{joules:.2f}'} | "
            f"{m['max_logit_diff_vs_dense_eager']:.4f} |"
        )
    for name, reason in results["speed"]["failed"].items():
        lines.append(f"| {name} | failed: {reason} | | | | |")
    lines += [
        "",
        "| projection | tokens | dense ms | 2:4 sparse ms | speed-up |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results["linears"]:
        lines.append(
            f"| {r['inputs']}→{r['outputs']} | {r['tokens']:,} | {r['dense_ms']:.4f} | "
            f"{r['sparse_ms']:.4f} | {r['speedup']:.2f}× |"
        )
    found = results["backends"]
    lines.append(
        f"\nsemi-structured backend: {found['default']} (cuSPARSELt {found['cusparselt_version']}); "
        f"CUTLASS forced: {found['cutlass']}"
    )
    if "accuracy" in results:
        lines += ["", json.dumps(results["accuracy"], indent=1)]
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    models = results["speed"]["models"]
    names = list(models)
    for offset, batch in enumerate((64, 256)):
        values = [models[n][f"batch_{batch}"]["sequences_per_s"] for n in names]
        left.bar([i + offset * 0.4 for i in range(len(names))], values, width=0.4, label=f"batch {batch}")
    left.set_xticks([i + 0.2 for i in range(len(names))], names, rotation=20, fontsize=8)
    left.set_ylabel("sequences/s (64 tokens)")
    left.set_title(f"MiniLM-L6 shape, FP16, {results['machine']['gpu']}", fontsize=9)
    left.legend(fontsize=8)
    linears = results["linears"]
    labels = [f"{r['inputs']}→{r['outputs']}\n{r['tokens']:,} tok" for r in linears]
    right.bar(range(len(linears)), [r["speedup"] for r in linears], color="tab:green")
    right.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    right.set_xticks(range(len(linears)), labels, fontsize=7)
    right.set_ylabel("2:4 sparse speed-up over dense (×)")
    right.set_title("single projections", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)


if __name__ == "__main__":
    raise SystemExit(main(__doc__, "sparsity-gpu", run, table, chart, data_required=False))
