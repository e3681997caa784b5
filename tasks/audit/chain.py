"""The log in its store: where records and heads live, reading one record, and finding the tail
(the last record and its hash) that the next append links to."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import ValidationError

from tasks.audit.records import (
    GENESIS,
    MAX_RECORD_BYTES,
    RECORDS_PREFIX,
    Record,
    first_error,
    record_hash,
    record_key,
    seq_of_key,
)
from tasks.core.errors import AuditFailed
from tasks.core.store import ObjectStore

HEADS_PREFIX = "heads/"
_HEAD_KEY = re.compile(r"heads/(\d{12})\.json")


@dataclass(frozen=True)
class AuditLog:
    """An audit log: its store, and how many records pass between automatically signed heads."""

    store: ObjectStore
    head_every: int = 100

    @property
    def uri(self) -> str:
        return self.store.uri


@dataclass(frozen=True)
class Tail:
    """The last record of the log (seq 0 and 64 zeros when it is empty)."""

    seq: int
    hash: str


def head_key(seq: int) -> str:
    return f"{HEADS_PREFIX}{seq:012d}.json"


def seq_of_head_key(key: str) -> int | None:
    match = _HEAD_KEY.fullmatch(key)
    return int(match.group(1)) if match else None


def read_record(log: AuditLog, seq: int) -> Record | None:
    """Record `seq`, None when there is none; AuditFailed when it is not a valid record of that seq."""
    fetched = log.store.get(record_key(seq), MAX_RECORD_BYTES)
    if fetched is None or fetched.data is None:
        return None
    try:
        record = Record.model_validate_json(fetched.data)
    except ValidationError as exc:
        raise AuditFailed(f"audit log {log.uri}: record {seq} is malformed: {first_error(exc)}") from None
    if record.seq != seq:
        raise AuditFailed(f"audit log {log.uri}: {record_key(seq)} holds record {record.seq}")
    return record


def walk_forward(log: AuditLog, seq: int) -> Tail:
    """The tail, found by reading records from `seq` (which must exist; 0 for the start) onwards."""
    if seq == 0:
        tail = Tail(0, GENESIS)
    else:
        record = read_record(log, seq)
        if record is None:
            raise AuditFailed(f"audit log {log.uri}: record {seq} is missing; run `slimline audit verify`")
        tail = Tail(seq, record_hash(record))
    while (record := read_record(log, tail.seq + 1)) is not None:
        tail = Tail(record.seq, record_hash(record))
    return tail


def find_tail(log: AuditLog) -> Tail:
    """The last record, read forward from the last signed head (a short walk: heads come every
    `head_every` records), or from the last record listed when no head was signed yet."""
    heads = [s for o in log.store.list(HEADS_PREFIX) if (s := seq_of_head_key(o.key)) is not None]
    if heads:
        return walk_forward(log, max(heads))
    records = [s for o in log.store.list(RECORDS_PREFIX) if (s := seq_of_key(o.key)) is not None]
    return walk_forward(log, max(records, default=0))
