"""A device's state on disk, under the agent's root:

    state.json                   DeviceState, replaced whole (write_atomic): its rename is the switch
    releases/<NNNNNN>/bundle/    a verified release, this device's part of it only (release.json,
                                 engines/<target>/..., canary/...); the folder verify_files judges
    releases/<NNNNNN>/bundle.sig its signature, beside the folder (not one of the release's files)
    staging/                     a download in progress; renamed into releases/ once fully verified

Only the active release and the previous one (kept for rollback) stay in `releases/`; whatever else
is found there or in `staging/` after a crash is a download or a switch that never completed, and
is removed. An installed release is verified again (signature and digests) before it is loaded.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from tasks.core.config import format_errors
from tasks.core.errors import BundleRefused, ConfigError
from tasks.core.files import read_bounded, write_atomic
from tasks.fleet.channel import ActiveRelease, Attempt, Result
from tasks.release.bundle import BUNDLE, ENGINES, SIGNATURE_SUFFIX, Release
from tasks.release.verify import verify_files, verify_release_json

STATE_JSON = "state.json"
MAX_STATE_BYTES = 1024**2
CONCLUDED_KEPT = 64  # releases whose outcome is remembered; numbers only grow, so old ones never return


class DeviceState(BaseModel):
    """What the device must remember across restarts."""

    active: ActiveRelease | None = None
    previous: ActiveRelease | None = None
    high_water: int = Field(0, description="Highest release accepted or concluded; a new one must be above.")
    concluded: dict[int, Result] = Field(
        default_factory=dict,
        description="Release → how it ended here: active, failed, rejected, rolled_back.",
    )
    seen_version: int | None = Field(None, description="Highest desired-state version verified.")
    seq: int = Field(0, description="Sequence number of the last status report written.")
    attempt: Attempt | None = Field(None, description="The last release asked for and what became of it.")

    def conclude(self, release: int, result: Result) -> None:
        self.high_water = max(self.high_water, release)
        self.concluded[release] = result
        for old in sorted(self.concluded)[:-CONCLUDED_KEPT]:
            del self.concluded[old]


def engine_names(release: Release, target: str) -> list[str]:
    """The files of `release` a device running `target` holds: its engine folder and the canary set."""
    prefix = f"{release.targets[target]}/"
    return [*sorted(n for n in release.files if n.startswith(prefix)), release.canary.file]


@dataclass(frozen=True)
class Installed:
    """A verified release on disk: its release.json and the target this device runs from it."""

    release: Release
    target: str
    folder: Path  # releases/<NNNNNN>/bundle

    @property
    def engine_dir(self) -> Path:
        return self.folder / ENGINES / self.target


class DeviceDir:
    """The agent's root folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.state_path = self.root / STATE_JSON
        self.releases = self.root / "releases"
        self.staging = self.root / "staging"

    def bundle_dir(self, number: int, parent: Path | None = None) -> Path:
        return (parent or self.releases) / f"{number:06d}" / BUNDLE

    @staticmethod
    def signature_of(bundle: Path) -> Path:
        return bundle.with_name(bundle.name + SIGNATURE_SUFFIX)

    def load(self) -> DeviceState:
        """The saved state; a fresh one when there is none yet."""
        try:
            data = read_bounded(self.state_path, MAX_STATE_BYTES)
        except FileNotFoundError:
            return DeviceState()
        except OSError as exc:
            raise ConfigError(f"device state {self.state_path}: cannot be read ({exc.strerror})") from None
        try:
            if data is None:
                raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
            return DeviceState.model_validate(json.loads(data))
        except ValidationError as exc:
            # Written only by write_atomic, so this is damage from outside; guessing could lower the
            # high-water mark and let a replayed release in.
            raise ConfigError(f"device state {self.state_path}: malformed ({format_errors(exc)})") from None
        except ValueError as exc:
            raise ConfigError(f"device state {self.state_path}: malformed ({exc})") from None

    def save(self, state: DeviceState) -> None:
        write_atomic(self.state_path, state.model_dump_json(indent=2))

    def prune(self, state: DeviceState) -> None:
        """Remove downloads in progress and every release but the active and the previous one."""
        shutil.rmtree(self.staging, ignore_errors=True)
        keep = {f"{r.release:06d}" for r in (state.active, state.previous) if r is not None}
        if self.releases.is_dir():
            for folder in self.releases.iterdir():
                if folder.name not in keep:
                    shutil.rmtree(folder, ignore_errors=True)

    def reverify(self, installed: ActiveRelease, trusted_key: Path, fleet: str) -> Installed:
        """An installed release checked again before it is loaded: signature, release.json and the
        digest of every file this device holds. No expiry (`now` None): an installed release keeps
        serving past it. BundleRefused when anything changed on disk."""
        folder = self.bundle_dir(installed.release)
        release = verify_release_json(folder, trusted_key, signature=self.signature_of(folder), fleet=fleet)
        if release.number != installed.release or installed.target not in release.targets:
            raise BundleRefused(
                f"device state names release {installed.release} for {installed.target}; {folder} holds "
                f"release {release.number} for {', '.join(sorted(release.targets))}"
            )
        verify_files(folder, release, engine_names(release, installed.target))
        return Installed(release=release, target=installed.target, folder=folder)
