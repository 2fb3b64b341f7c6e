"""The embedded index's marker file, and which Chroma failures mean damaged files.

``chroma/helamem-index.json`` records the database the index belongs to
(``store_id``: an index beside another database is refused) and whether a
process holds the index (``open``). chromadb writes a collection's HNSW files in
place: a process killed while it wrote them left ``index_metadata.pickle`` empty
(chromadb refused the collection) or a graph that counted every vector and
missed some in every query. So ``open`` is set before the index is first
written in a session and cleared when the process's last store closes it; one
left set is a killed holder's, and every HNSW collection is rebuilt (README,
Damaged files).
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["FULL", "MARKER", "damaged", "left_open", "marker_owner", "write_marker"]

MARKER = "helamem-index.json"
FULL = ("disk is full", "no space left", "storagefull", "errno 28", "disk quota")
"""Words of a Chroma error raised for a full disk (not damage: the index is kept)."""
_SPARE = (*FULL, "too many open files", "permission denied", "resource temporarily")


def damaged(exc: Exception) -> bool:
    """Whether chromadb failed on a collection's HNSW files themselves (not for want of
    file handles, disk or permission, which would fail a rebuild as well)."""
    msg = str(exc).lower()
    return "hnsw segment reader" in msg and not any(w in msg for w in _SPARE)


def left_open(directory: Path) -> bool:
    """Whether the marker in ``directory`` says a process held the index and never
    closed it (killed); an unreadable marker says so too, a missing one does not."""
    marker = directory / MARKER
    if not marker.exists():
        return False
    try:
        return bool(json.loads(marker.read_text("utf-8")).get("open", False))
    except (OSError, ValueError, AttributeError):
        return True


def marker_owner(directory: Path) -> str | None:
    """The ``store_id`` the marker names; ``None`` without one.

    Raises:
        ValueError: The marker cannot be read or parsed.
    """
    marker = directory / MARKER
    if not marker.exists():
        return None
    try:
        owner = json.loads(marker.read_text("utf-8")).get("store_id")
    except (OSError, AttributeError) as exc:
        raise ValueError(str(exc)) from exc
    return None if owner is None else str(owner)


def write_marker(directory: Path, store_id: str, held: bool) -> None:
    """Replace the marker atomically (a temporary file renamed over it)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{MARKER}.tmp"
    tmp.write_text(json.dumps({"store_id": store_id, "open": held}), "utf-8")
    tmp.replace(directory / MARKER)
