"""GPU engines benchmark: the torch-cuda engine against PyTorch eager FP32 and FP16, on one GPU.

The model is MiniLM-L6-shaped (BERT, hidden 384, 6 layers, 12 heads, intermediate 1536, vocabulary
30522, 3 labels), randomly initialised with a fixed seed: weights do not change the work done, so
they do not change speed. Inputs are 64 tokens long. The engine is built and loaded by
tasks.engines.runtimes.torch_cuda for targets/h100.yaml (FP16), each step in a fresh process with
its own empty Inductor cache, so build and staging times are what a GPU worker and a device see:

- build: export, then compile on this GPU and keep Inductor's cache artifacts;
- staging without the cache artifacts, and staging with them (load + compile + warm-up);
- in the process staged with them: batch-1 latency (p50/p95, every call synchronised), throughput
  at batch 64 and 256, and energy from NVML's counter (nvmlDeviceGetTotalEnergyConsumption) around
  the batch-1 and batch-256 loops, for eager FP32, eager FP16 and the engine, in two rounds;
- AOTInductor: a CUDA package built, then loaded in a fresh process (faulthandler on; on a crash,
  the shared libraries it links and a native backtrace from cuda-gdb); `aoti-toolchain` builds a
  tiny package with each C++ compiler found and records how each was linked;
- cross-version: a program saved by another PyTorch (carried in --xver-in) loaded by this one, and
  one saved here written to --xver-out for the reverse check.

Nothing is estimated: a figure that could not be measured is recorded with the reason.

    python bench/engines_gpu.py run --out DIR --xver-in X --xver-out Y   # on the GPU machine
    python bench/engines_gpu.py run --steps engine,aoti-toolchain --merge J --no-stage-without-cache
    python bench/engines_gpu.py xver-make --checkpoint C --out X   # a program saved by this torch
    python bench/engines_gpu.py xver-record --dir Y     # here: load what the GPU machine saved
    python bench/engines_gpu.py aoti-libstdcxx          # here: AOTInductor with libstdc++ linked statically
    python bench/engines_gpu.py chart                   # table and chart again from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
RESULT_PREFIX = "RESULT "
SEQUENCE = 64
SEED = 0
LABELS = ["negative", "neutral", "positive"]
MINILM_SHAPE: dict[str, int] = {
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}
TINY_SHAPE: dict[str, int] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 1000,
    "max_position_embeddings": 128,
}
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]  # what the ONNX export of a BERT takes
STEPS = ("xver", "engine", "aoti", "aoti-toolchain")


# --- shared helpers ----------------------------------------------------------------------------


def _emit(result: dict[str, Any]) -> None:
    """A child's result: one line on stdout, read by the parent."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:400]}" if text else type(exc).__name__


def _load_target(path: Path) -> Any:
    from tasks.engines.target import load_target

    return load_target(path)


def _engine_info(target: Any, built: Any, source: Any, build_seconds: float) -> Any:
    """engine.json as the engine builder writes it (files and model fields are placeholders here)."""
    from tasks.engines.build import engine_info

    return engine_info(
        target,
        built,
        source,
        labels=LABELS,
        model_version="bench/1",
        model_key="bench",
        build_seconds=build_seconds,
    )


def _build_source(model_dir: Path) -> Any:
    from tasks.engines.runtime import BuildSource

    return BuildSource(
        onnx=model_dir / "model.onnx",  # not read by torch-cuda builds
        onnx_digest="none",
        torch_model=model_dir,
        tokenizer_dir=model_dir,
        inputs=INPUTS,
    )


def make_model(dest: Path, shape: dict[str, int], seed: int = SEED) -> Path:
    """A randomly initialised BERT sequence classifier folder (config.json + safetensors)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    labels: dict[str, Any] = {
        "num_labels": len(LABELS),
        "id2label": dict(enumerate(LABELS)),
        "label2id": {label: i for i, label in enumerate(LABELS)},
    }
    config: dict[str, Any] = {**shape, **labels}
    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(**config))
    model.save_pretrained(str(dest), safe_serialization=True)
    return dest


def _random_inputs(batch: int, sequence: int, vocab: int, sets: int, seed: int) -> list[tuple[Any, Any]]:
    """`sets` (input_ids, attention_mask) pairs of numpy int64, full length (no padding)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [
        (rng.integers(1000, vocab, (batch, sequence), dtype=np.int64), np.ones((batch, sequence), np.int64))
        for _ in range(sets)
    ]


# --- timing and energy -------------------------------------------------------------------------


class Energy:
    """GPU 0's energy counter as the engine check reads it (tasks.engines.energy: NVML), in the
    millijoules this benchmark records; `reason` says why there is none."""

    def __init__(self) -> None:
        from tasks.engines.energy import energy_counter

        self.counter, self.reason = energy_counter("cuda:0")

    def read_mj(self) -> int | None:
        return None if self.counter is None else round(self.counter.joules() * 1000)


def _timed_loop(
    call: Callable[[int], None], sync: Callable[[], None], seconds: float, min_calls: int, energy: Energy
) -> dict[str, Any]:
    """Call (with the call's index) until both `seconds` and `min_calls` are reached, synchronising
    after every call; per-call times and the energy counter around the whole loop."""
    times: list[float] = []
    sync()
    start_mj = energy.read_mj()
    start = time.perf_counter()
    index = 0
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        begin = time.perf_counter()
        call(index)
        sync()
        times.append(time.perf_counter() - begin)
        index += 1
    elapsed = time.perf_counter() - start
    end_mj = energy.read_mj()
    result: dict[str, Any] = {"calls": len(times), "seconds": elapsed, "times": times}
    if start_mj is not None and end_mj is not None:
        result["joules"] = (end_mj - start_mj) / 1000
    return result


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _summarise_latency(loops: list[dict[str, Any]], energy: Energy) -> dict[str, Any]:
    times = [t for loop in loops for t in loop["times"]]
    calls = sum(loop["calls"] for loop in loops)
    summary: dict[str, Any] = {
        "p50_ms": statistics.median(times) * 1000,
        "p95_ms": _percentile(times, 95) * 1000,
        "p50_ms_per_round": [statistics.median(loop["times"]) * 1000 for loop in loops],
        "calls": calls,
    }
    if all("joules" in loop for loop in loops):
        joules = sum(loop["joules"] for loop in loops)
        seconds = sum(loop["seconds"] for loop in loops)
        summary["energy_j_per_1000_inferences"] = joules / calls * 1000
        summary["mean_power_w"] = joules / seconds
    else:
        summary["energy_j_per_1000_inferences"] = None
        summary["energy_note"] = energy.reason
    return summary


