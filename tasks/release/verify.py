"""Verify a release bundle before a device installs it; every refusal is one line naming what is wrong.

Order: the signature first (model-signing checks the signer and every file of the folder: an edited,
swapped, added or removed file, or another key, fails here), and only then is release.json read,
strictly, and believed: each file against its sha256, each engine.json against its target, the
expiry, the release number against the device's current one (a replayed older release is refused)
and the fleet.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from tasks.core.config import format_errors
from tasks.core.digests import file_sha256
from tasks.core.errors import BundleRefused, ConfigError, EngineError
from tasks.core.files import read_bounded
from tasks.engines.info import read_info
from tasks.release.bundle import RELEASE_JSON, Release, signature_path, signing_hash_config
from tasks.release.keys import key_id, load_public_key

MAX_SIGNATURE_BYTES = 64 * 1024**2  # one digest per file: a large bundle's signature is a few hundred KB
MAX_RELEASE_BYTES = 16 * 1024**2
SHOWN = 3  # files named in one refusal; the rest are counted


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return f"{shown} and {len(items) - SHOWN} more" if len(items) > SHOWN else shown


def _files(bundle: Path) -> list[str]:
    """Every file of the bundle as a relative POSIX path (model-signing has refused links already)."""
    found: list[str] = []
    for root, _, files in os.walk(bundle):
        found.extend((Path(root) / name).relative_to(bundle).as_posix() for name in files)
    return sorted(found)


def _read_bounded(path: Path, limit: int, what: str, refuse: _Refuser) -> bytes:
    """The file's bytes; refused when unreadable or larger than `limit` (read no further)."""
    try:
        data = read_bounded(path, limit)
    except OSError as exc:
        raise refuse(f"{what} cannot be read ({exc.strerror})") from None
    if data is None:
        raise refuse(f"{what} is larger than {limit} bytes")
    return data


class _Signature:
    """What a verifier may read from a signature file before trusting it: the signer's key id.
    The signed file digests are read only once model-signing has accepted the envelope."""

    def __init__(self, path: Path, refuse: _Refuser) -> None:
        self.path = path
        data = _read_bounded(path, MAX_SIGNATURE_BYTES, f"signature {path}", refuse)
        try:
            self.document = json.loads(data)
            hint = self.document["verificationMaterial"]["publicKey"]["hint"]
        except (ValueError, KeyError, TypeError):
            raise refuse(f"signature {path} is not a model-signing key signature") from None
        if not isinstance(hint, str) or not hint:
            # model-signing would print a warning and go on; a bundle of ours always names its key.
            raise refuse(f"signature {path} does not name its key (no publicKey.hint)")
        self.key_id = hint

    def signed_digests(self) -> dict[str, str] | None:
        """file → sha256 as signed (the in-toto statement's resources); None if unreadable."""
        try:
            statement = json.loads(base64.b64decode(self.document["dsseEnvelope"]["payload"]))
            return {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}
        except (ValueError, KeyError, TypeError):
            return None


class _Refuser:
    def __init__(self, bundle: Path) -> None:
        self.bundle = bundle

    def __call__(self, why: str) -> BundleRefused:
        return BundleRefused(f"bundle {self.bundle} refused: {why}", why)


def _mismatch(bundle: Path, signed: dict[str, str]) -> str:
    """Name what differs between the folder and what was signed, file by file."""
    actual = {name: file_sha256(bundle / name) for name in _files(bundle)}
    signed_as: dict[str, list[str]] = {}
    for name, digest in sorted(signed.items()):
        signed_as.setdefault(digest, []).append(name)
    moved, edited, extra = [], [], []
    for name, digest in actual.items():
        if signed.get(name) == digest:
            continue
        elsewhere = [other for other in signed_as.get(digest, []) if other != name]
        if elsewhere:
            moved.append(f"{name} holds what was signed as {elsewhere[0]}")
        elif name in signed:
            edited.append(name)
        else:
            extra.append(name)
    missing = sorted(set(signed) - set(actual))
    parts = []
    if moved:
        parts.append(f"{_listing(moved)} (engines swapped or files moved)")
    if edited:
        parts.append(
            f"file {edited[0]} does not match its signature (edited or replaced)"
            if len(edited) == 1
            else f"files {_listing(edited)} do not match their signature (edited or replaced)"
        )
    if extra:
        parts.append(f"{_listing(extra)} not covered by the signature (added after signing)")
    if missing:
        parts.append(f"signed {_listing(missing)} missing")
    return "; ".join(parts) or "its files do not match the signature"


