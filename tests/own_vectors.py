"""Each memory looked up by its own stored vector: the check that the vector index holds it.

Chroma's HNSW is approximate, and it builds a different graph every time, even
from the same vectors in the same order. On the tests' hashed vectors an outlier
(``note 0 about topic 0`` or ``note 14 about topic 866``: their nearest neighbour
is at cosine distance 0.48, farther than any other memory's) is left with no edge
leading to it in about one build in a hundred: it is in its collection, with its
vector, and no search of the collection returns it, not even one asking for every
vector. Chroma alone does the same with those 40 vectors (2 to 6 builds in 300);
``test_deleted_index_is_rebuilt_on_open_with_a_warning`` failed on it now and
then. That miss is Chroma's recall, not a memory the index lost, and it is the
only miss excused here: :func:`lost` still reports a memory missing from its
collection, one held there with another vector, one the collection's search can
reach but the dense path did not return, every miss of a scope scanned exactly,
and every unreachable one once there are more than two (or 5 % of the memories).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np
import numpy.typing as npt
from chromadb.errors import NotFoundError


def lost(core: Any, ids: Collection[str] | None = None, k: int = 5) -> list[str]:
    """Ids of memories (``ids``, default all) the dense path does not return among the
    ``k`` nearest to their own stored vector, except those Chroma's HNSW graph cannot
    reach (see :func:`unreachable`). Run on the store's owner (``HelaMemory._call``)."""
    rows = core.store.db.execute(
        "SELECT id, scope_id, kind, embedding, indexed FROM memories"
    ).fetchall()
    out = sorted(set(ids or ()) - {str(r[0]) for r in rows})  # no memory at all
    excused: list[str] = []
    for mid, sid, kind, emb, indexed in rows:
        if ids is not None and mid not in ids:
            continue
        vec = np.frombuffer(emb, dtype=np.float32)
        found = [i for i, _ in core.index.query(vec, k, [int(sid)], str(kind))]
        if mid in found:
            continue
        # an unindexed memory is scanned exactly beside HNSW: a miss is always lost
        if int(indexed) == 1 and unreachable(core.index, (int(sid), str(kind)), mid, vec):
            excused.append(str(mid))
        else:
            out.append(str(mid))
    # one or two outliers per build, not a graph that lost its edges (a smaller M,
    # updates in place): more than that counts as lost
    return out + excused if len(excused) > max(2, len(rows) // 20) else out


def unreachable(index: Any, key: tuple[int, str], mid: str, vec: npt.NDArray[np.float32]) -> bool:
    """Whether the promoted scope ``key``'s HNSW collection holds ``mid`` with ``vec``,
    its stored vector, and still leaves it out of a search for all its vectors: no
    edge of the graph leads to it (a search explores all it can reach once it asks
    for as many vectors as the collection holds). Read through a handle of its own,
    not the store's cached one, which a test may have broken on purpose."""
    if key not in index._exact.promoted() or index._client is None:
        return False
    try:
        col = index._client.get_collection(index._name(*key), embedding_function=None)
    except NotFoundError:
        return False
    held = col.get(ids=[mid], include=["embeddings"])
    if list(held["ids"]) != [mid]:
        return False
    if not np.allclose(np.asarray(held["embeddings"][0], dtype=np.float32), vec, atol=1e-6):
        return False
    every = col.query(query_embeddings=vec.reshape(1, -1), n_results=int(col.count()))
    return mid not in every["ids"][0]
