"""The fleet channel: what the release side and the devices say to each other, in an object store
(`file://` or S3), one fleet per prefix.

    fleets/<fleet>/desired.json                      the desired state, signed (DesiredState)
    fleets/<fleet>/releases/<NNNNNN>/bundle/...      released bundles, as signed
    fleets/<fleet>/releases/<NNNNNN>/bundle.sig      put last: a release exists once its signature does
    fleets/<fleet>/devices/<device>/enrollment.json  what a device is (Enrollment), written by it
    fleets/<fleet>/devices/<device>/status.json      its latest report (DeviceStatus), written by it
    fleets/<fleet>/rollouts/<NNNNNN>.json            the release side's record of a rollout

Every object is written whole (an atomic rename on file://, one PUT on S3), so a reader never sees
half of one. Devices believe the desired state and the bundles only through the release key;
what devices write is their claim, read by the rollout as such.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AwareDatetime, BaseModel, Field, ValidationError

from tasks.core.config import SLUG, Strict, format_errors
from tasks.core.errors import BundleRefused, ConfigError
from tasks.core.store import Fetched, ObjectStore, open_store
from tasks.engines.capabilities import Capabilities
from tasks.fleet.spec import Health
from tasks.release.bundle import BUNDLE, SIGNATURE_SUFFIX
from tasks.release.metadata import MAX_METADATA_BYTES, check_fresh, open_document, sign_document

if TYPE_CHECKING:  # passed in: a device runs without pydantic-settings
    from tasks.core.settings import Settings

DESIRED_FORMAT: Literal["slimline.desired/v1"] = "slimline.desired/v1"
MAX_REPORT_BYTES = 1024**2
SIGNATURE = f"{BUNDLE}{SIGNATURE_SUFFIX}"


class DesiredState(Strict):
    """Which release each device of a fleet should run: `release` for every device not named in
    `devices` (a wave in progress names its devices). Signed; `version` grows with every publish,
    so a device refuses an older copy, and it expires, so a frozen channel is noticed."""

    format: Literal["slimline.desired/v1"] = DESIRED_FORMAT
    fleet: str = Field(pattern=SLUG)
    version: int = Field(ge=1)
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    release: int | None = Field(None, ge=1, description="The fleet's release; None before the first.")
    devices: dict[str, int] = Field(default_factory=dict, description="Device → release, for a wave.")
    targets: list[str] = Field(
        default_factory=list,
        description="The fleet's targets in order of preference: a device runs "
        "the first whose engine it can run.",
    )
    health: Health = Field(default_factory=Health, description="What a device checks before it switches.")
    note: str = Field("", description="Why: the rollout and wave, or the rollback, that published it.")

    def release_for(self, device: str) -> int | None:
        return self.devices.get(device, self.release)


class HealthReport(BaseModel):
    """A device's check of an engine on the release's canary set."""

    examples: int
    agreement: float  # share of labels equal to the release's expected (reference) labels
    accuracy: float  # against the canary set's true labels
    expected_accuracy: float  # the reference labels' own accuracy
    accuracy_drop: float  # expected_accuracy - accuracy
    p50_ms: float
    p95_ms: float
    errors: int  # failed inferences during the check
    passed: bool
    reason: str


class Enrollment(BaseModel):
    """What a device says it is: read from the machine when the agent starts."""

    device: str = Field(pattern=SLUG)
    fleet: str = Field(pattern=SLUG)
    labels: dict[str, str] = Field(default_factory=dict)
    capabilities: Capabilities
    agent_version: str
    enrolled_at: AwareDatetime


Result = Literal["in_progress", "active", "failed", "rejected", "rolled_back"]


class Attempt(BaseModel):
    """What became of the last release a device was asked to run."""

    release: int
    result: Result
    phase: str  # where it is or where it stopped: download, verify, check, switch, serve
    reason: str = ""
    target: str | None = None
    health: HealthReport | None = None
    at: AwareDatetime


class ActiveRelease(BaseModel):
    release: int
    target: str
    model_version: str
    engine_digest: str
    activated_at: AwareDatetime


class DeviceStatus(BaseModel):
    """A device's latest report. `seq` grows with every report the device writes."""

    device: str = Field(pattern=SLUG)
    fleet: str = Field(pattern=SLUG)
    seq: int = Field(ge=0)
    reported_at: AwareDatetime
    active: ActiveRelease | None = None
    previous_release: int | None = None
    attempt: Attempt | None = None
    desired_version: int | None = None  # the desired state it last acted on
    serving_errors: int = 0
    # Why the device could not use the channel's desired state at its last poll (forged, older,
    # expired: refused and ignored, the device keeps serving); empty when it could.
    channel_problem: str = ""
    offline_polls: int = 0  # polls that found the channel unreachable since the previous report


def _checked_name(value: str, what: str) -> str:
    if not re.match(SLUG, value):
        raise ConfigError(f"{what} {value!r}: not a name (letters, digits, '.', '_', '-')")
    return value


