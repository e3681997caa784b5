"""Fleet files (`fleets/*.yaml`): a named group of devices, the targets they may be, and how a
release reaches them: waves (label selectors and a count or share each, as Flight Control's batch
sequences; the devices no wave selects go last), the success threshold a wave must reach, abort
criteria (Greengrass's: failure type, devices reported, threshold), a timeout per wave, a
disruption budget, whether a person approves first, and the health a device must show on the
canary set. A bad file fails at load time, naming the field."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from tasks.core.config import SLUG, Strict
from tasks.core.config_files import load_config_file
from tasks.core.errors import ConfigError

_SHARE = re.compile(r"^(\d+(?:\.\d+)?)%$")

# A number of devices, or a share of them written "25%".
Share = Annotated[int | str, Field(union_mode="left_to_right")]


def _check_share(value: int | str, field: str) -> int | str:
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{field} = {value}: a count must be at least 1")
        return value
    match = _SHARE.match(value)
    if not match or not 0 < float(match.group(1)) <= 100:
        raise ValueError(f"{field} = {value!r}: expected a count (3) or a share above 0% up to 100% (25%)")
    return value


def resolve_share(value: int | str, total: int) -> int:
    """How many of `total` devices a count or share names (a share rounds up: 10% of 3 is 1)."""
    if isinstance(value, int):
        return min(value, total)
    match = _SHARE.match(value)
    assert match is not None  # validated at load
    return min(total, math.ceil(total * float(match.group(1)) / 100))


class Wave(Strict):
    """One batch of a rollout: the devices matching `selector`, at most `limit` of them."""

    name: str = Field(pattern=SLUG, description="Shown in the rollout record, status page and logs.")
    selector: dict[str, str] = Field(
        default_factory=dict, description="Labels a device must carry (all of them); empty: any device."
    )
    limit: Share | None = Field(
        None, description="At most this many matching devices (3) or this share (10%)."
    )
    success_threshold: float | None = Field(
        None, gt=0, le=100, description="Percent of the wave that must succeed; default the fleet's."
    )
    timeout_minutes: float | None = Field(
        None, gt=0, le=10080, description="How long the wave waits for reports; default the fleet's."
    )

    @field_validator("limit")
    @classmethod
    def _limit(cls, value: int | str | None) -> int | str | None:
        return None if value is None else _check_share(value, "limit")


class AbortCriterion(Strict):
    """Abort the rollout when, among at least `min_devices_reported` devices of the current wave
    that reported, `threshold_percentage` percent or more failed in this way."""

    failure_type: Literal["failed", "rejected", "timed_out", "all"] = Field(
        description="failed: health check failed; rejected: refused the release (incompatible, "
        "verification); timed_out: no report before the wave's timeout; all: any of these."
    )
    min_devices_reported: int = Field(ge=1, description="Devices that must have reported first.")
    threshold_percentage: float = Field(gt=0, le=100, description="Percent of reported devices.")


class DisruptionBudget(Strict):
    """How many devices of a wave may be switching at once (assigned, not yet reported)."""

    max_unavailable: Share = Field(description="A count (2) or a share of the wave (25%).")

    @field_validator("max_unavailable")
    @classmethod
    def _share(cls, value: int | str) -> int | str:
        return _check_share(value, "max_unavailable")


class Health(Strict):
    """What a device must show on the release's canary set before it switches, and reports."""

    min_agreement: float = Field(
        0.95, ge=0, le=1, description="Share of canary labels equal to the release's expected ones."
    )
    max_accuracy_drop: float = Field(
        0.02, ge=0, le=1, description="Largest fall in canary accuracy against the expected labels' own."
    )
    max_p95_ms: float = Field(250.0, gt=0, description="Largest batch-1 p95 latency on the canary set, ms.")


class Approval(Strict):
    required: bool = Field(False, description="A person approves each release before its first wave.")
    timeout_minutes: float = Field(
        60 * 24, gt=0, le=10080, description="Unanswered this long, the release is rejected."
    )


class Fleet(Strict):
    name: str = Field(pattern=SLUG, description="Fleet name, used in release numbers and the channel.")
    description: str = ""
    targets: list[str] = Field(min_length=1, description="Targets (targets/<name>.yaml) its devices may be.")
    release_expiry_days: int | None = Field(
        None, ge=1, le=3650, description="Days a release stays valid; default $SLIMLINE_RELEASE_EXPIRY_DAYS."
    )
    waves: list[Wave] = Field(
        default_factory=list, description="Waves in order; the devices none of them selects form the last."
    )
    success_threshold: float = Field(
        100, gt=0, le=100, description="Percent of a wave's devices that must succeed before the next."
    )
    abort: list[AbortCriterion] = Field(
        default_factory=lambda: [
            AbortCriterion(failure_type="all", min_devices_reported=1, threshold_percentage=50)
        ],
        description="Abort (and roll the fleet back) when any criterion is met.",
    )
    wave_timeout_minutes: float = Field(30, gt=0, le=10080, description="Default wait for a wave's reports.")
    disruption_budget: DisruptionBudget | None = Field(
        None, description="Devices of a wave switching at once; default the whole wave."
    )
    approval: Approval = Field(default_factory=Approval)
    health: Health = Field(default_factory=Health)

    @field_validator("targets")
    @classmethod
    def _unique(cls, targets: list[str]) -> list[str]:
        repeated = sorted({t for t in targets if targets.count(t) > 1})
        if repeated:
            raise ValueError(f"target names must be unique; repeated: {', '.join(repeated)}")
        return targets

    @model_validator(mode="after")
    def _distinct_waves(self) -> Fleet:
        names = [w.name for w in self.waves]
        repeated = sorted({n for n in names if names.count(n) > 1} | ({LAST_WAVE} & set(names)))
        if repeated:
            raise ValueError(
                f"wave names must be unique and not {LAST_WAVE!r}; repeated: {', '.join(repeated)}"
            )
        return self


LAST_WAVE = "rest"  # the implicit last wave: every device no other wave selected


def load_fleet(path: Path) -> Fleet:
    """Read and validate one fleet file (its `name` is its file name)."""
    return load_config_file(Fleet, path, "fleet", named=True)


def get_fleet(directory: Path, name: str) -> Fleet:
    path = Path(directory) / f"{name}.yaml"
    if not path.is_file():
        allowed = ", ".join(sorted(p.stem for p in Path(directory).glob("*.yaml"))) or "none"
        raise ConfigError(f"no fleet {name!r} in {directory}; allowed: {allowed}")
    return load_fleet(path)
