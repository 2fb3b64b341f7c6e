"""The index's inter-process lock across ``fork()``: a child never unlocks its parent.

An OS file lock belongs to the open file, which a forked child shares with its
parent: a child that released its copy (explicitly, or by garbage collection:
filelock before 3.30 released in ``__del__`` in any process) unlocked the parent's
index, and a third process could then open it beside the parent and lose vectors.
"""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from helamem.core.storage import lock as lock_mod
from helamem.core.storage.lock import ProcessLock

pytestmark = pytest.mark.sqlite_only


def _taken_elsewhere(path: Path) -> bool:
    """Whether another process finds the lock held."""
    code = (
        "import filelock, sys\n"
        "try:\n"
        f"    filelock.FileLock({str(path)!r}, timeout=0).acquire()\n"
        "except filelock.Timeout:\n"
        "    sys.exit(3)\n"
    )
    return subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 3


def test_a_child_that_drops_the_parents_lock_leaves_it_held(
    tmp_path: Path, run_forked: Callable[[Callable[[], int]], int]
) -> None:
    path = tmp_path / "index.lock"
    mine = ProcessLock(path)
    assert mine.try_acquire()
    try:

        def child() -> int:
            mine.release()  # the parent's share: not the child's to give back
            lock_mod._inherited.clear()  # and its file lock collected here
            gc.collect()
            return 0

        assert run_forked(child) == 0
        assert _taken_elsewhere(path)  # the parent still holds it
    finally:
        mine.release()
    assert not _taken_elsewhere(path)  # released by its owner: free
