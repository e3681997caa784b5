"""A release bundle: what one fleet installs, signed so that a device can refuse anything else.

Layout, under `<releases_dir>/<fleet>/<number:06d>/`:

    bundle/
        release.json            the Release below: fleet, number, expiry, model version, lineage,
                                the canary expectations, every other file with its sha256
        engines/<target>/...    each target's engine folder, engine.json included
        canary/<file>           the canary set each device runs before it switches engines
    bundle.sig                  the model-signing signature over every file of bundle/; beside it,
                                because a signature inside the folder it signs is an unsigned file

The release folder is written under a hidden staging name (tasks.core.locks.staging_dir) and
renamed into place once signed, so a reader sees a complete, signed release or nothing. Release
numbers come from a per-fleet counter kept under a file lock: they only grow, two bundlers never
share one, and deleting a release does not free its number.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Literal
from uuid import UUID, uuid4

from pydantic import AwareDatetime, ConfigDict, Field, model_validator

from tasks.core.config import SLUG, Strict
from tasks.core.errors import ConfigError, EngineCheckFailed, EngineError
from tasks.core.files import write_atomic
from tasks.core.locks import file_lock, staging_dir
from tasks.engines.info import ENGINE_JSON, EngineInfo, read_info
from tasks.release.keys import key_id, load_private_key

if TYPE_CHECKING:
    from model_signing.hashing import Config as HashingConfig

log = logging.getLogger(__name__)

FORMAT: Literal["slimline.release/v1"] = "slimline.release/v1"
RELEASE_JSON = "release.json"
BUNDLE = "bundle"
ENGINES = "engines"
CANARY = "canary"
SIGNATURE_SUFFIX = ".sig"
COUNTER = ".release-counter"
STAGING_PREFIX = ".staging-"
SHA256 = r"^[0-9a-f]{64}$"
MODEL_VERSION = r"^[^/\s]+/[^/\s]+$"
_NUMBERED = re.compile(r"^\d+$")

Sha256 = Annotated[str, Field(pattern=SHA256)]
# Strict parsing: release.json is read on devices, so "3" is not a number and a typo is not ignored.
_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)


class CanaryExpectation(Strict):
    """What a device must reproduce on the canary set: the engine's build-time check."""

    model_config = _STRICT

    examples: int = Field(ge=1, description="Canary examples the check ran on.")
    agreement: float = Field(ge=0, le=1, description="Share of labels equal to the registered model's.")
    max_logit_diff: float = Field(ge=0, description="Largest absolute logit difference seen.")


class ReleaseCanary(Strict):
    model_config = _STRICT

    file: str = Field(description="The canary set's path inside the bundle (canary/<name>).")
    expected: dict[str, CanaryExpectation] = Field(description="Per target: the metrics to reproduce.")


def _safe_relative(name: str) -> bool:
    """A plain relative POSIX path that stays inside the bundle."""
    path = PurePosixPath(name)
    return (
        bool(name)
        and not path.is_absolute()
        and "\\" not in name
        and all(part not in ("", ".", "..") for part in name.split("/"))
    )


class Release(Strict):
    """The contents of `release.json`: what a bundle is, for whom, until when, with what in it."""

    model_config = _STRICT

    format: Literal["slimline.release/v1"] = FORMAT
    release_id: UUID
    fleet: str = Field(pattern=SLUG)
    number: int = Field(ge=1, description="Grows with every release of the fleet; devices refuse lower.")
    created_at: AwareDatetime
    expires_at: AwareDatetime
    model_version: str = Field(pattern=MODEL_VERSION, description="NAME/VERSION in the registry.")
    lineage: dict[str, str] = Field(description="The model version's lineage tags.")
    targets: dict[str, str] = Field(description="Target → its engine folder in the bundle.")
    canary: ReleaseCanary
    files: dict[str, Sha256] = Field(description="Every file of the bundle but release.json → sha256.")
    signer_key_id: Sha256

    @model_validator(mode="after")
    def _consistent(self) -> Release:
        if self.expires_at <= self.created_at:
            raise ValueError(f"expires_at {self.expires_at} is not after created_at {self.created_at}")
        bad = [name for name in self.files if not _safe_relative(name) or name == RELEASE_JSON]
        if bad:
            raise ValueError(f"files lists paths a bundle cannot hold: {', '.join(sorted(bad)[:3])}")
        for target, folder in self.targets.items():
            if not re.match(SLUG, target):
                raise ValueError(f"target {target!r}: not a target name")
            if folder != f"{ENGINES}/{target}":
                raise ValueError(f"target {target}: engine folder {folder!r}, expected {ENGINES}/{target}")
            if f"{folder}/{ENGINE_JSON}" not in self.files:
                raise ValueError(f"target {target}: {folder}/{ENGINE_JSON} is not among the files")
        if not self.targets:
            raise ValueError("a release needs at least one target")
        if self.canary.file not in self.files:
            raise ValueError(f"canary file {self.canary.file!r} is not among the files")
        if set(self.canary.expected) != set(self.targets):
            raise ValueError("canary expectations must name exactly the release's targets")
        return self