def _summarise_throughput(loops: list[dict[str, Any]], batch: int, energy: Energy) -> dict[str, Any]:
    calls = sum(loop["calls"] for loop in loops)
    seconds = sum(loop["seconds"] for loop in loops)
    summary: dict[str, Any] = {
        "batch": batch,
        "sequences_per_s": calls * batch / seconds,
        "sequences_per_s_per_round": [loop["calls"] * batch / loop["seconds"] for loop in loops],
        "calls": calls,
    }
    if all("joules" in loop for loop in loops):
        joules = sum(loop["joules"] for loop in loops)
        summary["energy_j_per_1000_sequences"] = joules / (calls * batch) * 1000
        summary["mean_power_w"] = joules / seconds
    else:
        summary["energy_j_per_1000_sequences"] = None
        summary["energy_note"] = energy.reason
    return summary


# --- child steps -------------------------------------------------------------------------------


def child_build(args: argparse.Namespace) -> dict[str, Any]:
    from tasks.engines.info import write_info
    from tasks.engines.runtimes import torch_cuda

    target = _load_target(args.target)
    started = time.perf_counter()
    source = _build_source(args.model)
    built = torch_cuda.build(source, target, args.engine)
    seconds = time.perf_counter() - started
    write_info(args.engine, _engine_info(target, built, source, seconds))
    return {
        "build_seconds": seconds,
        "built": built.model_dump(),
        "files": {p.name: p.stat().st_size for p in sorted(args.engine.iterdir())},
    }


def _compile_counters() -> dict[str, Any]:
    """Dynamo/Inductor counters that say whether compiling hit the cache."""
    from torch._dynamo.utils import counters

    return {
        group: dict(counters[group]) for group in ("inductor", "aot_autograd", "stats") if counters[group]
    }


def _load_engine(engine_dir: Path, device: str) -> tuple[Any, float]:
    from tasks.engines.info import read_info
    from tasks.engines.runtimes import torch_cuda

    info = read_info(engine_dir)
    started = time.perf_counter()
    predictor = torch_cuda.load(engine_dir, info, device)
    return predictor, time.perf_counter() - started


def _stage_timed(engine_dir: Path) -> tuple[Any, dict[str, Any]]:
    """Load the engine on CUDA in this (fresh) process: staging time and cache counters."""
    started = time.perf_counter()
    import torch

    torch.zeros(1, device="cuda")
    import_seconds = time.perf_counter() - started
    predictor, seconds = _load_engine(engine_dir, "cuda")
    return predictor, {
        "staging_seconds": seconds,
        "import_and_cuda_init_seconds": import_seconds,
        "cache_artifacts_present": (engine_dir / "inductor-cache.bin").is_file(),
        "counters": _compile_counters(),
    }


def child_stage(args: argparse.Namespace) -> dict[str, Any]:
    return _stage_timed(args.engine)[1]


def _eager_model(model_dir: Path, dtype: Any) -> Any:
    from tasks.core.models import load_classifier

    # Default attention (SDPA in transformers 5), as a team would run the model in PyTorch.
    return load_classifier(model_dir, remove_pruned_heads=True).to(dtype).to("cuda").eval()


def child_measure(args: argparse.Namespace) -> dict[str, Any]:
    """Stage the engine (with cache artifacts), then time eager FP32, eager FP16 and the engine."""
    import numpy as np
    import torch

    predictor, staged = _stage_timed(args.engine)
    energy = Energy()
    sync = torch.cuda.synchronize
    vocab = MINILM_SHAPE["vocab_size"]
    batches = {1: 8, 64: 4, 256: 2}  # input sets rotated per batch size
    host = {b: _random_inputs(b, SEQUENCE, vocab, n, seed=b) for b, n in batches.items()}
    device = {
        b: [(torch.from_numpy(i).cuda(), torch.from_numpy(m).cuda()) for i, m in sets]
        for b, sets in host.items()
    }

    eager32 = _eager_model(args.model, torch.float32)
    eager16 = _eager_model(args.model, torch.float16)

    def eager(model: Any) -> Callable[[Any, Any], Any]:
        return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits

    variants: dict[str, Callable[[Any, Any], Any]] = {
        "eager-fp32": eager(eager32),
        "eager-fp16": eager(eager16),
        "torch-cuda-fp16": predictor.run_on_device,
    }

    def on_device(fn: Callable[[Any, Any], Any], batch: int) -> Callable[[int], None]:
        sets = device[batch]
        return lambda i: fn(*sets[i % len(sets)])

    def numpy_predict(batch: int) -> Callable[[int], None]:
        sets = host[batch]
        return lambda i: predictor.predict(*sets[i % len(sets)])

    idle: dict[str, Any] = {}
    start_mj = energy.read_mj()
    time.sleep(2.0)
    end_mj = energy.read_mj()
    if start_mj is not None and end_mj is not None:
        idle = {"idle_power_w": (end_mj - start_mj) / 1000 / 2.0}

    loops: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with torch.inference_mode():
        for fn in variants.values():  # warm-up: first calls allocate, pick kernels, load modules
            for batch in batches:
                for index in range(20):
                    on_device(fn, batch)(index)
            sync()
        for _round in range(args.rounds):
            for name, fn in variants.items():
                for batch, seconds in ((1, args.seconds), (64, args.seconds * 0.6), (256, args.seconds)):
                    loop = _timed_loop(on_device(fn, batch), sync, seconds, 200 if batch == 1 else 20, energy)
                    loops.setdefault(name, {}).setdefault(str(batch), []).append(loop)
            for batch in (1, 256):
                loop = _timed_loop(
                    numpy_predict(batch), sync, args.seconds * 0.6, 100 if batch == 1 else 10, energy
                )
                loops.setdefault("torch-cuda-fp16 predict (numpy in/out)", {}).setdefault(
                    str(batch), []
                ).append(loop)

    rows: dict[str, Any] = {}
    for name, by_batch in loops.items():
        row: dict[str, Any] = {}
        if "1" in by_batch:
            row["batch1"] = _summarise_latency(by_batch["1"], energy)
        for size in ("64", "256"):
            if size in by_batch:
                row[f"batch{size}"] = _summarise_throughput(by_batch[size], int(size), energy)
        rows[name] = row

    # Agreement on padded inputs of mixed lengths, through the engine's own predict.
    rng = np.random.default_rng(1)
    ids = rng.integers(1000, vocab, (64, SEQUENCE), dtype=np.int64)
    lengths = rng.integers(8, SEQUENCE + 1, 64)
    mask = (np.arange(SEQUENCE)[None, :] < lengths[:, None]).astype(np.int64)
    with torch.inference_mode():
        reference = eager32(
            input_ids=torch.from_numpy(ids).cuda(), attention_mask=torch.from_numpy(mask).cuda()
        )
        reference_logits = reference.logits.float().cpu().numpy()
        half = eager16(input_ids=torch.from_numpy(ids).cuda(), attention_mask=torch.from_numpy(mask).cuda())
        half_logits = half.logits.float().cpu().numpy()
    engine_logits = predictor.predict(ids, mask)
    scale = float(np.abs(reference_logits).max())

    def agreement(logits: Any) -> dict[str, float]:
        return {
            "max_abs_diff": float(np.abs(logits - reference_logits).max()),
            "max_abs_diff_relative_to_max_logit": float(np.abs(logits - reference_logits).max() / scale),
            "argmax_agreement": float((logits.argmax(1) == reference_logits.argmax(1)).mean()),
        }

    return {
        "staging": staged,
        "rounds": args.rounds,
        "seconds_per_loop": args.seconds,
        **idle,
        "rows": rows,
        "agreement_vs_eager_fp32": {
            "inputs": "64 rows of random ids, lengths 8..64 (padded to 64 and masked)",
            "max_abs_logit_fp32": scale,
            "torch-cuda-fp16": agreement(engine_logits),
            "eager-fp16": agreement(half_logits),
        },
    }


