"""A release's rollout to a fleet, wave by wave, and the fleet-wide rollback.

The release side's record of a rollout (RolloutRecord) lives in the channel at
`rollouts/<number>.json`, written whole after each step; the desired state it publishes is
signed. Each function is one step that a scheduler may call again after a crash: it starts from
what the channel holds, publishes before it records, and a repeated publication is skipped when
nothing changed, so a rerun converges on the same state.

    start_rollout   plan the waves over the enrolled devices; refuse a release that is not above
                    the fleet's current one, or a second rollout while one is under way
    advance         one step of the current wave: judge it, assign more of its devices within
                    the disruption budget, publish; the next wave, or the end
    fleet_rollback  every device, those that switched included, to a new signed release carrying
                    the previous good one (devices refuse any release number they have passed)
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, BaseModel, Field, ValidationError

from tasks.core.config import format_errors
from tasks.core.errors import ConfigError
from tasks.fleet.channel import Channel
from tasks.fleet.desired import current_desired, highest_release, publish_desired
from tasks.fleet.judge import WaveCounts, judge_wave, outcome_of
from tasks.fleet.spec import Fleet, resolve_share
from tasks.fleet.waves import plan_waves
from tasks.release.bundle import BUNDLE, RELEASE_JSON, Release, release_dir, signature_path, write_bundle
from tasks.release.keys import load_private_key, public_key_path
from tasks.release.verify import verify_files, verify_release_json

log = logging.getLogger(__name__)

ROLLOUT_FORMAT: Literal["slimline.rollout/v1"] = "slimline.rollout/v1"
MAX_RECORD_BYTES = 16 * 1024**2
RolloutState = Literal["pending", "rolling", "succeeded", "aborted", "rolled_back"]
WaveDecision = Literal["waiting", "in_progress", "succeeded", "aborted"]
UNDER_WAY = ("pending", "rolling")


class WaveRecord(BaseModel):
    """One wave: its devices, those assigned the release so far, and how it was judged."""

    name: str
    selector: dict[str, str] = Field(default_factory=dict)
    devices: list[str]
    assigned: list[str] = Field(default_factory=list, description="Told to install the release, in order.")
    finished: list[str] = Field(
        default_factory=list, description="Assigned devices seen with a final outcome, in order."
    )
    success_threshold: float
    timeout_minutes: float
    started_at: AwareDatetime | None = None
    deadline: AwareDatetime | None = None
    counts: WaveCounts = Field(default_factory=WaveCounts)
    decision: WaveDecision = "waiting"
    reason: str = ""
    decided_at: AwareDatetime | None = None


class ApprovalRecord(BaseModel):
    """A person's answer before the first wave (Airflow's ApprovalOperator in the DAG)."""

    required: bool
    approved: bool = False
    by: str | None = None
    at: AwareDatetime | None = None
    comment: str = ""
    timed_out: bool = False


class RollbackRecord(BaseModel):
    release: int | None = Field(description="The new release carrying the restored one; None: none.")
    restores: int | None = Field(description="The previous good release it carries.")
    reason: str
    at: AwareDatetime


class RolloutRecord(BaseModel):
    format: Literal["slimline.rollout/v1"] = ROLLOUT_FORMAT
    fleet: str
    release: int
    model_version: str
    previous_release: int | None = Field(description="The fleet's release when this one started.")
    valid_for: timedelta = Field(description="How long each desired state published stays valid.")
    approval: ApprovalRecord
    waves: list[WaveRecord]
    state: RolloutState = "pending"
    reason: str = Field("", description="Why it ended, in one line.")
    created_at: AwareDatetime
    updated_at: AwareDatetime
    finished_at: AwareDatetime | None = None
    rollback: RollbackRecord | None = None

    def current_wave(self) -> WaveRecord | None:
        return next((w for w in self.waves if w.decision in ("waiting", "in_progress")), None)


# Records


def save_rollout(channel: Channel, record: RolloutRecord) -> None:
    channel.store.put(channel.rollout_key(record.release), record.model_dump_json(indent=2).encode())


def load_rollout(channel: Channel, number: int) -> RolloutRecord | None:
    key = channel.rollout_key(number)
    fetched = channel.store.get(key, MAX_RECORD_BYTES)
    if fetched is None or fetched.data is None:
        return None
    try:
        return RolloutRecord.model_validate_json(fetched.data)
    except ValidationError as exc:
        raise ConfigError(
            f"rollout record {channel.store.uri}/{key} is not readable ({format_errors(exc)})"
        ) from None


def latest_rollout(channel: Channel) -> RolloutRecord | None:
    """The record of the highest release rolled out (or being rolled out) to the fleet."""
    pattern = re.compile(rf"{re.escape(channel.prefix)}/rollouts/(\d{{6}})\.json")
    numbers = [
        int(m.group(1))
        for o in channel.store.list(f"{channel.prefix}/rollouts")
        if (m := pattern.fullmatch(o.key))
    ]
    return load_rollout(channel, max(numbers)) if numbers else None


# Start


def _approval(fleet: Fleet, approval: ApprovalRecord | None) -> ApprovalRecord:
    if approval is not None:
        return approval
    if fleet.approval.required:
        raise ConfigError(f"fleet {fleet.name} requires approval before a rollout; none was given")
    return ApprovalRecord(required=False)


def _refusal(approval: ApprovalRecord) -> str:
    if approval.timed_out:
        return "approval timed out: rejected"
    return f"rejected by {approval.by or 'an unnamed approver'}" + (
        f": {approval.comment}" if approval.comment else ""
    )


def start_rollout(
    channel: Channel,
    fleet: Fleet,
    bundle: Path,
    private_key: Path,
    now: datetime,
    approval: ApprovalRecord | None = None,
) -> RolloutRecord:
    """Start rolling the signed release at `bundle` (write_bundle's folder) out to `fleet`: publish
    it to the channel and record the waves planned over the devices enrolled now (devices that
    enroll later follow the fleet's release). Returns the existing record when this release was
    started already. ConfigError when the release is another fleet's, not above the fleet's
    current release, another rollout is under way, or approval is required and missing; a
    rejected or timed-out approval is recorded as an aborted rollout that publishes nothing."""
    path = Path(bundle) / RELEASE_JSON
    if not path.is_file():
        raise ConfigError(f"{bundle} holds no {RELEASE_JSON}: not a release bundle (write_bundle's folder)")
    release = Release.model_validate_json(path.read_text(encoding="utf-8"))
    existing = load_rollout(channel, release.number)
    if existing is not None:
        return existing
    if release.fleet != fleet.name:
        raise ConfigError(
            f"release {release.number} at {bundle} is for fleet {release.fleet}, not {fleet.name}"
        )
    latest = latest_rollout(channel)
    if latest is not None and latest.state in UNDER_WAY:
        raise ConfigError(
            f"fleet {fleet.name}: the rollout of release {latest.release} is {latest.state}; "
            "let it finish or roll it back first"
        )
    if latest is not None and latest.state == "aborted" and any(w.assigned for w in latest.waves):
        # Its devices hold a release the next rollout's desired state would not name.
        raise ConfigError(
            f"fleet {fleet.name}: the rollout of release {latest.release} was aborted and not rolled "
            f"back; roll it back first: slimline fleet rollback {fleet.name}"
        )
    desired = current_desired(channel, load_private_key(private_key).public_key())
    # Devices may hold the latest rollout's release even after a rollback that restored nothing.
    highest = max(highest_release(desired), latest.release if latest is not None else 0)
    if release.number <= highest:
        raise ConfigError(
            f"release {release.number} is not above release {highest}, which devices of fleet "
            f"{fleet.name} may hold; devices refuse it: bundle a new release"
        )
    approval = _approval(fleet, approval)
    waves = plan_waves(fleet, channel.enrollments())
    record = RolloutRecord(
        fleet=fleet.name,
        release=release.number,
        model_version=release.model_version,
        previous_release=desired.release if desired is not None else None,
        valid_for=release.expires_at - release.created_at,
        approval=approval,
        waves=[WaveRecord(**w.model_dump()) for w in waves],
        created_at=now,
        updated_at=now,
    )
    if approval.required and not approval.approved:
        record.state, record.reason, record.finished_at = "aborted", _refusal(approval), now
    else:
        channel.publish_release(Path(bundle).parent, release.number)
    save_rollout(channel, record)
    log.info("rollout of release %s to fleet %s: %s", release.number, fleet.name, record.state)
    return record


# Advance


def _budget(fleet: Fleet, wave: WaveRecord) -> int:
    """Devices of the wave that may be installing at once."""
    if fleet.disruption_budget is None:
        return len(wave.devices)
    return resolve_share(fleet.disruption_budget.max_unavailable, len(wave.devices))


def _step_wave(
    channel: Channel, fleet: Fleet, record: RolloutRecord, wave: WaveRecord, now: datetime
) -> None:
    """Judge the wave; while it is in progress, assign more of its devices within the budget."""
    if wave.started_at is None:
        wave.started_at = now
        wave.deadline = now + timedelta(minutes=wave.timeout_minutes)
        wave.decision = "in_progress"
    assert wave.deadline is not None
    assigned = set(wave.assigned)
    # Finished devices are read again too: one that succeeded can still roll back while serving,
    # and that failure counts against its wave.
    statuses = channel.statuses(wave.assigned) if wave.assigned else {}
    outcomes = {
        d: outcome_of(statuses.get(d), record.release) if d in assigned else "pending" for d in wave.devices
    }
    judgement = judge_wave(
        list(outcomes.values()),
        success_threshold=wave.success_threshold,
        abort=fleet.abort,
        deadline_passed=now >= wave.deadline,
    )
    wave.counts, wave.reason = judgement.counts, judgement.reason
    wave.finished += [d for d in wave.assigned if outcomes[d] != "pending" and d not in wave.finished]
    if judgement.decision != "in_progress":
        wave.decision, wave.decided_at = judgement.decision, now
        return
    installing = sum(outcomes[d] == "pending" for d in wave.assigned)
    free = max(0, _budget(fleet, wave) - installing)
    wave.assigned += [d for d in wave.devices if d not in assigned][:free]


def advance(
    channel: Channel, fleet: Fleet, record: RolloutRecord, private_key: Path, now: datetime
) -> RolloutRecord:
    """One step of the rollout; call it until the state is no longer `pending` or `rolling`.

    The record stored in the channel wins over `record` (a caller's copy may be stale after a
    crash). Judges the current wave from its devices' reports; while it runs, assigns more of its
    devices within the disruption budget and publishes the desired state (the previous good
    release for every device not yet assigned, this release for every device assigned so far);
    when it succeeds, starts the next wave in the same step, and after the last one publishes
    this release for the whole fleet (state `succeeded`). An aborted wave stops the rollout
    (state `aborted`): the caller then rolls the fleet back with `fleet_rollback`."""
    record = (load_rollout(channel, record.release) or record).model_copy(deep=True)
    if record.state not in UNDER_WAY:
        return record
    key = load_private_key(private_key)
    record.state = "rolling"
    wave = record.current_wave()
    while wave is not None:
        _step_wave(channel, fleet, record, wave, now)
        if wave.decision == "in_progress":
            publish_desired(
                channel,
                fleet,
                key,
                release=record.previous_release,
                devices={d: record.release for w in record.waves for d in w.assigned},
                note=f"release {record.release} rolling out: wave {wave.name}",
                valid_for=record.valid_for,
                now=now,
            )
            break
        if wave.decision == "aborted":
            record.state, record.reason, record.finished_at = (
                "aborted",
                f"wave {wave.name}: {wave.reason}",
                now,
            )
            break
        wave = record.current_wave()
    if wave is None:
        publish_desired(
            channel,
            fleet,
            key,
            release=record.release,
            devices={},
            note=f"release {record.release} rolled out to the fleet",
            valid_for=record.valid_for,
            now=now,
        )
        record.state, record.reason, record.finished_at = "succeeded", "every wave succeeded", now
    record.updated_at = now
    save_rollout(channel, record)
    return record


# Roll back


def _bundle_again(
    releases_dir: Path, fleet: Fleet, number: int, private_key: Path, valid_for: timedelta, now: datetime
) -> int:
    """A new release of `fleet` carrying release `number`'s engines, canary set, model version and
    lineage, signed again; returns its number. The old bundle is verified first (every file
    against the signed digests; its expiry does not matter, it is being renewed)."""
    source = release_dir(releases_dir, fleet.name, number) / BUNDLE
    if not source.is_dir():
        raise ConfigError(
            f"release {number} of fleet {fleet.name} is not at {source}; cannot roll back to it"
        )
    old = verify_release_json(
        source, public_key_path(private_key), signature=signature_path(source), fleet=fleet.name
    )
    verify_files(source, old, sorted(old.files))
    bundle = write_bundle(
        releases_dir,
        fleet=fleet.name,
        model_version=old.model_version,
        lineage=old.lineage,
        engines={target: source / folder for target, folder in old.targets.items()},
        canary=source / old.canary.file,
        private_key=private_key,
        expires_in=valid_for,
        now=now,
    )
    return int(bundle.parent.name)


def fleet_rollback(
    channel: Channel, fleet: Fleet, releases_dir: Path, private_key: Path, reason: str, now: datetime
) -> RolloutRecord:
    """Return every device of the fleet, including those that already switched, to the release
    before the latest rollout: bundled again as a new, higher release (devices refuse a number they
    have passed), published, and named in a desired state for every device. Recorded in the
    rollout's record (state `rolled_back`) and returned; a record already rolled back is returned
    as it is.

    With no release before it (the fleet's first rollout), there is nothing to roll back to: the
    desired state then names no release and no device, so no further device installs the bad
    release, while a device that has it keeps serving it (a device never removes its only engine).
    ConfigError when the fleet has no rollout, or the release to restore is not in `releases_dir`.
    """
    latest = latest_rollout(channel)
    if latest is None:
        raise ConfigError(f"fleet {fleet.name} has no rollout to roll back")
    if latest.state == "rolled_back":
        return latest
    record = latest.model_copy(deep=True)
    if record.rollback is None:
        restores = record.previous_release
        number = None
        if restores is not None:
            number = _bundle_again(releases_dir, fleet, restores, private_key, record.valid_for, now)
        # Recorded before it is published: a rerun publishes this number instead of bundling another.
        record.rollback = RollbackRecord(release=number, restores=restores, reason=reason, at=now)
        record.updated_at = now
        save_rollout(channel, record)
    rollback = record.rollback
    if rollback.release is not None:
        channel.publish_release(release_dir(releases_dir, fleet.name, rollback.release), rollback.release)
        note = (
            f"release {record.release} rolled back to release {rollback.restores} "
            f"as release {rollback.release}"
        )
    else:
        note = f"release {record.release} stopped: no release to roll back to"
    publish_desired(
        channel,
        fleet,
        load_private_key(private_key),
        release=rollback.release,
        devices={},
        note=f"{note}: {rollback.reason}",
        valid_for=record.valid_for,
        now=now,
    )
    record.state, record.reason = "rolled_back", f"{note}: {rollback.reason}"
    record.finished_at = record.updated_at = now
    save_rollout(channel, record)
    log.warning("fleet %s: %s", fleet.name, record.reason)
    return record
