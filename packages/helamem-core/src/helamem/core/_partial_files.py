"""An export's partial file (written beside its target, then renamed over it): whose it
is, flushing the rename, and removing those of exports killed before their rename."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import socket
import time
from pathlib import Path

__all__ = ["PARTIAL_IDLE_S", "drop_dead_partials", "fsync_dir", "owner_tag", "replaced_store"]

logger = logging.getLogger(__name__)

_WINDOWS = os.name == "nt"

PARTIAL_IDLE_S = 600.0
"""Seconds a partial export file of a dead process must have been left unwritten before
an export removes it (a host name and pid can repeat in another container on one volume)."""


_SQLITE = b"SQLite format 3\x00"
"""The first bytes of every SQLite database (a store's, an adapter's checkpoints)."""


def replaced_store(target: Path, home: Path, header: bytes) -> Path | None:
    """The store directory an export to ``target`` would damage, else ``None``: ``home``
    (this store's) when ``target`` is an existing file under it (at any depth, links
    followed) other than an earlier export (its first bytes ``header``): its database,
    an adapter's checkpoints, an index; ``target``'s directory when it is a SQLite
    database anywhere (another store's, an adapter's checkpoints elsewhere). Replacing
    one by an export loses its data."""
    where, home = target.resolve(), home.resolve()
    inside = where == home or home in where.parents
    if inside and where.is_dir():
        return home
    try:
        with where.open("rb") as f:
            first = f.read(max(len(header), len(_SQLITE)))
    except FileNotFoundError:
        return None  # a new file: nothing is replaced
    except OSError:
        return home if inside else None
    if first.startswith(_SQLITE):
        return home if inside else where.parent
    return home if inside and not first.startswith(header) else None


def owner_tag() -> str:
    """``<host>-<pid>``: whose partial export file this is (the host as 8 hex digits)."""
    host = hashlib.sha1(socket.gethostname().encode(errors="replace")).hexdigest()[:8]
    return f"{host}-{os.getpid()}"


def drop_dead_partials(target: Path, stem: str) -> None:
    """Remove the partial files of exports to ``target`` killed before their rename: of
    this host, unwritten for :data:`PARTIAL_IDLE_S`, by a process that no longer runs
    (an unknown owner's file is kept). Windows has no harmless liveness probe
    (``os.kill`` there ends the process), and an open file cannot be removed there, so
    the age alone decides."""
    host = owner_tag().split("-")[0]
    for old in target.parent.glob(f".{glob.escape(stem)}.{host}-*.partial"):
        pid = old.name[len(stem) + len(host) + 3 :].split("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:  # written to lately: maybe a live export, or another container's
            if time.time() - old.stat().st_mtime < PARTIAL_IDLE_S:
                continue
        except OSError:  # another export removed it first
            continue
        if _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):  # another export removed it first
            old.unlink()
            logger.info("removed %s, the partial file of a killed export", old)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` may still run (True where that cannot be told safely)."""
    if _WINDOWS:  # os.kill(pid, 0) there would send it CTRL_C_EVENT
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process; a pid no process can have
        return True
    return True


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (a rename) to disk; a no-op where directories cannot
    be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # a file system that cannot sync directories
        pass
    finally:
        os.close(fd)