def _export_on(model_dir: Path, device: str, dtype: Any, dynamic: bool) -> Any:
    """The classifier exported on `device` (as the AOTInductor tutorials do), static at batch 1 x 64
    or dynamic (batch 1..256, sequence 8..64)."""
    import torch

    from tasks.core.models import load_classifier
    from tasks.engines.runtimes.torch_cuda import classifier_module

    model = load_classifier(model_dir, remove_pruned_heads=True, attn_implementation="sdpa")
    module = classifier_module(model.to(dtype).to(device), token_types=True)
    if dynamic:
        ids = torch.zeros((64, 32), dtype=torch.int64, device=device)
        shape = {0: torch.export.Dim("batch", min=1, max=256), 1: torch.export.Dim("sequence", min=8, max=64)}
        dynamic_shapes: Any = (shape, shape)
    else:
        ids = torch.zeros((1, SEQUENCE), dtype=torch.int64, device=device)
        dynamic_shapes = None
    with torch.no_grad():
        return torch.export.export(module, (ids, torch.ones_like(ids)), dynamic_shapes=dynamic_shapes)


def child_check(args: argparse.Namespace) -> dict[str, Any]:
    """The engine check the pipeline runs after every build (tasks.engines.check.check_engine): a
    canary of 64 random requests of 16 to 64 tokens, the eager FP32 model's logits as reference;
    agreement, batch-1 latency, throughput and energy, as the engine results record them."""
    import numpy as np
    import torch

    from tasks.engines.canary import Canary
    from tasks.engines.check import check_engine

    predictor, _ = _stage_timed(args.engine)
    rng = np.random.default_rng(SEED)
    lengths = rng.integers(16, SEQUENCE + 1, 64)
    ids = rng.integers(1000, MINILM_SHAPE["vocab_size"], (64, SEQUENCE), dtype=np.int64)
    mask = (np.arange(SEQUENCE)[None, :] < lengths[:, None]).astype(np.int64)
    ids = ids * mask
    reference = _eager_model(args.model, torch.float32)
    with torch.inference_mode():
        logits = [
            reference(
                input_ids=torch.from_numpy(ids[i : i + 1, :n]).cuda(),
                attention_mask=torch.from_numpy(mask[i : i + 1, :n]).cuda(),
            )
            .logits.float()
            .cpu()
            .numpy()[0]
            for i, n in enumerate(lengths)
        ]
    canary = Canary(
        label_names=list(LABELS),
        texts=[f"random request {i}" for i in range(64)],
        labels=[int(np.argmax(row)) for row in logits],
        input_ids=ids.tolist(),
        attention_mask=mask.tolist(),
        reference_logits=[[float(v) for v in row] for row in logits],
    )
    return check_engine(predictor, canary, _load_target(args.target), None).model_dump()


def child_aoti_build(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    dtype = torch.float16 if args.device == "cuda" else torch.float32
    started = time.perf_counter()
    program = _export_on(args.model, args.device, dtype, args.dynamic)
    export_seconds = time.perf_counter() - started
    started = time.perf_counter()
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(args.package))
    seconds = time.perf_counter() - started
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    result: dict[str, Any] = {
        "export_seconds": export_seconds,
        "compile_seconds": seconds,
        "package_bytes": Path(path).stat().st_size,
        "shared_objects": [n for n in names if n.endswith(".so")],
        "files": len(names),
    }
    if args.then_load:  # the same process that built it
        loaded = torch._inductor.aoti_load_package(path)
        ids = torch.ones((1, SEQUENCE), dtype=torch.int64, device=args.device)
        loaded(ids, torch.ones_like(ids))
        result["loaded_in_building_process"] = True
    return result


