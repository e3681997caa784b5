"""`verify`: walk every record in seq order and every signed head, and name the first problem.

Each record carries its predecessor's hash and a head signs one record's hash, so a record is
vouched for by its successor (or by a head at its seq). When the link between records N and N+1
breaks, the successor of N+1 tells which of the two changed: if N+1 is still vouched for, N was
edited; if not, N+1 was. A record after the last signed head with no successor cannot be vouched
for: a broken link there is a forged or badly appended record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ValidationError

from tasks.audit.chain import HEADS_PREFIX, AuditLog, seq_of_head_key
from tasks.audit.heads import Head, read_head
from tasks.audit.records import (
    GENESIS,
    MAX_RECORD_BYTES,
    RECORDS_PREFIX,
    Record,
    first_error,
    record_hash,
    seq_of_key,
)
from tasks.audit.witness import Seen
from tasks.core.errors import AuditFailed
from tasks.core.store import ObjectInfo
from tasks.release.keys import key_id

READ_CHUNK = 512  # S3 records read ahead at once: bounds memory, keeps the round trips overlapped


class VerifyReport(BaseModel):
    """What a passing `verify` saw."""

    uri: str
    records: int
    heads: int
    last_head_seq: int | None
    last_head_hash: str | None
    last_head_at: datetime | None
    unsigned_tail: int  # records after the last signed head: allowed, not yet vouched for by a key
    key_id: str
    witness: str  # what the remembered head showed: checked, or none remembered
    seconds: float

    def summary(self) -> str:
        head = (
            f"last signed head {self.last_head_seq} at {self.last_head_at:%Y-%m-%d %H:%M:%S %Z}"
            if self.last_head_seq is not None and self.last_head_at is not None
            else "no signed head"
        )
        return (
            f"ok {self.uri}: {self.records} records, {self.heads} signed heads (key {self.key_id[:16]}); "
            f"{head}; {self.unsigned_tail} records after it unsigned; {self.witness}; "
            f"verified in {self.seconds:.2f} s"
        )


@dataclass(frozen=True)
class _Entry:
    """One listed record object: its seq (None for a key that is no record's), the parsed record
    and its hash, or the problem that stopped it from being read."""

    key: str
    seq: int | None
    record: Record | None = None
    hash: str = ""
    problem: str = ""


def _load(audit: AuditLog, info: ObjectInfo) -> _Entry:
    seq = seq_of_key(info.key)
    if seq is None:
        return _Entry(
            info.key, None, problem=f"{info.key} is not a record; allowed: records/<12-digit seq>.json"
        )
    # A link (or device) planted in a file:// store is refused by name; a hard link may be a
    # concurrent create() between its link and its temporary name's removal.
    if info.kind != "file" and not info.kind.startswith("hard link"):
        return _Entry(info.key, seq, problem=f"record {seq} is a {info.kind}, not a record")
    if info.size > MAX_RECORD_BYTES:
        return _Entry(info.key, seq, problem=f"record {seq} is {info.size} bytes; at most {MAX_RECORD_BYTES}")
    fetched = audit.store.get(info.key, MAX_RECORD_BYTES)
    if fetched is None or fetched.data is None:
        return _Entry(info.key, seq, problem=f"record {seq} was deleted while being verified")
    try:
        record = Record.model_validate_json(fetched.data)
    except ValidationError as exc:
        return _Entry(info.key, seq, problem=f"record {seq} is malformed: {first_error(exc)}")
    if record.seq != seq:
        return _Entry(
            info.key,
            seq,
            problem=f"record {seq} is out of place: {info.key} holds record {record.seq} (reordered); "
            "a record's seq must match its key",
        )
    return _Entry(info.key, seq, record, record_hash(record))


def _entries(audit: AuditLog, infos: list[ObjectInfo], workers: int) -> Iterator[_Entry]:
    if not audit.store.remote:
        # Local reads are CPU-bound (parsing, hashing): threads only contend for the interpreter lock.
        yield from (_load(audit, info) for info in infos)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(infos), READ_CHUNK):
            yield from pool.map(lambda info: _load(audit, info), infos[start : start + READ_CHUNK])


def verify(
    audit: AuditLog,
    trusted: ec.EllipticCurvePublicKey,
    seen: Seen | None = None,
    visit: Callable[[Record], None] | None = None,
    workers: int = 4,
) -> VerifyReport:
    """Check the whole log against `trusted` (the release key's public half) and, when given, the
    signed head this verifier saw last (`seen`); AuditFailed naming the first record or head that
    was edited, deleted, reordered, forged or malformed, or the cut below a head seen before.
    `visit` sees each record once it is linked (a caller's own check, without reading the log
    again); a record it saw may still be named later by a broken link after it."""
    began = time.perf_counter()

    def fail(problem: str) -> AuditFailed:
        return AuditFailed(f"audit log {audit.uri}: {problem}")

    # Heads before records: a head signed during the walk then names only records already listed.
    head_seqs: list[int] = []
    for info in audit.store.list(HEADS_PREFIX):
        seq = seq_of_head_key(info.key)
        if seq is None:
            raise fail(f"{info.key} is not a signed head; allowed: heads/<12-digit seq>.json")
        head_seqs.append(seq)
    signed_at = set(head_seqs)
    last_head: Head | None = None

    def head_at(seq: int) -> Head | None:
        if seq not in signed_at:
            return None
        try:
            return read_head(audit, seq, trusted)
        except AuditFailed as exc:
            raise fail(str(exc).removeprefix(f"audit log {audit.uri}: ")) from None

    count, prev_hash = 0, GENESIS
    entries = _entries(audit, audit.store.list(RECORDS_PREFIX), workers)
    entry = next(entries, None)
    while entry is not None:
        following = next(entries, None)
        expected = count + 1
        if entry.seq is None:
            raise fail(entry.problem)
        if entry.seq != expected:
            before = f"record {expected - 1} is followed by" if expected > 1 else "the log starts at"
            raise fail(
                f"record {expected} is missing: {before} record {entry.seq} (deleted); "
                "records are numbered 1, 2, 3… with no gaps"
            )
        if entry.record is None:
            raise fail(entry.problem)
        seq, record = entry.seq, entry.record
        head = head_at(seq)
        if record.prev != prev_hash:
            if seq == 1:
                raise fail("record 1 was edited: its prev must be 64 zeros")
            # Who vouches for this record: a head at its seq, else its successor's prev.
            if head is not None:
                witness, vouched = f"signed head {seq}", head.hash == entry.hash
            elif following is not None and following.record is not None and following.seq == seq + 1:
                witness, vouched = f"record {seq + 1}'s prev", following.record.prev == entry.hash
            else:
                after = f" after the last signed head {last_head.seq}" if last_head else ""
                raise fail(
                    f"record {seq}{after} does not link to record {seq - 1}: its prev is not record "
                    f"{seq - 1}'s hash (forged, or appended without a valid link)"
                )
            if vouched:
                raise fail(f"record {seq - 1} was edited: its hash no longer matches record {seq}'s prev")
            raise fail(
                f"record {seq} was edited: its prev no longer matches record {seq - 1}'s hash "
                f"and its hash no longer matches {witness}"
            )
        if head is not None:
            if head.hash != entry.hash:
                raise fail(f"record {seq} was edited: its hash no longer matches signed head {seq}")
            last_head = head
        if seen is not None and seq == seen.seq and seen.hash != entry.hash:
            raise fail(
                f"record {seq} was rewritten: its hash no longer matches the signed head {seq} this "
                f"verifier checked at {seen.verified_at:%Y-%m-%d %H:%M:%S %Z}"
            )
        count, prev_hash = seq, entry.hash
        if visit is not None:
            visit(record)
        entry = following

    def missing(below: int) -> str:
        return f"record {below} is" if below == count + 1 else f"records {count + 1} to {below} are"

    for seq in sorted(s for s in head_seqs if s > count):
        head_at(seq)  # a forged head is reported as such, not as evidence of truncation
        raise fail(
            f"{missing(seq)} missing below signed head {seq} (truncated); "
            "every record up to a signed head must exist"
        )
    if seen is not None and seen.seq > count:
        raise fail(
            f"{missing(seen.seq)} missing below the signed head {seen.seq} this verifier checked at "
            f"{seen.verified_at:%Y-%m-%d %H:%M:%S %Z} (truncated, and the heads above the cut deleted)"
        )
    witness = f"signed head {seen.seq} seen before still holds" if seen else "no head seen before"
    return VerifyReport(
        uri=audit.uri,
        records=count,
        heads=len(head_seqs),
        last_head_seq=last_head.seq if last_head else None,
        last_head_hash=last_head.hash if last_head else None,
        last_head_at=last_head.at if last_head else None,
        unsigned_tail=count - (last_head.seq if last_head else 0),
        key_id=key_id(trusted),
        witness=witness,
        seconds=round(time.perf_counter() - began, 3),
    )
