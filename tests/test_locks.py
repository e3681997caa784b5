"""Locks die with their process: a staging folder whose writer was killed is removed by the next
writer of the same step, one being written by a live process is left alone, and a second local run
of the same work fails at once with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.core.errors import RunInProgress
from tasks.core.locks import LOCK_SUFFIX, remove_stale, run_lock, staging_dir

REPO = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from pathlib import Path
from tasks.core.locks import {what}
with {what}(Path(sys.argv[1]), {arg}) as held:
    print(held, flush=True)
    time.sleep(600)
"""


def holding(what: str, arg: str, path: Path) -> tuple[subprocess.Popen[str], str]:
    """A second process that takes `what` on `path` and holds it until killed; and what it printed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD.format(what=what, arg=arg), str(path)],
        env=os.environ | {"PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def kill(process: subprocess.Popen[str]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def test_a_live_writers_staging_is_kept_and_a_dead_ones_removed(tmp_path):
    process, printed = holding("staging_dir", "'.key.tmp-'", tmp_path)
    try:
        live = Path(printed)
        assert live.is_dir() and live.name.startswith(".key.tmp-")
        (live / "half-written.onnx").write_bytes(b"\0" * 10)
        assert remove_stale(tmp_path, ".key.tmp-") == []
        assert live.is_dir()
    finally:
        kill(process)
    assert live.is_dir()  # SIGKILL left it behind
    other = tmp_path / ".other.tmp-x"
    other.mkdir()  # another step's staging is not this step's to remove
    assert remove_stale(tmp_path, ".key.tmp-") == [live]
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name]


def test_staging_is_removed_when_its_block_fails_and_gone_once_renamed(tmp_path):
    with pytest.raises(RuntimeError), staging_dir(tmp_path, ".a.tmp-") as staging:
        (staging / "part").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with staging_dir(tmp_path, ".a.tmp-") as staging:
        (staging / "done").write_text("x")
        staging.rename(tmp_path / "final")
    assert [p.name for p in tmp_path.iterdir()] == ["final"]


def test_a_staging_folder_without_lock_is_stale(tmp_path):
    # Left by a writer from before locks existed: nothing holds it.
    old = tmp_path / ".key.tmp-legacy"
    old.mkdir()
    assert remove_stale(tmp_path, ".key.tmp-") == [old]
    assert not any(p.name.endswith(LOCK_SUFFIX) for p in tmp_path.iterdir())


def test_a_second_run_of_the_same_work_fails_while_the_first_lives(tmp_path):
    lock = tmp_path / "locks" / "run.lock"
    process, _ = holding("run_lock", "'the work'", lock)
    try:
        with pytest.raises(RunInProgress) as raised, run_lock(lock, "the work"):
            pass
        message = str(raised.value)
        assert message == f"the work is already running in process {process.pid} (lock {lock})"
        assert "\n" not in message
    finally:
        kill(process)
    with run_lock(lock, "the work"):  # its holder died: free again
        assert lock.read_text().strip() == str(os.getpid())
