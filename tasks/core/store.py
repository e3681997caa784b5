"""Object stores: a local `file://` root or an S3 bucket (any S3-compatible endpoint), one interface.

Writers never expose a half-written object: files go to a temporary name and are renamed
(file://), and S3 puts are atomic per object; multi-object writers put their marker key last.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from tasks.core.errors import StoreError
from tasks.core.files import write_atomic


@dataclass(frozen=True)
class ObjectInfo:
    """One object: its key relative to the store root, size in bytes, a change tag, and what
    kind of entry it is. Only a `file` holds bytes a reader may use; the other kinds exist on
    file systems (a link could point anywhere on this machine) and are listed so that callers
    can refuse them by name instead of not seeing them."""

    key: str
    size: int
    etag: str
    kind: str = "file"  # file | symbolic link | hard link to a file outside the listing | device


@dataclass(frozen=True)
class Fetched:
    """A small object read whole: its bytes (None when unchanged since the caller's `etag`, so a
    poller pays one cheap request per cycle) and its change tag."""

    data: bytes | None
    etag: str


def _entry_kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISREG(mode):
        return "file"
    return "device or special file"


class ObjectStore(Protocol):
    uri: str
    # Whether a read waits on a network round trip (then parallel reads pay); a local file system's
    # reads are CPU-bound, where threads only contend for the interpreter lock.
    remote: bool

    def list(self, prefix: str) -> list[ObjectInfo]: ...

    def download(self, key: str, dest: Path) -> None: ...

    def upload(self, src: Path, key: str) -> None: ...

    def get(self, key: str, limit: int, if_none_match: str | None = None) -> Fetched | None:
        """The object's bytes (at most `limit`; a larger one is refused), None when there is no
        such object, or `Fetched(None, etag)` when its tag still equals `if_none_match`."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Write a small object whole: readers see the old bytes or the new, never a part."""
        ...

    def create(self, key: str, data: bytes) -> bool:
        """Write a small object whole only if `key` does not exist yet: True when this call created
        it, False when an object was there first (it is left as it was). Of writers racing for one
        key, exactly one gets True: what append-only logs claim their next entry with."""
        ...


def _too_large(uri: str, key: str, limit: int) -> StoreError:
    return StoreError(f"{uri}/{key} is larger than {limit} bytes; refused")


def _clean_prefix(prefix: str) -> str:
    return prefix.strip("/")


class FileStore:
    """A directory tree on a local or mounted file system."""

    remote = False

    def __init__(self, uri: str, root: Path) -> None:
        self.uri = uri.rstrip("/")
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StoreError(f"key {key!r} escapes the store root {self.uri}")
        return path

    def list(self, prefix: str) -> list[ObjectInfo]:
        if not self.root.is_dir():
            raise StoreError(f"store {self.uri} is unreachable: {self.root} is not a directory")
        base = self._path(_clean_prefix(prefix)) if prefix.strip("/") else self.root.resolve()
        if not base.exists():
            return []
        entries: list[tuple[Path, os.stat_result]] = []
        temporaries: list[tuple[Path, os.stat_result]] = []
        for path in sorted(base.rglob("*")):
            try:
                info = path.lstat()
            except FileNotFoundError:  # removed since the walk saw it (a writer's temporary file)
                continue
            if stat.S_ISDIR(info.st_mode):
                continue
            # A writer's temporary file is not an object, but it may briefly be a second name of
            # one (create() links it into place), so it still counts among the names inside.
            (temporaries if ".tmp-" in path.name else entries).append((path, info))
        # A hard link is a second name for the same bytes; one whose other names all lie in the
        # listing is harmless, one shared with a file outside it exposes that file.
        names_inside = Counter((i.st_dev, i.st_ino) for _, i in [*entries, *temporaries])
        root = self.root.resolve()  # once: resolving it per entry made listing 100,000 keys slow
        found = []
        for path, info in entries:
            kind = _entry_kind(info.st_mode)
            if kind == "file" and info.st_nlink > names_inside[(info.st_dev, info.st_ino)]:
                kind = "hard link to a file outside the listing"
            key = path.relative_to(root).as_posix()
            found.append(ObjectInfo(key=key, size=info.st_size, etag=str(info.st_mtime_ns), kind=kind))
        return found

    def download(self, key: str, dest: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise StoreError(f"{self.uri}/{key} does not exist")
        shutil.copyfile(src, dest)

    def upload(self, src: Path, key: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.tmp-")
        os.close(fd)
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)

    def get(self, key: str, limit: int, if_none_match: str | None = None) -> Fetched | None:
        if not self.root.is_dir():
            raise StoreError(f"store {self.uri} is unreachable: {self.root} is not a directory")
        self._path(key)  # refuses a key (or a link) that leads outside the root
        path = self.root / _clean_prefix(key)
        try:
            # O_NOFOLLOW: a link planted in the store is refused, not followed; the tag and the
            # bytes come from one open file, so a concurrent replace cannot mix two versions.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{self.uri}/{key} cannot be read ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise StoreError(f"{self.uri}/{key} is not a file")
            etag = f"{info.st_mtime_ns:x}-{info.st_size:x}-{info.st_ino:x}"
            if etag == if_none_match:
                return Fetched(None, etag)
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise _too_large(self.uri, key, limit)
        return Fetched(data, etag)

    def put(self, key: str, data: bytes) -> None:
        write_atomic(self._path(key), data)

    def create(self, key: str, data: bytes) -> bool:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), 0o644)
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            # link(2) fails when the name exists, atomically, across processes (rename would
            # replace it); the complete file appears under its final name or not at all.
            try:
                os.link(tmp, dest)
            except FileExistsError:
                return False
        finally:
            Path(tmp).unlink(missing_ok=True)
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return True


