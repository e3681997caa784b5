"""Publishing the fleet's desired state from the release side: each publication is the last one's
version plus one, signed, and nothing is published when the content would not change, so a step
run again after a crash does not bump the version for nothing."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import ec

from tasks.fleet.channel import Channel, DesiredState
from tasks.fleet.spec import Fleet

# What a publication says; version, issue and expiry times only say when.
_CONTENT = ("release", "devices", "targets", "health", "note")


def current_desired(channel: Channel, trusted: ec.EllipticCurvePublicKey) -> DesiredState | None:
    """What was last published, its signature checked but not its expiry (an expired state is still
    the one the next version must follow); None before the first publication."""
    state, _ = channel.fetch_desired(trusted, seen_version=None, now=None)
    return state


def highest_release(state: DesiredState | None) -> int:
    """The highest release a desired state hands any device (0 when none): devices may hold it, so
    a later release must be above it."""
    if state is None:
        return 0
    return max([state.release or 0, *state.devices.values()])


def publish_desired(
    channel: Channel,
    fleet: Fleet,
    private_key: ec.EllipticCurvePrivateKey,
    *,
    release: int | None,
    devices: Mapping[str, int],
    note: str,
    valid_for: timedelta,
    now: datetime,
) -> DesiredState:
    """Publish `release` for every device not in `devices` (device → release), with the fleet's
    targets and health; return what the channel now holds (the current state, unchanged, when it
    already says the same)."""
    current = current_desired(channel, private_key.public_key())
    issued = now.replace(microsecond=0)
    state = DesiredState(
        fleet=fleet.name,
        version=(current.version + 1) if current is not None else 1,
        issued_at=issued,
        expires_at=issued + valid_for,
        release=release,
        devices=dict(sorted(devices.items())),
        targets=list(fleet.targets),
        health=fleet.health,
        note=note,
    )
    if current is not None and all(getattr(current, f) == getattr(state, f) for f in _CONTENT):
        return current
    channel.publish_desired(state, private_key)
    return state
