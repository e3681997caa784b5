"""Signed heads: like a transparency log's signed tree head, the release key's signature over
{seq, hash of record seq, count, at}. Every record up to `seq` is fixed by it (each record carries
its predecessor's hash), so a head also catches a log cut short below it."""

from __future__ import annotations

import json
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from tasks.audit.chain import AuditLog, find_tail, head_key
from tasks.audit.records import first_error
from tasks.core.errors import AuditFailed, BundleRefused
from tasks.release.metadata import MAX_METADATA_BYTES, open_document, sign_document


class Head(BaseModel):
    """What a signed head states: record `seq` hashes to `hash`, and the log holds `count` records
    up to it (always `seq`: numbering has no gaps; stated so a head reads on its own)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    seq: int = Field(ge=1)
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    count: int = Field(ge=1)
    at: AwareDatetime


def read_head(log: AuditLog, seq: int, trusted: ec.EllipticCurvePublicKey) -> Head | None:
    """The head signed at `seq`, None when there is none; AuditFailed when it is not signed by
    `trusted` or does not state that seq."""
    key = head_key(seq)
    fetched = log.store.get(key, MAX_METADATA_BYTES)
    if fetched is None or fetched.data is None:
        return None
    what = f"signed head {seq} ({key})"
    try:
        signed = open_document(fetched.data, trusted, what)
    except BundleRefused as exc:
        raise AuditFailed(f"audit log {log.uri}: {exc}") from None
    try:
        # JSON mode: strict models take a timestamp from JSON text, not from a Python str.
        head = Head.model_validate_json(json.dumps(signed))
    except ValidationError as exc:
        raise AuditFailed(f"audit log {log.uri}: {what} is malformed: {first_error(exc)}") from None
    if head.seq != seq or head.count != seq:
        raise AuditFailed(
            f"audit log {log.uri}: {what} states seq {head.seq} and count {head.count}; both must be {seq}"
        )
    return head


def sign_head_at(
    log: AuditLog, seq: int, record_hash: str, private_key: ec.EllipticCurvePrivateKey, now: datetime
) -> Head:
    """Sign the head at record `seq` (whose hash the caller read or wrote). Heads are never
    overwritten: when one is there already, that one is returned."""
    head = Head(seq=seq, hash=record_hash, count=seq, at=now)
    if log.store.create(head_key(seq), sign_document(head.model_dump(mode="json"), private_key)):
        return head
    existing = read_head(log, seq, private_key.public_key())
    if existing is None:
        raise AuditFailed(f"audit log {log.uri}: {head_key(seq)} was there a moment ago and is gone")
    return existing


def sign_head(log: AuditLog, private_key: ec.EllipticCurvePrivateKey, now: datetime) -> Head | None:
    """Sign the current head (the last record); None when the log is empty."""
    tail = find_tail(log)
    return sign_head_at(log, tail.seq, tail.hash, private_key, now) if tail.seq else None
