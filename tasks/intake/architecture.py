"""What a supported config.json implies about the weights beside it.

The fields that size the network are read strictly (whole positive numbers, heads dividing the
hidden size) and held to the settings' limits; from them follows every tensor the encoder needs,
with its shape, and the optional heads (pooler, sequence classification, pre-training) a
checkpoint may carry. The safetensors headers are then matched against that list, so a config
that declares a network its weights do not hold is refused before anything builds it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from tasks.core.config import format_errors
from tasks.core.errors import CheckpointRefused
from tasks.core.settings import Settings

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "electra")
WEIGHT_DTYPES = ("F32", "F16", "BF16")
# Integer buffers some savers write beside the weights (position and token-type index rows).
BUFFER_DTYPES = ("I64",)
BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
# The base model's attribute name: `bert.encoder...` in a task model, `encoder...` in a bare one.
BASE_PREFIX = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "electra": "electra"}
# Activations transformers builds by name; anything else fails when the model is constructed.
ACTIVATIONS = (
    "gelu", "gelu_new", "gelu_fast", "gelu_python", "gelu_pytorch_tanh", "gelu_accurate",
    "quick_gelu", "relu", "relu6", "silu", "swish", "tanh", "mish", "sigmoid", "linear",
)  # fmt: skip
# RoBERTa-style embeddings number positions after the padding index: two rows are never used.
POSITION_OFFSET = {"bert": 0, "electra": 0, "roberta": 2, "xlm-roberta": 2}
# A bare encoder gets a freshly built classifier of this many rows; the bound keeps it small.
MAX_LABELS = 10_000
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")

Shape = tuple[int, ...]


def _written_as_float(value: object) -> object:
    if isinstance(value, int):
        raise ValueError("Input should be written with a decimal point (transformers requires a float)")
    return value


# transformers checks these numbers' types when it builds the config, and torch their ranges when
# it builds the layers: both would fail with a traceback after verification.
Probability = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Epsilon = Annotated[float, BeforeValidator(_written_as_float), Field(gt=0, lt=1, allow_inf_nan=False)]
Scale = Annotated[float, BeforeValidator(_written_as_float), Field(ge=0, allow_inf_nan=False)]


class Architecture(BaseModel):
    """The config.json fields that decide the network's size. Strict: 32.0, "32" or true is not 32."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    model_type: Literal["bert", "roberta", "xlm-roberta", "electra"]
    vocab_size: PositiveInt
    hidden_size: PositiveInt
    num_hidden_layers: PositiveInt
    num_attention_heads: PositiveInt
    intermediate_size: PositiveInt
    max_position_embeddings: PositiveInt
    type_vocab_size: PositiveInt = 2
    embedding_size: PositiveInt | None = None  # electra: embeddings narrower than the hidden size
    pad_token_id: NonNegativeInt | None = None
    bos_token_id: NonNegativeInt | None = None
    eos_token_id: NonNegativeInt | list[NonNegativeInt] | None = None
    hidden_dropout_prob: Probability = 0.1
    attention_probs_dropout_prob: Probability = 0.1
    classifier_dropout: Probability | None = None
    layer_norm_eps: Epsilon = 1e-12
    initializer_range: Scale = 0.02
    hidden_act: str = "gelu"
    num_labels: PositiveInt | None = None
    id2label: dict[str, str] | None = None

    @field_validator("num_labels", mode="before")
    @classmethod
    def _num_labels_given(cls, value: object) -> object:
        # Absent is fine (transformers counts id2label); an explicit null crashes its config.
        if value is None:
            raise ValueError("must be a positive integer when present (null is not)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Architecture:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"num_attention_heads = {self.num_attention_heads} does not divide "
                f"hidden_size = {self.hidden_size}"
            )
        if self.pad_token_id is not None and self.pad_token_id >= self.vocab_size:
            raise ValueError(
                f"pad_token_id = {self.pad_token_id} is not below vocab_size = {self.vocab_size}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act = {self.hidden_act!r} is not allowed; allowed: {', '.join(ACTIVATIONS)}"
            )
        if (
            self.id2label is not None
            and self.num_labels is not None
            and len(self.id2label) != self.num_labels
        ):
            raise ValueError(f"num_labels = {self.num_labels} but id2label has {len(self.id2label)} labels")
        if self.labels > MAX_LABELS:
            raise ValueError(f"{self.labels} labels exceed the limit of {MAX_LABELS}")
        return self

    @property
    def labels(self) -> int:
        """Rows of the classification head (transformers' default is 2)."""
        if self.id2label:
            return len(self.id2label)
        return self.num_labels or 2

    @property
    def embedding_width(self) -> int:
        return self.embedding_size or self.hidden_size


