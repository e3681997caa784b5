"""The pipeline's decisions as audit records: one function per kind of decision, called where the
decision is made. A record that cannot be formed (invalid, too large) is logged and skipped, so an
audit record never fails the step that made the decision; only a log that cannot be written does
(StoreError, like any store failure)."""

from __future__ import annotations

import logging
from datetime import datetime

from pydantic import JsonValue

from tasks.audit.log import append_event
from tasks.audit.records import (
    RecordKind,
    checkpoint_subject,
    device_subject,
    engine_subject,
    fleet_subject,
    version_subject,
)
from tasks.core.errors import AuditFailed, ConfigError, StoreError
from tasks.core.settings import Settings
from tasks.fleet.channel import DeviceStatus
from tasks.fleet.rollout import RolloutRecord, WaveRecord
from tasks.gate.gates import Verdict
from tasks.intake.validation import ValidationReport

log = logging.getLogger(__name__)

NIGHTLY = "nightly_compression"  # the actor of the nightly run's records
FLEET_RELEASE = "fleet_release"  # the actor of the release side's records


def record_event(
    settings: Settings,
    kind: RecordKind,
    subject: str,
    data: dict[str, JsonValue],
    actor: str,
    now: datetime | None = None,
) -> None:
    """Append one record; a record that cannot be formed is logged and skipped, a log that cannot
    be written (its store failing, its chain broken so no valid link can be made) is a StoreError."""
    try:
        append_event(settings, kind, subject, data, actor, now)
    except ConfigError as exc:
        log.error("audit record not written (the step goes on): %s", exc)
    except (OSError, AuditFailed) as exc:
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StoreError(
            f"audit log {settings.audit_log_uri}: cannot append {kind} about {subject}: {what}"
        ) from exc


def checkpoint_verified(
    settings: Settings, uri: str, digest: str, fingerprint: str, recipe_digest: str
) -> None:
    data: dict[str, JsonValue] = {
        "digest": digest,
        "fingerprint": fingerprint,
        "recipe_digest": recipe_digest,
    }
    record_event(settings, "checkpoint.verified", checkpoint_subject(uri), data, NIGHTLY)


def checkpoint_refused(settings: Settings, uri: str, reason: str, digest: str | None, exit_code: int) -> None:
    data: dict[str, JsonValue] = {"reason": reason, "digest": digest, "exit_code": exit_code}
    record_event(settings, "checkpoint.refused", checkpoint_subject(uri), data, NIGHTLY)


def data_validated(
    settings: Settings, dataset_digest: str, checkpoint_uri: str, report: ValidationReport
) -> None:
    data: dict[str, JsonValue] = {
        "dataset_digest": dataset_digest,
        "checkpoint_uri": checkpoint_uri,
        "success": report.success,
        "result": "passed" if report.success else report.message(),
        "suites": len(report.suites),
    }
    record_event(settings, "data.validated", f"dataset:{dataset_digest}", data, NIGHTLY)


def variant_gated(
    settings: Settings,
    variant: str,
    run_id: str,
    verdict: Verdict,
    lineage: dict[str, str],
    stage: str,
) -> None:
    """`lineage`: artifact_key, recipe_digest, code_commit, checkpoint and dataset digests.
    `stage`: `gates` (the run's own evaluation) or `timing` (latency judged side by side)."""
    data: dict[str, JsonValue] = {
        "variant": variant,
        "run_id": run_id,
        "stage": stage,
        "passed": verdict.passed,
        "reasons": list(verdict.reasons),
        **lineage,
    }
    record_event(settings, "variant.gated", f"variant_run:{run_id}", data, NIGHTLY)


def version_registered(settings: Settings, model_version: str, run_id: str, artifact_key: str) -> None:
    data: dict[str, JsonValue] = {"run_id": run_id, "artifact_key": artifact_key}
    record_event(settings, "version.registered", version_subject(model_version), data, NIGHTLY)


def alias_moved(settings: Settings, model_version: str, alias: str, actor: str) -> None:
    version = model_version.rpartition("/")[2]
    data: dict[str, JsonValue] = {"alias": alias, "version": version}
    record_event(settings, "alias.moved", version_subject(model_version), data, actor)


def engine_built(settings: Settings, model_version: str, target: str, digest: str, status: str) -> None:
    data: dict[str, JsonValue] = {
        "target": target,
        "digest": digest,
        "model_version": model_version,
        "status": status,
    }
    record_event(settings, "engine.built", engine_subject(target, digest), data, NIGHTLY)


