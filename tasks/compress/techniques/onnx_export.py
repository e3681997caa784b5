"""`export.onnx`: a Hugging Face sequence classifier to ONNX with dynamic batch and sequence axes."""

from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import Field

from tasks.compress.technique import TechniqueConfig, TechniqueContext, technique
from tasks.core.errors import TechniqueError
from tasks.core.models import ONNX_FILE, ModelRef

# Files that travel with every model folder so the next step can tokenize and name labels.
SIDECAR_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def copy_sidecars(src: Path, dest: Path) -> None:
    for name in SIDECAR_FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, dest / name)


class OnnxExportConfig(TechniqueConfig):
    opset: int = Field(17, ge=14, le=21, description="ONNX opset version of the exported graph.")


@technique("export.onnx", OnnxExportConfig, accepts=("hf",), produces="onnx")
def export_onnx(
    model: ModelRef, config: OnnxExportConfig, output_dir: Path, context: TechniqueContext
) -> ModelRef:
    """Export with torch.onnx (TorchScript exporter), eager attention, logits as the one output."""
    import torch

    from tasks.core.models import load_classifier, load_tokenizer

    # Heads removed by prune.heads are sliced out here, so the graph really is smaller.
    network = load_classifier(model.path, remove_pruned_heads=True, attn_implementation="eager")
    tokenizer = load_tokenizer(model.path)
    sample = tokenizer(["an example input", "a second one"], return_tensors="pt", padding=True)
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    try:
        with torch.inference_mode():
            torch.onnx.export(
                network,
                tuple(sample[n] for n in names),
                str(output_dir / ONNX_FILE),
                input_names=names,
                output_names=["logits"],
                dynamic_axes=axes,
                opset_version=config.opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:  # the exporter raises many unrelated types
        raise TechniqueError(f"export.onnx failed for {model.path}: {exc}") from exc
    copy_sidecars(model.path, output_dir)
    return ModelRef(path=output_dir, format="onnx")
