"""Late interaction at search time: each candidate's MaxSim to the query's tokens,
from token vectors stored at ingest (computed and stored now for memories without)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from . import retrieval
from ._base import CoreBase
from .errors import ConfigError

__all__ = ["late_scores"]

logger = logging.getLogger(__name__)


def late_scores(
    core: CoreBase, qtok: np.ndarray, ns: Sequence[int], read: Mapping[int, bytes] | None = None
) -> np.ndarray | None:
    """MaxSim of each memory ``ns`` to the query's token vectors ``qtok`` (``(m, d)``),
    shape ``(len(ns),)``; ``None`` when a memory vanished meanwhile (rank without).

    Token vectors a memory lacks (older stores, facts, imports) are computed now
    and stored. ``read``: the token vectors the caller read already
    (``rank_rows(..., tokens=True)``: the memories of ``ns`` missing from it have
    none stored); ``None`` reads them here.

    Raises:
        EmbeddingError: Computing missing token vectors failed.
        StorageError: The store could not be read or written.
    """
    dim = core.embedder.dimension
    stored: Mapping[int, bytes] = read if read is not None else core.store.token_vectors(list(ns))
    lacking = [n for n in ns if n not in stored or len(stored[n]) % (4 + dim)]
    if lacking:
        rows = core.store.rows_by_n(lacking)
        todo = [n for n in lacking if n in rows]
        if todo:
            _, toks = core._embed_tokens([rows[n].content for n in todo])
            assert toks is not None
            packed = [(n, retrieval.pack_tokens(t)) for n, t in zip(todo, toks, strict=True)]
            try:
                with core.store.tx() as db:
                    # of an embedder the store still records (another process may have
                    # switched it since this one opened it: scored here, never stored)
                    core._refuse_stale()
                    # under the writer lock: a text another writer rewrote (or a memory it
                    # deleted) since it was read here keeps no token vectors of the old text
                    now = core.store.rows_by_n(todo)
                    same = [
                        (n, b) for n, b in packed if n in now and now[n].content == rows[n].content
                    ]
                    core.store.put_token_vectors(db, same)
            except ConfigError as exc:
                logger.debug("token vectors not stored: %s", exc)
            stored = {n: b for n, b in stored.items() if n not in lacking} | dict(packed)
    if not stored.keys() >= set(ns):
        return None  # a memory vanished mid-search: rank this pool without MaxSim
    return retrieval.maxsim_packed(qtok, [stored[n] for n in ns], dim)
