"""`optimize.ort_fusions`: ONNX Runtime's transformer graph fusions (attention, LayerNorm with
residual, GELU with bias, embedding LayerNorm), applied before quantization so the quantizer
and the runtime see fused operators."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

from pydantic import Field

from tasks.compress.technique import TechniqueConfig, TechniqueContext, technique
from tasks.compress.techniques.onnx_export import copy_sidecars
from tasks.core.errors import TechniqueError
from tasks.core.models import ONNX_FILE, ModelRef, live_heads

log = logging.getLogger(__name__)


class OrtFusionConfig(TechniqueConfig):
    attention: bool = Field(True, description="Fuse self-attention into one Attention operator.")
    layer_norm: bool = Field(True, description="Fuse LayerNorm (and residual adds: SkipLayerNorm).")
    gelu: bool = Field(True, description="Fuse GELU (and its bias: BiasGelu).")
    embed_layer_norm: bool = Field(True, description="Fuse embeddings and their LayerNorm.")


@technique("optimize.ort_fusions", OrtFusionConfig, accepts=("onnx",), produces="onnx")
def ort_fusions(
    model: ModelRef, config: OrtFusionConfig, output_dir: Path, context: TechniqueContext
) -> ModelRef:
    """Fuse transformer subgraphs with onnxruntime.transformers.optimizer (python fusions)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    hf_config = json.loads((model.path / "config.json").read_text())
    # The exported graph reshapes Q/K/V to (-1 heads, head size), so the optimizer takes the head
    # count and attention width from these arguments. A head-pruned model has fewer heads than
    # config.json says (prune.heads keeps stock shapes there): pass the live count and its width,
    # or the fused Attention splits heads wrongly (and quantized Attention refuses the width).
    heads = int(hf_config["num_attention_heads"])
    live = {len(row) for row in live_heads(SimpleNamespace(**hf_config))}
    if len(live) != 1:
        raise TechniqueError(
            f"optimize.ort_fusions: layers of {model.path} keep different head counts {sorted(live)}; "
            "fused Attention needs one count (prune.heads removes the same number from every layer)"
        )
    num_heads = live.pop()
    attention_width = num_heads * int(hf_config["hidden_size"]) // heads
    options = FusionOptions("bert")
    options.enable_attention = config.attention
    options.enable_layer_norm = config.layer_norm
    options.enable_skip_layer_norm = config.layer_norm
    options.enable_gelu = config.gelu
    options.enable_bias_gelu = config.gelu
    options.enable_embed_layer_norm = config.embed_layer_norm
    try:
        optimized = optimize_model(
            str(model.path / ONNX_FILE),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=attention_width,
            optimization_options=options,
            opt_level=0,  # graph fusions in python only; the runtime applies its own at load
        )
        optimized.save_model_to_file(str(output_dir / ONNX_FILE))
    except Exception as exc:  # the optimizer raises many unrelated types
        raise TechniqueError(f"optimize.ort_fusions failed for {model.path}: {exc}") from exc
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    log.info("fused operators: %s", fused)
    (output_dir / "fusions.json").write_text(json.dumps(fused, indent=2))
    copy_sidecars(model.path, output_dir)
    return ModelRef(path=output_dir, format="onnx")
