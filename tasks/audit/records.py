"""One audit record: what happened (`kind`), to what (`subject`), the facts (`data`), who wrote it
(`actor`), when, its place in the log (`seq`) and the sha256 of the record before it (`prev`).

A record's bytes in the store are its canonical JSON (sorted keys, no spaces, UTF-8), and its hash
is the sha256 of those bytes, so a reader recomputes it from the parsed record whatever the
formatting of the object it read.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, ValidationError

from tasks.release.metadata import canonical

# Every kind of record, in the order of the flow; the one list callers and `verify` share.
RecordKind = Literal[
    "checkpoint.verified",
    "checkpoint.refused",
    "data.validated",
    "variant.gated",
    "version.registered",
    "alias.moved",
    "engine.built",
    "bundle.signed",
    "approval.asked",
    "approval.given",
    "approval.refused",
    "wave.started",
    "wave.promoted",
    "wave.aborted",
    "device.activated",
    "device.rolled_back",
    "fleet.rolled_back",
]
RECORD_KINDS: tuple[str, ...] = get_args(RecordKind)

GENESIS = "0" * 64  # the `prev` of record 1
MAX_RECORD_BYTES = 64 * 1024  # facts and digests, not payloads
RECORDS_PREFIX = "records/"
_RECORD_KEY = re.compile(r"records/(\d{12})\.json")


class Record(BaseModel):
    """One entry of the audit log."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    seq: int = Field(ge=1, description="Place in the log: 1, 2, 3… with no gaps.")
    at: AwareDatetime = Field(description="When it happened (time zone required).")
    kind: RecordKind = Field(description="What happened.")
    subject: str = Field(
        min_length=1, max_length=1024, description="What it is about, e.g. model_version:NAME/3, fleet:F."
    )
    data: dict[str, JsonValue] = Field(description="The facts: digests, verdicts, reasons, who and when.")
    actor: str = Field(min_length=1, max_length=256, description="Who or what wrote it.")
    prev: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the previous record; 64 zeros first.")


# Record subjects: what a record is about, spelt one way for the writers and the traces.


def version_subject(model_version: str) -> str:
    return f"model_version:{model_version}"


def fleet_subject(fleet: str) -> str:
    return f"fleet:{fleet}"


def device_subject(fleet: str, device: str) -> str:
    return f"device:{fleet}/{device}"


CHECKPOINT_PREFIX = "checkpoint:"


def checkpoint_subject(uri: str) -> str:
    return f"{CHECKPOINT_PREFIX}{uri}"


def engine_subject(target: str, digest: str) -> str:
    return f"engine:{target}/{digest}"


def encode(record: Record) -> bytes:
    """The record's canonical JSON: the bytes stored and hashed."""
    return canonical(record.model_dump(mode="json"))


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_hash(record: Record) -> str:
    return digest(encode(record))


def record_key(seq: int) -> str:
    return f"{RECORDS_PREFIX}{seq:012d}.json"


def seq_of_key(key: str) -> int | None:
    """The seq a record key names, or None when the key is not a record's."""
    match = _RECORD_KEY.fullmatch(key)
    return int(match.group(1)) if match else None


def first_error(exc: ValidationError) -> str:
    """A pydantic error on one line: the first failing field and why."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "record"
    return f"{where}: {error['msg']}"
