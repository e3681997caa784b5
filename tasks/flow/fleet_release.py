"""The fleet_release DAG's work, runnable without Airflow: plan a release of a registered version
to a fleet, build its engines, bundle and sign it, start the rollout (with the approval's answer
where the fleet requires one), advance it wave by wave, and conclude: the fleet's alias moves to
the version, or the whole fleet is rolled back."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from tasks.core.errors import ConfigError, RolloutAborted
from tasks.core.settings import Settings
from tasks.fleet.channel import open_channel
from tasks.fleet.rollout import (
    UNDER_WAY,
    ApprovalRecord,
    RolloutRecord,
    advance,
    fleet_rollback,
    latest_rollout,
    load_rollout,
    start_rollout,
)
from tasks.fleet.spec import get_fleet
from tasks.flow import audit_events
from tasks.flow.approval import approval_answer
from tasks.flow.audit_events import FLEET_RELEASE
from tasks.flow.engines import build_engines
from tasks.flow.release import bundle_release, record_bundle
from tasks.recipe import load_recipe
from tasks.registry import tracking
from tasks.registry.engines import EngineOutcome, EngineRecord, engines_of
from tasks.registry.versions import get_version, parse_version
from tasks.release.bundle import BUNDLE, RELEASE_JSON, Release, release_dir

log = logging.getLogger(__name__)

LINEAGE_SHOWN = ("variant", "gate", "checkpoint_uri", "git_commit")  # in the approval's summary
FLEET_ALIAS_PREFIX = "fleet-"  # the registry alias naming the version a fleet runs: fleet-<name>


def fleet_alias(fleet: str) -> str:
    return f"{FLEET_ALIAS_PREFIX}{fleet}"


class FleetPlan(BaseModel):
    fleet: str
    model_version: str  # NAME/VERSION, the number resolved from an alias
    approval_required: bool
    approval_timeout_minutes: float
    already_released: bool = False  # the fleet's last finished rollout is this version
    reason: str = ""


class Published(BaseModel):
    """A signed release waiting for its rollout (and its approval, where required)."""

    fleet: str
    release: int
    model_version: str
    bundle: Path
    engines: list[EngineRecord]  # the registered engines bundled, one per target of the fleet
    approval_required: bool
    approval_timeout_minutes: float
    summary: str  # what an approver reads


class Conclusion(BaseModel):
    fleet: str
    release: int
    state: Literal["succeeded", "rejected"]
    reason: str
    alias: str | None = None


def plan_release(settings: Settings, fleet_name: str, model_version: str | None) -> FleetPlan:
    """What to release to `fleet_name`: `model_version` (NAME/VERSION or NAME/ALIAS; default the
    `candidate` of the default recipe's model). Marked already released when the fleet's last
    finished rollout was this version; ConfigError while another rollout of the fleet is under way."""
    fleet = get_fleet(settings.fleets_dir, fleet_name)
    if model_version is None:
        name = tracking.registered_model_name(settings, load_recipe(settings.recipe))
        model_version = f"{name}/{tracking.CANDIDATE_ALIAS}"
    ref = get_version(settings, *parse_version(model_version))
    latest = latest_rollout(open_channel(settings, fleet.name))
    if latest is not None and latest.state in UNDER_WAY:
        raise ConfigError(
            f"fleet {fleet.name}: the rollout of release {latest.release} is {latest.state}; "
            "let it finish or roll it back first (slimline fleet rollback)"
        )
    plan = FleetPlan(
        fleet=fleet.name,
        model_version=ref.label,
        approval_required=fleet.approval.required,
        approval_timeout_minutes=fleet.approval.timeout_minutes,
    )
    if latest is not None and latest.state == "succeeded" and latest.model_version == ref.label:
        reason = f"fleet {fleet.name} runs {ref.label} already (release {latest.release})"
        return plan.model_copy(update={"already_released": True, "reason": reason})
    return plan


def build_fleet_engines(settings: Settings, plan: FleetPlan) -> list[EngineOutcome]:
    """The version's engine for every target of the fleet that has none registered yet, built and
    checked: a target that cannot be built stops the release. Returns the builds."""
    fleet = get_fleet(settings.fleets_dir, plan.fleet)
    registered = engines_of(settings, get_version(settings, *parse_version(plan.model_version)))
    missing = [t for t in fleet.targets if t not in registered]
    return build_engines(settings, plan.model_version, missing, strict=True) if missing else []


def publish_release(settings: Settings, plan: FleetPlan) -> Published:
    """Bundle and sign the fleet's next release of the version. Devices see it only once its
    rollout starts (after approval, where required)."""
    bundle = bundle_release(settings, plan.model_version, plan.fleet)
    release = Release.model_validate_json((bundle / RELEASE_JSON).read_text(encoding="utf-8"))
    registered = engines_of(settings, get_version(settings, *parse_version(plan.model_version)))
    lineage = ", ".join(f"{k} {v}" for k, v in sorted(release.lineage.items()) if k in LINEAGE_SHOWN)
    summary = (
        f"Release {release.number} of {plan.model_version} to fleet {plan.fleet}: targets "
        f"{', '.join(release.targets)}; expires {release.expires_at:%Y-%m-%d}. {lineage}".strip()
    )
    return Published(
        fleet=plan.fleet,
        release=release.number,
        model_version=plan.model_version,
        bundle=bundle,
        engines=[registered[target] for target in release.targets],
        approval_required=plan.approval_required,
        approval_timeout_minutes=plan.approval_timeout_minutes,
        summary=summary,
    )


def ask_approval(settings: Settings, published: Published) -> None:
    """Record that the release now waits for a person's answer (the approval task calls it as it
    starts waiting; a retry of that task records the asking again)."""
    audit_events.approval_asked(
        settings,
        published.fleet,
        published.release,
        published.model_version,
        published.approval_timeout_minutes,
        published.summary,
    )


def _approval(published: Published, answer: Mapping[str, Any] | None) -> ApprovalRecord | None:
    if not published.approval_required:
        return None
    if answer is None:
        return ApprovalRecord(required=True, approved=False, timed_out=False, comment="no answer recorded")
    given = approval_answer(answer)
    return ApprovalRecord(
        required=True,
        approved=given.approved,
        by=given.by,
        at=given.at,
        comment=given.comment,
        timed_out=given.timed_out,
    )


def begin_rollout(
    settings: Settings, published: Published, answer: Mapping[str, Any] | None
) -> RolloutRecord:
    """Start the rollout (idempotent): publish the release to the channel and plan its waves; a
    rejected approval is recorded and publishes nothing."""
    fleet = get_fleet(settings.fleets_dir, published.fleet)
    channel = open_channel(settings, fleet.name)
    started = load_rollout(channel, published.release) is not None
    approval = _approval(published, answer)
    now = datetime.now(UTC)
    record = start_rollout(channel, fleet, published.bundle, settings.signing_key, now, approval)
    if not started and record.approval.required:
        audit_events.approval_decided(settings, record)
    return record


def advance_rollout(settings: Settings, published: Published) -> bool:
    """One step of the rollout; True once it has finished (succeeded or aborted)."""
    fleet = get_fleet(settings.fleets_dir, published.fleet)
    channel = open_channel(settings, fleet.name)
    record = load_rollout(channel, published.release)
    if record is None:
        raise ConfigError(f"release {published.release} of fleet {fleet.name} has no rollout to advance")
    before = record
    record = advance(channel, fleet, record, settings.signing_key, datetime.now(UTC))
    # Devices first: a wave is promoted or aborted on the outcomes they reached.
    for old, new in zip(before.waves, record.waves, strict=True):
        newly = [d for d in new.finished if d not in old.finished]
        for status in channel.statuses(newly).values() if newly else ():
            audit_events.device_outcome(settings, record, status)
    audit_events.wave_changes(settings, before, record)
    wave = record.current_wave()
    log.info(
        "rollout of release %s to %s: %s%s",
        record.release,
        fleet.name,
        record.state,
        f", wave {wave.name} {wave.counts}" if wave is not None else "",
    )
    return record.state not in UNDER_WAY


def roll_back_fleet(settings: Settings, fleet_name: str, reason: str) -> RolloutRecord:
    """Roll the fleet's latest rollout back (tasks.fleet.rollout.fleet_rollback); the first time,
    the new release carrying the restored one and the rollback go to the audit log."""
    fleet = get_fleet(settings.fleets_dir, fleet_name)
    channel = open_channel(settings, fleet.name)
    latest = latest_rollout(channel)
    now = datetime.now(UTC)
    rolled = fleet_rollback(channel, fleet, settings.releases_dir, settings.signing_key, reason, now)
    if latest is not None and latest.state != "rolled_back":
        back = rolled.rollback
        if back is not None and back.release is not None:
            record_bundle(settings, release_dir(settings.releases_dir, fleet.name, back.release) / BUNDLE)
        audit_events.fleet_rolled_back(settings, rolled)
    return rolled


def conclude_rollout(
    settings: Settings, published: Published, answer: Mapping[str, Any] | None
) -> Conclusion:
    """The end of a release: on success the fleet's alias moves to the version; a rejected approval
    is recorded; an aborted (or unfinished) rollout rolls the whole fleet back and raises
    RolloutAborted naming the wave, the reason and the release the fleet returns to."""
    fleet = get_fleet(settings.fleets_dir, published.fleet)
    channel = open_channel(settings, fleet.name)
    record = load_rollout(channel, published.release) or begin_rollout(settings, published, answer)
    if record.approval.required and not record.approval.approved:
        return Conclusion(fleet=fleet.name, release=record.release, state="rejected", reason=record.reason)
    if record.state == "succeeded":
        name, version = parse_version(record.model_version)
        alias = fleet_alias(fleet.name)
        tracking.move_alias(settings, name, alias, version)
        audit_events.alias_moved(settings, record.model_version, alias, FLEET_RELEASE)
        return Conclusion(
            fleet=fleet.name,
            release=record.release,
            state="succeeded",
            reason=record.reason or "every wave succeeded",
            alias=f"{name}@{alias}",
        )
    reason = record.reason or "the rollout did not finish"
    rolled = roll_back_fleet(settings, fleet.name, reason)
    back = rolled.rollback
    where = (
        f"the fleet was rolled back to release {back.release} (restoring release {back.restores})"
        if back is not None and back.release is not None
        else "no earlier release to roll back to: further devices are stopped, devices keep what they run"
    )
    raise RolloutAborted(f"release {record.release} of fleet {fleet.name} aborted: {reason}; {where}")
