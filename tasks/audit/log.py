"""Appending to the audit log and reading it back.

An append claims the next seq with a create-if-absent write (never an overwrite); when another
writer (another process, another mapped Airflow task) took that seq first, it reads what was
written and tries the seq after, so concurrent writers never fork the chain.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import JsonValue, ValidationError

from tasks.audit.chain import AuditLog, find_tail, read_record, walk_forward
from tasks.audit.heads import sign_head_at
from tasks.audit.records import (
    MAX_RECORD_BYTES,
    RECORDS_PREFIX,
    Record,
    RecordKind,
    digest,
    encode,
    first_error,
    record_key,
    seq_of_key,
)
from tasks.core.errors import ConfigError, StoreError
from tasks.core.settings import Settings
from tasks.core.store import FileStore, open_store
from tasks.release.keys import load_private_key

log = logging.getLogger(__name__)

MAX_CLAIMS = 64  # seqs one append tries before giving up: each lost claim means another writer won


def open_log(settings: Settings) -> AuditLog:
    """The audit log the settings name ($SLIMLINE_AUDIT_LOG, default <home>/audit)."""
    store = open_store(settings.audit_log_uri, settings.s3_endpoint_url)
    if isinstance(store, FileStore):
        store.root.mkdir(parents=True, exist_ok=True)  # the log starts empty, in a folder of its own
    return AuditLog(store=store, head_every=settings.audit_head_every)


def append(
    audit: AuditLog,
    kind: RecordKind,
    subject: str,
    data: dict[str, JsonValue],
    actor: str,
    now: datetime,
    signing_key: ec.EllipticCurvePrivateKey | None = None,
) -> Record:
    """Append one record after the current tail; with `signing_key`, sign the head when the new
    record's seq is a multiple of `head_every`. ConfigError when the record is invalid or too large."""
    tail = find_tail(audit)
    for _ in range(MAX_CLAIMS):
        try:
            record = Record(
                seq=tail.seq + 1, at=now, kind=kind, subject=subject, data=data, actor=actor, prev=tail.hash
            )
        except ValidationError as exc:
            raise ConfigError(
                f"audit record {kind!r} about {subject!r} is invalid: {first_error(exc)}"
            ) from None
        body = encode(record)
        if len(body) > MAX_RECORD_BYTES:
            raise ConfigError(
                f"audit record {kind!r} about {subject!r} is {len(body)} bytes; at most {MAX_RECORD_BYTES}"
            )
        if audit.store.create(record_key(record.seq), body):
            if signing_key is not None and record.seq % audit.head_every == 0:
                sign_head_at(audit, record.seq, digest(body), signing_key, now)
            return record
        # Another writer took this seq: link to what it wrote (and to anything appended since).
        tail = walk_forward(audit, tail.seq + 1)
    raise StoreError(
        f"audit log {audit.uri}: no free seq after {MAX_CLAIMS} attempts; other writers kept taking it"
    )


def append_event(
    settings: Settings,
    kind: RecordKind,
    subject: str,
    data: dict[str, JsonValue],
    actor: str,
    now: datetime | None = None,
) -> Record:
    """Append to the settings' audit log, signing heads with the release key when it exists (a
    machine without the key appends unsigned; the next signer covers those records)."""
    key_path: Path = settings.signing_key
    signing_key = load_private_key(key_path) if key_path.exists() else None
    record = append(open_log(settings), kind, subject, data, actor, now or datetime.now(UTC), signing_key)
    log.info("audit record %d: %s %s", record.seq, record.kind, record.subject)
    return record


def read_records(audit: AuditLog) -> Iterator[Record]:
    """Every record in seq order, as parsed (AuditFailed on a malformed one; `verify` checks the chain)."""
    for info in audit.store.list(RECORDS_PREFIX):
        seq = seq_of_key(info.key)
        if seq is not None and (record := read_record(audit, seq)) is not None:
            yield record
