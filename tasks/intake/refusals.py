"""Refused checkpoints, remembered so the nightly run does not fetch them again every night.

One JSON record per checkpoint URI under `<home>/refused/`, holding the listing fingerprint it
was refused with: the same listing is skipped, a changed one (a corrected checkpoint) is tried
again, and a record that no longer matches is dropped once the checkpoint passes. A refusal that
depends on the recipe (its inputs longer than the checkpoint's positions, its eval text mostly
unknown to the checkpoint's tokenizer) is recorded for that recipe only, so another recipe still
gets the checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from tasks.core.errors import SlimlineError
from tasks.core.settings import Settings

log = logging.getLogger(__name__)


class Refusal(BaseModel):
    uri: str
    fingerprint: str  # the listing it was refused with (keys, sizes, change tags)
    digest: str | None  # content digest, when the refusal came after the contents were verified
    recipe_digest: str | None = None  # set when only this recipe refuses it; None: every recipe
    reason: str
    exit_code: int
    refused_at: datetime


def _folder(settings: Settings) -> Path:
    return settings.home / "refused"


def _path(settings: Settings, uri: str, recipe_digest: str | None) -> Path:
    scope = f"{uri}\0{recipe_digest}" if recipe_digest else uri
    return _folder(settings) / f"{hashlib.sha256(scope.encode()).hexdigest()[:32]}.json"


def record_refusal(
    settings: Settings,
    uri: str,
    fingerprint: str,
    error: SlimlineError,
    digest: str | None = None,
    recipe_digest: str | None = None,
) -> Refusal:
    """Remember why `uri` was refused, by every recipe or (`recipe_digest`) by that one only
    (temporary file, then rename: never half-written)."""
    refusal = Refusal(
        uri=uri,
        fingerprint=fingerprint,
        digest=digest,
        recipe_digest=recipe_digest,
        reason=str(error),
        exit_code=error.exit_code,
        refused_at=datetime.now(UTC),
    )
    folder = _folder(settings)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".refusal.tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(refusal.model_dump_json(indent=1))
    os.replace(tmp, _path(settings, uri, recipe_digest))
    log.info("checkpoint %s recorded as refused", uri)
    return refusal


def _recorded(settings: Settings, uri: str, recipe_digest: str | None) -> Refusal | None:
    path = _path(settings, uri, recipe_digest)
    return Refusal.model_validate_json(path.read_text(encoding="utf-8")) if path.exists() else None


def refusal_of(
    settings: Settings, uri: str, fingerprint: str, recipe_digest: str | None = None
) -> Refusal | None:
    """The refusal of `uri` if its listing is the one that was refused: by every recipe, or by
    the recipe `recipe_digest` when given."""
    scopes = [None, recipe_digest] if recipe_digest else [None]
    for refusal in (_recorded(settings, uri, scope) for scope in scopes):
        if refusal is not None and refusal.fingerprint == fingerprint:
            return refusal
    return None


def forget_stale_refusal(
    settings: Settings, uri: str, fingerprint: str, recipe_digest: str | None = None
) -> None:
    """Drop the record of `uri` (for every recipe, or for `recipe_digest`) if it was refused with
    another listing: it passed since."""
    refusal = _recorded(settings, uri, recipe_digest)
    if refusal is not None and refusal.fingerprint != fingerprint:
        _path(settings, uri, recipe_digest).unlink(missing_ok=True)
        log.info("checkpoint %s changed since it was refused; refusal dropped", uri)


def refusals(settings: Settings) -> list[Refusal]:
    """Every recorded refusal, by URI."""
    folder = _folder(settings)
    found = [
        Refusal.model_validate_json(p.read_text(encoding="utf-8"))
        for p in (sorted(folder.glob("*.json")) if folder.exists() else [])
    ]
    return sorted(found, key=lambda r: r.uri)