def child_aoti_load(args: argparse.Namespace) -> dict[str, Any]:
    import faulthandler

    faulthandler.enable()
    import torch

    if args.init_cuda_first:
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
    mapped = {
        line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "libstdc++" in line
    }
    print(f"aoti-load: libstdc++ mapped before loading: {sorted(mapped)}", file=sys.stderr, flush=True)
    print("aoti-load: loading", file=sys.stderr, flush=True)
    started = time.perf_counter()
    loaded = torch._inductor.aoti_load_package(str(args.package))
    load_seconds = time.perf_counter() - started
    print("aoti-load: loaded; first call", file=sys.stderr, flush=True)
    ids = torch.ones((1, SEQUENCE), dtype=torch.int64, device=args.device)
    loaded(ids, torch.ones_like(ids))
    if args.device == "cuda":
        torch.cuda.synchronize()
    print("aoti-load: first call done", file=sys.stderr, flush=True)
    result: dict[str, Any] = {"load_seconds": load_seconds, "first_call": "ok"}
    if args.measure and args.device == "cuda":
        energy = Energy()
        sync = torch.cuda.synchronize
        vocab = MINILM_SHAPE["vocab_size"]
        batches = (1, 64, 256) if args.dynamic else (1,)
        with torch.inference_mode():
            for batch in batches:
                sets = [
                    (torch.from_numpy(i).cuda(), torch.from_numpy(m).cuda())
                    for i, m in _random_inputs(batch, SEQUENCE, vocab, 4, seed=batch)
                ]

                def call(i: int, sets: list[tuple[Any, Any]] = sets) -> None:
                    loaded(*sets[i % len(sets)])

                for index in range(20):
                    call(index)
                loops = [
                    _timed_loop(call, sync, args.seconds, 200 if batch == 1 else 20, energy)
                    for _ in range(args.rounds)
                ]
                if batch == 1:
                    result["batch1"] = _summarise_latency(loops, energy)
                else:
                    result[f"batch{batch}"] = _summarise_throughput(loops, batch, energy)
            eager = _eager_model(args.model, torch.float32)
            ids_np, mask_np = _random_inputs(1, SEQUENCE, vocab, 1, seed=7)[0]
            ids_t, mask_t = torch.from_numpy(ids_np).cuda(), torch.from_numpy(mask_np).cuda()
            got = loaded(ids_t, mask_t)
            got = got[0] if isinstance(got, list | tuple) else got
            want = eager(input_ids=ids_t, attention_mask=mask_t).logits
            result["max_abs_diff_vs_eager_fp32"] = float((got.float() - want).abs().max())
    return result


def child_xver_make(args: argparse.Namespace) -> dict[str, Any]:
    """A tiny program saved by this PyTorch, with reference logits from the source model (CPU)."""
    import numpy as np
    import torch

    from tasks.core.models import load_classifier
    from tasks.engines.info import write_info
    from tasks.engines.runtimes import torch_cuda
    from tasks.engines.target import Target

    # Compute capability 0.0 matches no GPU: the build writes the program only, on any machine.
    target = Target.model_validate(
        {
            "name": "xver",
            "runtime": "torch-cuda",
            "precision": "fp32",
            "requires": {"compute_capability": "0.0", "runtime_version": {"minimum": "2.0", "below": "3.0"}},
            "profiles": [
                {"batch": {"min": 1, "opt": 2, "max": 4}, "sequence": {"min": 4, "opt": 8, "max": 16}}
            ],
        }
    )
    args.out.mkdir(parents=True, exist_ok=True)
    source = _build_source(args.checkpoint)
    built = torch_cuda.build(source, target, args.out)
    write_info(args.out, _engine_info(target, built, source, 0.0))
    rng = np.random.default_rng(3)
    vocab = int(json.loads((args.checkpoint / "config.json").read_text())["vocab_size"])
    ids = rng.integers(5, vocab, (3, 11), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    model = load_classifier(args.checkpoint, remove_pruned_heads=True)
    with torch.inference_mode():
        logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
    reference = {
        "torch": torch.__version__,
        "input_ids": ids.tolist(),
        "attention_mask": mask.tolist(),
        "logits": logits.numpy().tolist(),
    }
    (args.out / "reference.json").write_text(json.dumps(reference))
    return {"saved_by": torch.__version__, "notes": built.notes, "schema": _schema_version()}


def _schema_version() -> str:
    from torch._export.serde.schema import SCHEMA_VERSION

    return ".".join(str(v) for v in SCHEMA_VERSION)


def child_xver_check(args: argparse.Namespace) -> dict[str, Any]:
    """Load a program saved by another PyTorch: raw torch.export.load, then the runtime's load."""
    import numpy as np
    import torch

    reference = json.loads((args.dir / "reference.json").read_text())
    result: dict[str, Any] = {"saved_by": reference["torch"], "loaded_by": torch.__version__}
    result["schema_here"] = _schema_version()
    try:
        torch.export.load(args.dir / "program.pt2")
        result["torch_export_load"] = "ok"
    except Exception as exc:
        result["torch_export_load"] = _first_line(exc)
    for device in args.devices:
        try:
            predictor, seconds = _load_engine(args.dir, device)
            got = predictor.predict(
                np.asarray(reference["input_ids"], np.int64),
                np.asarray(reference["attention_mask"], np.int64),
            )
            diff = float(np.abs(got - np.asarray(reference["logits"], np.float32)).max())
            result[device] = {"load": "ok", "load_seconds": seconds, "max_abs_diff": diff}
        except Exception as exc:
            result[device] = {"load": _first_line(exc)}
    return result


CHILDREN: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "build": child_build,
    "stage": child_stage,
    "measure": child_measure,
    "check": child_check,
    "aoti-build": child_aoti_build,
    "aoti-load": child_aoti_load,
    "xver-make": child_xver_make,
    "xver-check": child_xver_check,
}


# --- parent ------------------------------------------------------------------------------------


