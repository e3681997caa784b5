"""Fetch one release for this device: release.json and the signature first, verified (signer,
fleet, expiry, a number above the device's high-water mark) before anything else is fetched; then
the target, chosen from each candidate's engine.json alone (checked against release.json, then
against this device's capabilities), so an incompatible device is refused before any engine is
downloaded; then only that target's engine and the canary set, verified file by file. Everything
lands in `staging/` and is renamed into `releases/` only once it all verified.
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import datetime
from pathlib import Path

from tasks.core.errors import BundleRefused, EngineError, ReleaseIncompatible
from tasks.engines.capabilities import Capabilities, unmet
from tasks.engines.info import ENGINE_JSON, read_info
from tasks.fleet.channel import SIGNATURE, Channel
from tasks.fleet.device import DeviceDir, Installed, engine_names
from tasks.release.bundle import RELEASE_JSON, Release
from tasks.release.verify import verify_files, verify_release_json

log = logging.getLogger(__name__)


def candidate_targets(release: Release, preference: list[str]) -> list[str]:
    """The release's targets in the fleet's order of preference, then the rest by name."""
    preferred = [t for t in preference if t in release.targets]
    return preferred + sorted(set(release.targets) - set(preferred))


def choose_target(
    channel: Channel, release: Release, bundle: Path, preference: list[str], caps: Capabilities
) -> str:
    """The first candidate target whose engine this device can run, judged on engine.json alone;
    the others' engine.json are removed again. ReleaseIncompatible, naming each target's reasons,
    when none fits."""
    fetched: list[str] = []
    reasons: list[str] = []
    for target in candidate_targets(release, preference):
        name = f"{release.targets[target]}/{ENGINE_JSON}"
        channel.download_release_file(release.number, name, bundle / name)
        fetched.append(name)
        verify_files(bundle, release, fetched)  # the digest release.json (verified) gives it
        try:
            info = read_info(bundle / release.targets[target])
        except EngineError as exc:
            raise BundleRefused(str(exc)) from None
        if info.target != target or info.model_version != release.model_version:
            raise BundleRefused(
                f"{name} is an engine of {info.model_version} for {info.target}, "
                f"not of {release.model_version} for {target}"
            )
        missing = unmet(info.requires, info.runtime, caps)
        if not missing:
            for other in fetched[:-1]:
                shutil.rmtree((bundle / other).parent)
            return target
        reasons.append(f"{target} ({'; '.join(missing)})")
    raise ReleaseIncompatible(
        f"release {release.number} of fleet {release.fleet} refused: no engine this device can run: "
        + ", ".join(reasons)
    )


def install_release(
    channel: Channel,
    number: int,
    device: DeviceDir,
    trusted_key: Path,
    *,
    preference: list[str],
    caps: Capabilities,
    high_water: int,
    now: datetime,
) -> Installed:
    """Release `number` of the channel, verified, in `releases/`; BundleRefused (one line, naming the
    release) when it is not genuine, not for this fleet, expired or not above `high_water`;
    ReleaseIncompatible when it holds no engine this device can run; StoreError when the channel
    fails mid-way (nothing is left but staging leftovers, removed at the next start or install)."""
    try:
        shutil.rmtree(device.staging, ignore_errors=True)
        bundle = device.bundle_dir(number, device.staging)
        signature = device.signature_of(bundle)
        channel.download_release_file(number, SIGNATURE, signature)
        channel.download_release_file(number, RELEASE_JSON, bundle / RELEASE_JSON)
        release = verify_release_json(
            bundle, trusted_key, signature=signature, current_release=high_water, fleet=channel.fleet, now=now
        )
        if release.number != number:
            raise BundleRefused(f"the channel's release {number} holds release {release.number}")
        target = choose_target(channel, release, bundle, preference, caps)
        names = engine_names(release, target)
        for name in names:
            if not (bundle / name).exists():  # engine.json came with the choice
                channel.download_release_file(number, name, bundle / name)
        verify_files(bundle, release, names)
        final = device.bundle_dir(number).parent
        shutil.rmtree(final, ignore_errors=True)  # a release never switched to (a crash); above high-water
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(bundle.parent, final)
        log.info("release %s verified for target %s: %s", number, target, final)
        return Installed(release=release, target=target, folder=device.bundle_dir(number))
    except ReleaseIncompatible:
        raise
    except BundleRefused as exc:
        why = f"release {number} of fleet {channel.fleet} refused: {exc.reason}"
        raise BundleRefused(why, exc.reason) from None
