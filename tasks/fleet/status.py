"""What `slimline fleet status F` shows: each device (its labels, what it is told to run, what it
runs, its last attempt and health, how old its last report is), the desired state and the latest
rollout with each wave's decision, read from the channel as one snapshot."""

from __future__ import annotations

from datetime import datetime

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import AwareDatetime, BaseModel

from tasks.core.errors import BundleRefused
from tasks.fleet.channel import Channel, DesiredState, DeviceStatus, Enrollment, HealthReport
from tasks.fleet.desired import current_desired
from tasks.fleet.rollout import RolloutRecord, latest_rollout


class DeviceRow(BaseModel):
    device: str
    labels: dict[str, str]
    wave: str | None  # its wave in the latest rollout; None when it enrolled after it started
    desired_release: int | None  # what the desired state tells it to run
    target: str | None  # the engine it runs, or the one its last attempt chose
    active_release: int | None
    model_version: str | None
    attempt_release: int | None
    attempt_result: str | None
    attempt_reason: str
    health: HealthReport | None
    reported_at: AwareDatetime | None
    report_age_s: float | None


class FleetStatus(BaseModel):
    fleet: str
    at: AwareDatetime
    desired: DesiredState | None
    desired_problem: str  # why the published desired state is not believed or no longer valid; "" if it is
    rollout: RolloutRecord | None
    devices: list[DeviceRow]


def _row(
    device: str,
    enrollment: Enrollment,
    status: DeviceStatus | None,
    desired: DesiredState | None,
    waves: dict[str, str],
    now: datetime,
) -> DeviceRow:
    active = status.active if status else None
    attempt = status.attempt if status else None
    return DeviceRow(
        device=device,
        labels=enrollment.labels,
        wave=waves.get(device),
        desired_release=desired.release_for(device) if desired else None,
        target=active.target if active else attempt.target if attempt else None,
        active_release=active.release if active else None,
        model_version=active.model_version if active else None,
        attempt_release=attempt.release if attempt else None,
        attempt_result=attempt.result if attempt else None,
        attempt_reason=attempt.reason if attempt else "",
        health=attempt.health if attempt else None,
        reported_at=status.reported_at if status else None,
        report_age_s=(now - status.reported_at).total_seconds() if status else None,
    )


def fleet_status(channel: Channel, trusted: ec.EllipticCurvePublicKey, now: datetime) -> FleetStatus:
    """The fleet as the channel shows it now. A desired state that does not verify with `trusted`
    or has expired is reported as a problem, not raised: status is how one finds out."""
    problem = ""
    try:
        desired = current_desired(channel, trusted)
    except BundleRefused as exc:
        desired, problem = None, str(exc)
    if desired is not None and now >= desired.expires_at:
        problem = f"expired at {desired.expires_at.isoformat()}: devices refuse it until the next publication"
    rollout = latest_rollout(channel)
    waves = {d: w.name for w in rollout.waves for d in w.devices} if rollout else {}
    enrollments = channel.enrollments()
    statuses = channel.statuses(sorted(enrollments))
    return FleetStatus(
        fleet=channel.fleet,
        at=now,
        desired=desired,
        desired_problem=problem,
        rollout=rollout,
        devices=[_row(d, e, statuses.get(d), desired, waves, now) for d, e in sorted(enrollments.items())],
    )
