"""Export and import of one scope as JSON lines (backups, moves between stores).

Like :mod:`helamem.core._maintenance`, these run on the store's owner thread.

The format (``helamem.scope``, version 1) is one JSON object per line, each
with a ``"type"``, in this order:

1. ``header``: ``format``, ``version``, ``schema_version`` of the writing
   store, ``embedder`` (``name``, ``dimension``), ``scope`` (the exported
   prefix) and ``exported_at`` (ISO 8601, UTC).
2. ``memory`` (one per memory, in insertion order): ``id``, ``scope``,
   ``kind``, ``content``, ``content_raw``, ``role``, ``event_time``, ``created_at``,
   ``keywords``, ``access_count``, ``last_access``, ``metadata``,
   ``provenance`` and ``embedding`` (base64 of float32 little-endian, or
   null: recomputed on import; a stored vector the import would refuse, not of
   the header's dimension or not finite, is written null); ``unique_key`` too
   where the memory has one (its turn's idempotency key, ``add_turn``'s
   ``unique_on``; a reader that predates it ignores it).
3. ``edge``: ``a`` and ``b`` (memory ids), ``weight`` (as of ``tick``), ``tick``;
   an edge crossing scopes (damage ``helamem check`` reports as ``edge_scope``,
   which ``reindex`` drops) is left out, as the import refuses it.
4. ``scope`` (one per scope node under the prefix, the prefix included):
   ``scope``, ``tick``, ``last_episode`` (the id temporal edges continue
   from) and ``consolidated_upto`` (the last episode that got similarity
   edges).
5. ``cluster``: a distilled cluster (``scope``, ``signature``, ``hub``,
   ``facts``, ``distilled_at``), so a re-import does not distil it again.
6. ``end``: counts of each kind of line; a file without it is truncated.

Scopes in ``memory``, ``scope`` and ``cluster`` lines are **relative to the
exported prefix** (``[]`` is the prefix itself), so a scope can be imported
under another prefix. Times are POSIX seconds (floats, exact). The file is
ASCII (``\\uXXXX`` escapes). ``content`` is the text with lone surrogates
replaced by U+FFFD; when that differs from the stored text, ``content_raw``
holds the exact text (base64 of its UTF-8 with surrogates passed through),
because JSON would merge two adjacent escaped surrogates into one character.
So any content, lone surrogates and NUL included, round-trips exactly.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from . import dynamics
from ._core import Core, known_scope, scope_tag
from ._maintenance import _mark_key
from ._partial_files import drop_dead_partials, fsync_dir, owner_tag, replaced_store
from ._portable_read import (
    FORMAT,
    FORMAT_VERSION,
    HEADER_PREFIX,
    ExportFormatError,
    MemoryLine,
    Reader,
    Spool,
    export_embedder,
    header,
)
from ._reembed import refuse_switched
from .errors import DiskFullError, InvalidInputError, StorageError
from .jsontext import load_metadata
from .storage.base import EdgeRow, GraphStore, MemoryRow
from .storage.unique import legacy_unique_key
from .text import safe_text
from .types import Scope, normalize_scope

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ExportFormatError",
    "ExportReport",
    "ImportConflictError",
    "ImportReport",
    "export_embedder",
    "export_scope",
    "import_scope",
]

logger = logging.getLogger(__name__)

_BATCH = 512


class ImportConflictError(InvalidInputError):
    """Importing would overwrite memories that already exist; nothing was written."""


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What :func:`export_scope` wrote."""

    path: Path
    scope: Scope
    memories: int = 0
    edges: int = 0
    scopes: int = 0
    clusters: int = 0


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What :func:`import_scope` wrote (``reembedded``: vectors recomputed;
    ``facts_dropped``: facts left out because a memory they cite exists nowhere, as a
    delete of that memory would have taken them)."""

    path: Path
    scope: Scope
    memories: int = 0
    edges: int = 0
    scopes: int = 0
    clusters: int = 0
    reembedded: int = 0
    facts_dropped: int = 0


# -- export -----------------------------------------------------------------


def _line(obj: dict[str, Any]) -> str:
    # ensure_ascii escapes lone surrogates and NUL, so the file is plain ASCII
    return json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":")) + "\n"


def _b64(embedding: bytes | None, dim: int) -> str | None:
    """The stored vector for the file, or None (recomputed by the import) where the
    import would refuse it: not ``dim`` floats, or not finite (a damaged row, which
    ``helamem check`` reports as ``embedding_missing``)."""
    if embedding is None or len(embedding) != 4 * dim:
        return None
    vec = np.frombuffer(embedding, dtype=np.float32)
    if not np.isfinite(vec).all():
        return None
    return base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")


def _raw(content: str) -> str:
    return base64.b64encode(content.encode("utf-8", "surrogatepass")).decode("ascii")


def _memory_line(r: MemoryRow, rel: Scope, dim: int) -> dict[str, Any]:
    safe = safe_text(r.content)
    return {
        "type": "memory",
        "id": r.id,
        "scope": list(rel),
        "kind": r.kind,
        "content": safe,
        "content_raw": None if safe == r.content else _raw(r.content),
        "role": r.role,
        "event_time": r.event_time,
        "created_at": r.created_at,
        "keywords": json.loads(r.keywords),
        "access_count": r.access_count,
        "last_access": r.last_access,
        "metadata": load_metadata(r.metadata),
        "provenance": json.loads(r.provenance),
        "embedding": _b64(r.embedding, dim),
    }


def _write(core: Core, prefix: Scope, node: int, f: IO[str]) -> dict[str, int]:
    store = core.store
    counts = {"memories": 0, "edges": 0, "scopes": 0, "clusters": 0}
    refuse_switched(core, done="nothing was exported: the file would name this embedder")
    f.write(
        _line(
            {
                "type": "header",
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "schema_version": store.schema_version(),
                "embedder": {"name": core.embedder.name, "dimension": core.embedder.dimension},
                "scope": list(prefix),
                "exported_at": datetime.now(UTC).isoformat(),
            }
        )
    )
    cut = len(prefix)
    for batch in store.iter_memories_under(node):
        keys = store.unique_keys([r.n for r in batch])
        for r in batch:
            line = _memory_line(r, core._scope(r.scope_id)[cut:], core.embedder.dimension)
            if r.n in keys:  # a turn's idempotency key (add_turn's unique_on)
                line["unique_key"] = keys[r.n]
            f.write(_line(line))
        counts["memories"] += len(batch)
    for edges in store.iter_edges_under(node):
        for a, b, w, t in edges:
            # in [0, 1], as the import checks: a similarity edge of an older version
            # could pass 1 by float rounding (1.000002)
            w = min(max(w, 0.0), 1.0)
            f.write(_line({"type": "edge", "a": a, "b": b, "weight": w, "tick": t}))
        counts["edges"] += len(edges)
    nodes = sorted((core._scope(s)[cut:], s) for s in store.descendants(node))
    for rel, sid in nodes:
        tick, last = store.scope_state(sid)
        mark = int(store.get_meta(_mark_key(sid)) or 0)
        f.write(
            _line(
                {
                    "type": "scope",
                    "scope": list(rel),
                    "tick": tick,
                    "last_episode": None if last is None else store.id_of(last),
                    "consolidated_upto": store.last_episode_upto(sid, mark) if mark else None,
                }
            )
        )
    counts["scopes"] = len(nodes)
    for rel, sid in nodes:
        for sig, hub, facts, at in store.clusters_of(sid):
            f.write(
                _line(
                    {
                        "type": "cluster",
                        "scope": list(rel),
                        "signature": sig,
                        "hub": hub,
                        "facts": facts,
                        "distilled_at": at,
                    }
                )
            )
            counts["clusters"] += 1
    f.write(_line({"type": "end", **counts}))
    return counts


def export_scope(core: Core, scope: Sequence[str], path: str | os.PathLike[str]) -> ExportReport:
    """Write ``scope`` and the scopes under it to ``path`` (one consistent snapshot).

    Rows are streamed; the file appears atomically (written to
    ``.<name>.<host>-<pid>-<random>.partial`` beside it first, flushed to disk, then
    renamed, and the rename flushed): exports to one path at once, from several
    processes, each write their own file, and the last one renamed wins. The partial
    file of an export killed before its rename is removed by the next export to that
    path on the same host, once unwritten for :data:`PARTIAL_IDLE_S` and its process
    is gone (on Windows, by age alone).
    """
    prefix = normalize_scope(scope)
    # a typo must not write an empty backup (scope nodes are never deleted: read once)
    node = known_scope(
        core,
        prefix,
        "nothing was written",
        "HelaMemory.list_scopes() lists the scopes holding memories",
    )
    target = Path(path)
    if (home := replaced_store(target, core.config.path, HEADER_PREFIX)) is not None:
        raise InvalidInputError(
            f"the export would replace {target}, part of the store at {home} (its "
            f"database, an index or an adapter's file); nothing was written. "
            f"Export to a file outside {home}, or to a new file name"
        )
    # its own name, short whatever the target's (255 bytes at most on most file systems)
    stem = target.name.encode()[:64].decode(errors="ignore")  # bytes count, not characters
    drop_dead_partials(target, stem)
    partial = target.with_name(f".{stem}.{owner_tag()}-{uuid.uuid4().hex[:12]}.partial")
    try:
        with core.store.read_tx(), partial.open("w", encoding="ascii", newline="\n") as f:
            counts = _write(core, prefix, node, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before its name is: a crash leaves no empty backup
        os.replace(partial, target)
        fsync_dir(target.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        if exc.errno == errno.EFBIG:  # over the file system's (or process's) file size
            raise InvalidInputError(
                f"cannot write the export to {target}: the file grew over the largest file "
                f"this file system or process allows ({exc}); export a smaller scope or to "
                f"another file system (nothing was written; the store is unchanged)"
            ) from exc
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # a full disk is no bad argument
            raise DiskFullError(
                f"cannot write the export to {target}: the disk is full ({exc}); free space "
                f"and export again (nothing was written; the store is unchanged)"
            ) from exc
        raise InvalidInputError(
            f"cannot write the export to {target}: {exc}; pass a path in a writable directory"
        ) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise
    return ExportReport(target, prefix, **counts)


# -- import -----------------------------------------------------------------


class _Importer:
    """One import, inside one write transaction."""

    def __init__(
        self,
        core: Core,
        reader: Reader,
        target: Scope,
        same_embedder: bool,
        spool: Spool | None = None,
    ) -> None:
        self.core = core
        self.spool = spool  # the vectors of another embedder's file, computed before
        self.store = core.store
        self.r = reader
        self.target = target
        self.same_embedder = same_embedder
        self.db: Any = None
        self.nodes: dict[Scope, int] = {}
        self.kinds: set[tuple[str, int]] = set()
        self._tags: dict[tuple[str, int], str] = {}
        self.counts = {"memories": 0, "edges": 0, "scopes": 0, "clusters": 0}
        self.reembedded = 0
        self.facts_dropped = 0
        self._memories: list[MemoryLine] = []
        self._edges: list[tuple[int, str, str, float, int]] = []  # line, a, b, weight, tick
        self._cites: list[tuple[int, str, int, list[str]]] = []  # line, id, scope node, cited

    def node(self, rel: Scope) -> int:
        sid = self.nodes.get(rel)
        if sid is None:
            sid = self.nodes[rel] = self.store.ensure_scope(self.db, self.target + rel)
        return sid

    def tags(self, sid: int, kind: str) -> str:
        key = (kind, sid)
        if key not in self._tags:
            self._tags[key] = " ".join(scope_tag(a, kind) for a in self.store.ancestors(sid))
        return self._tags[key]

    def run(self, lines: Iterator[dict[str, Any]]) -> None:
        dim = self.core.embedder.dimension
        for obj in lines:
            kind = obj["type"]
            if kind != "memory":
                self.flush_memories()
            if kind != "edge":
                self.flush_edges()
            if kind == "memory":
                self._memories.append(self.r.memory(obj, dim, self.same_embedder))
                if len(self._memories) >= _BATCH:
                    self.flush_memories()
            elif kind == "edge":
                r = self.r
                ends = (r.get(obj, "a", str), r.get(obj, "b", str))
                self._edges.append((r.lineno, *ends, r.weight(obj), r.count(obj, "tick")))
                if len(self._edges) >= _BATCH:
                    self.flush_edges()
            elif kind == "scope":
                self.scope(obj)
            elif kind == "cluster":
                self.cluster(obj)
            elif kind == "end":
                self.end(obj)
                self.check_cites()
                return
            else:
                raise self.r.error(f"unknown line type {kind!r}")
        raise self.r.error("the file ends without its 'end' line (truncated)")

    def end(self, obj: dict[str, Any]) -> None:
        for key, n in self.counts.items():
            if obj.get(key) != n:
                raise self.r.error(f"the 'end' line says {obj.get(key)!r} {key}, the file has {n}")

    def flush_memories(self) -> None:
        batch, self._memories = self._memories, []
        if not batch:
            return
        r = self.r
        seen: set[str] = set()
        for m in batch:
            if m.id in seen:
                raise r.error(f"memory id {m.id!r} appears twice", m.line)
            seen.add(m.id)
        clash = self.store.locate(list(seen))
        if clash:
            mid, (_, sid) = next(iter(clash.items()))
            raise ImportConflictError(
                f"memory {mid!r} already exists (scope {self.core._scope(sid)!r}); nothing was "
                f"imported. Delete it (HelaMemory.delete_scope; CLI: helamem delete-scope) or "
                f"import into another store"
            )
        vectors = [m.vector for m in batch]
        todo = [i for i, v in enumerate(vectors) if v is None]
        if todo and self.spool is not None:
            for i in todo:
                vectors[i] = self.spool.take(batch[i].content)
        elif todo:  # a few damaged vectors of this embedder's file: here
            fresh = self.core._embed([safe_text(batch[i].content) for i in todo])
            for i, v in zip(todo, fresh, strict=True):
                vectors[i] = np.asarray(v, dtype=np.float32).tobytes()
        self.reembedded += len(todo)
        for m, vec in zip(batch, vectors, strict=True):
            sid = self.node(m.rel)
            assert vec is not None
            n = self.store.insert_memory(
                self.db,
                id=m.id,
                scope_id=sid,
                tags=self.tags(sid, m.kind),
                kind=m.kind,
                content=m.content,
                search_text=safe_text(m.content),
                role=m.role,
                event_time=m.event_time,
                created_at=m.created_at,
                keywords=m.keywords,
                metadata=m.metadata,
                provenance=m.provenance,
                embedding=vec,
                # an export of before unique keys: the AutoGen turn identity's (migration 9)
                unique_key=m.unique_key or legacy_unique_key(m.metadata),
            )
            if m.access_count or m.last_access is not None:
                self.store.set_access(self.db, n, m.access_count, m.last_access)
            self.kinds.add((m.kind, sid))
            if m.provenance != "[]":
                self._cites.append((m.line, m.id, sid, json.loads(m.provenance)))
        self.counts["memories"] += len(batch)

    def check_cites(self) -> None:
        """Every memory a fact cites must be a memory of its scope in the file: a fact
        citing another scope's memory (it would outlive that memory's delete, which
        takes along the facts of its own scope) refuses the file. A fact citing a
        memory that exists nowhere (deleted before deletes took the facts citing it
        along: ``helamem check``'s ``fact_orphan``) may repeat deleted content: it is
        left out, as a delete would have taken it, and counted (WARNING)."""
        where = self.store.locate(sorted({i for _, _, _, ids in self._cites for i in ids}))
        orphans: list[str] = []
        for line, fid, sid, ids in self._cites:  # the reader checked: ids are strings
            if any(i not in where for i in ids):
                orphans.append(fid)
            elif stray := next((i for i in ids if where[i][1] != sid), None):
                raise ExportFormatError(
                    f"{self.r.path} line {line}: memory {fid!r} cites {stray!r}, a memory "
                    f"of another scope; nothing was imported. Pass an unmodified file "
                    f"written by HelaMemory.export_scope()"
                )
        if orphans:
            # their edges go with them (every edge here came from the file)
            cut = self.store.edges_of([n for n, _ in self.store.locate(orphans).values()])
            gone = self.core._delete_tx(self.db, orphans)  # by the delete's own rules
            self.counts["memories"] -= len(gone)
            self.counts["edges"] -= len(cut)
            self.facts_dropped = len(gone)
            logger.warning(
                "import of %s: left out %d facts citing memories that no longer exist "
                "(they may repeat deleted content), e.g. %s",
                self.r.path,
                len(orphans),
                orphans[0],
            )

    def flush_edges(self) -> None:
        batch, self._edges = self._edges, []
        if not batch:
            return
        r = self.r
        where = self.store.locate([i for _, a, b, _, _ in batch for i in (a, b)])
        ours = set(self.nodes.values())
        rows: list[EdgeRow] = []
        for line, a, b, weight, tick in batch:
            if a not in where or b not in where:
                raise r.error(f"edge {a!r}-{b!r} refers to a memory not in the file", line)
            (na, sa), (nb, sb) = where[a], where[b]
            if sa != sb or sa not in ours or na == nb:
                raise r.error(f"edge {a!r}-{b!r} joins memories of different scopes", line)
            ka, kb = dynamics.edge_key(na, nb)
            rows.append(EdgeRow(ka, kb, sa, weight, tick))
        self.store.upsert_edges(self.db, rows)
        self.counts["edges"] += len(batch)

    def _episode_n(self, obj: dict[str, Any], key: str, sid: int) -> int | None:
        mid = self.r.get(obj, key, str, null=True)
        if mid is None:
            return None
        found = self.store.locate([mid]).get(mid)
        if found is None or found[1] != sid:
            raise self.r.error(f"{key} {mid!r} is not a memory of that scope in the file")
        return found[0]

    def scope(self, obj: dict[str, Any]) -> None:
        sid = self.node(self.r.rel(obj))
        last = self._episode_n(obj, "last_episode", sid)
        self.store.set_scope_state(self.db, sid, self.r.count(obj, "tick"), last)
        mark = self._episode_n(obj, "consolidated_upto", sid)
        self.store.set_meta(self.db, _mark_key(sid), str(mark or 0))
        self.counts["scopes"] += 1

    def cluster(self, obj: dict[str, Any]) -> None:
        r = self.r
        self.store.put_cluster(
            self.db,
            self.node(r.rel(obj)),
            r.get(obj, "signature", str),
            r.get(obj, "hub", str),
            r.count(obj, "facts", 2**31 - 1),
            r.time(obj, "distilled_at"),
        )
        self.counts["clusters"] += 1


def _refuse_filled(store: GraphStore, target: Scope) -> int | None:
    """The node of ``target`` (``None``: none yet).

    Raises:
        ImportConflictError: It, or a scope under it, holds memories.
    """
    node = store.find_scope(target)
    if node is not None and store.has_memories_under(node):
        raise ImportConflictError(
            f"scope {target!r} already holds memories; nothing was imported. Import "
            f"into another store, or into an empty scope of one that lacks the file's "
            f"ids (import_scope(scope=...); CLI: --scope), or delete the scope first "
            f"with HelaMemory.delete_scope() (CLI: helamem delete-scope)"
        )
    return node


def import_scope(
    core: Core, path: str | os.PathLike[str], scope: Sequence[str] | None = None
) -> ImportReport:
    """Load an export into its own scope (or under ``scope``) in one transaction.

    Ids, times, access counts, edges, scope ticks and distilled clusters are
    kept. Vectors are reused when the export was made with the same embedder
    (name and dimension), else recomputed, before the write transaction takes the
    writer lock (:class:`~._portable_read.Spool`). The target scope and the scopes
    under it must hold no memories, and no id in the file may exist.

    Raises:
        ExportFormatError: A line is malformed or holds a value ``add()`` refuses,
            or a fact cites a memory of another scope (a fact citing a memory that
            exists nowhere is left out: ``ImportReport.facts_dropped``).
        ImportConflictError: The target holds memories or an id exists.
        InvalidInputError: The file cannot be read, or changed during the import.
    """
    source = Path(path)
    core.reconcile()  # settle pending vector deletes before ids come back
    try:
        f = source.open(encoding="utf-8", newline="\n")
    except OSError as exc:
        raise InvalidInputError(
            f"cannot read {source}: {exc}; pass the path of a file written by export_scope()"
        ) from exc
    with f:
        reader = Reader(source, f)
        lines = iter(reader)
        head = header(reader, lines)
        target = normalize_scope(reader.rel(head) if scope is None else scope)
        emb = head["embedder"]
        same = emb.get("name") == core.embedder.name and emb.get("dimension") == (
            core.embedder.dimension
        )
        store = core.store
        if not same:  # before minutes of embedding: the check under the lock repeats it
            _refuse_filled(store, target)
        # another embedder's file: every vector computed first, not under the writer lock
        spool = (
            None if same else Spool.compute(source, core.embedder.dimension, core._embed, _BATCH)
        )
        imp = _Importer(core, reader, target, same, spool)
        with spool or contextlib.nullcontext(), store.tx() as db:
            # read under the writer lock: memories another writer just added to the
            # target (or a scope under it) make it non-empty, and its clusters stay
            node = _refuse_filled(store, target)
            refuse_switched(core)
            imp.db = db
            if node is not None:  # its clusters name memories gone: the file's replace them
                store.delete_clusters(db, store.descendants(node))
            imp.run(lines)
            if next(lines, None) is not None:
                raise reader.error("there are lines after the 'end' line")
    if core._holding is not None:
        for kind, sid in imp.kinds:
            core._holding.setdefault(kind, set()).add(sid)
    try:
        core.reconcile(expected=True)  # index the imported vectors: no recovery to report
    except StorageError as exc:
        core._needs_reconcile = True
        logger.warning("vector index update failed, will re-index on next use: %s", exc)
    return ImportReport(
        source, target, reembedded=imp.reembedded, facts_dropped=imp.facts_dropped, **imp.counts
    )
