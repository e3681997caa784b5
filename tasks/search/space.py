"""A recipe's `search:` block: the space of compressed students, the budget, the constraints and
the objectives, and the technique steps one point of the space stands for.

A point is a student of `depth` teacher layers (spread evenly, distilled once per depth and shared
by every point of that depth), optionally narrowed (attention heads, feed-forward neurons,
low-rank projections) and recovered, its vocabulary trimmed, exported and quantized. The steps
are ordinary recipe steps, so every artifact a point makes is cached like a hand-written variant's.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tasks.compress.techniques.distill import DistillConfig
from tasks.compress.techniques.mixed_precision import MixedPrecisionConfig
from tasks.compress.techniques.prune import RecoveryConfig
from tasks.core.config import Strict
from tasks.gate.timing import TimingConfig

Quantization = Literal["int8", "mixed"]
Objective = Literal["latency", "size"]
IMPORTANCE_BATCHES = 32  # gradient-importance batches of the pruning steps, as in the demo recipe
SEARCH_PREFIX = "search-"  # every point's variant name starts with it; hand-written ones may not


def _distinct(values: list[Any], field: str) -> list[Any]:
    if len(set(values)) != len(values):
        raise ValueError(f"{field} must not repeat a value, got {values}")
    return values


class SearchSpace(Strict):
    """The choices of each dimension (Optuna's categorical distributions)."""

    depth: list[int] = Field(
        [2, 3], min_length=1, description="Student depths: teacher layers kept, spread evenly (0, L/d, ...)."
    )
    ffn_keep: list[float] = Field(
        [0.5, 1.0],
        min_length=1,
        description="Share of each layer's feed-forward neurons kept (1: none removed).",
    )
    heads_to_prune: list[int] = Field(
        [0], min_length=1, description="Attention heads removed per layer by gradient importance (0: none)."
    )
    vocab_min_count: list[int] = Field(
        [1],
        min_length=1,
        description="trim.vocabulary's min_count: word pieces seen fewer times are dropped.",
    )
    lowrank_energy: list[float | None] = Field(
        [None], min_length=1, description="lowrank.svd's spectral energy kept (null: no factorization)."
    )
    quantization: list[Quantization] = Field(
        ["int8"], min_length=1, description="int8: dynamic INT8 everywhere; mixed: quantize.mixed_precision."
    )

    @property
    def size(self) -> int:
        """How many distinct points the space holds."""
        return math.prod(len(choices) for choices in self.model_dump().values())

    @field_validator(
        "depth", "heads_to_prune", "vocab_min_count", "quantization", "lowrank_energy", "ffn_keep"
    )
    @classmethod
    def _no_repeats(cls, values: list[Any], info: Any) -> list[Any]:
        return _distinct(values, info.field_name)

    @field_validator("depth")
    @classmethod
    def _positive_depth(cls, depth: list[int]) -> list[int]:
        if any(d < 1 for d in depth):
            raise ValueError(f"depth={depth}; allowed: whole numbers ≥ 1 (below the teacher's layer count)")
        return depth

    @field_validator("ffn_keep")
    @classmethod
    def _fraction(cls, keep: list[float]) -> list[float]:
        if any(not 0 < k <= 1 for k in keep):
            raise ValueError(f"ffn_keep={keep}; allowed: shares in (0, 1]")
        return keep

    @field_validator("heads_to_prune", "vocab_min_count")
    @classmethod
    def _non_negative(cls, values: list[int], info: Any) -> list[int]:
        least = 1 if info.field_name == "vocab_min_count" else 0
        if any(v < least for v in values):
            raise ValueError(f"{info.field_name}={values}; allowed: whole numbers ≥ {least}")
        return values

    @field_validator("lowrank_energy")
    @classmethod
    def _energy(cls, energies: list[float | None]) -> list[float | None]:
        if any(e is not None and not 0 < e < 1 for e in energies):
            raise ValueError(f"lowrank_energy={energies}; allowed: shares in (0, 1), or null for none")
        return energies


class SearchConfig(Strict):
    """Search under the gates: Optuna's multi-objective TPE over `space`, every point a variant
    judged by the recipe's gates (constraints) and timed interleaved against `reference`."""

    reference: str = Field(
        description="The recipe's variant every point is timed against, side by side (speed-up = its p50 "
        "over the point's)."
    )
    space: SearchSpace = SearchSpace()
    student: DistillConfig = Field(
        DistillConfig(epochs=1, learning_rate=2e-4, batch_size=64, transfer_examples=8000),
        description="distill.student's config for every depth (layers are the point's).",
    )
    recover: RecoveryConfig = Field(
        RecoveryConfig(epochs=1, learning_rate=2e-4, batch_size=64, max_examples=8000),
        description="finetune.recover's config after any narrowing (heads, neurons, low rank).",
    )
    mixed: MixedPrecisionConfig = Field(
        MixedPrecisionConfig(min_agreement=0.998, max_full_precision=1.0),
        description="quantize.mixed_precision's config for points with quantization: mixed.",
    )
    trials: int = Field(
        12,
        ge=1,
        le=500,
        description="Distinct points measured, at most (a point proposed again is answered from its "
        "first measurement and does not count).",
    )
    max_repeats: int = Field(
        20,
        ge=0,
        le=500,
        description="Proposals in a row of points already measured before the search stops: the "
        "sampler keeps returning to what it knows once it has converged.",
    )
    timeout_minutes: float | None = Field(
        None, gt=0, le=24 * 60, description="Stop starting new points after this much wall time."
    )
    startup_trials: int = Field(
        4,
        ge=0,
        le=500,
        description="Random points before TPE models the results (Optuna's n_startup_trials).",
    )
    seed: int = Field(0, description="Sampler seed: the same recipe and seed try the same points.")
    objectives: list[Objective] = Field(
        ["latency", "size"],
        min_length=1,
        description="Besides accuracy: latency (p50 speed-up over the reference), size (MB).",
    )
    max_size_mb: float | None = Field(
        None, gt=0, description="A constraint beside the gates: points larger than this are infeasible."
    )
    start: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Points tried first (Optuna's enqueue_trial), e.g. the best hand-written variant's.",
    )
    timing: TimingConfig = Field(
        TimingConfig(rounds=3, requests=40),
        description="Each point's side-by-side timing with the reference.",
    )

    @field_validator("objectives")
    @classmethod
    def _objectives_once(cls, objectives: list[str]) -> list[str]:
        return _distinct(objectives, "objectives")

    @model_validator(mode="after")
    def _start_in_space(self) -> SearchConfig:
        space = self.space.model_dump()
        for index, point in enumerate(self.start):
            unknown = ", ".join(sorted(set(point) - set(space)))
            if unknown:
                raise ValueError(
                    f"start[{index}] has unknown dimension(s) {unknown}; allowed: {', '.join(space)}"
                )
            for dimension, value in point.items():
                choices = space[dimension]
                if value not in choices:
                    raise ValueError(
                        f"start[{index}].{dimension} = {value!r} is not among space.{dimension} {choices}"
                    )
        return self


class Point(Strict):
    """One point of the space: the choices of every dimension."""

    depth: int
    ffn_keep: float
    heads_to_prune: int
    vocab_min_count: int
    lowrank_energy: float | None
    quantization: Quantization

    @property
    def name(self) -> str:
        """The variant name: readable, and the same for the same point on every night."""
        rank = "full" if self.lowrank_energy is None else f"{round(self.lowrank_energy * 100)}"
        return (
            f"{SEARCH_PREFIX}{self.depth}L-ffn{round(self.ffn_keep * 100)}-h{self.heads_to_prune}"
            f"-r{rank}-v{self.vocab_min_count}-{self.quantization}"
        )

    @property
    def narrowed(self) -> bool:
        return self.ffn_keep < 1 or self.heads_to_prune > 0 or self.lowrank_energy is not None


def spread_layers(depth: int, teacher_layers: int) -> list[int]:
    """`depth` of the teacher's layers, evenly spaced from the first (6 → 3: 0, 2, 4)."""
    return [i * teacher_layers // depth for i in range(depth)]


def point_steps(point: Point, config: SearchConfig, teacher_layers: int) -> list[dict[str, Any]]:
    """The technique steps (`{"technique", "config"}`, as a recipe writes them) of one point."""
    student = config.student.model_copy(update={"layers": spread_layers(point.depth, teacher_layers)})
    steps: list[dict[str, Any]] = [
        {"technique": "distill.student", "config": student.model_dump(mode="json")}
    ]
    if point.heads_to_prune:
        steps.append(
            {
                "technique": "prune.heads",
                "config": {"heads_to_prune": point.heads_to_prune, "importance_batches": IMPORTANCE_BATCHES},
            }
        )
    if point.ffn_keep < 1:
        steps.append(
            {
                "technique": "prune.ffn",
                "config": {"keep_fraction": point.ffn_keep, "importance_batches": IMPORTANCE_BATCHES},
            }
        )
    if point.lowrank_energy is not None:
        steps.append({"technique": "lowrank.svd", "config": {"energy": point.lowrank_energy}})
    if point.narrowed:
        steps.append({"technique": "finetune.recover", "config": config.recover.model_dump(mode="json")})
    steps += [
        {"technique": "trim.vocabulary", "config": {"min_count": point.vocab_min_count}},
        {"technique": "export.onnx", "config": {"opset": 17}},
        {"technique": "optimize.ort_fusions", "config": {}},
    ]
    if point.quantization == "mixed":
        steps.append(
            {"technique": "quantize.mixed_precision", "config": config.mixed.model_dump(mode="json")}
        )
    else:
        steps.append({"technique": "quantize.onnx_dynamic_int8", "config": {"per_channel": True}})
    return steps