# (config field, settings field, environment variable) for each limit.
_LIMITS = (
    ("num_hidden_layers", "max_layers", "SLIMLINE_MAX_LAYERS"),
    ("hidden_size", "max_hidden_size", "SLIMLINE_MAX_HIDDEN_SIZE"),
    ("embedding_size", "max_hidden_size", "SLIMLINE_MAX_HIDDEN_SIZE"),
    ("intermediate_size", "max_intermediate_size", "SLIMLINE_MAX_INTERMEDIATE_SIZE"),
    ("vocab_size", "max_vocab_size", "SLIMLINE_MAX_VOCAB_SIZE"),
    ("max_position_embeddings", "max_positions", "SLIMLINE_MAX_POSITIONS"),
)


def read_architecture(uri: str, config: dict[str, object], settings: Settings) -> Architecture:
    """The architecture config.json declares, within the settings' limits, or CheckpointRefused.
    Limits come first: a config declaring a huge network is named as such, whatever else is off."""
    if config.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise CheckpointRefused(
            f"checkpoint {uri}: config.json model_type={config.get('model_type')!r} is not supported; "
            f"allowed: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    for field, limit_field, variable in _LIMITS:
        value, limit = config.get(field), getattr(settings, limit_field)
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            raise CheckpointRefused(
                f"checkpoint {uri}: config.json {field} = {value} exceeds the limit of {limit} ({variable})"
            )
    try:
        return Architecture.model_validate(config)
    except ValidationError as exc:
        # A cross-field check has no field path ("(root)"); its message names the fields.
        reason = format_errors(exc).replace("(root): ", "")
        raise CheckpointRefused(f"checkpoint {uri}: config.json {reason}") from None


def check_sequence_length(uri: str, arch: Architecture, max_length: int) -> None:
    """The recipe's tokens per example fit the position embeddings: a longer input would fail with
    an index error inside the model, in the middle of the baseline evaluation."""
    positions = arch.max_position_embeddings
    usable = positions - POSITION_OFFSET[arch.model_type]
    if max_length > usable:
        raise CheckpointRefused(
            f"checkpoint {uri}: config.json max_position_embeddings = {positions} holds {usable} tokens, "
            f"fewer than recipe dataset.max_length = {max_length}; allowed: max_length ≤ {usable}"
        )


@dataclass(frozen=True)
class Expected:
    """Tensors a checkpoint of one architecture holds: `base` names are relative to the base model
    (and may carry its prefix), `heads` names are the task heads' own."""

    required: dict[str, Shape]
    optional: dict[str, Shape]
    heads: dict[str, Shape]


def _encoder(arch: Architecture) -> dict[str, Shape]:
    h, i, e = arch.hidden_size, arch.intermediate_size, arch.embedding_width
    tensors: dict[str, Shape] = {
        "embeddings.word_embeddings.weight": (arch.vocab_size, e),
        "embeddings.position_embeddings.weight": (arch.max_position_embeddings, e),
        "embeddings.token_type_embeddings.weight": (arch.type_vocab_size, e),
        "embeddings.LayerNorm.weight": (e,),
        "embeddings.LayerNorm.bias": (e,),
    }
    if e != h:
        tensors |= {"embeddings_project.weight": (h, e), "embeddings_project.bias": (h,)}
    per_layer: dict[str, Shape] = {
        **{f"attention.self.{p}.weight": (h, h) for p in ("query", "key", "value")},
        **{f"attention.self.{p}.bias": (h,) for p in ("query", "key", "value")},
        "attention.output.dense.weight": (h, h),
        "attention.output.dense.bias": (h,),
        "attention.output.LayerNorm.weight": (h,),
        "attention.output.LayerNorm.bias": (h,),
        "intermediate.dense.weight": (i, h),
        "intermediate.dense.bias": (i,),
        "output.dense.weight": (h, i),
        "output.dense.bias": (h,),
        "output.LayerNorm.weight": (h,),
        "output.LayerNorm.bias": (h,),
    }
    for layer in range(arch.num_hidden_layers):
        tensors |= {f"encoder.layer.{layer}.{name}": shape for name, shape in per_layer.items()}
    return tensors


def _heads(arch: Architecture) -> dict[str, Shape]:
    h, v, labels = arch.hidden_size, arch.vocab_size, arch.labels
    if arch.model_type == "bert":
        return {
            "classifier.weight": (labels, h),
            "classifier.bias": (labels,),
            "cls.predictions.bias": (v,),
            "cls.predictions.transform.dense.weight": (h, h),
            "cls.predictions.transform.dense.bias": (h,),
            "cls.predictions.transform.LayerNorm.weight": (h,),
            "cls.predictions.transform.LayerNorm.bias": (h,),
            "cls.predictions.decoder.weight": (v, h),
            "cls.predictions.decoder.bias": (v,),
            "cls.seq_relationship.weight": (2, h),
            "cls.seq_relationship.bias": (2,),
        }
    classifier: dict[str, Shape] = {
        "classifier.dense.weight": (h, h),
        "classifier.dense.bias": (h,),
        "classifier.out_proj.weight": (labels, h),
        "classifier.out_proj.bias": (labels,),
    }
    if arch.model_type == "electra":
        return classifier | {
            "discriminator_predictions.dense.weight": (h, h),
            "discriminator_predictions.dense.bias": (h,),
            "discriminator_predictions.dense_prediction.weight": (1, h),
            "discriminator_predictions.dense_prediction.bias": (1,),
        }
    return classifier | {
        "lm_head.dense.weight": (h, h),
        "lm_head.dense.bias": (h,),
        "lm_head.layer_norm.weight": (h,),
        "lm_head.layer_norm.bias": (h,),
        "lm_head.bias": (v,),
        "lm_head.decoder.weight": (v, h),
        "lm_head.decoder.bias": (v,),
    }


def expected_tensors(arch: Architecture) -> Expected:
    h, p = arch.hidden_size, arch.max_position_embeddings
    optional: dict[str, Shape] = {name: (1, p) for name in BUFFERS}
    if arch.model_type != "electra":
        optional |= {"pooler.dense.weight": (h, h), "pooler.dense.bias": (h,)}
    return Expected(required=_encoder(arch), optional=optional, heads=_heads(arch))


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as a safetensors header declares it."""

    file: str
    dtype: str
    shape: Shape


def _shown(shape: Shape) -> str:
    return f"[{', '.join(str(d) for d in shape)}]"


def check_tensors(uri: str, arch: Architecture, tensors: dict[str, TensorEntry]) -> None:
    """Every tensor the architecture needs is present with its shape and a float dtype (integer
    buffers as I64), and nothing else is: each failure is one line naming the file and tensor."""
    expected = expected_tensors(arch)
    prefix = f"{BASE_PREFIX[arch.model_type]}."
    allowed = expected.required | expected.optional
    seen: dict[str, str] = {}  # base-relative name -> name in the checkpoint
    for name, entry in sorted(tensors.items()):
        where = f"checkpoint {uri}: {entry.file} tensor {name!r}"
        if name in expected.heads:
            shape = expected.heads[name]
        else:
            inner = name.removeprefix(prefix)
            if inner in seen:
                raise CheckpointRefused(f"{where} repeats {seen[inner]!r}; allowed: one name per tensor")
            seen[inner] = name
            layer = _LAYER.match(inner)
            layers = arch.num_hidden_layers
            if layer and int(layer.group(1)) >= layers:
                raise CheckpointRefused(
                    f"{where} belongs to layer {layer.group(1)}; allowed: layers "
                    f"0..{layers - 1} (config.json num_hidden_layers = {layers})"
                )
            if inner not in allowed:
                raise CheckpointRefused(
                    f"{where} is not part of a {arch.model_type} model; allowed: the encoder's tensors, "
                    "the pooler, and the sequence-classification and pre-training heads"
                )
            shape = allowed[inner]
        dtypes = BUFFER_DTYPES if name.removeprefix(prefix) in BUFFERS else WEIGHT_DTYPES
        if entry.dtype not in dtypes:
            raise CheckpointRefused(f"{where} has dtype {entry.dtype}; allowed: {', '.join(dtypes)}")
        if entry.shape != shape:
            raise CheckpointRefused(
                f"{where} has shape {_shown(entry.shape)}; config.json implies {_shown(shape)}"
            )
    missing = [name for name in expected.required if name not in seen]
    if missing:
        # Name it as this checkpoint spells its other tensors (with or without the prefix).
        prefixed = any(name.startswith(prefix) for name in seen.values())
        files = sorted({entry.file for entry in tensors.values()}) or ["*.safetensors"]
        raise CheckpointRefused(
            f"checkpoint {uri}: {', '.join(files)} lacks tensor "
            f"{(prefix if prefixed else '') + missing[0]!r} {_shown(expected.required[missing[0]])}, "
            f"which config.json implies ({len(missing)} of {len(expected.required)} required tensors missing)"
        )
