"""Recipes: the dataset, the variants (ordered technique steps), the search under the gates, the
gates, the side-by-side timing and the targets.

A recipe is YAML mapped one-to-one onto these models, so a typo or an out-of-range value
fails at load time with the field, the value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from tasks.compress.techniques import get_technique
from tasks.core.config import SLUG, Strict, format_errors
from tasks.core.config_files import load_config_file, parse_config
from tasks.core.errors import ConfigError, SlimlineError
from tasks.gate.evaluate import EvaluationConfig
from tasks.gate.gates import GateConfig, TargetBudget
from tasks.gate.timing import TimingConfig
from tasks.intake.data import DatasetConfig
from tasks.intake.validation import ValidationConfig
from tasks.search.space import SEARCH_PREFIX, SearchConfig


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
    timing: TimingConfig = TimingConfig()
    validation: ValidationConfig = ValidationConfig()
    targets: list[TargetBudget] = Field(
        min_length=1, description="Targets (targets/<name>.yaml) engines are built for, with their budgets."
    )
    variants: list[Variant] = Field(min_length=1)
    search: SearchConfig | None = Field(
        None, description="Points of a space of students tried under the gates, beside the variants."
    )

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

    @model_validator(mode="after")
    def _search_reference(self) -> Recipe:
        if self.search is None:
            return self
        names = [v.name for v in self.variants]
        if self.search.reference not in names:
            raise ValueError(
                f"search.reference {self.search.reference!r} is not a variant of the recipe; "
                f"allowed: {', '.join(names)}"
            )
        taken = [n for n in names if n.startswith(SEARCH_PREFIX)]
        if taken:
            raise ValueError(
                f"variant name(s) {', '.join(taken)} start with {SEARCH_PREFIX!r}, which names the "
                "search's points; allowed: any other name"
            )
        return self

    @model_validator(mode="after")
    def _timing_fits_data(self) -> Recipe:
        # Every timed request is a distinct evaluation text, the same ones each round.
        if self.timing.requests > self.dataset.eval_size:
            raise ValueError(
                f"timing.requests = {self.timing.requests} exceeds dataset.eval_size = "
                f"{self.dataset.eval_size}; each request is a distinct evaluation text, so allowed: "
                f"at most {self.dataset.eval_size}"
            )
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


def parse_recipe(data: object, origin: str) -> Recipe:
    return parse_config(Recipe, data, "recipe", origin)


def load_recipe(path: Path) -> Recipe:
    """Read and validate a YAML recipe."""
    return load_config_file(Recipe, path, "recipe")