class Runner:
    """Runs child steps in fresh processes within a time budget, each with an empty Inductor cache."""

    def __init__(self, work: Path, budget_s: float) -> None:
        self.work = work
        self.deadline = time.monotonic() + budget_s

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def env(self, name: str) -> dict[str, str]:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)  # compile commands do not quote paths
        cache = Path(tempfile.mkdtemp(prefix=f"inductor-{safe}-", dir=self.work))
        return {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONFAULTHANDLER": "1",
            "HF_HUB_OFFLINE": "1",
            "TORCHINDUCTOR_CACHE_DIR": str(cache),
            "TRITON_CACHE_DIR": str(cache / "triton"),
        }

    def child(
        self,
        name: str,
        argv: list[str],
        timeout: float,
        wrap: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Run `engines_gpu.py <argv>` (under `wrap`, e.g. cuda-gdb); its result or why it has none."""
        limit = min(timeout, self.remaining() - 15)
        if limit < 20:
            return {"ok": False, "reason": f"not run: {self.remaining():.0f} s of this run's budget left"}
        command = [*(wrap or []), sys.executable, str(Path(__file__).resolve()), *argv]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(argv)} (limit {limit:.0f} s)", flush=True)
        started = time.perf_counter()
        try:
            env = {**self.env(name), **(extra_env or {})}
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired as exc:
            tail = (exc.stderr or b"")[-3000:]
            return {
                "ok": False,
                "reason": f"timed out after {limit:.0f} s",
                "stderr_tail": tail.decode(errors="replace") if isinstance(tail, bytes) else tail,
            }
        seconds = time.perf_counter() - started
        result_lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        outcome: dict[str, Any] = {"ok": done.returncode == 0 and bool(result_lines), "wall_seconds": seconds}
        outcome["returncode"] = done.returncode
        if done.returncode < 0:
            outcome["signal"] = done.returncode * -1
        if result_lines:
            outcome["result"] = json.loads(result_lines[-1][len(RESULT_PREFIX) :])
        if not outcome["ok"] or wrap:
            outcome["stderr_tail"] = done.stderr[-6000:]
            outcome["stdout_tail"] = done.stdout[-12000:] if wrap else done.stdout[-800:]
        print(f"    -> rc {done.returncode} in {seconds:.1f} s", flush=True)
        return outcome


def _command(argv: list[str], timeout: float = 60) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        return (done.stdout + done.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"not run: {_first_line(exc)}"


def environment() -> dict[str, Any]:
    import torch

    from tasks.engines.capabilities import read_capabilities

    caps = read_capabilities()
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gpus": [g.model_dump() for g in caps.gpus],
        "cpu": caps.cpu_model,
        "cpu_count": caps.cpu_count,
        "kernel": platform.release(),
        "nvcc": _command(["nvcc", "--version"]).splitlines()[-1:] if shutil.which("nvcc") else None,
        "cxx": _command(["c++", "--version"]).splitlines()[:1] if shutil.which("c++") else None,
        "inductor_env": {
            k: v for k, v in os.environ.items() if k.startswith(("TORCHINDUCTOR", "TORCH_", "CUDA"))
        },
        "cuda_gdb": shutil.which("cuda-gdb"),
    }
    for package in ("transformers", "triton", "nvidia-ml-py", "numpy"):
        try:
            from importlib.metadata import version

            env[package] = version(package)
        except Exception as exc:
            env[package] = f"absent ({_first_line(exc)})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["device"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
        }
    return env


def _extract_so(package: Path, into: Path) -> list[Path]:
    with zipfile.ZipFile(package) as archive:
        names = [n for n in archive.namelist() if n.endswith(".so")]
        for name in names:
            archive.extract(name, into)
    return [into / n for n in names]


def _inspect_so(package: Path, work: Path) -> dict[str, Any]:
    """What a package's shared objects link against and which compiler built them."""
    found: dict[str, Any] = {}
    for so in _extract_so(package, work / f"so-{package.stem}"):
        found[so.name] = {
            "ldd": _command(["ldd", str(so)]).splitlines()[:40],
            "comment": _command(["readelf", "-p", ".comment", str(so)]).splitlines()[:8],
            "undefined_cuda_symbols": [
                line.split()[-1]
                for line in _command(["nm", "-D", "--undefined-only", str(so)]).splitlines()
                if line.split() and line.split()[-1].startswith(("cu", "nvrtc"))
            ][:40],
            "bytes": so.stat().st_size,
        }
    return found


def _backtrace(text: str) -> list[str]:
    lines = text.splitlines()
    keep = [
        line for line in lines if line.startswith(("#", "Thread", "Program received", "Program terminated"))
    ]
    return keep[:60] or lines[-40:]


def _xver_key(check: dict[str, Any]) -> str:
    found = check.get("result", {})
    return f"saved by torch {found.get('saved_by', '?')}, loaded by torch {found.get('loaded_by', '?')}"


def step_xver(runner: Runner, args: argparse.Namespace, earlier: dict[str, Any]) -> dict[str, Any]:
    """Programs saved by another PyTorch loaded here, keyed by both versions (earlier keys kept)."""
    result: dict[str, Any] = dict(earlier)
    if args.xver_in and (args.xver_in / "program.pt2").is_file():
        check = runner.child(
            "xver-check", ["xver-check", "--dir", str(args.xver_in), "--devices", "cpu", "cuda"], 240
        )
        result[_xver_key(check)] = check
    checkpoint = args.xver_in / "checkpoint" if args.xver_in else None
    if args.xver_out and checkpoint and checkpoint.is_dir():
        result["saved here for the reverse check"] = runner.child(
            "xver-make", ["xver-make", "--checkpoint", str(checkpoint), "--out", str(args.xver_out)], 180
        )
    return result


def record_xver(args: argparse.Namespace) -> None:
    """Load, on this machine, a program the GPU machine saved, and record it in the JSON."""
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "xver-check",
            "--dir",
            str(args.dir),
            "--devices",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    check: dict[str, Any] = {"ok": done.returncode == 0 and bool(lines), "returncode": done.returncode}
    if lines:
        check["result"] = json.loads(lines[-1][len(RESULT_PREFIX) :])
    else:
        check["stderr_tail"] = done.stderr[-3000:]
    check["machine"] = f"{platform.machine()} {_cpu_model()}, no GPU"
    results = json.loads(args.json.read_text())
    results.setdefault("cross_version", {})[_xver_key(check)] = check
    args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(check, indent=2))


STATIC_LIBSTDCXX_GXX = """#!/bin/sh
# g++ that links libstdc++ statically into shared objects, as /opt/gcc/bin/g++ on the GPU image does
case " $* " in
  *" -shared "*) exec g++ "$@" -static-libstdc++ ;;
  *) exec g++ "$@" ;;
esac
"""


def record_static_libstdcxx(args: argparse.Namespace) -> None:
    """On a machine whose g++ links libstdc++ dynamically: one tiny CPU AOTInductor package linked as
    usual and one with libstdc++ linked in statically, each loaded in a fresh process."""
    work = Path(tempfile.mkdtemp(prefix="aoti-libstdcxx-"))
    runner = Runner(work, args.budget)
    tiny = make_model(work / "tiny", TINY_SHAPE)
    static_gxx = work / "g++-static-libstdc++"
    static_gxx.write_text(STATIC_LIBSTDCXX_GXX)
    static_gxx.chmod(0o755)
    found: dict[str, Any] = {
        "machine": f"{platform.machine()} {_cpu_model()}, no GPU",
        "torch": _torch_version(),
    }
    for name, compiler in (("g++", "g++"), ("g++ -static-libstdc++", str(static_gxx))):
        package = work / f"{'static' if compiler != 'g++' else 'shared'}.pt2"
        flags = ["--model", str(tiny), "--package", str(package), "--device", "cpu"]
        case: dict[str, Any] = {
            "build": runner.child(
                f"aoti-build-{name}", ["aoti-build", *flags], 600, extra_env={"CXX": compiler}
            )
        }
        if case["build"]["ok"]:
            case["package"] = _inspect_package(package, work)
            case["package"].pop("link_cmd", None)  # paths of this machine only
            case["load_fresh_process"] = runner.child(f"aoti-load-{name}", ["aoti-load", *flags], 300)
        found[name] = case
    results = json.loads(args.json.read_text())
    results["aotinductor_static_libstdcxx_here"] = found
    args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(found, indent=2)[:4000])


