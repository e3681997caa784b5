"""Fleet files: validated at load with one line naming the field; the demo fleets name real
targets; counts and shares of devices resolve as documented."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.core.errors import ConfigError
from tasks.engines.target import load_targets
from tasks.fleet.spec import LAST_WAVE, get_fleet, load_fleet, resolve_share

REPO = Path(__file__).resolve().parents[1]
EDGE = {"name": "edge", "targets": ["cpu"]}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"name": "edge", "targets": []}, "targets: List should have at least 1 item"),
        ({"name": "edge", "targets": ["cpu", "cpu"]}, "target names must be unique; repeated: cpu"),
        (EDGE | {"rollout": 3}, "rollout = 3: Extra inputs are not permitted"),
        (EDGE | {"release_expiry_days": 0}, "release_expiry_days = 0"),
        ({"name": "other", "targets": ["cpu"]}, "name 'other' must match the file name 'edge'"),
        (EDGE | {"waves": [{"name": "a", "limit": "0%"}]}, "limit = '0%': expected a count (3) or a share"),
        (EDGE | {"waves": [{"name": "a", "limit": "150%"}]}, "above 0% up to 100%"),
        (EDGE | {"waves": [{"name": "a", "limit": 0}]}, "limit = 0: a count must be at least 1"),
        (EDGE | {"waves": [{"name": "a"}, {"name": "a"}]}, "wave names must be unique"),
        (EDGE | {"waves": [{"name": LAST_WAVE}]}, f"not {LAST_WAVE!r}; repeated: {LAST_WAVE}"),
        (
            EDGE
            | {"abort": [{"failure_type": "crashed", "min_devices_reported": 1, "threshold_percentage": 5}]},
            "abort.0.failure_type = 'crashed'",
        ),
        (EDGE | {"success_threshold": 0}, "success_threshold = 0"),
        (EDGE | {"health": {"min_agreement": 1.5}}, "health.min_agreement = 1.5"),
        (EDGE | {"disruption_budget": {"max_unavailable": "half"}}, "max_unavailable = 'half'"),
        (EDGE | {"approval": {"required": True, "timeout_minutes": 0}}, "approval.timeout_minutes = 0"),
    ],
)
def test_a_bad_fleet_fails_at_load_with_one_line(tmp_path: Path, data: dict[str, Any], expected: str):
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_fleet(path)
    assert str(caught.value).startswith(f"fleet {path}: ") and expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_demo_fleets_name_real_targets():
    fleets = REPO / "fleets"
    for name in ("staging", "production"):
        fleet = get_fleet(fleets, name)
        assert set(fleet.targets) <= set(load_targets(REPO / "targets"))
    assert get_fleet(fleets, "production").approval.required
    assert not get_fleet(fleets, "staging").approval.required
    with pytest.raises(ConfigError, match=r"no fleet 'canary'.*allowed: production, staging"):
        get_fleet(fleets, "canary")


def test_counts_and_shares_resolve_against_the_devices_there_are():
    assert resolve_share(3, 10) == 3 and resolve_share(3, 2) == 2
    assert resolve_share("10%", 3) == 1  # a share rounds up: a wave is never empty by rounding
    assert resolve_share("25%", 40) == 10 and resolve_share("100%", 7) == 7
    assert resolve_share("5%", 0) == 0