class S3Store:
    """A bucket (and optional prefix) on S3 or an S3-compatible server, through boto3."""

    remote = True

    def __init__(self, uri: str, bucket: str, base: str, endpoint_url: str | None) -> None:
        import boto3
        from botocore.config import Config

        self.uri = uri.rstrip("/")
        self.bucket = bucket
        self.base = _clean_prefix(base)
        # Short timeouts and a few retries: an unreachable store should fail in seconds,
        # and the DAG's own retries with back-off handle longer outages.
        config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})
        self.client: Any = boto3.client("s3", endpoint_url=endpoint_url, config=config)

    def _key(self, key: str) -> str:
        return f"{self.base}/{key}" if self.base else key

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise StoreError(f"{what} failed on {self.uri}: {code}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"store {self.uri} is unreachable: {exc}") from exc
        except Boto3Error as exc:
            # upload_file turns a ClientError (NoSuchBucket, AccessDenied, ...) into
            # S3UploadFailedError, which is neither of the above.
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ClientError):
                code = cause.response.get("Error", {}).get("Code", "error")
                raise StoreError(f"{what} failed on {self.uri}: {code}") from exc
            raise StoreError(f"{what} failed on {self.uri}: {exc}") from exc

    def list(self, prefix: str) -> list[ObjectInfo]:
        clean = _clean_prefix(prefix)
        # `_key("")` would be "base/", and a second "/" would then list nothing.
        full = self._key(clean) if clean else self.base
        full = f"{full}/" if full else ""
        paginator = self.client.get_paginator("list_objects_v2")
        found = []
        pages = self._call("listing", lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full)))
        for page in pages:
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/"):
                    continue  # a "folder" marker made by consoles, not an object
                key = obj["Key"][len(self.base) + 1 :] if self.base else obj["Key"]
                found.append(ObjectInfo(key=key, size=int(obj["Size"]), etag=obj["ETag"].strip('"')))
        return sorted(found, key=lambda o: o.key)

    def download(self, key: str, dest: Path) -> None:
        # One streamed GET per object: boto3's download_file sends a HEAD first, which doubles the
        # requests of a device installing a release of many small files.
        response = self._call(
            f"download of {key}", self.client.get_object, Bucket=self.bucket, Key=self._key(key)
        )
        with response["Body"] as body, Path(dest).open("wb") as out:
            self._call(f"download of {key}", shutil.copyfileobj, fsrc=body, fdst=out, length=1 << 20)

    def upload(self, src: Path, key: str) -> None:
        self._call(
            f"upload of {key}",
            self.client.upload_file,
            Filename=str(src),
            Bucket=self.bucket,
            Key=self._key(key),
        )

    def get(self, key: str, limit: int, if_none_match: str | None = None) -> Fetched | None:
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if if_none_match:
            kwargs["IfNoneMatch"] = f'"{if_none_match}"'
        try:
            response = self._call(f"read of {key}", self.client.get_object, **kwargs)
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError):
                code = str(cause.response.get("Error", {}).get("Code", ""))
                if code in ("NoSuchKey", "404"):
                    return None
                if code in ("304", "NotModified") and if_none_match:
                    return Fetched(None, if_none_match)
            raise
        etag = str(response["ETag"]).strip('"')
        with response["Body"] as body:
            if int(response.get("ContentLength", 0)) > limit:
                raise _too_large(self.uri, key, limit)
            data = body.read(limit + 1)
        if len(data) > limit:
            raise _too_large(self.uri, key, limit)
        return Fetched(data, etag)

    def put(self, key: str, data: bytes) -> None:
        self._call(
            f"write of {key}", self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data
        )

    def create(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            # S3's conditional write (and moto's, from 5.0.x): refused with 412 when the key exists.
            self._call(
                f"write of {key}",
                self.client.put_object,
                Bucket=self.bucket,
                Key=self._key(key),
                Body=data,
                IfNoneMatch="*",
            )
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError):
                code = str(cause.response.get("Error", {}).get("Code", ""))
                # 409 ConditionalRequestConflict: another conditional write of the key is in flight.
                if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                    return False
            raise
        return True


def open_store(uri: str, s3_endpoint_url: str | None = None) -> ObjectStore:
    """Open `file:///path` or `s3://bucket/prefix`; anything else is refused."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        # Path.as_uri() percent-encodes (a space is %20): decode back to the real path.
        return FileStore(uri, Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreError(f"store URI {uri!r} names no bucket (expected s3://bucket/prefix)")
        return S3Store(uri, parsed.netloc, parsed.path, s3_endpoint_url)
    raise StoreError(f"store URI {uri!r} is not supported; allowed: file:///path, s3://bucket/prefix")


def upload_tree(store: ObjectStore, src: Path, prefix: str, last: str | None = None) -> None:
    """Upload every file under `src` below `prefix`, putting `last` (a marker file) after the rest."""
    clean = _clean_prefix(prefix)
    marker = _clean_prefix(last) if last else None
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    # Match the marker by its path below `src`: a same-named file in a subfolder
    # (e.g. onnx/config.json) must not be put after it.
    files.sort(key=lambda rel: rel == marker)
    for rel in files:
        store.upload(src / rel, f"{clean}/{rel}" if clean else rel)