def _torch_version() -> str:
    from importlib.metadata import version

    return version("torch")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _compile_seconds(build: dict[str, Any]) -> float | None:
    """The build's compile + warm-up time on this GPU (empty Inductor cache), from Built.notes."""
    for note in build.get("result", {}).get("built", {}).get("notes", []):
        found = re.search(r"compiled on .* in ([0-9.]+) s", note)
        if found:
            return float(found.group(1))
    return None


def step_engine(runner: Runner, args: argparse.Namespace, model: Path) -> dict[str, Any]:
    engine = runner.work / "engine"
    result: dict[str, Any] = {}
    common = ["--model", str(model), "--engine", str(engine)]
    result["build"] = runner.child("build", ["build", *common, "--target", str(args.target)], 300)
    if not result["build"]["ok"]:
        return result
    result["compile_and_warmup_seconds_without_cache_artifacts"] = _compile_seconds(result["build"])
    if args.stage_without_cache:
        bare = runner.work / "engine-without-cache"
        shutil.copytree(engine, bare)
        (bare / "inductor-cache.bin").unlink(missing_ok=True)
        result["stage_without_cache_artifacts"] = runner.child(
            "stage", ["stage", "--model", str(model), "--engine", str(bare)], 300
        )
    else:
        result["stage_without_cache_artifacts"] = {
            "ok": False,
            "reason": "not run in this call (device time); compile_and_warmup_seconds_without_cache_"
            "artifacts is the same work inside the build: a fresh process, an empty Inductor cache, this GPU",
        }
    measure = ["measure", *common, "--rounds", str(args.rounds), "--seconds", str(args.seconds)]
    result["measure"] = runner.child("measure", measure, 300)
    result["check"] = runner.child("check", ["check", *common, "--target", str(args.target)], 240)
    return result


