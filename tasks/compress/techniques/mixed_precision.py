"""`quantize.mixed_precision`: dynamic INT8 where the model tolerates it, FP32 where it does not.

The operators ONNX Runtime's dynamic quantization takes (embedding tables, MatMul, Gemm and fused
Attention with constant weights) fall into groups: the embeddings, each encoder layer's attention
and feed-forward block, and the pooler and classifier head. A sensitivity pass on the calibration
split quantizes one group at a time and measures how far the model moves from its full-precision
self: the share of examples it still predicts the same way (agreement) and the mean squared error
of its logits. Then every group is quantized, and while the agreement on the calibration split
stays below `min_agreement` the most sensitive group still in INT8 goes back to FP32, one at a
time, up to `max_full_precision` of the groups. The report lists every group with its sensitivity
and why it ended INT8 or FP32.

ONNX Runtime's `quantize_dynamic` does the quantization (its `nodes_to_quantize` picks the
groups); ONNX Runtime runs the measurements. CPU targets only: FP16 for GPU targets is the
engine builder's business.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from tasks.compress.technique import TechniqueConfig, TechniqueContext, technique
from tasks.compress.techniques.onnx_export import copy_sidecars
from tasks.compress.techniques.onnx_quantize import dynamic_int8
from tasks.core.errors import TechniqueError
from tasks.core.models import ONNX_FILE, ModelRef, write_report

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

LAYER = re.compile(r"layer\.(\d+)[./]")
BATCH = 64


class MixedPrecisionConfig(TechniqueConfig):
    min_agreement: float = Field(
        0.99,
        gt=0,
        le=1,
        description="Share of calibration examples the result must predict as the full-precision model.",
    )
    max_full_precision: float = Field(
        0.5, ge=0, le=1, description="At most this share of the groups may stay FP32; past it the step fails."
    )
    calibration_examples: int = Field(
        256, ge=8, le=100_000, description="Calibration examples the sensitivity pass runs on."
    )
    per_channel: bool = Field(True, description="One weight scale per output channel.")
    reduce_range: bool = Field(False, description="7-bit weights, for CPUs without VNNI.")


@dataclass
class Group:
    """Operators quantized or kept together: `embeddings`, `layer.N attention`, `layer.N ffn`, `head`."""

    name: str
    nodes: list[str]
    agreement: float = 1.0  # quantized alone
    logit_mse: float = 0.0
    precision: str = "int8"
    why: str = ""


def operator_groups(graph: Any) -> list[Group]:
    """The operators `quantize_dynamic` would quantize, grouped: the embeddings (Gather of a float
    table, or ORT's fused EmbedLayerNormalization), each encoder layer's attention and
    feed-forward matrix products, and the head (the pooler's and classifier's Gemm).

    Fused Attention nodes carry no layer in their names; each belongs to the layer of the next
    node in graph order that names one (its output projection)."""
    from onnx import TensorProto

    tables = {i.name for i in graph.initializer if i.data_type == TensorProto.FLOAT}
    pending: list[str] = []
    groups: dict[str, Group] = {}

    def add(name: str, node: str) -> None:
        groups.setdefault(name, Group(name=name, nodes=[])).nodes.append(node)

    for node in graph.node:
        layer = LAYER.search(node.name)
        if layer and pending:
            for waiting in pending:
                add(f"layer.{layer[1]} attention", waiting)
            pending = []
        if node.op_type == "EmbedLayerNormalization" or (
            node.op_type == "Gather" and node.input[0] in tables
        ):
            add("embeddings", node.name)
        elif node.op_type == "Gemm" and node.input[1] in tables:
            # The quantizer first rewrites a Gemm as MatMul + Add, naming the MatMul so.
            add("head" if not layer else f"layer.{layer[1]} ffn", f"{node.name}_MatMul")
        elif node.op_type in ("MatMul", "Attention") and node.input[1] in tables:
            if layer:
                block = "attention" if "/attention/" in node.name else "ffn"
                add(f"layer.{layer[1]} {block}", node.name)
            elif node.op_type == "Attention":
                pending.append(node.name)
            else:
                add("head", node.name)
    if pending:
        raise TechniqueError(f"quantize.mixed_precision: attention nodes {pending} follow no encoder layer")
    if not groups:
        raise TechniqueError(
            "quantize.mixed_precision: the model has no embedding table, MatMul, Gemm or Attention with "
            "constant weights to quantize"
        )
    return list(groups.values())


def quantize_nodes(source: Path, nodes: list[str], folder: Path, config: MixedPrecisionConfig) -> Path:
    """`source` with dynamic INT8 for the named nodes only, in `folder`; with no node named, `source`
    unchanged (quantize_dynamic reads an empty list as every node)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not nodes:
        shutil.copyfile(source, folder / ONNX_FILE)
        return folder
    dynamic_int8(
        source,
        folder / ONNX_FILE,
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        nodes=nodes,
        step="quantize.mixed_precision",
    )
    return folder


@technique(
    "quantize.mixed_precision", MixedPrecisionConfig, accepts=("onnx",), produces="onnx", uses_data=True
)
def quantize_mixed_precision(
    model: ModelRef, config: MixedPrecisionConfig, output_dir: Path, context: TechniqueContext
) -> ModelRef:
    """Dynamic INT8 except the groups the calibration split shows are too sensitive, kept FP32
    (onnxruntime.quantization)."""
    import onnx

    from tasks.core.inference import Encoder, OnnxPredictor, batched_logits
    from tasks.intake.data import load_split

    examples = load_split(context.split_dir, "calibration")[: config.calibration_examples]
    if not examples:
        raise TechniqueError(
            "quantize.mixed_precision needs calibration examples; set dataset.calibration_size > 0"
        )
    source = model.path / ONNX_FILE
    groups = operator_groups(onnx.load(str(source), load_external_data=False).graph)
    encode = Encoder(model.path, context.max_length)
    texts = [e.text for e in examples]

    def logits_of(folder: Path) -> np.ndarray:
        return batched_logits(OnnxPredictor(folder, threads=0), encode, texts, BATCH)

    def compare(logits: np.ndarray) -> tuple[float, float]:
        agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
        return round(agreement, 6), round(float(((logits - reference) ** 2).mean()), 8)

    reference = logits_of(model.path)
    with tempfile.TemporaryDirectory() as scratch:
        for index, group in enumerate(groups):
            alone = quantize_nodes(source, group.nodes, Path(scratch) / str(index), config)
            group.agreement, group.logit_mse = compare(logits_of(alone))
        # Most sensitive first: the most predictions changed, then the largest logit error.
        ranked = sorted(groups, key=lambda g: (g.agreement, -g.logit_mse))
        allowed = int(config.max_full_precision * len(groups))
        kept: list[Group] = []
        trials: list[dict[str, Any]] = []
        while True:
            quantized = [node for g in groups if g not in kept for node in g.nodes]
            mixed = quantize_nodes(source, quantized, Path(scratch) / f"mix{len(kept)}", config)
            agreement, mse = compare(logits_of(mixed))
            names = [g.name for g in kept]
            trials.append({"full_precision": names, "agreement": agreement, "logit_mse": mse})
            log.info("quantize.mixed_precision: %d group(s) FP32, agreement %.4f", len(kept), agreement)
            if agreement >= config.min_agreement:
                break
            if len(kept) >= allowed:
                raise TechniqueError(
                    f"quantize.mixed_precision: agreement {agreement:.4f} < min_agreement "
                    f"{config.min_agreement} with {len(kept)} of {len(groups)} groups in FP32 "
                    f"(max_full_precision {config.max_full_precision}); allowed: a lower min_agreement "
                    "or a higher max_full_precision"
                )
            kept.append(ranked[len(kept)])
        final = Path(scratch) / f"mix{len(kept)}" / ONNX_FILE
        final.replace(output_dir / ONNX_FILE)
    for group in groups:
        if group in kept:
            group.precision = "fp32"
            group.why = (
                f"agreement {group.agreement:.4f} when quantized alone, the most sensitive left; "
                f"kept FP32 to reach {config.min_agreement}"
            )
        else:
            group.why = f"agreement {group.agreement:.4f} when quantized alone"
    copy_sidecars(model.path, output_dir)
    write_report(
        output_dir,
        {
            "groups": [vars(g) | {"nodes": len(g.nodes)} for g in groups],
            "full_precision": [g.name for g in kept],
            "agreement": trials[-1]["agreement"],
            "logit_mse": trials[-1]["logit_mse"],
            "trials": trials,
            "calibration_examples": len(texts),
        },
    )
    return ModelRef(path=output_dir, format="onnx")
