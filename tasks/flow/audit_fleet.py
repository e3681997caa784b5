"""`slimline audit fleet` and the device cross-check of `slimline audit verify`: what the devices of
a fleet report in the channel and each release's lineage tags (its release.json in the channel),
joined with the audit log by tasks.audit.trace."""

from __future__ import annotations

import re

from pydantic import ValidationError

from tasks.audit.log import open_log, read_records
from tasks.audit.records import Record
from tasks.audit.trace import DeviceRunning, FleetTrace, trace_fleet, unreleased
from tasks.core.config import SLUG
from tasks.core.errors import AuditFailed
from tasks.core.settings import Settings
from tasks.core.store import FileStore, open_store
from tasks.fleet.channel import Channel, open_channel
from tasks.release.bundle import RELEASE_JSON, Release
from tasks.release.metadata import MAX_METADATA_BYTES


def running_devices(channel: Channel) -> list[DeviceRunning]:
    """Every enrolled device and the engine it reports active (none when it has not reported)."""
    devices = channel.device_ids()
    statuses = channel.statuses(devices)
    found = []
    for device in devices:
        active = statuses[device].active if device in statuses else None
        if active is None:
            found.append(DeviceRunning(device=device))
            continue
        digest = active.engine_digest
        found.append(
            DeviceRunning(device=device, release=active.release, target=active.target, engine_digest=digest)
        )
    return found


def release_tags(channel: Channel, number: int) -> dict[str, str]:
    """The lineage tags of a published release (empty when the channel does not hold it)."""
    fetched = channel.store.get(channel.release_file_key(number, RELEASE_JSON), MAX_METADATA_BYTES)
    if fetched is None or fetched.data is None:
        return {}
    try:
        release = Release.model_validate_json(fetched.data)
    except ValidationError:
        return {}  # an unreadable release.json shows as unknown lineage; `verify` judges the engines
    return release.lineage | {"model_version": release.model_version}


def audit_fleet(settings: Settings, fleet: str) -> FleetTrace:
    channel = open_channel(settings, fleet)
    running = running_devices(channel)
    numbers = {r.release for r in running if r.release is not None}
    tags = {n: release_tags(channel, n) for n in sorted(numbers)}
    return trace_fleet(channel.fleet, running, tags, read_records(open_log(settings)))


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