def step_aoti(runner: Runner, args: argparse.Namespace, model: Path, tiny: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    gdb = shutil.which("cuda-gdb")
    cases = [("cuda", "static", model), ("cpu", "static", tiny), ("cuda", "dynamic", model)]
    for device, shapes, source in cases:
        name = f"{device}-{shapes}"
        package = runner.work / f"aoti-{name}.pt2"
        flags = ["--model", str(source), "--package", str(package), "--device", device]
        flags += ["--dynamic"] if shapes == "dynamic" else []
        case: dict[str, Any] = {
            "model": "minilm-shaped fp16" if source == model else "tiny BERT fp32 (hidden 32, 2 layers)",
            "build": runner.child(f"aoti-build-{name}", ["aoti-build", *flags], 360),
        }
        result[name] = case
        if not case["build"]["ok"]:
            continue
        measure = ["--measure", "--rounds", str(args.rounds), "--seconds", str(args.seconds * 0.6)]
        case["load_fresh_process"] = runner.child(
            f"aoti-load-{name}", ["aoti-load", *flags, *(measure if device == "cuda" else [])], 240
        )
        if case["load_fresh_process"].get("ok"):
            continue
        case["shared_objects"] = _inspect_so(package, runner.work)
        case["load_after_cuda_init"] = runner.child(
            f"aoti-load-init-{name}", ["aoti-load", *flags, "--init-cuda-first"], 120
        )
        if gdb:
            case["cuda_gdb"] = runner.child(
                f"aoti-gdb-{name}",
                ["aoti-load", *flags],
                240,
                wrap=[gdb, "-batch", "-ex", "set pagination off", "-ex", "run", "-ex", "bt 40", "--args"],
            )
            case["cuda_gdb"]["backtrace"] = _backtrace(case["cuda_gdb"].get("stdout_tail", ""))
        if device == "cuda" and shapes == "static":
            case["build_and_load_same_process"] = runner.child(
                f"aoti-same-{name}", ["aoti-build", *flags, "--then-load"], 300
            )
    return result


def toolchain() -> dict[str, Any]:
    """The C++ compilers Inductor may pick here (it runs $CXX, else `g++` from PATH)."""
    facts: dict[str, Any] = {"CXX": os.environ.get("CXX"), "PATH": os.environ.get("PATH")}
    for name in ("g++", "c++"):
        facts[f"which -a {name}"] = _command(["which", "-a", name]).splitlines()
    for path in _compilers():
        head = Path(path).read_bytes()[:4000]
        facts[path] = {
            "realpath": os.path.realpath(path),
            "version": _command([path, "--version"]).splitlines()[:1],
            "script": head.decode(errors="replace").splitlines()[:25] if head.startswith(b"#!") else None,
            "libstdc++.a": _command([path, "-print-file-name=libstdc++.a"]),
            "libstdc++.so": _command([path, "-print-file-name=libstdc++.so"]),
        }
    return facts


def _compilers() -> list[str]:
    """Distinct g++ executables: the one on PATH, the system's, and /opt/gcc's (the image's CUDA host)."""
    found: list[str] = []
    for path in (shutil.which("g++"), "/usr/bin/g++", "/opt/gcc/bin/g++"):
        if (
            path
            and Path(path).is_file()
            and all(os.path.realpath(path) != os.path.realpath(f) for f in found)
        ):
            found.append(path)
    return found


def step_aoti_toolchain(runner: Runner, args: argparse.Namespace, tiny: Path) -> dict[str, Any]:
    """The same tiny classifier through AOTInductor for CUDA with each C++ compiler, and for CPU:
    how each package was linked, and whether it loads in a fresh process."""
    result: dict[str, Any] = {"toolchain": toolchain()}
    cases: list[tuple[str, str | None]] = [("cuda", None)]
    cases += [("cuda", path) for path in _compilers()[1:]]
    cases += [("cpu", None)]
    for device, compiler in cases:
        name = f"{device}-{'default' if compiler is None else compiler.strip('/').replace('/', '_')}"
        package = runner.work / f"aoti-tiny-{name}.pt2"
        flags = ["--model", str(tiny), "--package", str(package), "--device", device]
        env = {"CXX": compiler} if compiler else None
        case: dict[str, Any] = {
            "model": "tiny BERT (hidden 32, 2 layers), static batch 1 x 64",
            "CXX": compiler or os.environ.get("CXX") or "(unset: g++ from PATH)",
            "build": runner.child(f"aoti-build-tiny-{name}", ["aoti-build", *flags], 150, extra_env=env),
        }
        result[name] = case
        if not case["build"]["ok"]:
            continue
        case["package"] = _inspect_package(package, runner.work)
        case["load_fresh_process"] = runner.child(f"aoti-load-tiny-{name}", ["aoti-load", *flags], 90)
    return result


def _inspect_package(package: Path, work: Path) -> dict[str, Any]:
    """The link command Inductor recorded in the wrapper source, and what the wrapper .so needs."""
    found: dict[str, Any] = {}
    with zipfile.ZipFile(package) as archive:
        for name in archive.namelist():
            if name.endswith("wrapper.cpp"):
                lines = archive.read(name).decode(errors="replace").splitlines()
                found["link_cmd"] = [
                    lines[i + 1].lstrip("/ ")
                    for i, line in enumerate(lines[:-1])
                    if line.strip() == "// Link cmd"
                ][:1]
    for so in _extract_so(package, work / f"so-{package.stem}"):
        dynamic = _command(["readelf", "-d", str(so)]).splitlines()
        defined = _command(["nm", "-DC", "--defined-only", str(so)]).splitlines()
        found[so.name] = {
            "needed": [line.split()[-1] for line in dynamic if "(NEEDED)" in line],
            "defined_std_locale_symbols": sum("std::locale" in line for line in defined),
            "defined_std_codecvt_symbols": sum("std::codecvt" in line for line in defined),
            "comment": _command(["readelf", "-p", ".comment", str(so)]).splitlines()[1:6],
        }
    return found


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="engines-gpu-"))
    runner = Runner(work, args.budget)
    results: dict[str, Any] = {}
    if args.merge and args.merge.is_file():
        results = json.loads(args.merge.read_text())
    results["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    here = environment()
    if results.get("environment") not in (None, here):
        results["environment_of_the_earlier_run"] = results["environment"]  # its steps ran there
    results["environment"] = here
    results["model"] = {
        "shape": MINILM_SHAPE,
        "labels": len(LABELS),
        "sequence": SEQUENCE,
        "weights": f"random, seed {SEED} (weights do not change the work done)",
        "target": str(args.target.relative_to(ROOT))
        if args.target.is_relative_to(ROOT)
        else str(args.target),
    }
    model = make_model(work / "minilm-shaped", MINILM_SHAPE)
    tiny = make_model(work / "tiny", TINY_SHAPE)
    out_json = args.out / "engines-gpu.json"

    def save() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(results, indent=2, sort_keys=False))

    steps = args.steps.split(",")
    if "xver" in steps:
        results["cross_version"] = step_xver(runner, args, results.get("cross_version", {}))
        save()
    if "engine" in steps:
        results["engine"] = step_engine(runner, args, model)
        save()
    if "aoti" in steps:
        results["aotinductor"] = step_aoti(runner, args, model, tiny)
        save()
    if "aoti-toolchain" in steps:
        results["aotinductor_toolchain"] = step_aoti_toolchain(runner, args, tiny)
        save()
    results["table"] = table_rows(results)
    save()
    try:
        chart(results, args.out / "engines-gpu.png")
    except ImportError as exc:
        print(f"no chart: {exc}; draw it here with `python bench/engines_gpu.py chart`", flush=True)
    return results


