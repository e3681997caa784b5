"""`quantize.onnx_fp16`: FP16 weights and activations for GPU targets (CUDA, TensorRT).

Half precision halves the size and lets tensor cores do the matrix work. On CPUs it brings no
speed (most x86 kernels compute in FP32 behind casts), so recipes use it for GPU targets; it still
runs on the CPU execution provider, which is how the pipeline evaluates it on a machine without a
GPU. Operators that lose accuracy in FP16 stay FP32 (onnxruntime's default block list plus
`keep_fp32_ops`), and inputs and outputs keep their types, so callers need no change.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from tasks.compress.technique import TechniqueConfig, TechniqueContext, technique
from tasks.compress.techniques.onnx_export import copy_sidecars
from tasks.core.errors import TechniqueError
from tasks.core.models import ONNX_FILE, ModelRef


class Fp16Config(TechniqueConfig):
    keep_io_types: bool = Field(True, description="Keep FP32 logits at the graph's outputs.")
    keep_fp32_ops: list[str] = Field(
        [], description="Operator types kept in FP32 besides onnxruntime's default block list."
    )


@technique("quantize.onnx_fp16", Fp16Config, accepts=("onnx",), produces="onnx")
def quantize_fp16(
    model: ModelRef, config: Fp16Config, output_dir: Path, context: TechniqueContext
) -> ModelRef:
    """Convert weights and activations to FP16 for GPU targets (onnxruntime.transformers OnnxModel)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    graph = OnnxModel(onnx.load(str(model.path / ONNX_FILE)))
    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(config.keep_fp32_ops))
    try:
        graph.convert_float_to_float16(
            use_symbolic_shape_infer=True, keep_io_types=config.keep_io_types, op_block_list=blocked
        )
        graph.save_model_to_file(str(output_dir / ONNX_FILE))
    except Exception as exc:  # the converter raises many unrelated types
        raise TechniqueError(f"quantize.onnx_fp16 failed for {model.path}: {exc}") from exc
    (output_dir / "fp16.json").write_text(json.dumps({"fp32_op_types": blocked}, indent=2))
    copy_sidecars(model.path, output_dir)
    return ModelRef(path=output_dir, format="onnx")
