"""Fleet files (`fleets/*.yaml`): a named group of devices and the targets they may be. A release
for a fleet carries one engine per target. A bad file fails at load time, naming the field."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from tasks.core.config import SLUG, Strict
from tasks.core.config_files import load_config_file
from tasks.core.errors import ConfigError


class Fleet(Strict):
    name: str = Field(pattern=SLUG, description="Fleet name, used in release numbers and the channel.")
    description: str = ""
    targets: list[str] = Field(min_length=1, description="Targets (targets/<name>.yaml) its devices may be.")
    release_expiry_days: int | None = Field(
        None, ge=1, le=3650, description="Days a release stays valid; default $SLIMLINE_RELEASE_EXPIRY_DAYS."
    )

    @field_validator("targets")
    @classmethod
    def _unique(cls, targets: list[str]) -> list[str]:
        repeated = sorted({t for t in targets if targets.count(t) > 1})
        if repeated:
            raise ValueError(f"target names must be unique; repeated: {', '.join(repeated)}")
        return targets


def load_fleet(path: Path) -> Fleet:
    """Read and validate one fleet file (its `name` is its file name)."""
    return load_config_file(Fleet, path, "fleet", named=True)


def get_fleet(directory: Path, name: str) -> Fleet:
    path = Path(directory) / f"{name}.yaml"
    if not path.is_file():
        allowed = ", ".join(sorted(p.stem for p in Path(directory).glob("*.yaml"))) or "none"
        raise ConfigError(f"no fleet {name!r} in {directory}; allowed: {allowed}")
    return load_fleet(path)