# --- table and chart ---------------------------------------------------------------------------


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant: the numbers the README quotes."""
    rows: list[dict[str, Any]] = []
    measured = results.get("engine", {}).get("measure", {}).get("result", {}).get("rows", {})
    aoti = results.get("aotinductor", {})
    sources: dict[str, dict[str, Any]] = dict(measured)
    for name in ("cuda-dynamic", "cuda-static"):
        loaded = aoti.get(name, {}).get("load_fresh_process", {})
        if loaded.get("ok") and "batch1" in loaded.get("result", {}):
            sources[f"aotinductor-{name}-fp16"] = loaded["result"]
    for name, row in sources.items():
        b1, b64, b256 = row.get("batch1", {}), row.get("batch64", {}), row.get("batch256", {})
        rows.append(
            {
                "variant": name,
                "p50_ms_batch1": b1.get("p50_ms"),
                "p95_ms_batch1": b1.get("p95_ms"),
                "seq_per_s_batch64": b64.get("sequences_per_s"),
                "seq_per_s_batch256": b256.get("sequences_per_s"),
                "j_per_1000_inferences_batch1": b1.get("energy_j_per_1000_inferences"),
                "j_per_1000_sequences_batch256": b256.get("energy_j_per_1000_sequences"),
                "p50_ms_batch1_per_round": b1.get("p50_ms_per_round"),
                "seq_per_s_batch64_per_round": b64.get("sequences_per_s_per_round"),
                "seq_per_s_batch256_per_round": b256.get("sequences_per_s_per_round"),
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any, digits: int) -> str:
        return "—" if value is None else f"{value:,.{digits}f}"

    lines = [
        f"{'variant':44} {'p50 b1 ms':>10} {'p95 b1 ms':>10} {'seq/s b64':>10} {'seq/s b256':>11} "
        f"{'J/1k b1':>8} {'J/1k b256':>10}"
    ]
    for r in rows:
        lines.append(
            f"{r['variant']:44} {cell(r['p50_ms_batch1'], 3):>10} {cell(r['p95_ms_batch1'], 3):>10} "
            f"{cell(r['seq_per_s_batch64'], 0):>10} {cell(r['seq_per_s_batch256'], 0):>11} "
            f"{cell(r['j_per_1000_inferences_batch1'], 1):>8} "
            f"{cell(r['j_per_1000_sequences_batch256'], 2):>10}"
        )
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results.get("table", []) if "numpy" not in r["variant"]]
    if not rows:
        print("nothing measured to chart", flush=True)
        return
    names = [r["variant"] for r in rows]
    panels = [
        ("p50 latency, batch 1 (ms)", [r["p50_ms_batch1"] for r in rows]),
        ("throughput, batch 64 (seq/s)", [r["seq_per_s_batch64"] for r in rows]),
        ("throughput, batch 256 (seq/s)", [r["seq_per_s_batch256"] for r in rows]),
        ("energy per 1,000 inferences, batch 1 (J)", [r["j_per_1000_inferences_batch1"] for r in rows]),
        ("energy per 1,000 sequences, batch 256 (J)", [r["j_per_1000_sequences_batch256"] for r in rows]),
    ]
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6))
    colours = ["#8c8c8c", "#5b8bd0", "#d2691e", "#6aa84f", "#9467bd"]
    for axis, (title, values) in zip(axes, panels, strict=True):
        shown = [v if v is not None else 0.0 for v in values]
        bars = axis.barh(range(len(names)), shown, color=colours[: len(names)])
        for bar, value in zip(bars, values, strict=True):
            label = "not measured" if value is None else (f"{value:,.0f}" if value >= 100 else f"{value:.3g}")
            axis.text(
                bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {label}", va="center", fontsize=8
            )
        axis.set_yticks(range(len(names)), names if axis is axes[0] else [""] * len(names), fontsize=8)
        axis.invert_yaxis()
        axis.set_title(title, fontsize=9)
        axis.margins(x=0.35)
        axis.xaxis.set_major_locator(MaxNLocator(4))
        if max(shown) >= 10_000:
            axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value / 1000:.0f}k"))
        axis.tick_params(axis="x", labelsize=8)
    env = results.get("environment", {})
    gpu = env.get("device", {}).get("name", "GPU")
    figure.suptitle(
        f"MiniLM-L6-shaped classifier, sequence 64, on one {gpu} (torch {env.get('torch')}, "
        f"CUDA {env.get('torch_cuda')})",
        fontsize=10,
    )
    engine = results.get("engine", {})
    build = engine.get("build", {}).get("result", {})
    staged = engine.get("measure", {}).get("result", {}).get("staging", {})
    compile_seconds = engine.get("compile_and_warmup_seconds_without_cache_artifacts")
    if build and staged:
        figure.text(
            0.5,
            0.01,
            f"torch-cuda engine (FP16, CUDA graphs, batch 1..256 x sequence 8..64): build "
            f"{build['build_seconds']:.0f} s, of which compile + warm-up {compile_seconds} s; "
            f"staging on the device with Inductor's cache artifacts {staged['staging_seconds']:.1f} s. "
            "Energy: NVML's counter, whole board (idle included), every call synchronised.",
            ha="center",
            fontsize=8,
        )
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


# --- command line ------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="mode", required=True)
    run_parser = sub.add_parser("run", help="every step, each in a fresh process; writes the JSON and chart")
    run_parser.add_argument("--out", type=Path, default=RESULTS, help="folder for engines-gpu.json/.png")
    run_parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {STEPS}")
    run_parser.add_argument("--target", type=Path, default=ROOT / "targets" / "h100.yaml")
    run_parser.add_argument("--budget", type=float, default=540, help="seconds for all steps together")
    run_parser.add_argument("--rounds", type=int, default=2, help="timed rounds per variant")
    run_parser.add_argument(
        "--seconds", type=float, default=2.5, help="seconds per timed loop (>=2 for energy)"
    )
    run_parser.add_argument("--merge", type=Path, help="earlier JSON whose other steps are kept")
    run_parser.add_argument(
        "--stage-without-cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also stage the engine without its cache artifacts (a full compile)",
    )
    run_parser.add_argument("--xver-in", type=Path, help="folder with a program saved by another torch")
    run_parser.add_argument("--xver-out", type=Path, help="folder to save a program made by this torch")
    record = sub.add_parser("xver-record", help="load a program saved on the GPU machine; add it to the JSON")
    record.add_argument("--dir", type=Path, required=True, help="folder written by --xver-out there")
    record.add_argument("--json", type=Path, default=RESULTS / "engines-gpu.json")
    repro = sub.add_parser(
        "aoti-libstdcxx",
        help="here: a CPU AOTInductor package with libstdc++ linked statically; add to the JSON",
    )
    repro.add_argument("--json", type=Path, default=RESULTS / "engines-gpu.json")
    repro.add_argument("--budget", type=float, default=1500)
    chart_parser = sub.add_parser("chart", help="recompute the table and redraw the chart from the JSON")
    chart_parser.add_argument("--json", type=Path, default=RESULTS / "engines-gpu.json")
    chart_parser.add_argument("--png", type=Path, default=RESULTS / "engines-gpu.png")

    for mode in CHILDREN:
        child = sub.add_parser(mode, help=f"(internal) the {mode} step, in its own process")
        child.add_argument("--model", type=Path)
        child.add_argument("--engine", type=Path)
        child.add_argument("--target", type=Path, default=ROOT / "targets" / "h100.yaml")
        child.add_argument("--package", type=Path)
        child.add_argument("--device", default="cuda")
        child.add_argument("--dynamic", action="store_true")
        child.add_argument("--then-load", action="store_true")
        child.add_argument("--init-cuda-first", action="store_true")
        child.add_argument("--measure", action="store_true")
        child.add_argument("--rounds", type=int, default=2)
        child.add_argument("--seconds", type=float, default=2.5)
        child.add_argument("--checkpoint", type=Path)
        child.add_argument("--out", type=Path)
        child.add_argument("--dir", type=Path)
        child.add_argument("--devices", nargs="+", default=["cpu"])
    return top


def main() -> int:
    args = parser().parse_args()
    if args.mode in CHILDREN:
        _emit(CHILDREN[args.mode](args))
        return 0
    if args.mode == "aoti-libstdcxx":
        record_static_libstdcxx(args)
        return 0
    if args.mode == "xver-record":
        record_xver(args)
        return 0
    if args.mode == "chart":
        results = json.loads(args.json.read_text())
        results["table"] = table_rows(results)  # the table follows the measurements it is made from
        args.json.write_text(json.dumps(results, indent=2))
        chart(results, args.png)
        print(format_table(results.get("table", [])))
        return 0
    results = run(args)
    print(format_table(results["table"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