def signature_path(bundle: Path) -> Path:
    """Where a bundle's signature lies: beside the folder, `<bundle>.sig`."""
    bundle = Path(bundle).resolve()  # `.` or `b/..` has no name to add `.sig` to
    return bundle.with_name(bundle.name + SIGNATURE_SUFFIX)


def release_dir(releases_dir: Path, fleet: str, number: int) -> Path:
    """`<releases_dir>/<fleet>/<number:06d>`: holds `bundle/` and `bundle.sig`."""
    return _fleet_dir(releases_dir, fleet) / f"{number:06d}"


def signing_hash_config() -> HashingConfig:
    """How bundles are hashed for signing and verification, pinned on both sides: sha256 per file,
    symlinks refused, and nothing ignored (model-signing skips .git* paths by default, which would
    let such a file ride along unsigned)."""
    from model_signing import hashing  # model-signing imports sigstore: about a second

    return (
        hashing.Config()
        .use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
        .set_ignored_paths(paths=[], ignore_git_paths=False)
    )


def _fleet_dir(releases_dir: Path, fleet: str) -> Path:
    if not re.match(SLUG, fleet):
        raise ConfigError(f"fleet {fleet!r}: not a fleet name (letters, digits, '.', '_', '-')")
    return Path(releases_dir) / fleet


def release_numbers(releases_dir: Path, fleet: str) -> list[int]:
    """The numbers of the fleet's releases present on disk, ascending."""
    folder = _fleet_dir(releases_dir, fleet)
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if _NUMBERED.match(p.name) and p.is_dir())


def _read_counter(path: Path) -> int:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return 0
    if not text.isdigit():
        # Guessing would risk handing out a number some device already holds as its current one.
        raise ConfigError(f"release counter {path} is corrupt ({text[:40]!r}); write the last number issued")
    return int(text)


def next_release_number(releases_dir: Path, fleet: str) -> int:
    """A release number for `fleet` greater than every number ever handed out for it.

    The per-fleet counter is read, raised and written under a file lock, so concurrent bundlers
    get distinct numbers; it never goes down, so a deleted release does not free its number. A
    release folder above the counter (restored from a backup) moves it up.
    """
    folder = _fleet_dir(releases_dir, fleet)
    folder.mkdir(parents=True, exist_ok=True)
    counter = folder / COUNTER
    with file_lock(folder / f"{COUNTER}.lock"):
        number = max([_read_counter(counter), *release_numbers(releases_dir, fleet)]) + 1
        write_atomic(counter, f"{number}\n")  # synced: a number handed out must survive a crash
    return number


def _copy_hashed(source: Path, dest: Path) -> str:
    """Copy one file and return its sha256, reading it once."""
    digest = hashlib.sha256()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as fin, dest.open("xb") as fout:
        for block in iter(lambda: fin.read(1 << 20), b""):
            digest.update(block)
            fout.write(block)
    return digest.hexdigest()


def _plain_files(folder: Path, what: str) -> list[Path]:
    """Every file under `folder`, as relative paths; links and special files are refused, since a
    bundle carries plain files only (model-signing refuses symlinks too)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = Path(root) / name
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                raise EngineError(f"{what} {folder}: {path.relative_to(folder)} is a link or special file")
        found.extend((Path(root) / name).relative_to(folder) for name in files)
    return sorted(found)


def _checked_info(target: str, engine_dir: Path, model_version: str) -> EngineInfo:
    """engine.json of an engine folder; refuses an engine built for another target or model
    version, and one whose canary check is missing or failed."""
    info = read_info(engine_dir)
    if info.target != target:
        raise EngineError(f"engine {engine_dir}: built for target {info.target}, bundled for {target}")
    if info.model_version != model_version:
        raise EngineError(f"engine {engine_dir}: built from {info.model_version}, not {model_version}")
    if info.check is None:
        raise EngineCheckFailed(f"engine {engine_dir}: never checked on the canary set; not released")
    if not info.check.passed:
        raise EngineCheckFailed(f"engine {engine_dir}: failed its canary check ({info.check.reason})")
    return info


def _expectation(info: EngineInfo) -> CanaryExpectation:
    """The engine's build-time canary check, as the metrics its devices must reproduce."""
    assert info.check is not None  # _checked_info refused engines without one
    return CanaryExpectation(
        examples=info.check.examples,
        agreement=info.check.agreement,
        max_logit_diff=info.check.max_logit_diff,
    )


