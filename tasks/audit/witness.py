"""What a verifier remembers between runs: the last signed head it verified, per log.

A walk that trusts only what it finds cannot tell a log cut short, with every signed head above the
cut deleted too, from a log that never grew past the cut. A verifier that remembers the last head
it saw can: the record at that seq must still be there, with the same hash (a transparency log's
clients keep their last checkpoint for the same reason). Keep the file where the log's writers
cannot edit it.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from tasks.audit.records import first_error
from tasks.core.errors import ConfigError
from tasks.core.files import write_atomic

MAX_WITNESS_BYTES = 1024**2


class Seen(BaseModel):
    """A signed head this verifier checked: record `seq` hashed to `hash`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int = Field(ge=1)
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    signed_at: AwareDatetime
    verified_at: AwareDatetime


def _read(path: Path) -> dict[str, Seen]:
    if not path.exists():
        return {}
    if path.stat().st_size > MAX_WITNESS_BYTES:
        raise ConfigError(f"witness file {path} is over {MAX_WITNESS_BYTES} bytes; it holds one head per log")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object of log URI → head")
        return {str(uri): Seen.model_validate(seen) for uri, seen in raw.items()}
    except ValidationError as exc:
        raise ConfigError(f"witness file {path} is malformed: {first_error(exc)}") from None
    except ValueError as exc:
        raise ConfigError(f"witness file {path} is malformed: {exc}") from None


def last_seen(path: Path, uri: str) -> Seen | None:
    """The last head verified of the log at `uri`; None when this witness never verified one."""
    return _read(path).get(uri)


def remember(path: Path, uri: str, seq: int, hash: str, signed_at: datetime, now: datetime) -> None:
    """Keep head `seq` as the log's last seen head, unless a later one is kept already."""
    seen = _read(path)
    if uri in seen and seen[uri].seq >= seq:
        return
    seen[uri] = Seen(seq=seq, hash=hash, signed_at=signed_at, verified_at=now)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {u: s.model_dump(mode="json") for u, s in sorted(seen.items())}
    write_atomic(path, json.dumps(body, indent=2) + "\n")
