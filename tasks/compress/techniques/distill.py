"""`distill.student`: a shallower student cut from the input model and trained against the teacher.

The student keeps the input model's layers listed in `layers` (DistilBERT-style initialisation:
e.g. [0, 2, 4] of a 6-layer teacher), then trains with `tasks.compress.training.train_student` on the
labelled training examples plus an unlabelled transfer set (the following training examples,
labels dropped): soft-target KL to the teacher's cached logits, optional hard labels, optional
hidden-state and attention losses between each student layer and the teacher layer it was copied
from. The input model may already be pruned (fewer heads or feed-forward neurons); the teacher is
always the original checkpoint (`context.teacher`).
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from tasks.compress.technique import TechniqueConfig, TechniqueContext, technique
from tasks.compress.training import PRECISION_FIELD, Precision
from tasks.core.errors import TechniqueError
from tasks.core.models import (
    ModelRef,
    encoder_layers,
    keep_layers,
    live_heads,
    load_classifier,
    load_tokenizer,
    save_classifier,
    source_layers,
    write_report,
)

log = logging.getLogger(__name__)


class DistillConfig(TechniqueConfig):
    layers: Annotated[list[int], Field(min_length=1)] | None = Field(
        None,
        description="Input-model layers the student keeps (0-based, ascending); null keeps them all.",
    )
    epochs: int = Field(3, ge=1, le=50, description="Passes over the labelled and transfer examples.")
    learning_rate: float = Field(5e-5, gt=0, lt=1, description="AdamW peak learning rate.")
    batch_size: int = Field(32, ge=1, le=512, description="Examples per optimizer step.")
    temperature: float = Field(2.0, gt=0, le=20, description="Softmax temperature of the soft targets.")
    kl_weight: float = Field(1.0, ge=0, description="Weight of the KL loss to the teacher's soft targets.")
    hard_weight: float = Field(0.5, ge=0, description="Weight of the cross-entropy on labelled examples.")
    hidden_weight: float = Field(0.0, ge=0, description="Weight of the hidden-state MSE to the teacher.")
    attention_weight: float = Field(
        0.0, ge=0, description="Weight of the attention-distribution KL to the teacher (eager attention)."
    )
    train_examples: int = Field(
        6000, ge=1, le=1_000_000, description="Labelled examples: the first N of the training split."
    )
    transfer_examples: int = Field(
        4000, ge=0, le=1_000_000, description="Unlabelled transfer examples: the next N, labels ignored."
    )
    seed: int = Field(0, description="Seed for shuffling and dropout.")
    precision: Precision = PRECISION_FIELD

    @field_validator("layers")
    @classmethod
    def _ascending_unique(cls, layers: list[int] | None) -> list[int] | None:
        if layers is not None and (
            any(i < 0 for i in layers) or any(b <= a for a, b in itertools.pairwise(layers))
        ):
            raise ValueError(f"layers={layers}; allowed: distinct layer indices ≥ 0 in ascending order")
        return layers

    @model_validator(mode="after")
    def _some_loss(self) -> DistillConfig:
        if self.kl_weight + self.hard_weight + self.hidden_weight + self.attention_weight == 0:
            raise ValueError(
                "kl_weight, hard_weight, hidden_weight and attention_weight are all 0; allowed: "
                "at least one > 0"
            )
        return self


@technique("distill.student", DistillConfig, accepts=("hf",), produces="hf", uses_data=True)
def distill_student(
    model: ModelRef, config: DistillConfig, output_dir: Path, context: TechniqueContext
) -> ModelRef:
    """Distil the teacher into a student made of chosen input-model layers (torch, transformers)."""
    from transformers import AutoConfig

    from tasks.compress.training import (
        TrainItem,
        TrainSettings,
        finish_training,
        resolve_precision,
        teacher_logits,
        train_student,
    )
    from tasks.intake.data import load_split

    teacher_config = AutoConfig.from_pretrained(context.teacher.path, trust_remote_code=False)
    teacher_depth = int(teacher_config.num_hidden_layers)
    attention = "eager" if config.attention_weight > 0 else None
    student = load_classifier(model.path, attn_implementation=attention)
    depth = len(encoder_layers(student))
    layers = config.layers if config.layers is not None else list(range(depth))
    if layers[-1] >= depth:
        raise TechniqueError(
            f"distill.student: layers={layers} names layer {layers[-1]} but the input model has "
            f"{depth} layers; allowed: 0..{depth - 1}"
        )
    if len(layers) > teacher_depth:
        raise TechniqueError(
            f"distill.student: layers={layers} makes a {len(layers)}-layer student but the teacher has "
            f"{teacher_depth} layers; allowed: at most {teacher_depth} layers (a student may not be "
            "deeper than its teacher)"
        )
    if int(teacher_config.num_labels) != int(student.config.num_labels):
        raise TechniqueError(
            f"distill.student: the teacher has {teacher_config.num_labels} labels, the input model "
            f"{student.config.num_labels}; they must match"
        )
    keep_layers(student, layers)
    # Student layer i was copied from original layer source[i]; the teacher is that original.
    layer_map = dict(enumerate(source_layers(student.config)))
    if (config.hidden_weight > 0 or config.attention_weight > 0) and max(layer_map.values()) >= teacher_depth:
        raise TechniqueError(
            f"distill.student: student layers come from teacher layers {list(layer_map.values())} but "
            f"the teacher has {teacher_depth}; hidden/attention losses need a model derived from it"
        )

    train = load_split(context.split_dir, "train")
    labelled = train[: config.train_examples]
    transfer = train[len(labelled) : len(labelled) + config.transfer_examples]
    items = [TrainItem(e.text, e.label) for e in labelled] + [TrainItem(e.text, None) for e in transfer]
    logits, cached = None, None
    precision = resolve_precision(config.precision)
    if config.kl_weight > 0:
        # Labelled then transfer: the split's first rows, in order.
        cached = teacher_logits(context, rows=len(items), precision=precision)
        logits = cached.values
    teacher = None
    if config.hidden_weight > 0 or config.attention_weight > 0:
        teacher = load_classifier(context.teacher.path, attn_implementation=attention)
    settings = TrainSettings(
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        temperature=config.temperature,
        kl_weight=config.kl_weight,
        hard_weight=config.hard_weight,
        hidden_weight=config.hidden_weight,
        attention_weight=config.attention_weight,
        seed=config.seed,
        precision=precision,
    )
    tokenizer = load_tokenizer(model.path)
    training = train_student(
        student,
        teacher,
        items,
        settings,
        tokenizer=tokenizer,
        max_length=context.max_length,
        logits=logits,
        layer_map=layer_map,
        live_heads=live_heads(student.config),
        desc="distill.student",
    )
    save_classifier(student, tokenizer, output_dir)
    write_report(
        output_dir,
        finish_training(output_dir, training, cached)
        | {
            "layers": layers,
            "teacher_layers": list(layer_map.values()),
            "labelled_examples": len(labelled),
            "transfer_examples": len(transfer),
        },
    )
    log.info("distill.student: %d layers, epoch losses %s", len(layers), training.epoch_losses)
    return ModelRef(path=output_dir, format="hf")
