"""Signed channel metadata: small JSON documents a device believes only when the release key signed
them, they name its fleet, their version is not lower than one it has already seen and they have
not expired (TUF's rules for its timestamp role: a replayed older document or a frozen channel is
refused even by a reader who trusts the store less than the key).

The envelope follows TUF's: `{"signed": {...}, "signatures": [{"keyid": ..., "sig": ...}]}`, the
signature an ECDSA-SHA256 over the canonical JSON of `signed` (sorted keys, no spaces, UTF-8).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tasks.core.errors import BundleRefused
from tasks.release.keys import key_id

MAX_METADATA_BYTES = 8 * 1024**2  # a desired state naming 100,000 devices is about 4 MB


def canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign_document(signed: dict[str, Any], private_key: ec.EllipticCurvePrivateKey) -> bytes:
    """The envelope of `signed`, signed with `private_key`, as bytes to store."""
    signature = private_key.sign(canonical(signed), ec.ECDSA(hashes.SHA256()))
    envelope = {
        "signed": signed,
        "signatures": [
            {"keyid": key_id(private_key.public_key()), "sig": base64.b64encode(signature).decode()}
        ],
    }
    return canonical(envelope)


def open_document(data: bytes, trusted: ec.EllipticCurvePublicKey, what: str) -> dict[str, Any]:
    """`signed` of an envelope whose signature verifies with `trusted`; BundleRefused otherwise.
    Nothing of `signed` is read before the signature is checked."""
    try:
        envelope = json.loads(data)
        signed, signatures = envelope["signed"], envelope["signatures"]
        if not isinstance(signed, dict) or not isinstance(signatures, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise BundleRefused(f"{what} is not a signed document") from None
    trusted_id = key_id(trusted)
    for entry in signatures:
        if not isinstance(entry, dict) or entry.get("keyid") != trusted_id:
            continue
        try:
            trusted.verify(base64.b64decode(str(entry["sig"])), canonical(signed), ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            raise BundleRefused(f"{what}: signature does not verify with the trusted key") from None
        return signed
    ids = ", ".join(str(e.get("keyid", "?"))[:16] for e in signatures if isinstance(e, dict)) or "none"
    raise BundleRefused(f"{what}: not signed by the trusted key {trusted_id[:16]}… (signed by: {ids})")


def check_fresh(
    what: str, *, version: int, seen_version: int | None, expires_at: datetime, now: datetime
) -> None:
    """Refuse a document older than one already seen (rollback) or past its expiry (freeze)."""
    if seen_version is not None and version < seen_version:
        raise BundleRefused(f"{what} version {version} is older than version {seen_version} already seen")
    if now >= expires_at:
        raise BundleRefused(
            f"{what} expired at {expires_at.isoformat()}, now {now.replace(microsecond=0).isoformat()}"
        )
