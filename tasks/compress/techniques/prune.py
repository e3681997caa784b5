"""Structured and unstructured pruning of BERT-family encoders, and recovery fine-tuning.

- `prune.heads`: attention heads ranked by gradient importance of a head mask (Michel et al.
  2019) and removed, the same number in every layer.
- `prune.ffn`: feed-forward neurons ranked the same way and sliced out, the same number per layer.
- `prune.layers`: a chosen subset of encoder layers kept.
- `prune.magnitude`: global unstructured L1 magnitude pruning (torch.nn.utils.prune).
- `finetune.recover`: a short fine-tune against the teacher's logits after pruning.

How removed heads are stored. transformers 5 dropped `head_mask`, `prune_heads` and the
`pruned_heads` config entry, and its BertConfig derives the head size as hidden_size /
num_attention_heads with an attention output projection fixed at hidden × hidden: a BERT with
fewer heads of the original size cannot be described by a stock config, and a folder holding the
smaller tensors fails `from_pretrained` with a size mismatch. So `prune.heads` writes stock shapes
with the removed heads' query/key/value rows and output-projection columns set to zero (the
network computes exactly what the pruned network computes) and lists the removed heads per layer
in config.json under `slimline_pruned_heads`. Every stock consumer loads the folder unchanged;
`load_classifier(path, remove_pruned_heads=True)` slices the listed heads out physically
(transformers.pytorch_utils.prune_linear_layer), which is the form to export when the smaller
graph is wanted. Uneven head counts per layer would reload just as well; the technique keeps the
count equal so fused attention kernels (ONNX Runtime, TensorRT) see one head count per model.

Feed-forward and layer pruning change `intermediate_size` and `num_hidden_layers`, which stock
configs describe, so their tensors shrink on disk. `prune.layers` (and `distill.student`) record
which original layer each remaining layer came from under `slimline_source_layers`, so a later
distillation can pair student and teacher layers.

Only BERT-layout encoders (bert, roberta, xlm-roberta, electra: `encoder.layer[i].attention.self.
query`, …) are supported; others fail with a TechniqueError.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydantic import Field, field_validator

from tasks.compress.technique import TechniqueConfig, TechniqueContext, technique
from tasks.compress.training import PRECISION_FIELD, Precision
from tasks.core.errors import TechniqueError
from tasks.core.models import (
    PROJECTIONS,
    PRUNED_HEADS_KEY,
    ModelRef,
    ProjectionTargets,
    encoder_layers,
    get_submodule,
    head_dim,
    is_low_rank,
    keep_layers,
    live_heads,
    load_classifier,
    load_tokenizer,
    projections,
    pruned_heads,
    save_classifier,
    source_layers,
    write_report,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Batches = list[tuple[dict[str, "torch.Tensor"], "torch.Tensor"]]


def labelled_batches(
    context: TechniqueContext, tokenizer: Any, batches: int, batch_size: int, name: str
) -> Batches:
    """The first `batches` × `batch_size` training examples, tokenized, with their labels."""
    import torch

    from tasks.intake.data import load_split

    examples = load_split(context.split_dir, "train")[: batches * batch_size]
    if not examples:
        raise TechniqueError(f"{name}: the training split is empty; importance needs labelled examples")
    out: Batches = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        encoded = tokenizer(
            [e.text for e in chunk],
            padding=True,
            truncation=True,
            max_length=context.max_length,
            return_tensors="pt",
        )
        out.append((dict(encoded), torch.tensor([e.label for e in chunk])))
    return out


def input_group_importance(
    model: Any, linears: Sequence[torch.nn.Linear], group: int, batches: Batches
) -> torch.Tensor:
    """Σ over batches of |∂loss/∂m| for a mask m on the input features of each Linear, one mask
    entry per `group` consecutive features (a head's slice, or one FFN neuron).

    The mask sits in a forward pre-hook that scales the Linear's input, so m = 1 leaves the model
    unchanged and the gradient is the first-order Taylor estimate of the loss change when the
    group is removed (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"). The loss is
    the task cross-entropy against the training labels, with dropout off.
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    mask = torch.ones(len(linears), linears[0].in_features // group, requires_grad=True)

    def scale(row: int) -> Callable[[torch.nn.Module, tuple[Any, ...]], tuple[Any, ...]]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (args[0] * mask[row].repeat_interleave(group), *args[1:])

        return hook

    handles = [linear.register_forward_pre_hook(scale(row)) for row, linear in enumerate(linears)]
    total = torch.zeros_like(mask)
    model.eval()
    try:
        for encoded, labels in tqdm(batches, desc="importance", unit="batch", leave=False):
            loss = F.cross_entropy(model(**encoded).logits, labels)
            (gradient,) = torch.autograd.grad(loss, mask)
            total += gradient.abs()
    finally:
        for handle in handles:
            handle.remove()
    return total


# --- prune.heads ----------------------------------------------------------------------------


class ImportanceConfig(TechniqueConfig):
    """How structured-pruning importance is estimated (shared by heads and FFN neurons)."""

    importance_batches: int = Field(
        8, ge=1, le=10_000, description="Training batches over which mask gradients are summed."
    )
    batch_size: int = Field(16, ge=1, le=512, description="Examples per importance batch.")


class HeadPruningConfig(ImportanceConfig):
    heads_to_prune: int = Field(
        1, ge=1, le=1024, description="Heads removed from every layer (the same count in each layer)."
    )


@technique("prune.heads", HeadPruningConfig, accepts=("hf",), produces="hf", uses_data=True)
def prune_heads(
    model: ModelRef, config: HeadPruningConfig, output_dir: Path, context: TechniqueContext
) -> ModelRef:
    """Remove the least important attention heads of every layer (gradient of a head mask, torch)."""
    network = load_classifier(model.path)
    tokenizer = load_tokenizer(model.path)
    live = live_heads(network.config)
    fewest = min(len(row) for row in live)
    if config.heads_to_prune >= fewest:
        allowed = f"1..{fewest - 1}" if fewest > 1 else "none, every layer is down to one head"
        raise TechniqueError(
            f"prune.heads: heads_to_prune={config.heads_to_prune} but the model has {fewest} heads per "
            f"layer; allowed: {allowed}"
        )
    layers = encoder_layers(network)
    batches = labelled_batches(
        context, tokenizer, config.importance_batches, config.batch_size, "prune.heads"
    )
    importance = input_group_importance(
        network, [layer.attention.output.dense for layer in layers], head_dim(network.config), batches
    )
    # Michel et al. normalise scores per layer for a global ranking; ranking within each layer,
    # as here, does not need it.
    removed = pruned_heads(network.config)
    for index, candidates in enumerate(live):
        # Least important first; sorted() is stable, so ties break towards the lower head index.
        ranked = sorted(candidates, key=importance[index].tolist().__getitem__)
        removed[index] = sorted(removed[index] + ranked[: config.heads_to_prune])
    setattr(network.config, PRUNED_HEADS_KEY, removed)
    save_classifier(network, tokenizer, output_dir)
    write_report(output_dir, {"pruned_heads": removed, "head_importance": importance.tolist()})
    log.info("prune.heads: removed %s", removed)
    return ModelRef(path=output_dir, format="hf")


# --- prune.ffn ------------------------------------------------------------------------------


class FfnPruningConfig(ImportanceConfig):
    keep_fraction: float = Field(
        0.5, gt=0, le=1, description="Share of feed-forward neurons kept in every layer."
    )


@technique("prune.ffn", FfnPruningConfig, accepts=("hf",), produces="hf", uses_data=True)
def prune_ffn(
    model: ModelRef, config: FfnPruningConfig, output_dir: Path, context: TechniqueContext
) -> ModelRef:
    """Slice the least important feed-forward neurons out of every layer (Taylor importance, torch).

    A neuron's importance is Σ_batches |∂loss/∂m| for a mask m on its activation (the input of
    output.dense): first-order Taylor, activation-based, as for heads. Every layer keeps the same
    number of neurons, so config.json's single `intermediate_size` describes the result.
    """
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    network = load_classifier(model.path)
    tokenizer = load_tokenizer(model.path)
    layers = encoder_layers(network)
    if any(is_low_rank(layer.intermediate.dense) or is_low_rank(layer.output.dense) for layer in layers):
        raise TechniqueError(
            "prune.ffn: the feed-forward projections are factorized (lowrank.svd); prune before factorizing"
        )
    width = int(network.config.intermediate_size)
    if any(layer.intermediate.dense.out_features != width for layer in layers):
        raise TechniqueError("prune.ffn: layers differ in feed-forward width; config.json cannot describe it")
    keep = max(1, round(config.keep_fraction * width))
    batches = labelled_batches(context, tokenizer, config.importance_batches, config.batch_size, "prune.ffn")
    importance = input_group_importance(network, [layer.output.dense for layer in layers], 1, batches)
    for index, layer in enumerate(layers):
        # Most important first; sorted() stays stable with reverse, so ties keep the lower index.
        order = sorted(range(width), key=importance[index].tolist().__getitem__, reverse=True)
        index_kept = cast("torch.LongTensor", torch.tensor(sorted(order[:keep])))
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, index_kept, dim=0)
        layer.output.dense = prune_linear_layer(layer.output.dense, index_kept, dim=1)
    network.config.intermediate_size = keep
    save_classifier(network, tokenizer, output_dir)
    write_report(output_dir, {"intermediate_size_before": width, "intermediate_size": keep})
    log.info("prune.ffn: intermediate size %d -> %d", width, keep)
    return ModelRef(path=output_dir, format="hf")


# --- prune.layers ---------------------------------------------------------------------------


class LayerPruningConfig(TechniqueConfig):
    keep: list[int] = Field(
        [0, 2, 4],
        min_length=1,
        description="Indices (0-based, ascending) of the encoder layers kept; the rest are dropped.",
    )

    @field_validator("keep")
    @classmethod
    def _ascending_unique(cls, keep: list[int]) -> list[int]:
        if any(i < 0 for i in keep) or any(b <= a for a, b in itertools.pairwise(keep)):
            raise ValueError(f"keep={keep}; allowed: distinct layer indices ≥ 0 in ascending order")
        return keep


@technique("prune.layers", LayerPruningConfig, accepts=("hf",), produces="hf")
def prune_layers(
    model: ModelRef, config: LayerPruningConfig, output_dir: Path, context: TechniqueContext
) -> ModelRef:
    """Keep a chosen subset of encoder layers (torch ModuleList surgery); num_hidden_layers follows."""
    network = load_classifier(model.path)
    depth = len(encoder_layers(network))
    outside = [i for i in config.keep if i >= depth]
    if outside:
        raise TechniqueError(
            f"prune.layers: keep={config.keep} names layer {outside[0]} but the model has {depth} "
            f"layers; allowed: 0..{depth - 1}"
        )
    keep_layers(network, config.keep)
    save_classifier(network, load_tokenizer(model.path), output_dir)
    write_report(output_dir, {"kept_layers": config.keep, "source_layers": source_layers(network.config)})
    return ModelRef(path=output_dir, format="hf")


# --- prune.magnitude ------------------------------------------------------------------------


class MagnitudePruningConfig(TechniqueConfig):
    sparsity: float = Field(
        0.5, ge=0, lt=1, description="Share of encoder Linear weights set to zero (smallest |w| first)."
    )


@technique("prune.magnitude", MagnitudePruningConfig, accepts=("hf",), produces="hf")
def prune_magnitude(
    model: ModelRef, config: MagnitudePruningConfig, output_dir: Path, context: TechniqueContext
) -> ModelRef:
    """Zero the smallest-magnitude encoder weights globally (torch.nn.utils.prune, L1, made permanent).

    Unstructured sparsity leaves every tensor its dense shape: dense runtimes (ONNX Runtime CPU,
    TensorRT without sparse kernels) run exactly as fast as before. What it buys is a smaller
    compressed download (zeros compress well) and a starting point for sparse kernels. The
    achieved sparsity (zeros already there, such as removed heads, count too) is written to
    technique_report.json.
    """
    import torch
    from torch.nn.utils import prune

    network = load_classifier(model.path)
    linears = [m for m in encoder_layers(network).modules() if isinstance(m, torch.nn.Linear)]
    parameters = [(linear, "weight") for linear in linears]
    prune.global_unstructured(parameters, pruning_method=prune.L1Unstructured, amount=config.sparsity)
    for linear, name in parameters:
        prune.remove(linear, name)
    total = sum(linear.weight.numel() for linear in linears)
    zeros = sum(int((linear.weight == 0).sum()) for linear in linears)
    achieved = zeros / total
    save_classifier(network, load_tokenizer(model.path), output_dir)
    write_report(
        output_dir,
        {
            "sparsity": round(achieved, 6),
            "target_sparsity": config.sparsity,
            "weights": total,
            "zeros": zeros,
        },
    )
    log.info("prune.magnitude: %d of %d encoder weights zero (%.4f)", zeros, total, achieved)
    return ModelRef(path=output_dir, format="hf")


# --- prune.semi_structured ------------------------------------------------------------------

SEMI_STRUCTURED_GROUP = 4  # 2:4: two of every four consecutive input weights of an output row kept
SEMI_STRUCTURED_KEPT = 2


class SemiStructuredConfig(TechniqueConfig):
    targets: ProjectionTargets = Field(
        "both", description="Projections pruned: attention (q/k/v/output), ffn (intermediate/output), both."
    )


def two_of_four(network: Any, targets: ProjectionTargets) -> tuple[int, int]:
    """Zero the two smallest-|w| weights of every group of four consecutive inputs of the targeted
    encoder projections, in place; return (zero weights, targeted weights)."""
    import torch

    layers = encoder_layers(network)
    if any(is_low_rank(get_submodule(layer, name)) for layer in layers for name in PROJECTIONS):
        raise TechniqueError(
            "prune.semi_structured: the model has low-rank projections; prune before lowrank.svd"
        )
    weights = []
    with torch.no_grad():
        for layer in layers:
            for name in projections(targets):
                weight = get_submodule(layer, name).weight
                rows, columns = weight.shape
                if columns % SEMI_STRUCTURED_GROUP:
                    raise TechniqueError(
                        f"prune.semi_structured: {name} has {columns} inputs, not a multiple of "
                        f"{SEMI_STRUCTURED_GROUP}; the 2:4 pattern needs groups of four"
                    )
                groups = weight.reshape(rows, columns // SEMI_STRUCTURED_GROUP, SEMI_STRUCTURED_GROUP)
                smallest = groups.abs().argsort(dim=-1)[..., : SEMI_STRUCTURED_GROUP - SEMI_STRUCTURED_KEPT]
                groups.scatter_(-1, smallest, 0.0)
                weights.append(weight)
    return sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)


@technique("prune.semi_structured", SemiStructuredConfig, accepts=("hf",), produces="hf")
def prune_semi_structured(
    model: ModelRef, config: SemiStructuredConfig, output_dir: Path, context: TechniqueContext
) -> ModelRef:
    """2:4 structured sparsity: in every group of four consecutive input weights of each targeted
    encoder projection, the two of smallest |w| set to zero.

    It is the pattern NVIDIA's sparse tensor cores (Ampere and later) run, through TensorRT's sparse
    weights or PyTorch's semi-structured kernels (torch.sparse.to_sparse_semi_structured); dense
    runtimes, CPUs included, run it as fast as before. The weights keep their dense shape (zeros
    explicit), so follow it with `finetune.recover` and `keep_zeros: true`, which trains the kept
    weights and leaves the pattern intact.
    """
    network = load_classifier(model.path)
    zeros, pruned = two_of_four(network, config.targets)
    save_classifier(network, load_tokenizer(model.path), output_dir)
    write_report(
        output_dir,
        {
            "pattern": "2:4",
            "targets": config.targets,
            "weights": pruned,
            "zeros": zeros,
            "sparsity": zeros / pruned,
        },
    )
    log.info("prune.semi_structured: %d of %d targeted weights zero (2:4)", zeros, pruned)
    return ModelRef(path=output_dir, format="hf")


# --- finetune.recover -----------------------------------------------------------------------


class RecoveryConfig(TechniqueConfig):
    epochs: int = Field(2, ge=1, le=20, description="Passes over the training examples.")
    learning_rate: float = Field(3e-5, gt=0, lt=1, description="AdamW peak learning rate.")
    batch_size: int = Field(32, ge=1, le=512, description="Examples per optimizer step.")
    temperature: float = Field(2.0, gt=0, le=20, description="Softmax temperature of the soft targets.")
    alpha: float = Field(
        0.5, ge=0, le=1, description="Weight of the teacher soft-target loss; 1 - alpha weighs the labels."
    )
    max_examples: int = Field(6000, ge=1, le=1_000_000, description="Training examples used (first N).")
    seed: int = Field(0, description="Seed for shuffling and dropout.")
    precision: Precision = PRECISION_FIELD
    keep_zeros: bool = Field(
        False,
        description="Keep the encoder projections' zero weights at zero (after prune.semi_structured or "
        "prune.magnitude), so recovery trains the kept weights and the sparsity pattern survives.",
    )


@technique("finetune.recover", RecoveryConfig, accepts=("hf",), produces="hf", uses_data=True)
def finetune_recover(
    model: ModelRef, config: RecoveryConfig, output_dir: Path, context: TechniqueContext
) -> ModelRef:
    """Recover accuracy after pruning: fine-tune on labels and the teacher's cached logits (torch)."""
    from tasks.compress.training import (
        TrainItem,
        TrainSettings,
        finish_training,
        resolve_precision,
        teacher_logits,
        train_student,
    )
    from tasks.intake.data import load_split

    network = load_classifier(model.path)
    tokenizer = load_tokenizer(model.path)
    examples = load_split(context.split_dir, "train")[: config.max_examples]
    items = [TrainItem(e.text, e.label) for e in examples]
    precision = resolve_precision(config.precision)
    cached = teacher_logits(context, rows=len(items), precision=precision)
    logits = cached.values
    if logits.shape[1] != int(network.config.num_labels):
        raise TechniqueError(
            f"finetune.recover: the teacher has {logits.shape[1]} labels, the model "
            f"{network.config.num_labels}; they must match"
        )
    settings = TrainSettings(
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        temperature=config.temperature,
        kl_weight=config.alpha,
        hard_weight=1 - config.alpha,
        seed=config.seed,
        precision=precision,
        keep_zeros=config.keep_zeros,
    )
    training = train_student(
        network,
        None,
        items,
        settings,
        tokenizer=tokenizer,
        max_length=context.max_length,
        logits=logits,
        desc="finetune.recover",
    )
    save_classifier(network, tokenizer, output_dir)
    write_report(output_dir, finish_training(output_dir, training, cached) | {"examples": len(items)})
    return ModelRef(path=output_dir, format="hf")
