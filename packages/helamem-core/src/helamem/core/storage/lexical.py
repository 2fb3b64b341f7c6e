"""The BM25 index of large stores: tantivy beside FTS5, derived from SQLite.

FTS5 scores every posting of every query word, so its cost grows with the
store (about 2 µs a posting). Above :attr:`RetrievalConfig.lexical_index_min
<helamem.core.config.RetrievalConfig>` rows the lexical leg asks this index
instead: tantivy's BM25 top-k skips postings that cannot reach the top
(block-max WAND), so its cost grows far slower than the store.

SQLite stays the source of truth and FTS5 stays complete; this index is
derived from it, like the vector index:

* **What it holds.** Every FTS5 row up to a high-water key ``n`` (memory keys
  only grow, and SQLite's single writer commits them in order, so the rows
  above the mark are exactly the ones not yet here), minus what changed since:
  every delete or rewrite of a memory appends its key to ``lexical_log``
  (an SQLite trigger, so every process logs, in the same transaction); a
  repair that rebuilds FTS5 (``helamem reindex``, in any process) logs key 0,
  and the holder then rebuilds the index from FTS5.
* **Freshness.** Every add and search of the holder first applies the log
  and, when more than ``lexical_index_tail`` rows lie above the mark, adds
  them (at most ``chunk`` at a time, about a second per 50,000; while more
  are missing FTS5 answers instead). The few rows above the mark are
  searched in FTS5 (``rowid > mark``), so a memory is found lexically as
  soon as its ``add`` returns, and a tantivy commit (about 16 ms, it syncs
  to disk) is paid once per ``lexical_index_tail`` rows. Once no row was
  added for ``lexical_index_fold_s``, the owner folds the tail in
  (:meth:`LexicalIndex.fold`, one commit between calls): searches then skip
  FTS5's query until the next add.
* **Crashes.** The mark and the log position are stored *in* the index (a
  document with key 0) and commit with it atomically; they advance only once
  that commit succeeded (a failed commit is rolled back). A killed process
  leaves the last commit; the next holder carries on from its mark. An index
  that does not open (deleted, damaged, another version) is rebuilt from FTS5;
  so is one whose files turn out damaged later: tantivy then panics (a
  ``pyo3_runtime.PanicException``, a ``BaseException``), which becomes a
  :class:`StorageError` (FTS5 answers) and marks the index for rebuilding.
* **Another SQLite file.** The state document also holds the store's key
  (a random number in its ``meta`` table, written when the index is first
  built): an index met beside another store's file, or beside a backup older
  than the index (a mark above the store's highest key ever given, a log
  position above its log's), is rebuilt, never served.
* **Processes.** One store holds the index: one per process (a claim in
  this module) and one per machine (``lexical.lock`` beside it, an OS file
  lock released if the process dies; tantivy's own writer lock besides).
  The first store to need the index holds it; the others search FTS5,
  exactly as before, never wait, and try to take it over every ``RETRY_S``
  seconds (so when the holder closes or exits, another one carries on).
  Only the holder applies and empties the log; while no store holds the
  index, each delete or rewrite leaves one small row in it.

Scores are tantivy's BM25 (k1 1.2, b 0.75, Lucene's idf
:math:`\\ln(1 + (N - n + 0.5)/(n + 0.5))`, the idf of
:func:`helamem.core.retrieval.bm25_idf`), over content folded to ASCII,
lower-cased and stemmed with Snowball's English stemmer. FTS5's differ in
its idf (lower for common words), Porter's original stemmer, and exact
document lengths (tantivy keeps them in one byte), so one memory's BM25 can
differ by several per cent between the two (6.82 against 7.30 for a short
note in a test); candidates and their order rarely do (on 20,000 memories
the top 10 overlapped 0.996-0.999).
"""

from __future__ import annotations

import logging
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tantivy

from ..errors import StorageError
from .lock import ProcessLock
from .sqlite import SQLiteStore
from .sqlite_schema import storage_error

__all__ = ["LexicalIndex"]

logger = logging.getLogger(__name__)

VERSION = 1
"""Bumped when the schema or analysis changes: an index of another version is rebuilt."""

RETRY_S = 30.0
"""While another store holds the index, how often (seconds) to try to take it over."""

_STATE = 0  # the key of the document holding the mark (memory keys start at 1)

