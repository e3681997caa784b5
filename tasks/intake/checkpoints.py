"""Checkpoint store: list checkpoints, give each a content digest, fetch and verify them.

A checkpoint is a folder of a Hugging Face model (config.json, *.safetensors, tokenizer
files). Verification reads bytes and JSON only; nothing in a checkpoint is ever executed
or unpickled, and a refused checkpoint leaves nothing in the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path

from pydantic import BaseModel

from tasks.core.digests import content_digest, file_sha256
from tasks.core.errors import CheckpointRefused
from tasks.core.locks import file_lock, staging_dir
from tasks.core.settings import Settings
from tasks.core.store import ObjectInfo, ObjectStore, open_store
from tasks.intake.architecture import Architecture, TensorEntry, check_tensors, read_architecture
from tasks.intake.refusals import forget_stale_refusal, record_refusal
from tasks.intake.tokenizer_files import check_tokenizer

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
ALLOWED_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".md")
ALLOWED_NAMES = (".gitattributes",)
MAX_JSON_BYTES = 16 * 1024 * 1024
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


class CheckpointInfo(BaseModel):
    """A checkpoint as listed in the store, before it is fetched."""

    uri: str
    name: str
    files: int
    size_bytes: int
    fingerprint: str  # keys, sizes and change tags: cheap to compute, changes when content may


class VerifiedCheckpoint(BaseModel):
    """A checkpoint fetched into the local cache and verified."""

    uri: str
    digest: str
    path: Path
    size_bytes: int
    model_type: str
    fingerprint: str  # the store listing it was fetched from


def _fingerprint(objects: list[ObjectInfo], base: str = "") -> str:
    """Keys (relative to the checkpoint folder), sizes and change tags of its objects."""
    strip = len(base) + 1 if base else 0
    lines = "".join(f"{o.key[strip:]}\t{o.size}\t{o.etag}\n" for o in objects)
    return hashlib.sha256(lines.encode()).hexdigest()


def list_checkpoints(settings: Settings, prefix: str = "") -> list[CheckpointInfo]:
    """Checkpoints directly under `prefix`: each folder that holds a config.json."""
    store = open_store(settings.store_uri, settings.s3_endpoint_url)
    clean = prefix.strip("/")
    groups: dict[str, list[ObjectInfo]] = {}
    for obj in store.list(clean):
        rest = obj.key[len(clean) + 1 :] if clean else obj.key
        if "/" not in rest:
            continue
        name, _, _ = rest.partition("/")
        groups.setdefault(name, []).append(obj)
    found = []
    for name, objects in sorted(groups.items()):
        base = f"{clean}/{name}" if clean else name
        if not any(o.key == f"{base}/config.json" for o in objects):
            continue
        found.append(
            CheckpointInfo(
                uri=f"{store.uri}/{base}",
                name=name,
                files=len(objects),
                size_bytes=sum(o.size for o in objects),
                fingerprint=_fingerprint(objects, base),
            )
        )
    return found


def _check_names(uri: str, keys: list[str]) -> None:
    for key in keys:
        # Object-store keys are arbitrary strings: only plain relative names map onto one file.
        segments = key.split("/")
        if "\\" in key or any(s in ("", ".", "..") for s in segments):
            raise CheckpointRefused(
                f"checkpoint {uri}: path {key!r} escapes the checkpoint folder; allowed: relative "
                "names without '..', '.', empty segments or backslashes"
            )
        name = segments[-1]
        if name.lower().endswith(PICKLE_SUFFIXES):
            raise CheckpointRefused(
                f"checkpoint {uri}: {key} is a pickle-based weight file, which slimline never "
                "loads; allowed weights: *.safetensors"
            )
        if not (name.endswith(ALLOWED_SUFFIXES) or name in ALLOWED_NAMES):
            raise CheckpointRefused(
                f"checkpoint {uri}: file {key!r} is not allowed; allowed: "
                f"{', '.join('*' + s for s in ALLOWED_SUFFIXES)}"
            )
    if "config.json" not in keys:
        raise CheckpointRefused(f"checkpoint {uri}: config.json is missing")
    if not any(k.endswith(".safetensors") and "/" not in k for k in keys):
        raise CheckpointRefused(f"checkpoint {uri}: no *.safetensors weights found at the top of the folder")


def _read_json(uri: str, path: Path, name: str) -> object:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise CheckpointRefused(f"checkpoint {uri}: {name} exceeds {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointRefused(f"checkpoint {uri}: {name} is not valid JSON ({exc})") from exc


def _check_no_remote_code(uri: str, folder: Path) -> None:
    for path in sorted(folder.rglob("*.json")):
        name = path.relative_to(folder).as_posix()
        data = _read_json(uri, path, name)
        if isinstance(data, dict) and "auto_map" in data:
            raise CheckpointRefused(
                f"checkpoint {uri}: {name} asks for remote code (auto_map); slimline never "
                "runs code from a checkpoint"
            )


def _read_config(uri: str, folder: Path) -> dict[str, object]:
    config = _read_json(uri, folder / "config.json", "config.json")
    if not isinstance(config, dict):
        raise CheckpointRefused(f"checkpoint {uri}: config.json is not a JSON object")
    return config


def _dims(shape: object) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise TypeError("shape is not a list of whole numbers")
    if any(d < 0 for d in shape):
        raise ValueError("negative dimension")
    return tuple(shape)


def check_safetensors(uri: str, path: Path, name: str) -> dict[str, TensorEntry]:
    """Validate a safetensors file's header and offsets without loading any tensor; return its
    tensors as the header declares them."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise CheckpointRefused(f"checkpoint {uri}: {name} is truncated (no header)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > MAX_SAFETENSORS_HEADER or 8 + header_len > size:
            raise CheckpointRefused(
                f"checkpoint {uri}: {name} is truncated or malformed "
                f"(header of {header_len} bytes in a {size}-byte file)"
            )
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointRefused(f"checkpoint {uri}: {name} has a malformed header") from exc
    if not isinstance(header, dict):
        raise CheckpointRefused(f"checkpoint {uri}: {name} has a malformed header")
    data_len = size - 8 - header_len
    spans: list[tuple[int, int, str]] = []
    tensors: dict[str, TensorEntry] = {}
    for tensor, meta in header.items():
        if tensor == "__metadata__":
            continue
        try:
            start, end = (int(v) for v in meta["data_offsets"])
            shape = _dims(meta["shape"])
            count = 1
            for dim in shape:
                count *= dim
            expected = count * SAFETENSORS_DTYPE_BYTES[meta["dtype"]]
            tensors[tensor] = TensorEntry(file=name, dtype=meta["dtype"], shape=shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointRefused(
                f"checkpoint {uri}: {name} tensor {tensor!r} has a malformed entry"
            ) from exc
        if not 0 <= start <= end <= data_len or end - start != expected:
            raise CheckpointRefused(
                f"checkpoint {uri}: {name} is truncated or malformed (tensor {tensor!r} "
                f"spans bytes {start}..{end} of {data_len})"
            )
        spans.append((start, end, tensor))
    # Like safetensors itself: the tensors must tile the data exactly, with no gap or overlap.
    covered = 0
    for start, end, tensor in sorted(spans):
        if start != covered:
            raise CheckpointRefused(
                f"checkpoint {uri}: {name} is truncated or malformed (tensor {tensor!r} "
                f"spans bytes {start}..{end}, expected to start at {covered})"
            )
        covered = end
    if covered != data_len:
        raise CheckpointRefused(
            f"checkpoint {uri}: {name} is truncated or malformed "
            f"({data_len} data bytes, tensors cover {covered})"
        )
    return tensors


def _check_kinds(uri: str, objects: list[ObjectInfo]) -> None:
    """Only plain files: a link could point anywhere on this machine, and loading the folder
    would follow it; a device or pipe has no bytes to verify."""
    for obj in objects:
        if obj.kind != "file":
            raise CheckpointRefused(
                f"checkpoint {uri}: {obj.key!r} is a {obj.kind}, which slimline never reads; "
                "allowed: plain files"
            )


def _weight_files(uri: str, folder: Path, keys: list[str]) -> dict[str, str] | None:
    """The tensor -> file map of a sharded checkpoint's index, or None for a single
    model.safetensors; what transformers loads, and every top-level weight file must be that."""
    top = [k for k in keys if k.endswith(".safetensors") and "/" not in k]
    allowed = f"allowed weights: {WEIGHTS}, or the shards {WEIGHTS_INDEX} names"
    weight_map = None
    if WEIGHTS_INDEX in keys:
        index = _read_json(uri, folder / WEIGHTS_INDEX, WEIGHTS_INDEX)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointRefused(f"checkpoint {uri}: {WEIGHTS_INDEX} has no weight_map of tensor -> file")
        files = set(weight_map.values())
        missing = sorted(files - set(top))
        if missing:
            raise CheckpointRefused(
                f"checkpoint {uri}: {WEIGHTS_INDEX} names {missing[0]!r}, which is not a *.safetensors "
                "file at the top of the folder"
            )
    elif WEIGHTS in keys:
        files = {WEIGHTS}
    else:
        raise CheckpointRefused(f"checkpoint {uri}: no {WEIGHTS} or {WEIGHTS_INDEX}; {allowed}")
    unread = [k for k in top if k not in files]
    if unread:
        raise CheckpointRefused(f"checkpoint {uri}: {unread[0]} is not read by the loader; {allowed}")
    return weight_map


def _check_weights(uri: str, folder: Path, keys: list[str]) -> dict[str, TensorEntry]:
    """Every safetensors file's structure; the tensors of those the loader reads, each once and,
    for shards, in the file the index names."""
    weight_map = _weight_files(uri, folder, keys)
    tensors: dict[str, TensorEntry] = {}
    for key in keys:
        if not key.endswith(".safetensors"):
            continue
        found = check_safetensors(uri, folder / key, key)
        if "/" in key:
            continue  # a sub-folder's weights (e.g. a sentence-transformers module): never loaded
        for name, entry in found.items():
            if name in tensors:
                raise CheckpointRefused(
                    f"checkpoint {uri}: {key} tensor {name!r} is also in {tensors[name].file}; "
                    "allowed: each tensor in one file"
                )
            if weight_map is not None and weight_map.get(name) != key:
                raise CheckpointRefused(
                    f"checkpoint {uri}: {key} tensor {name!r} is mapped to {weight_map.get(name)!r} "
                    f"by {WEIGHTS_INDEX}; allowed: each tensor where the index says"
                )
            tensors[name] = entry
    unheld = sorted(set(weight_map or {}) - set(tensors))
    if unheld:
        raise CheckpointRefused(
            f"checkpoint {uri}: {WEIGHTS_INDEX} maps tensor {unheld[0]!r}, which no shard holds"
        )
    return tensors


def verify_folder(uri: str, folder: Path, settings: Settings) -> tuple[str, str]:
    """Verify a local checkpoint folder; return (content digest, model type).

    In order: entry kinds, names, JSON files, the architecture config.json declares (within the
    settings' limits), safetensors headers against it, the tokenizer against the embeddings.
    """
    _check_kinds(uri, open_store(folder.as_uri()).list(""))
    keys = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    _check_names(uri, keys)
    _check_no_remote_code(uri, folder)
    arch = read_architecture(uri, _read_config(uri, folder), settings)
    check_tensors(uri, arch, _check_weights(uri, folder, keys))
    check_tokenizer(uri, folder, arch.model_type, arch.vocab_size)
    return content_digest({key: file_sha256(folder / key) for key in keys}), arch.model_type


def read_verified_architecture(uri: str, folder: Path, settings: Settings) -> Architecture:
    """The architecture of a checkpoint verified earlier: its config.json alone is read again, the
    other JSON files were scanned for remote code when it was verified."""
    return read_architecture(uri, _read_config(uri, folder), settings)


def _fingerprint_index(settings: Settings) -> Path:
    return settings.cache_dir / "fingerprints.json"


def known_digest(settings: Settings, uri: str, fingerprint: str) -> str | None:
    index = _fingerprint_index(settings)
    if not index.exists():
        return None
    known: dict[str, str] = json.loads(index.read_text())
    return known.get(f"{uri}|{fingerprint}")


def _remember_digest(settings: Settings, uri: str, fingerprint: str, digest: str) -> None:
    index = _fingerprint_index(settings)
    # One writer at a time: no lost update between concurrent fetches, and a fixed temporary name
    # that a writer killed mid-write leaves for the next one to overwrite, not a file per process.
    with file_lock(settings.locks_dir / "fingerprints.lock"):
        known: dict[str, str] = json.loads(index.read_text()) if index.exists() else {}
        known[f"{uri}|{fingerprint}"] = digest
        tmp = index.with_suffix(".tmp")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
        os.replace(tmp, index)


def _cached(
    settings: Settings, uri: str, digest: str, size: int, fingerprint: str
) -> VerifiedCheckpoint | None:
    folder = settings.cache_dir / digest
    marker = folder / ".verified.json"
    if not marker.exists():
        return None
    model_type = json.loads(marker.read_text())["model_type"]
    return VerifiedCheckpoint(
        uri=uri, digest=digest, path=folder, size_bytes=size, model_type=model_type, fingerprint=fingerprint
    )


def fetch(settings: Settings, uri: str) -> VerifiedCheckpoint:
    """Fetch a checkpoint into the local cache, verify it and return where it lies.

    Names and sizes are checked before any byte is downloaded; contents after. A checkpoint
    whose listing is unchanged since an earlier fetch is served from the cache. A refusal is
    recorded with the listing (see tasks.intake.refusals) before it is raised.
    """
    store = open_store(uri, settings.s3_endpoint_url)
    objects = store.list("")
    fingerprint = _fingerprint(objects)
    try:
        checkpoint = _fetch_listed(settings, uri, store, objects, fingerprint)
    except CheckpointRefused as exc:
        record_refusal(settings, uri, fingerprint, exc)
        raise
    forget_stale_refusal(settings, uri, fingerprint)
    return checkpoint


def _fetch_listed(
    settings: Settings, uri: str, store: ObjectStore, objects: list[ObjectInfo], fingerprint: str
) -> VerifiedCheckpoint:
    if not objects:
        raise CheckpointRefused(f"checkpoint {uri}: no files found")
    _check_kinds(uri, objects)
    keys = [o.key for o in objects]
    _check_names(uri, keys)
    size = sum(o.size for o in objects)
    if size > settings.max_checkpoint_bytes:
        raise CheckpointRefused(
            f"checkpoint {uri}: {size} bytes exceeds the limit of "
            f"{settings.max_checkpoint_bytes} (SLIMLINE_MAX_CHECKPOINT_BYTES)"
        )
    known = known_digest(settings, uri, fingerprint)
    if known and (hit := _cached(settings, uri, known, size, fingerprint)):
        log.info("checkpoint %s unchanged, using cache %s", uri, hit.path)
        return hit

    # Held while downloaded and verified; a fetch killed here leaves it for the next fetch to remove.
    with staging_dir(settings.cache_dir, prefix=".fetch-") as staging:
        for key in keys:
            dest = staging / key
            dest.parent.mkdir(parents=True, exist_ok=True)
            store.download(key, dest)
        digest, model_type = verify_folder(uri, staging, settings)
        (staging / ".verified.json").write_text(
            json.dumps({"uri": uri, "digest": digest, "model_type": model_type})
        )
        final = settings.cache_dir / digest
        if not final.exists():
            os.replace(staging, final)
    _remember_digest(settings, uri, fingerprint, digest)
    log.info("checkpoint %s verified, digest %s", uri, digest[:12])
    return VerifiedCheckpoint(
        uri=uri, digest=digest, path=final, size_bytes=size, model_type=model_type, fingerprint=fingerprint
    )