def bundle_signed(
    settings: Settings,
    fleet: str,
    release: int,
    model_version: str,
    engines: dict[str, str],
    lineage: dict[str, str],
) -> None:
    """`engines`: target → the digest of its engine in the bundle (what a device reports active);
    `lineage`: the tags the release was signed with (run, checkpoint, data, recipe, commit), kept
    here so that an audit trace never depends on a release.json read back from the channel."""
    data: dict[str, JsonValue] = {
        "fleet": fleet,
        "release": release,
        "model_version": model_version,
        "engines": dict(engines),
        "lineage": dict(lineage),
    }
    record_event(settings, "bundle.signed", fleet_subject(fleet), data, FLEET_RELEASE)


def approval_asked(
    settings: Settings, fleet: str, release: int, model_version: str, timeout_minutes: float, summary: str
) -> None:
    data: dict[str, JsonValue] = {
        "fleet": fleet,
        "release": release,
        "model_version": model_version,
        "timeout_minutes": timeout_minutes,
        "summary": summary,
    }
    record_event(settings, "approval.asked", fleet_subject(fleet), data, FLEET_RELEASE)


def approval_decided(settings: Settings, record: RolloutRecord) -> None:
    """approval.given or approval.refused, for a rollout that required one."""
    approval = record.approval
    data: dict[str, JsonValue] = {
        "fleet": record.fleet,
        "release": record.release,
        "model_version": record.model_version,
        "by": approval.by,
        "at": approval.at.isoformat() if approval.at else None,
        "comment": approval.comment,
        "timed_out": approval.timed_out,
    }
    kind: RecordKind = "approval.given" if approval.approved else "approval.refused"
    actor = approval.by or ("approval timeout" if approval.timed_out else FLEET_RELEASE)
    record_event(settings, kind, fleet_subject(record.fleet), data, actor)


def _wave_data(record: RolloutRecord, wave: WaveRecord) -> dict[str, JsonValue]:
    return {
        "fleet": record.fleet,
        "release": record.release,
        "wave": wave.name,
        "counts": wave.counts.model_dump(mode="json"),
        "reason": wave.reason,
    }


def wave_changes(settings: Settings, before: RolloutRecord, after: RolloutRecord) -> None:
    """wave.started / wave.promoted / wave.aborted for every wave whose decision one advance changed
    (comparing the records is what makes each written once, whatever reruns the scheduler makes)."""
    subject = fleet_subject(after.fleet)
    for old, new in zip(before.waves, after.waves, strict=True):
        if old.started_at is None and new.started_at is not None:
            record_event(settings, "wave.started", subject, _wave_data(after, new), FLEET_RELEASE)
        if old.decision != new.decision and new.decision == "succeeded":
            record_event(settings, "wave.promoted", subject, _wave_data(after, new), FLEET_RELEASE)
        if old.decision != new.decision and new.decision == "aborted":
            record_event(settings, "wave.aborted", subject, _wave_data(after, new), FLEET_RELEASE)


def device_outcome(settings: Settings, record: RolloutRecord, status: DeviceStatus) -> None:
    """device.activated when the device serves the release, device.rolled_back when it went back
    to its previous release; other final outcomes (an install that failed before switching, a
    refused release) change nothing the device runs."""
    attempt = status.attempt
    active = status.active
    data: dict[str, JsonValue] = {
        "fleet": record.fleet,
        "release": record.release,
        "model_version": record.model_version,
        "active_release": active.release if active else None,
        "engine_digest": active.engine_digest if active else None,
        "target": active.target if active else None,
        "reason": attempt.reason if attempt else "",
        "at": attempt.at.isoformat() if attempt else None,
    }
    subject = device_subject(record.fleet, status.device)
    if active is not None and active.release == record.release:
        record_event(settings, "device.activated", subject, data, FLEET_RELEASE)
    elif attempt is not None and attempt.release == record.release and attempt.result == "rolled_back":
        record_event(settings, "device.rolled_back", subject, data, FLEET_RELEASE)


def fleet_rolled_back(settings: Settings, record: RolloutRecord) -> None:
    rollback = record.rollback
    data: dict[str, JsonValue] = {
        "fleet": record.fleet,
        "release": rollback.release if rollback else None,
        "restores": rollback.restores if rollback else None,
        "aborted_release": record.release,
        "reason": rollback.reason if rollback else record.reason,
    }
    record_event(settings, "fleet.rolled_back", fleet_subject(record.fleet), data, FLEET_RELEASE)
