"""`onnxruntime-cpu`: the registered ONNX graph optimized offline by ONNX Runtime and saved in ORT
format, the format ONNX Runtime's minimal (edge) builds load.

ONNX Runtime's basic and extended optimizations are rewrites its CPU kernels run the same on any
x86-64 CPU (they pick their instructions when the session starts). The `all` level adds layout
optimizations, and ONNX Runtime's documentation says an offline-optimized model must run on the
same hardware it was optimized on: its blocked (NCHWc) layout is 16 floats wide with AVX-512 and
8 without. So an `all` engine records the build machine's vector width as a requirement both
ways (AVX-512 present, or absent), and a device of the other width is refused before download.

Only onnxruntime and numpy are imported, so an edge device needs neither PyTorch nor transformers.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.errors import EngineError
from tasks.engines.capabilities import read_capabilities
from tasks.engines.info import EngineInfo
from tasks.engines.runtime import BuildSource, Built
from tasks.engines.target import Target

ENGINE_FILE = "model.ort"
# Operators that only an integer (quantized) graph holds: how a graph's precision is read.
INTEGER_OPS = frozenset(
    {
        "MatMulInteger",
        "DynamicQuantizeLinear",
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearMatMul",
        "QAttention",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "QGemm",
    }
)
LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def version() -> str | None:
    try:
        return importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        return None


def graph_precision(onnx_path: Path) -> str:
    """`int8` when the graph holds quantized operators, else `fp32`."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return "int8" if any(node.op_type in INTEGER_OPS for node in graph.node) else "fp32"


def _layout_requirements(target: Target) -> tuple[dict[str, object], list[str]]:
    level = target.optimization_level
    if level != "all":
        return {}, [f"optimization level {level}: portable across x86-64 CPUs"]
    flags = read_capabilities().cpu_flags
    lacking = [f for f in target.requires.cpu_flags if f not in flags]
    if lacking:
        # The layout would be this machine's, not the target's: an engine its devices cannot run.
        raise EngineError(
            f"target {target.name}: optimization level all lays the graph out for the build machine's CPU, "
            f"which lacks {', '.join(lacking)}; build it on a {target.name} machine or use level extended"
        )
    if "avx512f" in flags:
        return {"cpu_flags": ["avx512f"]}, [
            "optimization level all: layout laid out for AVX-512 (the build machine's width); "
            "devices need avx512f"
        ]
    return {"cpu_flags_absent": ["avx512f"]}, [
        "optimization level all: layout laid out for 256-bit vectors; devices with avx512f are refused"
    ]


def _options(target_threads: tuple[int, int], level: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = target_threads
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    return options


def build(source: BuildSource, target: Target, out_dir: Path) -> Built:
    """Optimize the registered graph at the target's level and save it in ORT format."""
    if version() is None:
        raise EngineError(f"target {target.name}: onnxruntime is not installed here")
    import onnxruntime as ort

    precision = graph_precision(source.onnx)
    if precision != target.precision:
        raise EngineError(
            f"target {target.name} wants {target.precision} but the registered graph is {precision}; "
            f"ONNX Runtime CPU engines run the graph as registered: build a {precision} target or "
            f"register a {target.precision} variant"
        )
    requires, notes = _layout_requirements(target)
    options = _options((target.threads.intra_op, target.threads.inter_op), target.optimization_level)
    options.optimized_model_filepath = str(out_dir / ENGINE_FILE)
    options.add_session_config_entry("session.save_model_format", "ORT")
    # ONNX Runtime warns on stderr that an `all` model is hardware specific; the requirements and
    # notes of engine.json say so instead.
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(source.onnx), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise EngineError(f"target {target.name}: ONNX Runtime cannot optimize the graph ({exc})") from exc
    return Built(entry=ENGINE_FILE, runtime_version=str(version()), requires=requires, notes=notes)


class OrtEngine:
    """A loaded ORT-format engine."""

    def __init__(self, path: Path, info: EngineInfo) -> None:
        import onnxruntime as ort

        # The graph was optimized when built; optimizing again at load would only cost start-up time.
        options = _options((info.threads.intra_op, info.threads.inter_op), "basic")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.device = "cpu"

    def predict(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {
            "input_ids": input_ids.astype(np.int64),
            "attention_mask": attention_mask.astype(np.int64),
            "token_type_ids": np.zeros_like(input_ids, dtype=np.int64),
        }
        outputs = self.session.run(["logits"], {name: feed[name] for name in self.inputs})
        return np.asarray(outputs[0], dtype=np.float32)


def load(engine_dir: Path, info: EngineInfo, device: str | None) -> OrtEngine:
    if device not in (None, "cpu"):
        raise EngineError(f"onnxruntime-cpu engines run on the CPU, not {device}")
    if version() is None:
        raise EngineError("onnxruntime is not installed here; the engine cannot be loaded")
    return OrtEngine(Path(engine_dir) / info.entry, info)
