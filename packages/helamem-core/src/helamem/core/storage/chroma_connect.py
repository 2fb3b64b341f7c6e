"""Chroma connection: clients, collections, the index marker, verification against SQLite.

With :mod:`.chroma` the only module that imports chromadb. :class:`ChromaConnection`
opens Chroma lazily (only once a promoted scope exists), holds the
inter-process lock in persistent mode, checks the marker and the collections
against the database on open, and loads or rebuilds collections; the index
operations live in :class:`~helamem.core.storage.chroma.ChromaIndex`.
"""

from __future__ import annotations

import gc
import logging
import resource
import shutil
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, cast

import chromadb
import httpx
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.config import Settings
from chromadb.errors import ChromaError, NotFoundError
from chromadb.utils.embedding_functions import register_embedding_function

from ..config import ChromaConfig
from ..embeddings import MiniLMEmbedder
from ..errors import CorruptStoreError, DiskFullError, StorageError
from .base import IndexLockedError
from .chroma_copy import copy_scope, drop_vanished, write_over
from .chroma_embedded import (
    bounded_persistent_client,
    engine_inherited,
    forget_system,
    inherited_engine_error,
    note_engine_started,
)
from .chroma_http import http_client
from .chroma_marker import FULL, MARKER, damaged, left_open, marker_owner, write_marker
from .exact import ExactVectors
from .lock import ProcessLock

__all__ = ["ChromaConnection", "HelaMemMiniLMEmbeddingFunction"]

logger = logging.getLogger("helamem.core.storage.chroma")


@register_embedding_function
class HelaMemMiniLMEmbeddingFunction(EmbeddingFunction[Documents]):
    """HeLa-Mem's offline all-MiniLM-L6-v2 as a registered Chroma embedding function.

    Examples:
        >>> ef = HelaMemMiniLMEmbeddingFunction()
        >>> len(ef(["hello"])[0])
        384
    """

    def __init__(self, batch_size: int = 32, max_length: int = 256) -> None:
        self._batch_size = batch_size
        self._max_length = max_length
        self._embedder = MiniLMEmbedder(batch_size, max_length)

    def __call__(self, input: Documents) -> Embeddings:
        return [row for row in self._embedder.embed(list(input))]

    @staticmethod
    def name() -> str:
        return "helamem-minilm-onnx"

    def default_space(self) -> Any:
        return "cosine"

    def supported_spaces(self) -> list[Any]:
        return ["cosine", "l2", "ip"]

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> HelaMemMiniLMEmbeddingFunction:
        return HelaMemMiniLMEmbeddingFunction(
            int(config.get("batch_size", 32)), int(config.get("max_length", 256))
        )

    def get_config(self) -> dict[str, Any]:
        return {"batch_size": self._batch_size, "max_length": self._max_length}


CHROMA_FAILURES: tuple[type[Exception], ...] = (ChromaError, ValueError, httpx.HTTPError)
"""What a failing Chroma call raises: its own errors, bad input, and, from a server
(``mode="http"``), the HTTP client's transport errors (refused, reset, timed out)."""
_VERIFY_FAILURES: tuple[type[Exception], ...] = (*CHROMA_FAILURES, OSError)  # OSError: the marker
_CONNECT_FAILURES: tuple[type[Exception], ...] = (*CHROMA_FAILURES, OSError, AttributeError)


def chroma_error(exc: Exception, what: str, where: object) -> StorageError:
    """A failed Chroma call as a typed error: :class:`DiskFullError` when its disk is full."""
    if not any(w in str(exc).lower() for w in FULL):
        return StorageError(f"{what}: {exc}")
    msg = f"the disk holding the vector index ({where}) is full ({exc}); free space and retry"
    return DiskFullError(f"{what}: {msg} (the memories are kept: the index catches up later)")


_NEWEST_CHECKED = 1
"""On open, each large scope's newest indexed memory must have its vector in the scope's
collection, else the collection is an older copy (one taken before that memory was added
lacks it; one taken after holds every memory before it), rebuilt from SQLite. Not seen
this way: a copy holding a memory's id with an older vector (deleted and added again
under a caller-chosen id, or re-embedded): ``helamem check`` reports, ``reindex`` mends."""
_LEGACY = "-s"  # collection names of the layout before tiers: one per scope, every scope


