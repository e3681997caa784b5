"""Content digests of files and folders: sha256 of a file, and of a folder as its sorted
(relative path, file digest) pairs, so a folder's digest does not depend on how it was copied."""

from __future__ import annotations

import hashlib
from pathlib import Path


def content_digest(file_digests: dict[str, str]) -> str:
    """sha256 over the sorted (relative path, file sha256) pairs."""
    lines = "".join(f"{name}\t{file_digests[name]}\n" for name in sorted(file_digests))
    return hashlib.sha256(lines.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
