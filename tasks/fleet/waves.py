"""The waves of a rollout, planned from the devices enrolled when it starts.

Each wave of the fleet file takes, from the devices no earlier wave took, those whose labels carry
every key=value of its selector, at most `limit` of them (a count, or a share of those matching);
the devices no wave took form the last wave, `rest`. Devices are taken in sorted order of their
ids, so planning again from the same enrollments gives the same waves.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from tasks.core.config import Strict
from tasks.fleet.channel import Enrollment
from tasks.fleet.spec import LAST_WAVE, Fleet, resolve_share


class PlannedWave(Strict):
    """One wave with its devices and the threshold and timeout it is judged by (the fleet's
    defaults filled in)."""

    name: str
    selector: dict[str, str] = Field(default_factory=dict)
    devices: list[str] = Field(description="Device ids, sorted; empty when the selector matched none.")
    success_threshold: float = Field(description="Percent of the wave that must succeed.")
    timeout_minutes: float = Field(description="How long the wave waits for its devices' reports.")


def matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def plan_waves(fleet: Fleet, enrollments: Mapping[str, Enrollment]) -> list[PlannedWave]:
    """The fleet's waves over the enrolled devices, in order, `rest` last (left out when empty).
    A wave whose selector matches no remaining device is kept with no devices."""
    remaining = sorted(enrollments)
    planned = []
    for wave in fleet.waves:
        matching = [d for d in remaining if matches(enrollments[d].labels, wave.selector)]
        taken = matching if wave.limit is None else matching[: resolve_share(wave.limit, len(matching))]
        chosen = set(taken)
        remaining = [d for d in remaining if d not in chosen]
        planned.append(
            PlannedWave(
                name=wave.name,
                selector=dict(wave.selector),
                devices=taken,
                success_threshold=wave.success_threshold or fleet.success_threshold,
                timeout_minutes=wave.timeout_minutes or fleet.wave_timeout_minutes,
            )
        )
    if remaining:
        planned.append(
            PlannedWave(
                name=LAST_WAVE,
                devices=remaining,
                success_threshold=fleet.success_threshold,
                timeout_minutes=fleet.wave_timeout_minutes,
            )
        )
    return planned
