"""`quantize.onnx_dynamic_int8`: ONNX Runtime dynamic quantization (INT8 weights, activations
quantized on the fly). The default path most teams take; slimline keeps it as the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from tasks.compress.technique import TechniqueConfig, TechniqueContext, technique
from tasks.compress.techniques.onnx_export import copy_sidecars
from tasks.core.errors import TechniqueError
from tasks.core.models import ONNX_FILE, ModelRef


class DynamicInt8Config(TechniqueConfig):
    per_channel: bool = Field(False, description="One scale per output channel instead of per tensor.")
    reduce_range: bool = Field(
        False, description="7-bit weights, for CPUs without VNNI where 8-bit can saturate."
    )
    weight_type: Literal["qint8", "quint8"] = Field("qint8", description="Signedness of weights.")


def dynamic_int8(
    source: Path,
    dest: Path,
    *,
    per_channel: bool,
    reduce_range: bool,
    weight_type: str = "qint8",
    nodes: list[str] | None = None,
    step: str = "quantize.onnx_dynamic_int8",
) -> None:
    """onnxruntime.quantization.quantize_dynamic of `source` into `dest`: every operator it
    quantizes, or only the `nodes` named (a non-empty list). Errors name `step`."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(
            source,
            dest,
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8 if weight_type == "qint8" else QuantType.QUInt8,
            nodes_to_quantize=nodes,
            # ONNX shape inference cannot type the outputs of fused contrib operators
            # (Attention, SkipLayerNormalization); they are FP32 in every graph we export.
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )
    except Exception as exc:  # onnxruntime raises plain Exceptions
        raise TechniqueError(f"{step} failed for {source.parent}: {exc}") from exc


@technique("quantize.onnx_dynamic_int8", DynamicInt8Config, accepts=("onnx",), produces="onnx")
def quantize_dynamic_int8(
    model: ModelRef, config: DynamicInt8Config, output_dir: Path, context: TechniqueContext
) -> ModelRef:
    """Quantize MatMul/Gemm weights to INT8 with onnxruntime.quantization.quantize_dynamic."""
    dynamic_int8(
        model.path / ONNX_FILE,
        output_dir / ONNX_FILE,
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        weight_type=config.weight_type,
    )
    copy_sidecars(model.path, output_dir)
    return ModelRef(path=output_dir, format="onnx")


class StaticInt8Config(TechniqueConfig):
    calibration_examples: int = Field(
        256, ge=8, le=100_000, description="Calibration examples read from the calibration split."
    )
    method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="How activation ranges are chosen from the calibration run."
    )
    percentile: float = Field(99.999, gt=90, le=100, description="Range percentile (method=percentile).")
    per_channel: bool = Field(True, description="One weight scale per output channel.")
    activation_symmetric: bool = Field(False, description="Symmetric INT8 activations (else UINT8).")
    reduce_range: bool = Field(False, description="7-bit weights, for CPUs without VNNI.")


@technique("quantize.onnx_static_int8", StaticInt8Config, accepts=("onnx",), produces="onnx", uses_data=True)
def quantize_static_int8(
    model: ModelRef, config: StaticInt8Config, output_dir: Path, context: TechniqueContext
) -> ModelRef:
    """Static INT8 in QDQ format with onnxruntime.quantization.quantize_static, activation
    ranges calibrated on the recipe's calibration split."""
    import tempfile

    import numpy as np
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from tasks.core.models import load_tokenizer
    from tasks.intake.data import load_split

    examples = load_split(context.split_dir, "calibration")[: config.calibration_examples]
    if not examples:
        raise TechniqueError(
            "quantize.onnx_static_int8 needs calibration examples; set dataset.calibration_size > 0"
        )
    tokenizer = load_tokenizer(model.path)
    graph = onnx.load(str(model.path / ONNX_FILE), load_external_data=False).graph
    graph_inputs = {i.name for i in graph.input}
    # The pooler and classifier heads are a sliver of the compute and the most sensitive to
    # rounding; they stay FP32 (calibrated ranges there can also collapse on fused graphs).
    head_nodes = [n.name for n in graph.node if "pooler" in n.name or "classifier" in n.name]

    class Calibration(CalibrationDataReader):
        """Batch-1 requests, as the edge runtime will see them."""

        def __init__(self) -> None:
            self.items = iter(examples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            example = next(self.items, None)
            if example is None:
                return None
            encoded = tokenizer(
                [example.text],
                truncation=True,
                max_length=context.max_length,
                # Histogram calibrators stack activations across requests, so their shapes
                # must agree; min/max ranges take each request at its own length.
                padding="max_length" if config.method != "minmax" else False,
                return_tensors="np",
            )
            return {k: np.asarray(v, dtype=np.int64) for k, v in encoded.items() if k in graph_inputs}

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[config.method]
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        try:
            quant_pre_process(
                str(model.path / ONNX_FILE),
                str(prepared),
                # Graph optimization belongs to optimize.ort_fusions; here only shapes are inferred.
                skip_optimization=True,
                skip_symbolic_shape=True,
            )
            quantize_static(
                prepared,
                output_dir / ONNX_FILE,
                Calibration(),
                quant_format=QuantFormat.QDQ,
                per_channel=config.per_channel,
                reduce_range=config.reduce_range,
                activation_type=QuantType.QInt8 if config.activation_symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
                # The matrix products carry the compute; element-wise ops stay FP32. This also
                # keeps the attention mask bias (about -3.4e38) out of the histograms.
                op_types_to_quantize=["MatMul", "Gemm", "Attention"],
                nodes_to_exclude=head_nodes,
                extra_options={
                    "ActivationSymmetric": config.activation_symmetric,
                    "CalibPercentile": config.percentile,
                    "CalibTensorRangeSymmetric": config.activation_symmetric,
                },
            )
        except TechniqueError:
            raise
        except Exception as exc:  # onnxruntime raises plain Exceptions
            raise TechniqueError(f"quantize.onnx_static_int8 failed for {model.path}: {exc}") from exc
    copy_sidecars(model.path, output_dir)
    return ModelRef(path=output_dir, format="onnx")