def _check_signature(bundle: Path, signature: _Signature, trusted_key: Path, refuse: _Refuser) -> None:
    from cryptography.exceptions import InvalidSignature
    from model_signing import verifying

    config = verifying.Config().use_elliptic_key_verifier(public_key=trusted_key)
    try:
        config.set_hashing_config(signing_hash_config()).verify(bundle, signature.path)
    except InvalidSignature:
        raise refuse(
            f"signature {signature.path} does not verify with the trusted key (forged or corrupted)"
        ) from None
    except ValueError as exc:
        text = str(exc)
        if text.startswith("Signature mismatch"):
            # Raised only after the envelope verified: its list of signed digests is authentic.
            signed = signature.signed_digests()
            raise refuse(_mismatch(bundle, signed) if signed is not None else text.splitlines()[0]) from None
        if text.startswith("Key mismatch"):  # model-signing's own key check; ours ran first
            raise refuse(f"signed by another key than {trusted_key}") from None
        if "symlink" in text:
            raise refuse("it holds a symbolic link; bundles carry plain files only") from None
        raise refuse(f"signature check failed ({text.splitlines()[0].strip()})") from None
    except (KeyError, TypeError) as exc:  # model-signing reading a malformed bundle document
        raise refuse(f"signature {signature.path} is malformed ({exc!r})") from None


def _read_release(bundle: Path, refuse: _Refuser) -> Release:
    path = bundle / RELEASE_JSON
    data = _read_bounded(path, MAX_RELEASE_BYTES, RELEASE_JSON, refuse)
    try:
        return Release.model_validate_json(data)
    except ValidationError as exc:
        raise refuse(f"{RELEASE_JSON} is not a valid release ({format_errors(exc)})") from None


def _check_files(bundle: Path, release: Release, refuse: _Refuser) -> None:
    present = set(_files(bundle)) - {RELEASE_JSON}
    unlisted, absent = sorted(present - set(release.files)), sorted(set(release.files) - present)
    if unlisted:
        raise refuse(f"{_listing(unlisted)} not listed in {RELEASE_JSON}")
    if absent:
        raise refuse(f"{_listing(absent)}, listed in {RELEASE_JSON}, missing")
    for name, digest in sorted(release.files.items()):
        if file_sha256(bundle / name) != digest:
            raise refuse(f"file {name} does not match its sha256 in {RELEASE_JSON}")


def _check_engines(bundle: Path, release: Release, refuse: _Refuser) -> None:
    for target, folder in sorted(release.targets.items()):
        try:
            info = read_info(bundle / folder)
        except EngineError as exc:
            raise refuse(str(exc)) from None
        if info.target != target:
            raise refuse(f"{folder} holds an engine for target {info.target}, not {target}")
        if info.model_version != release.model_version:
            raise refuse(f"{folder} holds an engine of {info.model_version}, not {release.model_version}")


