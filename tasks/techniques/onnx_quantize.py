"""`quantize.onnx_dynamic_int8`: ONNX Runtime dynamic quantization (INT8 weights, activations
quantized on the fly). The default path most teams take; slimline keeps it as the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from tasks.errors import TechniqueError
from tasks.techniques import ModelRef, TechniqueConfig, technique
from tasks.techniques.onnx_export import ONNX_FILE, copy_sidecars


class DynamicInt8Config(TechniqueConfig):
    per_channel: bool = Field(False, description="One scale per output channel instead of per tensor.")
    reduce_range: bool = Field(
        False, description="7-bit weights, for CPUs without VNNI where 8-bit can saturate."
    )
    weight_type: Literal["qint8", "quint8"] = Field("qint8", description="Signedness of weights.")


@technique("quantize.onnx_dynamic_int8", DynamicInt8Config, accepts=("onnx",), produces="onnx")
def quantize_dynamic_int8(model: ModelRef, config: DynamicInt8Config, output_dir: Path) -> ModelRef:
    """Quantize MatMul/Gemm weights to INT8 with onnxruntime.quantization.quantize_dynamic."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight_type = QuantType.QInt8 if config.weight_type == "qint8" else QuantType.QUInt8
    try:
        quantize_dynamic(
            model.path / ONNX_FILE,
            output_dir / ONNX_FILE,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            weight_type=weight_type,
        )
    except Exception as exc:  # onnxruntime raises plain Exceptions
        raise TechniqueError(f"quantize.onnx_dynamic_int8 failed for {model.path}: {exc}") from exc
    copy_sidecars(model.path, output_dir)
    return ModelRef(path=output_dir, format="onnx")
