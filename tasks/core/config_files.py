"""Config files (recipes, targets, fleets): YAML read and validated into their models, every
failure one ConfigError line naming the file, the field, the value and what is allowed.

Kept apart from `tasks.core.config`, which every step's code imports: reading files is not part
of what any step computes, so its changes key no artifact."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tasks.core.config import format_errors
from tasks.core.errors import ConfigError

Config = TypeVar("Config", bound=BaseModel)


def parse_config(model: type[Config], data: object, kind: str, origin: str) -> Config:
    """`data` validated as `model`; ConfigError `<kind> <origin>: <field errors>` on one line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{kind} {origin}: {format_errors(exc)}") from None


def load_config_file(model: type[Config], path: Path, kind: str, *, named: bool = False) -> Config:
    """A YAML config file (recipe, target, fleet) validated as `model`; with `named`, its `name` must
    be the file's name. Every failure is one ConfigError line naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{kind} {path}: cannot be read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{kind} {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{kind} {path}: expected a mapping at the top level")
    config = parse_config(model, data, kind, str(path))
    name = getattr(config, "name", None)
    if named and name != Path(path).stem:
        raise ConfigError(f"{kind} {path}: name {name!r} must match the file name {Path(path).stem!r}")
    return config