class ChromaConnection:
    """The Chroma side of :class:`~helamem.core.storage.chroma.ChromaIndex`: connect, verify, load.

    Args:
        config: Where Chroma lives and the tier threshold.
        path: The Chroma directory (``<data dir>/chroma``).
        attach_minilm: Attach HeLa-Mem's MiniLM embedding function to collections.
        connect: Opens the exact scan's connection to the graph store (default:
            SQLite's ``helamem.sqlite3`` beside ``path``; PostgreSQL's for a
            :class:`~helamem.core.config.PostgresConfig` store).
    """

    def __init__(
        self,
        config: ChromaConfig,
        path: Path,
        attach_minilm: bool,
        connect: Callable[[], Any] | None = None,
    ) -> None:
        self._config = config
        self._path = path
        self._attach_minilm = attach_minilm
        self._client: Any = None
        self._dimension = 0
        self._cols: OrderedDict[str, Any] = OrderedDict()
        self._exact = ExactVectors(
            path.parent / "helamem.sqlite3", config.exact_cache_mb * 1024 * 1024, connect=connect
        )
        # what a replaced database's error names, and its fix
        if connect is None:
            self._db_name = str(path.parent / "helamem.sqlite3")
            self._db_fix = (
                f"Restore helamem.sqlite3 from a backup, or run `helamem reindex "
                f"{path.parent}` to discard the index and rebuild it from this database"
            )
        else:
            self._db_name = "the PostgreSQL graph store"
            self._db_fix = (
                f"Restore the database from a backup, or delete {path} (it is derived) and "
                f"open again: the index is rebuilt from this database"
            )
        self._lock = ProcessLock(path.parent / "chroma.lock")
        self._where = f"server {config.host}:{config.port}" if config.mode == "http" else path
        self._verified = False
        self._stem_cache: str | None = None
        self._warned_locked = False
        self._failed: set[tuple[int, str]] = set()  # collections whose search failed (warned)
        self.wants_reconcile = False
        """Set when a search met vectors not yet in HNSW (the owner reconciles)."""
        self.deferred: set[str] = set()
        """Ids whose vectors the owner holds for a batched upsert: a search meets
        them unindexed (and scans them exactly) without asking for a re-index."""

    def _stem(self) -> str:
        """Collection names start with this: ``config.collection``, and on a Chroma
        server (``mode="http"``) also this database's id, since every SQLite file, and
        every PostgreSQL schema of every database, numbers its scopes from 1: two stores
        sharing one server must never meet in a collection (a PostgreSQL store's
        ``collection`` also names its schema; two databases may hold one schema name).
        A server's collections of an older layout are not this stem's: the next open
        rebuilds them from the database."""
        if self._stem_cache is None:
            c = self._config.collection
            if self._config.mode == "http":
                c = f"{c}.{self._exact.store_id()[:16]}"
            self._stem_cache = c
        return self._stem_cache

    def _name(self, scope_id: int, kind: str) -> str:
        return f"{self._stem()}-h{int(scope_id)}-{kind[0]}"

    def _ours(self, name: str) -> bool:
        c = self._stem()
        return name.startswith(f"{c}-h") or name.startswith(f"{c}{_LEGACY}")

    def open(self, dimension: int) -> None:
        """Connect; check the index belongs to this database; repair it if damaged.

        Raises:
            CorruptStoreError: The index holds another database's vectors (the
                database was replaced, emptied or is corrupt).
            StorageError: Chroma cannot be reached (``mode="http"``).
        """
        self._dimension = dimension
        self._exact.open(dimension)
        try:
            if self._config.mode == "persistent":
                self._check_marker()
                if self._exact.promoted() or (self._path / "chroma.sqlite3").exists():
                    # opens and verifies when this process can hold the index
                    self._chroma(required=False)
            else:
                self._chroma(required=True)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release every Chroma file, the process lock and the SQLite connection."""
        self._cols.clear()
        client, self._client = self._client, None
        clean = client is not None and self._verified
        if client is not None:
            try:
                client.close()
            except (ChromaError, AttributeError):
                clean = False
            gc.collect()  # collection handles hold the Rust bindings (and their files)
        # closed cleanly by the process's last holder: the next open need not rebuild
        self._lock.release(last=self._closed_marker if clean else None)
        self._exact.close()
        self._verified = False

    def _check_marker(self) -> None:
        try:
            owner = marker_owner(self._path)
        except ValueError:
            logger.warning("unreadable %s; the vector index will be verified", self._path / MARKER)
            return
        if owner is not None and owner != self._exact.store_id():
            raise CorruptStoreError(
                f"the vector index in {self._path} belongs to another database: "
                f"{self._db_name} looks replaced, emptied or corrupt. {self._db_fix}"
            )

    def _closed_marker(self) -> None:
        with suppress(OSError):
            self._write_marker(held=False)

    def _write_marker(self, held: bool = True) -> None:
        if self._config.mode == "persistent":
            write_marker(self._path, self._exact.store_id(), held)

    def _settings(self) -> Settings:
        return Settings(anonymized_telemetry=False, allow_reset=True)

    def _connect(self) -> Any:
        cfg = self._config
        settings = self._settings()
        if cfg.mode == "http":
            return http_client(cfg, settings)  # every request bounded by timeout_s
        note_engine_started()
        if cfg.mode == "ephemeral":
            return chromadb.EphemeralClient(settings=settings)
        self._path.mkdir(parents=True, exist_ok=True)
        return bounded_persistent_client(self._path, settings, self._cache_size())

    def _cache_size(self) -> int:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        cap = self._config.max_open_indexes
        if soft > 0:
            cap = min(cap, max(1, soft // 16))
        return cap

    def _chroma(self, required: bool = True, verify: bool = True) -> Any:
        """The Chroma client, opened (and the index verified) on first need.

        Raises:
            IndexLockedError: Another process holds the embedded index, or this one
                was forked from one whose embedded engine had started (``required``).
        """
        if self._client is not None:
            return self._client
        if self._config.mode != "http" and engine_inherited():  # a new client would hang
            if not required:
                logger.info(
                    "%s; small scopes are searched exactly", inherited_engine_error(self._path)
                )
                return None
            raise inherited_engine_error(self._path)
        if self._config.mode == "persistent" and not self._lock.try_acquire():
            if not required:
                logger.info(
                    "another process holds the embedded vector index in %s; this process "
                    "searches small scopes exactly and leaves large ones to it",
                    self._path,
                )
                return None
            raise IndexLockedError(
                f"another process holds the embedded Chroma index in {self._path}, and this "
                f"operation needs a scope's HNSW collection; embedded Chroma is single-process. "
                f"To share the store between processes, run a Chroma server (`chroma run "
                f"--path {self._path} --host 127.0.0.1 --port 8000`) and open every process "
                f'with ChromaConfig(mode="http", host="127.0.0.1", port=8000)'
            )
        try:
            self._client = self._open_client()
            if verify:
                try:
                    self._verify()
                except BaseException as exc:
                    self._verified = False  # checked again at the next call: not trusted
                    if not isinstance(exc, _VERIFY_FAILURES):
                        raise
                    raise chroma_error(
                        exc, "could not check the vector index", self._where
                    ) from exc
        except BaseException:
            client, self._client = self._client, None
            if client is not None:
                with suppress(ChromaError, AttributeError):
                    client.close()
            self._cols.clear()
            self._lock.release()
            raise
        return self._client

    def _open_client(self) -> Any:
        try:
            client = self._connect()
            client.heartbeat()
            return client
        except _CONNECT_FAILURES as exc:
            if any(w in str(exc).lower() for w in FULL):  # not damage: keep the index
                raise chroma_error(exc, "could not open the vector index", self._where) from exc
            if self._config.mode != "persistent":
                raise StorageError(
                    f"could not connect to Chroma ({self._config.mode}): {exc}; check "
                    f"ChromaConfig (host/port for mode='http')"
                ) from exc
            logger.warning(
                "the vector index in %s is damaged (%s: %s); rebuilding it from "
                "helamem.sqlite3 (the index is derived: nothing is lost)",
                self._path,
                type(exc).__name__,
                exc,
            )
        forget_system(self._path)
        shutil.rmtree(self._path, ignore_errors=True)
        try:
            client = self._connect()
            client.heartbeat()
            return client
        except _CONNECT_FAILURES as exc:
            forget_system(self._path)
            raise StorageError(
                f"could not open a new vector index in {self._path}: {exc}; check that the "
                f"directory is writable and the disk has space"
            ) from exc

    def _names(self) -> list[str]:
        client = self._client
        out = []
        for c in client.list_collections():
            name = c.name if hasattr(c, "name") else str(c)
            if self._ours(name):
                out.append(str(name))
        return out

    def _verify(self) -> None:
        """Bring the HNSW tier in line with SQLite: migrate, rebuild what is missing."""
        if self._verified:
            return
        self._verified = True
        names = self._names()
        marker = self._path / MARKER
        legacy = [n for n in names if n.startswith(f"{self._stem()}{_LEGACY}")]
        if self._config.mode == "persistent" and not marker.exists() and names:
            self._refuse_unknown(names)
        if legacy:
            logger.warning(
                "dropping %d collections of the previous vector-index layout in %s "
                "(small scopes are now searched exactly from SQLite)",
                len(legacy),
                self._path,
            )
            for n in legacy:
                with suppress(NotFoundError):
                    self._client.delete_collection(n)
            self._promote_large()
        self._warn_old_names()
        have = set(self._names())
        indexed = self._exact.counts(indexed_only=True)
        # held by no other store of this process, and left open: a killed holder's
        unclean = self._lock.first and left_open(self._path) and self._config.mode == "persistent"
        self._write_marker()  # held, before any rebuild: a kill during it leaves it so
        todo = []
        for key in sorted(self._exact.promoted()):
            name = self._name(*key)
            if name not in have:
                todo.append((key, "missing"))
                continue
            if unclean:  # chromadb writes HNSW files in place: a kill can tear them
                todo.append((key, "held by a process that did not close it (a kill)"))
                self._drop_collection(name)
                continue
            try:
                col = self._client.get_collection(name, embedding_function=None)
                got = int(col.count())
                # an older copy of the index (a backup restored, a snapshot taken before
                # the database) can hold as many vectors and still lack the newest ones
                newest = self._exact.newest_indexed(key, _NEWEST_CHECKED)
                older = bool(newest) and len(col.get(ids=newest, include=[])["ids"]) < len(newest)
            except CHROMA_FAILURES as exc:
                # its HNSW files unreadable (index_metadata.pickle emptied): dropped, then
                # built again; not a server's (a network error) or a lack of files or disk
                if self._config.mode != "persistent" or not damaged(exc):
                    raise chroma_error(exc, "could not read the vector index", self._where) from exc
                todo.append((key, f"unreadable ({str(exc)[:120]})"))
                self._drop_collection(name)
                continue
            if got < indexed.get(key, 0):
                todo.append((key, f"{got} of {indexed.get(key, 0)} vectors"))
            elif older:
                todo.append((key, "an older copy: it lacks the newest memories' vectors"))
        if todo:
            total = sum(self._exact.count_upto(k, 1 << 62) for k, _ in todo)
            logger.warning(
                "the vector index lacks vectors of %d large scope(s) (%s); rebuilding %d "
                "vectors from %s",
                len(todo),
                ", ".join(f"{self._exact.scope_name(k)}: {why}" for k, why in todo[:5]),
                total,
                Path(self._db_name).name if self._exact.own_database else self._db_name,
            )
            done = 0
            for key, _ in todo:
                done += self._load(key, fresh=True)
                logger.info("vector index rebuild: %d/%d vectors", done, total)
        self._write_marker()

    def _drop_collection(self, name: str) -> None:
        """Delete a damaged collection (its files are left to Chroma); typed on failure."""
        self._cols.pop(name, None)
        try:
            self._client.delete_collection(name)
        except NotFoundError:
            pass
        except CHROMA_FAILURES as exc:
            raise chroma_error(exc, "could not drop a damaged collection", self._where) from exc

    def _warn_old_names(self) -> None:
        """On a server: name the collections of the naming before store ids (one
        ``collection``-wide stem that every SQLite store shared), which this store no
        longer reads (it rebuilds its own under :meth:`_stem`)."""
        stem = self._stem()
        old = f"{self._config.collection}-h"
        if stem == self._config.collection:
            return
        found = []
        for c in self._client.list_collections():
            name = str(c.name if hasattr(c, "name") else c)
            if name.startswith(old):
                found.append(name)
        if found:
            logger.warning(
                "the Chroma server holds %d collections of the earlier naming (%s...), "
                "shared by every store on it; this store uses its own (%s-h...) and rebuilds "
                "them from its database. Delete the old ones once no store of an earlier "
                "helamem version uses this server (chromadb.HttpClient(...).delete_collection)",
                len(found),
                found[0],
                stem,
            )

    def _refuse_unknown(self, names: list[str]) -> None:
        """An index without this database's marker: refuse if it holds unknown ids."""
        known = set(self._exact.ids(set()))
        for name in names:
            col = self._client.get_collection(name, embedding_function=None)
            ids = [str(i) for i in col.get(include=[])["ids"]]
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise CorruptStoreError(
                    f"the vector index in {self._path} holds {len(unknown)} vectors whose "
                    f"memories {self._db_name} does not know (e.g. "
                    f"{unknown[0]!r}): the database looks replaced, emptied or corrupt. "
                    f"{self._db_fix}"
                )

    def _promote_large(self) -> int:
        """Promote every (scope, kind) at or over the threshold; returns vectors loaded."""
        t = self._config.exact_below
        counts = self._exact.counts()
        big = sorted(k for k, c in counts.items() if c >= t)
        total = sum(counts[k] for k in big)
        if big:
            logger.warning(
                "building HNSW collections for %d large scope(s) (%d vectors)", len(big), total
            )
        done = 0
        for key in big:
            self._exact.add_promoted(key)
            done += self._load(key, fresh=True)
            logger.info("vector index build: %d/%d vectors", done, total)
        return done

    def _hnsw_config(self) -> dict[str, Any]:
        """HNSW settings: cosine, persisted no later than a promoted scope's first load.

        Chroma writes a collection's HNSW files after ``sync_threshold`` (default
        1,000) vectors; a collection promoted with fewer (``exact_below`` below
        that) and then evicted from Chroma's cache was lost ("Nothing found on
        disk"), so the threshold never exceeds ``exact_below``.
        """
        sync = max(2, min(1000, self._config.exact_below))
        return {"space": "cosine", "sync_threshold": sync, "batch_size": min(100, sync)}

    def _collection(self, key: tuple[int, str], create: bool, refill: bool = True) -> Any:
        """The scope's collection (``None`` if missing and not ``create``).

        One created for a promoted scope, whose vectors should be there (a Chroma
        server restarted empty, a collection deleted under this process), is
        refilled from the database at once (``refill``; :meth:`_load` fills its
        own), so its older memories never drop out of the dense leg.
        """
        name = self._name(*key)
        col = self._cols.get(name)
        if col is not None:
            self._cols.move_to_end(name)
            return col
        client = self._chroma()
        try:
            try:
                col = client.get_collection(name, embedding_function=None)
            except NotFoundError:
                col = None
            except CHROMA_FAILURES as exc:
                if "does not exist" not in str(exc):
                    raise
                col = None
            if col is None:
                if not create:
                    return None
                ef = HelaMemMiniLMEmbeddingFunction() if self._attach_minilm else None
                meta = {"helamem:dimension": self._dimension}
                hnsw = {"hnsw": self._hnsw_config()}
                refilling = refill and key in self._exact.promoted()
                if refilling:
                    logger.warning(
                        "the vector index lacked the collection of %s (a Chroma server "
                        "restarted empty, or another process promoting it at this moment); "
                        "rebuilding it from the database",
                        self._exact.scope_name(key),
                    )
                    # a refill cut short leaves the rows it did not copy unindexed
                    self._exact.unindex_scope(key)  # (searched exactly, re-indexed later)
                col = client.get_or_create_collection(
                    name, configuration=hnsw, embedding_function=cast(Any, ef), metadata=meta
                )
                if refilling:
                    for ns, ids, mat in self._exact.batches(key):
                        write_over(col, ids, mat)  # another process may fill it too
                        self._drop_vanished(col, ids)  # deleted since the read
                        self._exact.mark_indexed(ns, ids, [v.tobytes() for v in mat])
        except CHROMA_FAILURES as exc:
            raise chroma_error(
                exc, f"could not open Chroma collection {name!r}", self._where
            ) from exc
        self._cols[name] = col
        while len(self._cols) > 4 * self._cache_size():
            self._cols.popitem(last=False)
        return col

    def _load(self, key: tuple[int, str], fresh: bool) -> int:
        """Copy a scope's vectors from SQLite into its collection (:func:`.copy_scope`)."""
        try:
            return copy_scope(self, key, fresh)
        except CHROMA_FAILURES as exc:
            raise chroma_error(exc, "Chroma upsert failed", self._where) from exc

    def _drop_vanished(self, col: Any, ids: Sequence[str]) -> None:
        drop_vanished(self, col, ids)

    def reset(self) -> None:
        """Drop every collection of this index and every promotion (before a full reindex)."""
        if self._config.mode != "persistent" or self._exact.promoted() or self._path.exists():
            client = self._chroma(verify=False)
            try:
                for name in self._names():
                    client.delete_collection(name)
            except CHROMA_FAILURES as exc:
                raise chroma_error(exc, "Chroma reset failed", self._where) from exc
            self._verified = True  # nothing left to check against SQLite
            self._write_marker()
        self._cols.clear()
        self._exact.set_promoted(set())
        self._exact.forget([])