class Channel:
    """One fleet's channel in a store."""

    def __init__(self, store: ObjectStore, fleet: str) -> None:
        self.store = store
        self.fleet = _checked_name(fleet, "fleet")
        self.prefix = f"fleets/{fleet}"

    # keys
    @property
    def desired_key(self) -> str:
        return f"{self.prefix}/desired.json"

    def release_prefix(self, number: int) -> str:
        return f"{self.prefix}/releases/{number:06d}"

    def release_file_key(self, number: int, name: str) -> str:
        """A file of a released bundle (a path inside `bundle/`), or the signature (`bundle.sig`)."""
        return f"{self.release_prefix(number)}/{name if name == SIGNATURE else f'{BUNDLE}/{name}'}"

    def device_key(self, device: str, name: str) -> str:
        return f"{self.prefix}/devices/{_checked_name(device, 'device')}/{name}"

    def rollout_key(self, number: int) -> str:
        return f"{self.prefix}/rollouts/{number:06d}.json"

    # the release side
    def publish_release(self, release_dir: Path, number: int) -> None:
        """Upload a signed release folder (`bundle/` and `bundle.sig`), the signature last."""
        bundle = Path(release_dir) / BUNDLE
        for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
            self.store.upload(path, self.release_file_key(number, path.relative_to(bundle).as_posix()))
        self.store.upload(Path(release_dir) / SIGNATURE, self.release_file_key(number, SIGNATURE))

    def published_releases(self) -> list[int]:
        found = {
            int(m.group(1))
            for o in self.store.list(f"{self.prefix}/releases")
            if (
                m := re.fullmatch(
                    rf"{re.escape(self.prefix)}/releases/(\d{{6}})/{re.escape(SIGNATURE)}", o.key
                )
            )
        }
        return sorted(found)

    def publish_desired(self, state: DesiredState, private_key: Any) -> None:
        if state.fleet != self.fleet:
            raise ConfigError(f"desired state for fleet {state.fleet} cannot go to {self.fleet}'s channel")
        self.store.put(self.desired_key, sign_document(state.model_dump(mode="json"), private_key))

    # both sides
    def fetch_desired(
        self,
        trusted: Any,
        *,
        seen_version: int | None,
        now: datetime | None,
        etag: str | None = None,
    ) -> tuple[DesiredState | None, str | None]:
        """(the verified desired state, its tag); (None, tag) when unchanged since `etag`, (None,
        None) when none was published. BundleRefused when it is unsigned, forged, for another
        fleet, older than `seen_version` or expired; `now` None leaves the expiry unjudged (the
        release side reading what it last published, to publish the next version)."""
        fetched = self.store.get(self.desired_key, MAX_METADATA_BYTES, if_none_match=etag)
        if fetched is None:
            return None, None
        if fetched.data is None:
            return None, fetched.etag
        what = f"desired state of fleet {self.fleet}"
        signed = open_document(fetched.data, trusted, what)
        try:
            state = DesiredState.model_validate(signed)
        except ValidationError as exc:
            raise BundleRefused(f"{what}: malformed ({format_errors(exc)})") from None
        if state.fleet != self.fleet:
            raise BundleRefused(f"{what}: it is fleet {state.fleet}'s")
        check_fresh(
            what,
            version=state.version,
            seen_version=seen_version,
            expires_at=state.expires_at,
            now=now or state.issued_at,
        )
        return state, fetched.etag

    # the device side
    def put_enrollment(self, enrollment: Enrollment) -> None:
        self.store.put(
            self.device_key(enrollment.device, "enrollment.json"), enrollment.model_dump_json().encode()
        )

    def put_status(self, status: DeviceStatus) -> None:
        self.store.put(self.device_key(status.device, "status.json"), status.model_dump_json().encode())

    def download_release_file(self, number: int, name: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.store.download(self.release_file_key(number, name), dest)

    # reading what devices wrote
    def device_ids(self) -> list[str]:
        found = set()
        for info in self.store.list(f"{self.prefix}/devices"):
            parts = info.key.split("/")
            if len(parts) == 5 and parts[4] == "enrollment.json" and re.match(SLUG, parts[3]):
                found.add(parts[3])
        return sorted(found)

    def _read_model(self, key: str, model: type[Any]) -> Any | None:
        fetched: Fetched | None = self.store.get(key, MAX_REPORT_BYTES)
        if fetched is None or fetched.data is None:
            return None
        try:
            return model.model_validate_json(fetched.data)
        except ValidationError:
            return None  # a device's malformed report counts as no report

    def enrollments(self) -> dict[str, Enrollment]:
        found = {
            d: self._read_model(self.device_key(d, "enrollment.json"), Enrollment) for d in self.device_ids()
        }
        return {d: e for d, e in found.items() if e is not None and e.device == d and e.fleet == self.fleet}

    def statuses(self, devices: list[str] | None = None) -> dict[str, DeviceStatus]:
        names = self.device_ids() if devices is None else devices
        found = {d: self._read_model(self.device_key(d, "status.json"), DeviceStatus) for d in names}
        return {d: s for d, s in found.items() if s is not None and s.device == d and s.fleet == self.fleet}


def open_channel(settings: Settings, fleet: str) -> Channel:
    """Fleet `fleet`'s channel in the store settings name (`fleet_channel`, default <home>/channel)."""
    return Channel(open_store(settings.channel_uri, settings.s3_endpoint_url), fleet)
