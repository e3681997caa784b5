"""Classifier folders on disk: the one place that loads and saves them.

Loads are safetensors-only with no remote code. A folder may list heads removed by
`prune.heads` under `slimline_pruned_heads` (stock shapes, those heads zeroed, because
transformers 5 cannot describe a BERT with fewer heads of the original size);
`load_classifier(path, remove_pruned_heads=True)` slices them out, which is what export and
evaluation use so the smaller network is the one measured and shipped.

A folder may also hold projections factorized by `lowrank.svd`, listed per layer under
`slimline_low_rank` ({"attention.self.query": rank, ...} for each encoder layer). Each such
projection is an `nn.Sequential` of `down` (Linear in → rank, no bias) and `up` (Linear rank →
out, the original bias), so its tensors are `<projection>.down.weight`, `<projection>.up.weight`
and `<projection>.up.bias` in model.safetensors. Stock configs cannot describe that, so
`load_classifier` builds the stock network from config.json, swaps in those pairs, and loads the
safetensors state dict strictly (every tensor present, none extra, shapes equal): plain stock
modules only, no pickle, no remote code. `save_classifier` records the ranks from the modules
themselves, so any step that loads, edits and saves such a model keeps config.json true.
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
LOW_RANK_KEY = "slimline_low_rank"
# Projections of an encoder layer (lowrank.svd, prune.semi_structured), by their path in the layer.
ATTENTION_PROJECTIONS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
)
FFN_PROJECTIONS = ("intermediate.dense", "output.dense")
PROJECTIONS = ATTENTION_PROJECTIONS + FFN_PROJECTIONS
ProjectionTargets = Literal["attention", "ffn", "both"]


def projections(targets: ProjectionTargets) -> tuple[str, ...]:
    """The projection paths a technique's `targets` names: attention (q/k/v/output), ffn, or both."""
    return {"attention": ATTENTION_PROJECTIONS, "ffn": FFN_PROJECTIONS, "both": PROJECTIONS}[targets]


WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
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


def low_rank_layout(config: Any) -> list[dict[str, int]]:
    """Factorized projections per layer ({path in the layer: rank}), from config.json."""
    stored = getattr(config, LOW_RANK_KEY, None)
    if stored is None:
        return [{} for _ in range(int(getattr(config, "num_hidden_layers", 0)))]
    layers = int(config.num_hidden_layers)
    if not isinstance(stored, list) or len(stored) != layers or not all(isinstance(r, dict) for r in stored):
        raise TechniqueError(
            f"config.json {LOW_RANK_KEY}={str(stored)[:200]} must hold one {{projection: rank}} object "
            f"per layer ({layers} layers)"
        )
    for row in stored:
        for name, rank in row.items():
            if name not in PROJECTIONS:
                raise TechniqueError(
                    f"config.json {LOW_RANK_KEY} names {name!r}; allowed: {', '.join(PROJECTIONS)}"
                )
            if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
                raise TechniqueError(f"config.json {LOW_RANK_KEY}: {name}={rank!r}; allowed: an integer ≥ 1")
    return [dict(row) for row in stored]


def get_submodule(layer: Any, path: str) -> Any:
    """The module at a dotted `path` inside an encoder layer, or a TechniqueError."""
    module = layer
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            raise TechniqueError(f"the encoder layer has no {path}; it is not a BERT-style layer")
    return module


def set_submodule(layer: Any, path: str, module: Any) -> None:
    parent, _, name = path.rpartition(".")
    setattr(get_submodule(layer, parent) if parent else layer, name, module)


def low_rank_pair(in_features: int, out_features: int, rank: int, bias: bool) -> torch.nn.Sequential:
    """`down` (in → rank, no bias) then `up` (rank → out, the dense layer's bias)."""
    from collections import OrderedDict

    import torch

    return torch.nn.Sequential(
        OrderedDict(
            down=torch.nn.Linear(in_features, rank, bias=False),
            up=torch.nn.Linear(rank, out_features, bias=bias),
        )
    )


def is_low_rank(module: Any) -> bool:
    return hasattr(module, "down") and hasattr(module, "up")


def output_linear(module: Any) -> Any:
    """The Linear whose rows are the projection's outputs (itself, or `up` of a factorized pair)."""
    return module.up if is_low_rank(module) else module


