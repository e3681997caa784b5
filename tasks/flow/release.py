"""A signed release of a registered version for a fleet: its engines for every target of the
fleet (from the registry, digests checked), the canary set they were checked on and its lineage,
in a bundle signed with the release key. `slimline release bundle` calls this."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from tasks.core.digests import file_sha256
from tasks.core.errors import ConfigError
from tasks.core.settings import Settings
from tasks.engines.build import engine_digest
from tasks.engines.canary import CANARY_FILE
from tasks.engines.target import resolve_targets
from tasks.fleet.spec import get_fleet
from tasks.flow import audit_events
from tasks.registry.engines import ENGINE_TAG, engines_of, fetch_engine
from tasks.registry.versions import get_version, parse_version
from tasks.release.bundle import RELEASE_JSON, Release, write_bundle


def bundle_release(settings: Settings, model_version: str, fleet_name: str) -> Path:
    """Write and sign the fleet's next release of `model_version`; return the bundle folder."""
    fleet = get_fleet(settings.fleets_dir, fleet_name)
    resolve_targets(settings.targets_dir, fleet.targets)  # a fleet naming no real target fails here
    ref = get_version(settings, *parse_version(model_version))
    registered = engines_of(settings, ref)
    missing = [t for t in fleet.targets if t not in registered]
    if missing:
        have = ", ".join(sorted(registered)) or "none"
        raise ConfigError(
            f"fleet {fleet.name} needs engines for {', '.join(fleet.targets)}; {ref.label} has {have}; "
            f"build them with: slimline engine build --model-version {ref.label} "
            + " ".join(f"--target {t}" for t in missing)
        )
    if not settings.signing_key.is_file():
        raise ConfigError(f"no release key at {settings.signing_key}; make one with: slimline keys generate")
    engines = {t: fetch_engine(settings, registered[t]) for t in fleet.targets}
    # Every device reproduces the canary results of its own engine: they must share one canary set.
    canaries = {file_sha256(folder / CANARY_FILE): folder / CANARY_FILE for folder in engines.values()}
    if len(canaries) != 1:
        raise ConfigError(
            f"the engines of {ref.label} for fleet {fleet.name} were checked on different canary sets; "
            f"rebuild them with one recipe: slimline engine build --model-version {ref.label} --recipe R "
            + " ".join(f"--target {t}" for t in fleet.targets)
        )
    lineage = {k: v for k, v in ref.lineage.items() if not k.startswith(ENGINE_TAG)}
    days = fleet.release_expiry_days or settings.release_expiry_days
    bundle = write_bundle(
        settings.releases_dir,
        fleet=fleet.name,
        model_version=ref.label,
        lineage=lineage,
        engines=engines,
        canary=next(iter(canaries.values())),
        private_key=settings.signing_key,
        expires_in=timedelta(days=days),
    )
    record_bundle(settings, bundle)
    return bundle


def record_bundle(settings: Settings, bundle: Path) -> None:
    """The bundle.signed audit record of a signed bundle folder: its fleet, number, model version,
    and the digest of every target's engine as a device computes it (what it reports active)."""
    release = Release.model_validate_json((bundle / RELEASE_JSON).read_text(encoding="utf-8"))
    digests = {target: engine_digest(bundle / folder) for target, folder in release.targets.items()}
    audit_events.bundle_signed(
        settings, release.fleet, release.number, release.model_version, digests, release.lineage
    )