_claims_guard = threading.Lock()
_claimed: set[str] = set()  # index directories held by a store of this process


class _PanicError(ValueError):
    """Tantivy panicked (the index's files are damaged): rebuild the index."""


def _is_panic(exc: BaseException) -> bool:
    # pyo3 names the type pyo3_runtime.PanicException but makes no module to import it from
    kind = type(exc)
    return kind.__module__ == "pyo3_runtime" and kind.__name__ == "PanicException"


@contextmanager
def _panics_as_errors() -> Iterator[None]:
    """Turn a tantivy panic into :class:`_PanicError` (a ``ValueError``, which every
    caller handles); anything else passes unchanged."""
    try:
        yield
    except BaseException as exc:
        if not _is_panic(exc):
            raise
        raise _PanicError(f"tantivy panicked, the index's files are damaged: {exc}") from exc


def _schema() -> Any:
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("content", stored=False, tokenizer_name="helamem")
    sb.add_text_field("tags", stored=False, tokenizer_name="default")
    sb.add_unsigned_field("n", stored=False, indexed=True, fast=True)
    for state in ("mark", "seq", "version", "store"):
        sb.add_unsigned_field(state, stored=False, indexed=False, fast=True)
    return sb.build()


def _analyzer() -> Any:
    """FTS5's ``porter unicode61 remove_diacritics 2``, as near as tantivy goes."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(64))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.ascii_fold())
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


class LexicalIndex:
    """A tantivy BM25 index of one store's FTS5 rows (see the module).

    Runs on the memory's owner thread only. The constructor does no I/O.

    Args:
        path: The index's directory (created when needed).
        min_rows: Below this many FTS5 rows no index is built and :meth:`prepare`
            returns None (FTS5 is fast there); once held, an index keeps serving.
        tail: Rows above the mark that FTS5 serves before they are added.
        chunk: Rows added per :meth:`prepare` while catching up.
        heap_bytes: Tantivy's indexing memory (at least 15 MB).
    """

    def __init__(
        self,
        path: Path,
        *,
        min_rows: int = 50_000,
        tail: int = 1_000,
        chunk: int = 50_000,
        heap_bytes: int = 32_000_000,
    ) -> None:
        self.path = path
        self.min_rows = min_rows
        self.tail = tail
        self.chunk = chunk
        self.heap_bytes = heap_bytes
        self._key = str(path.absolute())
        self._index: Any = None
        self._writer: Any = None
        self._searcher: Any = None
        self._analyzer = _analyzer()
        self._schema = _schema()
        self._mark = 0  # every FTS5 row with n <= mark is here (log applied to seq)
        self._seq = 0
        self._store_id = 0  # the store whose rows these are (0: none yet)
        self._checked = False  # the state was checked against the store since opening
        self._damaged = False  # tantivy panicked: rebuild on the next open
        self._lock = ProcessLock(path.parent / "lexical.lock")
        self._retry_at = 0.0  # while another store holds it: when to try again
        self.held_elsewhere = False  # another process (or store) holds the index
        self.head = 0
        """The store's highest memory key at the last :meth:`prepare`. When it is at
        most the mark, FTS5 holds no row the index lacks: searches skip its query."""
        self.head_changed_at = 0.0
        """``time.monotonic()`` when :attr:`head` last changed (an add, or a delete of
        the newest memory, by any process), for :meth:`fold`'s caller."""
        self.tail_searches = 0
        """Searches that queried FTS5 for the rows above the mark since :attr:`head`
        last changed (:meth:`note_tail_search`), for :meth:`fold`'s caller."""

    # -- lifecycle -------------------------------------------------------

    def _open(self) -> bool:
        """Take the index (this process's claim, the machine's lock, tantivy's
        writer), opening, creating or rebuilding it; False while another store
        holds it."""
        if self._writer is not None:
            return True
        now = time.monotonic()
        if now < self._retry_at:
            return False
        with _claims_guard:
            claimed = self._key not in _claimed and self._lock.try_acquire()
            if claimed:
                _claimed.add(self._key)
        if not claimed:
            self.held_elsewhere, self._retry_at = True, now + RETRY_S
            return False
        try:
            # only the holder gets here, so only it may delete or rebuild the directory
            try:
                with _panics_as_errors():
                    index = None if self._damaged else self._load()
            except ValueError as exc:  # damaged or foreign: derived, so rebuilt
                logger.warning("lexical index at %s unreadable (%s); rebuilding it", self.path, exc)
                index = None
            if index is None:
                index = self._create()
                self._damaged = False
            try:
                with _panics_as_errors():
                    writer = index.writer(heap_size=self.heap_bytes, num_threads=1)
            except ValueError as exc:
                self._damaged = isinstance(exc, _PanicError)
                raise StorageError(
                    f"cannot open the lexical index at {self.path}: {exc}; delete the "
                    f"directory (it is rebuilt from the store) or set "
                    f"RetrievalConfig(lexical_index='fts5')"
                ) from exc
        except BaseException:
            self._release()
            raise
        self.held_elsewhere = False
        self._index, self._writer = index, writer
        with _panics_as_errors():
            self._read_state()
        return True

    def _release(self) -> None:
        with _claims_guard:
            _claimed.discard(self._key)
            self._lock.release()

    def _load(self) -> Any:
        if not (self.path / "meta.json").exists():
            return None
        index = tantivy.Index(self._schema, path=str(self.path), reuse=True)
        index.register_tokenizer("helamem", self._analyzer)
        version = self._state_field(index.searcher(), "version")
        if version != VERSION:
            logger.info("lexical index version %s, not %s; rebuilding", version, VERSION)
            return None
        return index

    def _create(self) -> Any:
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)
        index = tantivy.Index(self._schema, path=str(self.path), reuse=False)
        index.register_tokenizer("helamem", self._analyzer)
        return index

    def close(self) -> None:
        """Release the writer, the claim and the lock; committed work stays."""
        writer, self._writer = self._writer, None
        self._index = self._searcher = None
        self._checked = False
        if writer is None:
            return
        try:
            with _panics_as_errors():
                writer.wait_merging_threads()  # consumes the writer, releasing tantivy's lock
        except ValueError as exc:  # a failed merge: the committed segments stand
            logger.warning("lexical index %s: merging failed at close: %s", self.path, exc)
        finally:
            self._release()

    def drop(self) -> None:
        """Forget everything (``helamem reindex``): rebuilt from FTS5 when next needed.

        A no-op where no index exists, or while another store holds it.

        Raises:
            StorageError: The index could not be emptied.
        """
        if self._writer is None and not (self.path / "meta.json").exists():
            return
        try:
            if not self._open():
                return
            with _panics_as_errors():
                self._writer.delete_all_documents()
                self._commit(0, 0, self._store_id)
        except (ValueError, OSError) as exc:
            self._abandon(exc)
            raise StorageError(f"lexical index at {self.path}: emptying failed: {exc}") from exc

    # -- state -------------------------------------------------------------

    def _state_field(self, searcher: Any, field: str) -> int | None:
        q = tantivy.Query.term_query(self._schema, "n", _STATE)
        hits = searcher.search(q, 1, count=False).hits
        if not hits:
            return None
        value = searcher.fast_field_values(field, [hits[0][1]])[0]
        return None if value is None else int(value)

    def _read_state(self) -> None:
        searcher = self._index.searcher()
        self._mark = self._state_field(searcher, "mark") or 0
        self._seq = self._state_field(searcher, "seq") or 0
        self._store_id = self._state_field(searcher, "store") or 0
        self._searcher = searcher

    def _commit(self, mark: int, seq: int, store_id: int) -> None:
        """Commit what was added with the new state, in one atomic tantivy commit;
        the state in memory follows only once it succeeded."""
        w = self._writer
        w.delete_documents_by_query(tantivy.Query.term_query(self._schema, "n", _STATE))
        doc = tantivy.Document()
        doc.add_unsigned("n", _STATE)
        doc.add_unsigned("mark", mark)
        doc.add_unsigned("seq", seq)
        doc.add_unsigned("version", VERSION)
        doc.add_unsigned("store", store_id)
        w.add_document(doc)
        w.commit()
        self._mark, self._seq, self._store_id = mark, seq, store_id
        self._index.reload()
        self._searcher = self._index.searcher()

    def _abandon(self, exc: BaseException | None = None) -> None:
        """After a failure: drop what was staged and go back to the last commit (or,
        when that fails too, let go of the index); FTS5 serves for ``RETRY_S``.
        After a panic (``exc``), let go of the index and rebuild it then."""
        self._checked = False
        self._retry_at = time.monotonic() + RETRY_S
        if isinstance(exc, _PanicError):
            logger.warning(
                "lexical index %s is damaged; FTS5 answers, it is rebuilt from the store in %.0f s",
                self.path,
                RETRY_S,
            )
            self._damaged = True
            self.close()
            return
        if self._writer is None:  # it never opened: nothing staged
            return
        try:
            with _panics_as_errors():
                self._writer.rollback()
                self._read_state()
        except (ValueError, OSError) as exc:
            logger.warning("lexical index %s: let go after a failure: %s", self.path, exc)
            self.close()

    # -- keeping up with SQLite ---------------------------------------------

    @property
    def tail_rows(self) -> int:
        """At most this many rows lay above the mark at the last :meth:`prepare` (0
        when none did, or when this index does not serve)."""
        return max(0, self.head - self._mark) if self._writer is not None else 0

    def fold(self, store: SQLiteStore) -> int | None:
        """:meth:`prepare`, adding every row above the mark now (at most ``chunk``),
        however few: the caller folds the tail in once no memory came for a while
        (``RetrievalConfig.lexical_index_fold_s``), so searches skip FTS5's query
        of the tail until the next add. One tantivy commit (about 16 ms).

        Raises:
            StorageError: As :meth:`prepare`.
        """
        return self.prepare(store, tail=0)

    def prepare(self, store: SQLiteStore, *, tail: int | None = None) -> int | None:
        """Bring the index up to date enough to serve; the mark, or None for FTS5.

        Applies logged deletes and rewrites, then adds rows above the mark when
        more than ``tail`` wait (at most ``chunk`` now). Returns the mark (rows
        above it are FTS5's to search), or None when this index does not serve:
        fewer than ``min_rows`` rows and none held, another store holds it, or
        it is still catching up.

        Raises:
            StorageError: The index or the store could not be read or written
                (what was staged is rolled back; the last commit stands).
        """
        try:
            if self._writer is None and (
                time.monotonic() < self._retry_at or store.fts_rows() < self.min_rows
            ):
                return None
            if not self._open():
                return None
            with _panics_as_errors():
                return self._catch_up(store, self.tail if tail is None else tail)
        except (ValueError, OSError) as exc:
            self._abandon(exc)
            raise StorageError(
                f"lexical index at {self.path} failed: {exc}; FTS5 answers meanwhile (retried "
                f"in {RETRY_S:.0f} s). If the directory cannot be written, free or fix it, "
                f"delete it (it is rebuilt from the store), or set "
                f"RetrievalConfig(lexical_index='fts5')"
            ) from exc
        except (sqlite3.Error, StorageError) as exc:
            self._abandon()
            if isinstance(exc, StorageError):
                raise
            raise storage_error(exc, store._path, "lexical index: reading failed") from exc

    def _check(self, store: SQLiteStore) -> int:
        """The store's key (made on first use); an index of another store, or of a
        later state than this file's, is emptied (rebuilt from here)."""
        db = store.db
        row = db.execute("SELECT value FROM meta WHERE key = 'lexical_index'").fetchone()
        if row is None or not str(row[0]).isdigit() or int(row[0]) == 0:
            # from now on every process logs deletes and rewrites (the triggers'
            # condition); the rows are read later, in a snapshot that follows it
            with store.tx() as wdb:
                wdb.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('lexical_index', ?)",
                    (str(secrets.randbits(62) + 1),),
                )
            row = db.execute("SELECT value FROM meta WHERE key = 'lexical_index'").fetchone()
        store_id = int(row[0])
        given = dict(db.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
        stale = (
            (self._store_id not in (0, store_id))
            or self._mark > int(given.get("memories", 0))
            or self._seq > int(given.get("lexical_log", 0))
        )
        if stale:
            logger.warning(
                "lexical index at %s belongs to another or a later store file; rebuilding",
                self.path,
            )
            self._writer.delete_all_documents()
            self._commit(0, 0, store_id)
        elif self._store_id == 0 and self._mark == 0:
            self._store_id = store_id
        return store_id

    def _see_head(self, head: int) -> None:
        if head != self.head:
            self.head, self.head_changed_at, self.tail_searches = head, time.monotonic(), 0

    def note_tail_search(self) -> None:
        """A search queried FTS5 for the rows above the mark (see :attr:`tail_searches`)."""
        self.tail_searches += 1

    def _catch_up(self, store: SQLiteStore, tail: int) -> int | None:
        if not self._checked:
            self._check(store)
            self._checked = True
        db = store.db
        mark, seq, changed = self._mark, self._seq, False
        # the common case, nothing to apply: one statement (one snapshot) says so
        top, head = db.execute(
            "SELECT (SELECT COALESCE(MAX(seq), 0) FROM lexical_log),"
            " (SELECT COALESCE(MAX(n), 0) FROM memories)"
        ).fetchone()
        self._see_head(int(head))
        if int(top) <= seq and int(head) - mark <= tail:
            return self._mark
        db.execute("BEGIN")  # a read snapshot: the log and the rows agree
        try:
            top = int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM lexical_log").fetchone()[0])
            if top > seq:
                ns = [
                    int(r[0])
                    for r in db.execute(
                        "SELECT DISTINCT n FROM lexical_log WHERE seq > ? AND n <= ?",
                        (seq, mark),
                    )
                ]
                if _STATE in ns:  # FTS5 rebuilt whole (a repair): so is this index
                    self._writer.delete_all_documents()
                    ns, mark = [], 0
                if ns:  # rows above the mark are read whole when added
                    self._writer.delete_documents_by_query(
                        tantivy.Query.term_set_query(self._schema, "n", ns)
                    )
                for i in range(0, len(ns), 500):
                    part = ns[i : i + 500]
                    self._add(
                        db.execute(
                            "SELECT rowid, content, tags FROM memories_fts WHERE rowid IN "
                            f"({','.join('?' * len(part))})",
                            part,
                        )
                    )
                seq, changed = top, True
            # an upper bound on the rows above the mark (deleted keys leave gaps),
            # read from the key's b-tree in O(log n)
            head = db.execute("SELECT COALESCE(MAX(n), 0) FROM memories").fetchone()[0]
            self._see_head(int(head))
            partial = False
            if head - mark > tail:
                rows = db.execute(
                    "SELECT rowid, content, tags FROM memories_fts WHERE rowid > ? "
                    "ORDER BY rowid LIMIT ?",
                    (mark, self.chunk),
                ).fetchall()
                if rows:
                    self._add(rows)
                    mark, changed = int(rows[-1][0]), True
                partial = len(rows) == self.chunk  # more to come: FTS5 serves meanwhile
        finally:
            db.execute("COMMIT")
        if changed:
            self._commit(mark, seq, self._store_id)
            if top > 0:
                with store.tx() as wdb:  # applied and committed: the log is not needed
                    wdb.execute("DELETE FROM lexical_log WHERE seq <= ?", (seq,))
        return None if partial else self._mark

    def _add(self, rows: Any) -> None:
        w = self._writer
        for n, content, tags in rows:
            doc = tantivy.Document()
            doc.add_unsigned("n", int(n))
            doc.add_text("content", str(content))
            doc.add_text("tags", str(tags))
            w.add_document(doc)

    # -- search ------------------------------------------------------------------

    def search(self, terms: Sequence[str], tag: str | None, limit: int) -> list[tuple[int, float]]:
        """BM25 top ``limit`` ``(n, score)`` for any of ``terms``, among rows tagged
        ``tag`` (all rows if None); rows above the mark are not searched here.

        Raises:
            StorageError: The index could not be read.
        """
        schema = self._schema
        tokens = dict.fromkeys(t for term in terms for t in self._analyzer.analyze(term))
        if not tokens or self._searcher is None:
            return []
        words = [
            (tantivy.Occur.Should, tantivy.Query.term_query(schema, "content", t)) for t in tokens
        ]
        q = tantivy.Query.boolean_query(words)
        if tag is not None:
            scope = tantivy.Query.const_score_query(
                tantivy.Query.term_query(schema, "tags", tag.lower()), 0.0
            )
            q = tantivy.Query.boolean_query([(tantivy.Occur.Must, scope), (tantivy.Occur.Must, q)])
        try:
            with _panics_as_errors():
                hits = self._searcher.search(q, limit, count=False).hits
                ns = self._searcher.fast_field_values("n", [a for _, a in hits])
        except ValueError as exc:
            if isinstance(exc, _PanicError):
                self._abandon(exc)
            raise StorageError(f"lexical index search failed: {exc}") from exc
        return [(int(n), float(s)) for (s, _), n in zip(hits, ns, strict=True) if n]
