"""Classifier folders on disk: the one place that loads and saves them.

Loads are safetensors-only with no remote code. A folder may list heads removed by
`prune.heads` under `slimline_pruned_heads` (stock shapes, those heads zeroed, because
transformers 5 cannot describe a BERT with fewer heads of the original size);
`load_classifier(path, remove_pruned_heads=True)` slices them out, which is what export and
evaluation use so the smaller network is the one measured and shipped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import BaseModel

from tasks.core.errors import TechniqueError

if TYPE_CHECKING:
    import torch

ModelFormat = Literal["hf", "onnx"]


class ModelRef(BaseModel):
    """A model folder: `hf` (config.json + safetensors) or `onnx` (model.onnx); both carry the
    tokenizer files and config.json so any step can tokenize and name labels."""

    path: Path
    format: ModelFormat


ONNX_FILE = "model.onnx"
WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".data")  # .data: ONNX external weights
PRUNED_HEADS_KEY = "slimline_pruned_heads"
SOURCE_LAYERS_KEY = "slimline_source_layers"
REPORT_FILE = "technique_report.json"


def model_size_bytes(path: Path) -> int:
    """Bytes of weights and graph on disk (tokenizer and metadata files excluded)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.name.endswith(WEIGHT_SUFFIXES))


def encoder_layers(model: Any) -> Any:
    """The encoder's `nn.ModuleList` of layers, or a TechniqueError for a non-BERT layout."""
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    first = layers[0] if layers is not None and len(layers) else None
    if first is None or not hasattr(getattr(first, "attention", None), "self"):
        raise TechniqueError(
            f"model_type={model.config.model_type!r} does not have a BERT-style encoder; "
            "allowed: bert, roberta, xlm-roberta, electra"
        )
    return layers


def head_dim(config: Any) -> int:
    return int(config.hidden_size) // int(config.num_attention_heads)


def pruned_heads(config: Any) -> list[list[int]]:
    """Removed heads per layer (original head numbering), from config.json."""
    layers, heads = int(config.num_hidden_layers), int(config.num_attention_heads)
    stored = getattr(config, PRUNED_HEADS_KEY, None)
    if stored is None:
        return [[] for _ in range(layers)]
    if len(stored) != layers or any(h not in range(heads) for row in stored for h in row):
        raise TechniqueError(
            f"config.json {PRUNED_HEADS_KEY}={stored} does not fit {layers} layers of {heads} heads"
        )
    return [sorted(int(h) for h in row) for row in stored]


def live_heads(config: Any) -> list[list[int]]:
    """Heads still in use per layer."""
    heads = int(config.num_attention_heads)
    return [[h for h in range(heads) if h not in removed] for removed in pruned_heads(config)]


def source_layers(config: Any) -> list[int]:
    """For each layer, the index of the original checkpoint's layer it was copied from."""
    stored = getattr(config, SOURCE_LAYERS_KEY, None)
    return [int(i) for i in stored] if stored is not None else list(range(int(config.num_hidden_layers)))


def load_classifier(
    path: Path, *, remove_pruned_heads: bool = False, attn_implementation: str | None = None
) -> Any:
    """A sequence classifier from a folder (safetensors, no remote code), in eval mode.

    With `remove_pruned_heads`, heads listed in `slimline_pruned_heads` are sliced out of the
    query/key/value and output projections: same outputs, smaller tensors. Such a model cannot
    be written back with `save_classifier` (stock configs cannot describe it).
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.pytorch_utils import prune_linear_layer

    options: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False}
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    model = AutoModelForSequenceClassification.from_pretrained(path, **options)
    layers = encoder_layers(model)
    if remove_pruned_heads:
        import torch

        size = head_dim(model.config)
        for layer, keep in zip(layers, live_heads(model.config), strict=True):
            attention = layer.attention
            if len(keep) == attention.self.num_attention_heads:
                continue
            index = cast(
                "torch.LongTensor", torch.cat([torch.arange(h * size, (h + 1) * size) for h in keep])
            )
            for name in ("query", "key", "value"):
                setattr(attention.self, name, prune_linear_layer(getattr(attention.self, name), index))
            attention.output.dense = prune_linear_layer(attention.output.dense, index, dim=1)
            attention.self.num_attention_heads = len(keep)
            attention.self.all_head_size = len(keep) * size
    return model.eval()


def _zero_pruned_heads(model: Any) -> None:
    """Zero the removed heads' q/k/v rows and output columns, so the stock-shaped network computes
    exactly what the pruned one does (and stays so: their gradients are exactly zero)."""
    import torch

    size = head_dim(model.config)
    full = int(model.config.num_attention_heads) * size
    for layer, removed in zip(encoder_layers(model), pruned_heads(model.config), strict=True):
        attention = layer.attention
        if attention.self.query.out_features != full:
            raise TechniqueError(
                "cannot save a model whose heads were sliced out: stock configs cannot describe it; "
                "load it with load_classifier(path) (remove_pruned_heads=False) before saving"
            )
        with torch.no_grad():
            for h in removed:
                rows = slice(h * size, (h + 1) * size)
                for linear in (attention.self.query, attention.self.key, attention.self.value):
                    linear.weight[rows] = 0
                    if linear.bias is not None:
                        linear.bias[rows] = 0
                attention.output.dense.weight[:, rows] = 0


def save_classifier(model: Any, tokenizer: Any, output_dir: Path) -> ModelRef:
    """Write a complete Hugging Face folder (config.json, model.safetensors, tokenizer files)."""
    _zero_pruned_heads(model)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return ModelRef(path=output_dir, format="hf")


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def keep_layers(model: Any, keep: Sequence[int]) -> None:
    """Keep only the encoder layers `keep` (in that order) and update the config to match."""
    import torch

    layers = encoder_layers(model)
    removed, sources = pruned_heads(model.config), source_layers(model.config)
    model.base_model.encoder.layer = torch.nn.ModuleList([layers[i] for i in keep])
    for new_index, layer in enumerate(model.base_model.encoder.layer):
        # The attention caches (decoder use only) are indexed by position in the stack.
        for module in (layer.attention.self, getattr(layer, "crossattention", None)):
            if module is not None and hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    model.config.num_hidden_layers = len(keep)
    setattr(model.config, PRUNED_HEADS_KEY, [removed[i] for i in keep])
    setattr(model.config, SOURCE_LAYERS_KEY, [sources[i] for i in keep])


def write_report(output_dir: Path, report: dict[str, Any]) -> None:
    (output_dir / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True))
