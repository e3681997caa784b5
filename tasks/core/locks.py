"""Locks that die with their holder, and staging folders that a killed writer cannot leave behind.

An `fcntl.flock` is released by the kernel when its process ends, however it ends (SIGKILL
included), so a lock that can be taken means its holder is gone. A staging folder is written
while its writer holds the lock file beside it (`<staging>.lock`); whoever writes the same thing
next removes the staging folders whose lock is free, and leaves those of live writers alone.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.core.errors import RunInProgress

LOCK_SUFFIX = ".lock"


def _try_lock(path: Path, blocking: bool, create: bool = True) -> int | None:
    """An open descriptor of `path` holding its exclusive flock, or None when a live process
    holds it and `blocking` is False, or when `path` is missing (and not to be created) or was
    unlinked while we waited (the lock belongs to a file no longer there)."""
    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _linked(fd, path):
            return fd
    except BlockingIOError:
        pass
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def _linked(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (a cleaner may have removed it)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _holder(path: Path) -> str:
    """What the holder of a run lock wrote into it (its process id), or `unknown`."""
    try:
        return path.read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


@contextmanager
def run_lock(path: Path, what: str) -> Iterator[None]:
    """Hold the lock `path` for the block, or raise RunInProgress at once if a live process holds
    it (failing beats waiting: a second run of the same work would only reuse the first's results,
    and a scheduler should not stack waiting processes). The holder's pid is written into it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _try_lock(path, blocking=False)
    if fd is None:
        raise RunInProgress(f"{what} is already running in process {_holder(path)} (lock {path})")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold the lock `path` for the block, waiting for a live holder to finish."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = None
    while fd is None:  # None only if the file was replaced while we waited: lock the new one
        fd = _try_lock(path, blocking=True)
    try:
        yield
    finally:
        os.close(fd)


def remove_stale(parent: Path, prefix: str) -> list[Path]:
    """Remove the staging folders `<parent>/<prefix>*` whose writer is gone; return them."""
    removed = []
    names = (
        {p.name.removesuffix(LOCK_SUFFIX) for p in parent.glob(f"{prefix}*")} if parent.is_dir() else set()
    )
    for name in sorted(names):
        staging, lock = parent / name, parent / f"{name}{LOCK_SUFFIX}"
        fd = _try_lock(lock, blocking=False, create=False)
        if fd is None and lock.exists():
            continue  # a live writer
        # Free lock, or no lock at all: a live writer creates and holds its lock before its folder
        # and removes the folder before the lock, so either way the writer is gone.
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
        if fd is not None:
            lock.unlink(missing_ok=True)
            os.close(fd)
    return removed


@contextmanager
def staging_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A new folder `<parent>/<prefix>XXXX` held by this process until the block ends, then removed
    unless the block renamed it into place. Stale staging folders of the same prefix go first."""
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(parent, prefix)
    # The lock exists (and is held) before the folder, so a folder without a free lock is live;
    # a lock a cleaner removed before we held it is not ours to write under: take another.
    while True:
        fd, name = tempfile.mkstemp(dir=parent, prefix=prefix, suffix=LOCK_SUFFIX)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _linked(fd, Path(name)):
            break
        os.close(fd)
    lock = Path(name)
    staging = parent / lock.name.removesuffix(LOCK_SUFFIX)
    try:
        staging.mkdir()
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        lock.unlink(missing_ok=True)
        os.close(fd)