def _copy_engine(engine_dir: Path, dest: Path, listed: Mapping[str, str], key_digest: str) -> dict[str, str]:
    """Copy an engine folder; every file its engine.json lists must be there with its digest."""
    copied = {}
    for relative in _plain_files(engine_dir, "engine"):
        digest = _copy_hashed(engine_dir / relative, dest / relative)
        if digest == key_digest:
            raise ConfigError(f"engine {engine_dir}: {relative} is the signing key; it never enters a bundle")
        copied[relative.as_posix()] = digest
    for name, expected in sorted(listed.items()):
        if name not in copied:
            raise EngineError(f"engine {engine_dir}: {name}, listed in engine.json, is missing")
        if copied[name] != expected:
            raise EngineError(f"engine {engine_dir}: {name} does not match its sha256 in engine.json")
    return copied


def write_bundle(
    releases_dir: Path,
    *,
    fleet: str,
    model_version: str,
    lineage: Mapping[str, str],
    engines: Mapping[str, Path],
    canary: Path,
    private_key: Path,
    expires_in: timedelta,
    now: datetime | None = None,
) -> Path:
    """Write, sign and publish the fleet's next release and return its bundle folder,
    `<releases_dir>/<fleet>/<number:06d>/bundle`; the signature is `signature_path(bundle)`.

    `engines` maps each target to its engine folder (engine.json inside, its canary check passed,
    built from `model_version`); `canary` is the canary set file; the release expires `expires_in`
    after `now` (default: the clock). The inputs are checked before a number is taken, so a refused
    engine burns no number. The number is never the caller's to choose: only the counter keeps
    numbers growing.
    """
    fleet_dir = _fleet_dir(releases_dir, fleet)
    created = (now or datetime.now(UTC)).replace(microsecond=0)
    if created.tzinfo is None:
        raise ConfigError(f"now = {created}: needs a time zone")
    if expires_in <= timedelta(0):
        raise ConfigError(f"expires_in = {expires_in}: must be positive")
    if not re.match(MODEL_VERSION, model_version):
        raise ConfigError(f"model version {model_version!r}: expected NAME/VERSION")
    if not engines:
        raise ConfigError("a release needs at least one engine")
    for target in engines:
        if not re.match(SLUG, target):
            raise ConfigError(f"target {target!r}: not a target name")
    infos = {t: _checked_info(t, Path(d), model_version) for t, d in sorted(engines.items())}
    canary = Path(canary)
    if not canary.is_file() or canary.is_symlink():
        raise ConfigError(f"canary set {canary}: not a plain file")
    signer = key_id(load_private_key(private_key).public_key())
    with Path(private_key).open("rb") as handle:
        key_digest = hashlib.file_digest(handle, "sha256").hexdigest()

    number = next_release_number(releases_dir, fleet)
    final = release_dir(releases_dir, fleet, number)
    with staging_dir(fleet_dir, STAGING_PREFIX) as staging:
        bundle = staging / BUNDLE
        files: dict[str, str] = {}
        for target, engine_dir in sorted(engines.items()):
            dest = bundle / ENGINES / target
            copied = _copy_engine(Path(engine_dir), dest, infos[target].files, key_digest)
            files |= {f"{ENGINES}/{target}/{name}": digest for name, digest in copied.items()}
        canary_name = f"{CANARY}/{canary.name}"
        files[canary_name] = _copy_hashed(canary, bundle / canary_name)
        if files[canary_name] == key_digest:
            raise ConfigError(f"canary set {canary} is the signing key; it never enters a bundle")
        release = Release(
            release_id=uuid4(),
            fleet=fleet,
            number=number,
            created_at=created,
            expires_at=created + expires_in,
            model_version=model_version,
            lineage=dict(lineage),
            targets={t: f"{ENGINES}/{t}" for t in sorted(engines)},
            canary=ReleaseCanary(file=canary_name, expected={t: _expectation(i) for t, i in infos.items()}),
            files=dict(sorted(files.items())),
            signer_key_id=signer,
        )
        (bundle / RELEASE_JSON).write_text(release.model_dump_json(indent=2), encoding="utf-8")
        _sign(bundle, signature_path(bundle), Path(private_key))
        if final.exists():  # the counter sees every numbered folder, so only a hand-made one lands here
            raise ConfigError(f"release {number} of fleet {fleet} exists at {final}")
        os.rename(staging, final)
    log.info("release %s of fleet %s signed (key id %s): %s", number, fleet, signer[:16], final)
    return final / BUNDLE


def _sign(bundle: Path, signature: Path, private_key: Path) -> None:
    from model_signing import signing

    config = signing.Config().use_elliptic_key_signer(private_key=private_key, password=None)
    config.set_hashing_config(signing_hash_config()).sign(bundle, signature)
