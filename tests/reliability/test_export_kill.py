"""An export killed before its rename leaves only a hidden partial file beside the
target, never a half-written target; the next export to that path on this host
removes it once its process is gone (a running export's partial file is kept). An
export is on disk before ``export_scope`` returns: the file is flushed before its
rename, and the rename after it."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, InvalidInputError
from helamem.core._partial_files import PARTIAL_IDLE_S

A = ("users", "alice")

_CHILD = textwrap.dedent(
    """
    import os, sys, time
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    from pathlib import Path
    from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, _portable
    write = _portable._write
    def paused(*args):
        out = write(*args)  # every row written to the partial file, not yet renamed
        print("written", flush=True)
        time.sleep(120)  # killed here
        return out
    _portable._write = paused
    with HelaMemory(HelaMemConfig(path=Path(sys.argv[1])), embedder=HashingEmbedder(64)) as m:
        m.export_scope(("users", "alice"), sys.argv[2])
    """
)


def _paused_export(store: Path, target: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(store), str(target)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "written"
    return child


def _partials(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))


def test_a_killed_exports_partial_file_goes_at_the_next_export(tmp_path: Path) -> None:
    store, target = tmp_path / "s", tmp_path / "out" / "alice.jsonl"
    target.parent.mkdir()
    with HelaMemory(HelaMemConfig(path=store), embedder=HashingEmbedder(64)) as m:
        ids = [m.add(f"note {i} about tea", A).id for i in range(50)]
    killed = _paused_export(store, target)
    running = _paused_export(store, target)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
        assert len(_partials(target.parent)) == 2 and not target.exists()
        assert any(f"-{killed.pid}-" in name for name in _partials(target.parent))
        with HelaMemory(HelaMemConfig(path=store), embedder=HashingEmbedder(64)) as m:
            m.export_scope(A, target)
        assert len(_partials(target.parent)) == 2  # written to just now: kept a while
        old = time.time() - PARTIAL_IDLE_S - 1
        for name in _partials(target.parent):
            os.utime(target.parent / name, (old, old))
        with HelaMemory(HelaMemConfig(path=store), embedder=HashingEmbedder(64)) as m:
            report = m.export_scope(A, target)
        left = _partials(target.parent)
        assert len(left) == 1 and f"-{running.pid}-" in left[0]  # a running export's: kept
    finally:
        running.kill()
        running.wait(30)
    assert report.memories == len(ids)
    with HelaMemory(HelaMemConfig(path=tmp_path / "t"), embedder=HashingEmbedder(64)) as m:
        assert m.import_scope(target).memories == len(ids)
        assert [m.get(i).content for i in ids] == [f"note {i} about tea" for i in range(50)]


def test_an_export_is_flushed_before_and_after_its_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    fsync, replace = os.fsync, os.replace

    def logged_fsync(fd: int) -> None:
        events.append("fsync dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        fsync(fd)

    def logged_replace(a: object, b: object) -> None:
        events.append("rename")
        replace(a, b)  # type: ignore[arg-type]

    with HelaMemory(HelaMemConfig(path=tmp_path / "s"), embedder=HashingEmbedder(64)) as m:
        m.add("a note about tea", A)
        monkeypatch.setattr(os, "fsync", logged_fsync)
        monkeypatch.setattr(os, "replace", logged_replace)
        m.export_scope(A, tmp_path / "a.jsonl")
        monkeypatch.undo()
    assert events == ["fsync file", "rename", "fsync dir"]


def test_an_export_over_the_largest_file_allowed_names_that(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Helper 126: EFBIG (a file size limit, FAT32's 4 GiB) said "pass a path in a
    writable directory"; the old file stays and no partial file is left."""
    target = tmp_path / "a.jsonl"
    target.write_text("old", encoding="ascii")
    with HelaMemory(HelaMemConfig(path=tmp_path / "s"), embedder=HashingEmbedder(64)) as m:
        m.add("a note about tea", A)
        real = os.fsync

        def too_big(fd: int) -> None:
            raise OSError(errno.EFBIG, "File too large")

        monkeypatch.setattr(os, "fsync", too_big)
        with pytest.raises(InvalidInputError, match="largest file"):
            m.export_scope(A, target)
        monkeypatch.setattr(os, "fsync", real)
    assert target.read_text(encoding="ascii") == "old"
    assert _partials(tmp_path) == []


def _leftover(directory: Path, pid: int, age_s: float) -> Path:
    from helamem.core._partial_files import owner_tag

    host = owner_tag().split("-")[0]
    path = directory / f".a.jsonl.{host}-{pid}-0123456789ab.partial"
    path.write_text("half", encoding="ascii")
    when = time.time() - age_s
    os.utime(path, (when, when))
    return path


def _export_beside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill: object, windows: bool = False
) -> None:
    """An export to ``tmp_path / "a.jsonl"`` with ``os.kill`` (and, ``windows``, the
    platform) replaced for the partial files' cleanup."""
    from helamem.core import _partial_files

    with HelaMemory(HelaMemConfig(path=tmp_path / "s"), embedder=HashingEmbedder(64)) as m:
        m.add("a note about tea", A)
        with monkeypatch.context() as patched:
            patched.setattr(_partial_files, "_WINDOWS", windows)
            patched.setattr(_partial_files.os, "kill", kill)
            m.export_scope(A, tmp_path / "a.jsonl")


def test_no_process_is_probed_for_a_partial_file_written_lately(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 129: the liveness probe ran before the age check, for every leftover."""
    probed: list[int] = []

    def kill(pid: int, sig: int) -> None:
        probed.append(pid)
        raise ProcessLookupError(pid)

    fresh = _leftover(tmp_path, 4_000_001, age_s=5)
    stale = _leftover(tmp_path, 4_000_002, age_s=PARTIAL_IDLE_S + 5)
    _export_beside(tmp_path, monkeypatch, kill)
    assert probed == [4_000_002]
    assert fresh.exists() and not stale.exists()


def test_on_windows_no_process_is_signalled_and_age_alone_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 129: ``os.kill(pid, 0)`` on Windows sends CTRL_C_EVENT (or ends the
    process); an export there must never call it."""

    def kill(pid: int, sig: int) -> None:
        raise AssertionError(f"os.kill({pid}, {sig}) on Windows")

    fresh = _leftover(tmp_path, os.getppid(), age_s=5)
    stale = _leftover(tmp_path, os.getppid() + 10_000_000, age_s=PARTIAL_IDLE_S + 5)
    _export_beside(tmp_path, monkeypatch, kill, windows=True)
    assert fresh.exists() and not stale.exists()
    assert (tmp_path / "a.jsonl").exists()


def test_a_probe_that_cannot_tell_keeps_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def kill(pid: int, sig: int) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    stale = _leftover(tmp_path, 4_000_003, age_s=PARTIAL_IDLE_S + 5)
    _export_beside(tmp_path, monkeypatch, kill)
    assert stale.exists()


def test_a_leftover_naming_an_impossible_pid_is_kept_and_blocks_nothing(tmp_path: Path) -> None:
    """Review 130: a pid too large for the OS (a file a tool renamed) raised
    OverflowError from ``os.kill``, so every export to that path failed."""
    odd = _leftover(tmp_path, 10**30, age_s=PARTIAL_IDLE_S + 5)
    with HelaMemory(HelaMemConfig(path=tmp_path / "s"), embedder=HashingEmbedder(64)) as m:
        m.add("a note about tea", A)
        assert m.export_scope(A, tmp_path / "a.jsonl").memories == 1
    assert odd.exists()