def _signed_manifest(signature: _Signature, trusted_key: Path, refuse: _Refuser) -> dict[str, str]:
    """file → sha256 as signed, once the envelope verifies with the trusted key: what a device that
    downloads only part of a bundle checks its files against. model-signing 1.1.1 verifies an
    envelope only together with a whole folder in its public API; its verifier object does the
    envelope alone (the package is pinned)."""
    from cryptography.exceptions import InvalidSignature
    from model_signing import verifying
    from model_signing._signing import sign_sigstore_pb

    verifier = verifying.Config().use_elliptic_key_verifier(public_key=trusted_key)._verifier
    assert verifier is not None
    try:
        manifest = verifier.verify(sign_sigstore_pb.Signature.read(signature.path))
    except InvalidSignature:
        raise refuse(
            f"signature {signature.path} does not verify with the trusted key (forged or corrupted)"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise refuse(f"signature {signature.path} is malformed ({str(exc).splitlines()[0][:200]})") from None
    return {str(rd.identifier): rd.digest.digest_hex for rd in manifest.resource_descriptors()}


def _judge(
    release: Release,
    refuse: _Refuser,
    *,
    current_release: int | None,
    fleet: str | None,
    now: datetime | None,
) -> None:
    """Expiry (when `now` is given), replay and fleet: what makes a genuine release wrong here."""
    if now is not None and now >= release.expires_at:
        raise refuse(
            f"release {release.number} expired at {release.expires_at.isoformat()}, "
            f"now {now.replace(microsecond=0).isoformat()}"
        )
    if current_release is not None and release.number <= current_release:
        raise refuse(
            f"release {release.number} is not newer than the device's current release {current_release} "
            "(replay refused)"
        )
    if fleet is not None and release.fleet != fleet:
        raise refuse(f"release {release.number} is for fleet {release.fleet}, not {fleet}")


def _trusted(trusted_key: Path, refuse: _Refuser) -> str:
    try:
        return key_id(load_public_key(Path(trusted_key)))
    except ConfigError as exc:
        raise refuse(f"trusted {exc}") from None


def verify_release_json(
    folder: Path,
    trusted_key: Path,
    *,
    signature: Path,
    current_release: int | None = None,
    fleet: str | None = None,
    now: datetime | None = None,
) -> Release:
    """A release read from `folder/release.json` alone, before any engine is downloaded: the
    signature envelope verifies with the trusted key, release.json is the file that was signed,
    and every other file it lists was signed with the same digest (so the digests in release.json
    may be believed for the files fetched later, see `verify_files`). `now` None skips the expiry
    (an installed release keeps serving past it); `current_release` and `fleet` as in verify_bundle."""
    refuse = _Refuser(Path(folder))
    trusted_id = _trusted(trusted_key, refuse)
    signed = _Signature(Path(signature), refuse)
    if signed.key_id != trusted_id:
        raise refuse(f"signed by another key (key id {signed.key_id[:16]}…, trusted {trusted_id[:16]}…)")
    manifest = _signed_manifest(signed, Path(trusted_key), refuse)
    path = Path(folder) / RELEASE_JSON
    if RELEASE_JSON not in manifest:
        raise refuse(f"the signature does not cover {RELEASE_JSON}")
    data = _read_bounded(path, MAX_RELEASE_BYTES, RELEASE_JSON, refuse)
    if hashlib.sha256(data).hexdigest() != manifest[RELEASE_JSON]:
        raise refuse(f"file {RELEASE_JSON} does not match its signature (edited or replaced)")
    try:
        release = Release.model_validate_json(data)
    except ValidationError as exc:
        raise refuse(f"{RELEASE_JSON} is not a valid release ({format_errors(exc)})") from None
    if release.signer_key_id != trusted_id:
        raise refuse(f"{RELEASE_JSON} names signer {release.signer_key_id[:16]}…, trusted {trusted_id[:16]}…")
    if {**release.files, RELEASE_JSON: manifest[RELEASE_JSON]} != manifest:
        raise refuse(f"the files {RELEASE_JSON} lists are not the files that were signed")
    _judge(release, refuse, current_release=current_release, fleet=fleet, now=now)
    return release


def verify_files(folder: Path, release: Release, names: list[str]) -> None:
    """Each of `names` (paths inside the bundle) is in `folder` with the digest `release` (already
    verified) lists, and `folder` holds nothing else but release.json."""
    refuse = _Refuser(Path(folder))
    unknown = sorted(set(names) - set(release.files))
    if unknown:
        raise refuse(f"{_listing(unknown)} not in release {release.number}")
    present = set(_files(Path(folder))) - {RELEASE_JSON}
    extra = sorted(present - set(names))
    if extra:
        raise refuse(f"{_listing(extra)} not expected here")
    absent = sorted(set(names) - present)
    if absent:
        raise refuse(f"{_listing(absent)} missing")
    for name in sorted(names):
        path = Path(folder) / name
        if path.is_symlink() or file_sha256(path) != release.files[name]:
            raise refuse(f"file {name} does not match its sha256 in {RELEASE_JSON} (edited or replaced)")


def verify_bundle(
    bundle: Path,
    trusted_key: Path,
    *,
    signature: Path | None = None,
    current_release: int | None = None,
    fleet: str | None = None,
    now: datetime | None = None,
) -> Release:
    """Verify `bundle` against the public key `trusted_key` and return its release.

    `signature` defaults to `<bundle>.sig` beside the folder. `current_release` is the number of
    the release the device runs (the bundle's must be greater); `fleet` the device's fleet; `now`
    the time to judge the expiry by (default: the clock). Raises BundleRefused with one line.
    """
    bundle = Path(bundle)
    refuse = _Refuser(bundle)
    if now is not None and now.tzinfo is None:
        raise ConfigError(f"now = {now}: needs a time zone")
    if not bundle.is_dir():
        raise refuse("no such folder")
    trusted_id = _trusted(trusted_key, refuse)
    signed = _Signature(Path(signature) if signature is not None else signature_path(bundle), refuse)
    if signed.key_id != trusted_id:
        raise refuse(f"signed by another key (key id {signed.key_id[:16]}…, trusted {trusted_id[:16]}…)")
    _check_signature(bundle, signed, Path(trusted_key), refuse)

    release = _read_release(bundle, refuse)
    if release.signer_key_id != trusted_id:
        raise refuse(f"{RELEASE_JSON} names signer {release.signer_key_id[:16]}…, trusted {trusted_id[:16]}…")
    _check_files(bundle, release, refuse)
    _check_engines(bundle, release, refuse)
    _judge(release, refuse, current_release=current_release, fleet=fleet, now=now or datetime.now(UTC))
    return release