def input_linear(module: Any) -> Any:
    """The Linear whose columns are the projection's inputs (itself, or `down` of a pair)."""
    return module.down if is_low_rank(module) else module


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's safetensors weights (one file, or the shards its index names)."""
    from safetensors.torch import load_file

    index = path / WEIGHTS_INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text()).get("weight_map")
        files = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
        if not files or any("/" in f or "\\" in f or not f.endswith(".safetensors") for f in files):
            raise TechniqueError(f"{index} must map tensors to *.safetensors files in the same folder")
    elif (path / WEIGHTS_FILE).exists():
        files = [WEIGHTS_FILE]
    else:
        raise TechniqueError(f"{path} has no {WEIGHTS_FILE}; models load from safetensors only")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(path / name))
    return state


def _load_low_rank(path: Path, config: Any, layout: list[dict[str, int]], options: dict[str, Any]) -> Any:
    """The stock network built from config.json, its factorized projections swapped for pairs of
    the recorded ranks, then the safetensors state dict loaded strictly."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_config(config, **options)
    for index, (layer, row) in enumerate(zip(encoder_layers(model), layout, strict=True)):
        for name, rank in row.items():
            dense = get_submodule(layer, name)
            if not isinstance(dense, torch.nn.Linear) or rank > min(dense.in_features, dense.out_features):
                raise TechniqueError(
                    f"config.json {LOW_RANK_KEY}: layer {index} {name} rank {rank} does not fit the "
                    f"projection; allowed: 1..{min(dense.in_features, dense.out_features)}"
                )
            set_submodule(
                layer,
                name,
                low_rank_pair(dense.in_features, dense.out_features, rank, dense.bias is not None),
            )
    state = read_weights(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or extra or wrong:
        raise TechniqueError(
            f"{path}: the safetensors weights do not match config.json ({LOW_RANK_KEY}): "
            f"missing {missing[:3]}, unexpected {extra[:3]}, wrong shape {wrong[:3]}"
        )
    model.load_state_dict(state, strict=True)
    return model


def load_classifier(
    path: Path, *, remove_pruned_heads: bool = False, attn_implementation: str | None = None
) -> Any:
    """A sequence classifier from a folder (safetensors, no remote code), in eval mode.

    Projections factorized by `lowrank.svd` (config.json `slimline_low_rank`) are rebuilt as
    `down`/`up` Linear pairs before the weights load. With `remove_pruned_heads`, heads listed
    in `slimline_pruned_heads` are sliced out of the query/key/value and output projections:
    same outputs, smaller tensors. Such a model cannot be written back with `save_classifier`
    (stock configs cannot describe it).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.pytorch_utils import prune_linear_layer

    options: dict[str, Any] = {}
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    layout = low_rank_layout(config)
    if any(layout):
        model = _load_low_rank(path, config, layout, options)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, use_safetensors=True, trust_remote_code=False, **options
        )
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
                module = getattr(attention.self, name)
                if is_low_rank(module):
                    module.up = prune_linear_layer(module.up, index)
                else:
                    setattr(attention.self, name, prune_linear_layer(module, index))
            if is_low_rank(attention.output.dense):
                attention.output.dense.down = prune_linear_layer(attention.output.dense.down, index, dim=1)
            else:
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
        if output_linear(attention.self.query).out_features != full:
            raise TechniqueError(
                "cannot save a model whose heads were sliced out: stock configs cannot describe it; "
                "load it with load_classifier(path) (remove_pruned_heads=False) before saving"
            )
        with torch.no_grad():
            for h in removed:
                rows = slice(h * size, (h + 1) * size)
                for projection in (attention.self.query, attention.self.key, attention.self.value):
                    linear = output_linear(projection)
                    linear.weight[rows] = 0
                    if linear.bias is not None:
                        linear.bias[rows] = 0
                input_linear(attention.output.dense).weight[:, rows] = 0


def _record_low_rank(model: Any) -> None:
    """Write the factorized projections' ranks into the config, read from the modules themselves."""
    layout = [
        {
            name: int(get_submodule(layer, name).down.out_features)
            for name in PROJECTIONS
            if is_low_rank(get_submodule(layer, name))
        }
        for layer in encoder_layers(model)
    ]
    if any(layout):
        setattr(model.config, LOW_RANK_KEY, layout)
    elif hasattr(model.config, LOW_RANK_KEY):
        delattr(model.config, LOW_RANK_KEY)


def save_classifier(model: Any, tokenizer: Any, output_dir: Path) -> ModelRef:
    """Write a complete Hugging Face folder (config.json, model.safetensors, tokenizer files)."""
    _zero_pruned_heads(model)
    _record_low_rank(model)
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
