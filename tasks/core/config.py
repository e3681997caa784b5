"""The base of every config model: strict, so a typo or an unknown field fails at load time."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from tasks.core.errors import ConfigError

SLUG = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
