"""`slimline audit verify`, `audit fleet`, `audit device` and `audit version`: the audit log (with
the head its verifier remembers) and what the devices report in the channel, joined by
tasks.audit.trace."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from tasks.audit.log import open_log, read_records
from tasks.audit.records import Record
from tasks.audit.trace import (
    DeviceRunning,
    DeviceTrace,
    FleetTrace,
    VersionTrace,
    trace_device,
    trace_fleet,
    trace_version,
    unreleased,
)
from tasks.audit.verify import VerifyReport, verify
from tasks.audit.witness import last_seen, remember
from tasks.core.config import SLUG
from tasks.core.errors import AuditFailed, ConfigError
from tasks.core.settings import Settings
from tasks.core.store import FileStore, open_store
from tasks.fleet.channel import Channel, open_channel


def running_devices(channel: Channel, devices: list[str] | None = None) -> list[DeviceRunning]:
    """Every enrolled device (or those of `devices`) and the engine it reports active (none when
    it has not reported)."""
    devices = channel.device_ids() if devices is None else devices
    statuses = channel.statuses(devices)
    found = []
    for device in devices:
        status = statuses.get(device)
        active = status.active if status is not None else None
        if status is None or active is None:
            found.append(DeviceRunning(device=device, reported_at=status.reported_at if status else None))
            continue
        found.append(
            DeviceRunning(
                device=device,
                release=active.release,
                target=active.target,
                engine_digest=active.engine_digest,
                activated_at=active.activated_at,
                reported_at=status.reported_at,
            )
        )
    return found


def audit_fleet(settings: Settings, fleet: str) -> FleetTrace:
    channel = open_channel(settings, fleet)
    return trace_fleet(channel.fleet, running_devices(channel), read_records(open_log(settings)))


def audit_device(settings: Settings, device: str, fleet: str | None) -> DeviceTrace:
    """The device's trace; without `fleet`, the one fleet in the channel that enrolled it
    (ConfigError when none did, or more than one: then the fleet must be named)."""
    fleets = [fleet] if fleet else channel_fleets(settings)
    found = [f for f in fleets if device in open_channel(settings, f).device_ids()]
    if not found:
        where = f"fleet {fleet}" if fleet else f"any fleet of {settings.channel_uri}"
        raise ConfigError(
            f"no device {device!r} is enrolled in {where}; `slimline fleet status F` lists them"
        )
    if len(found) > 1:
        raise ConfigError(
            f"device {device!r} is enrolled in fleets {', '.join(found)}; name one with --fleet"
        )
    channel = open_channel(settings, found[0])
    (running,) = running_devices(channel, [device])
    return trace_device(channel.fleet, running, list(read_records(open_log(settings))))


def audit_version(settings: Settings, model_version: str) -> VersionTrace:
    fleets = {f: running_devices(open_channel(settings, f)) for f in channel_fleets(settings)}
    return trace_version(model_version, fleets, list(read_records(open_log(settings))))


def channel_fleets(settings: Settings) -> list[str]:
    """Fleets with devices in the settings' channel."""
    store = open_store(settings.channel_uri, settings.s3_endpoint_url)
    if isinstance(store, FileStore) and not store.root.exists():
        return []  # no fleet was ever published to
    pattern = re.compile(rf"fleets/({SLUG.strip('^$')})/devices/")
    return sorted({m.group(1) for o in store.list("fleets/") if (m := pattern.match(o.key))})


def check_devices(settings: Settings, records: list[Record]) -> int:
    """AuditFailed naming the first device (by fleet, then name) whose active engine was never
    released to its fleet; returns how many devices were checked."""
    checked = 0
    for fleet in channel_fleets(settings):
        running = running_devices(open_channel(settings, fleet))
        checked += len(running)
        for device in unreleased(fleet, running, records):
            raise AuditFailed(
                f"device {fleet}/{device.device} runs engine {device.engine_digest} (release "
                f"{device.release}, target {device.target}), which no bundle.signed record of fleet "
                f"{fleet} names: it was never released to this fleet"
            )
    return checked


def verify_audit(
    settings: Settings, trusted: ec.EllipticCurvePublicKey, witness: Path | None = None
) -> tuple[VerifyReport, int]:
    """Verify the settings' audit log against `trusted` and the head the witness file remembers
    (default $SLIMLINE_AUDIT_WITNESS), then every device's engine against the released ones;
    returns the report and how many devices were checked, and remembers the last signed head."""
    witness = witness or settings.audit_witness
    audit = open_log(settings)
    bundles: list[Record] = []

    def keep(record: Record) -> None:
        if record.kind == "bundle.signed":
            bundles.append(record)

    report = verify(audit, trusted, last_seen(witness, audit.uri), keep)
    devices = check_devices(settings, bundles)
    if report.last_head_seq is not None and report.last_head_hash and report.last_head_at is not None:
        seq, digest, signed_at = report.last_head_seq, report.last_head_hash, report.last_head_at
        remember(witness, audit.uri, seq, digest, signed_at, datetime.now(UTC))
    return report, devices
