"""Data safety: an export of a store that opens imports again (a backup restores).

An import refuses a file holding a value ``add()`` would refuse (an edge weight
outside [0, 1], a vector of the wrong dimension or not finite, an edge joining
two scopes): so the engine must never store such a value itself, and an export
of a store holding one (a damaged row ``helamem check`` reports, which
``reindex`` repairs) must not write it, or the backup cannot be restored
(README: "export what still reads ... and import it into a new store").
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helamem.core import ConsolidationConfig, HashingEmbedder, HelaMemConfig, HelaMemory
from helamem.core.distill import similarity_edges

S = ("users", "alice")


class _NearUnit(HashingEmbedder):
    """Vectors of length 1 + 9e-7: unit length within the 1e-6 ``check_vectors`` keeps
    as they are, as an embedding API's float32 vectors are."""

    def embed(self, texts: Any) -> Any:
        vecs = np.asarray(super().embed(texts), dtype=np.float64)
        return (vecs * (1 + 9e-7)).astype(np.float32)


def test_a_similarity_edge_weight_never_passes_one() -> None:
    v = np.zeros((1, 4), dtype=np.float32)
    v[0, 0] = np.float32(1 + 9e-7)  # unit within float32 rounding: cos(v, v) = 1.000002
    edges = similarity_edges([0], v, [0, 1], np.vstack([v, v]), 5, 0.5, 1.0)
    assert edges == [(0, 1, 1.0)]


def test_consolidating_near_unit_vectors_stores_weights_in_range_and_the_export_imports(
    tmp_path: Path, store_config: Callable[[Path], Any]
) -> None:
    def config(path: Path) -> HelaMemConfig:
        return HelaMemConfig(
            path=path,
            store=store_config(path),
            consolidation=ConsolidationConfig(similarity_weight=1.0),
        )

    with HelaMemory(config(tmp_path / "a"), embedder=_NearUnit(64)) as a:
        for _ in range(3):  # the same message thrice: cosine 1 (or a hair above)
            a.add("ok, thanks", S)
        assert a.consolidate(S).similarity_edges == 3
        st = a.stats(S)
        assert st.mean_edge_weight <= 1.0
        exp = a.export_scope(S, tmp_path / "a.jsonl")
    with HelaMemory(config(tmp_path / "b"), embedder=_NearUnit(64)) as b:
        imp = b.import_scope(tmp_path / "a.jsonl")
        assert (imp.memories, imp.edges) == (exp.memories, exp.edges) == (3, 3)
        assert b.stats(S).mean_edge_weight == pytest.approx(st.mean_edge_weight)


def _store(path: Path) -> list[str]:
    with HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64)) as m:
        ids = [m.add(f"note {i} about cats and tea", S).id for i in range(4)]
        m.search("cats tea", S, k=3)  # learned edges
    return ids


def _sql(path: Path, sql: str, params: tuple[object, ...]) -> None:
    db = sqlite3.connect(path / "helamem.sqlite3")
    with db:
        db.execute(sql, params)
    db.close()


def _export_then_import(src: Path, tmp_path: Path) -> tuple[HelaMemory, Any]:
    with HelaMemory(HelaMemConfig(path=src), embedder=HashingEmbedder(64)) as m:
        m.export_scope(S, tmp_path / "backup.jsonl")
    new = HelaMemory(HelaMemConfig(path=tmp_path / "new"), embedder=HashingEmbedder(64))
    return new, new.import_scope(tmp_path / "backup.jsonl")


@pytest.mark.parametrize(
    "vector",
    [np.zeros(32, dtype=np.float32).tobytes(), np.full(64, np.nan, dtype=np.float32).tobytes()],
    ids=["wrong-dimension", "nan"],
)
def test_a_damaged_stored_vector_is_recomputed_by_the_import(tmp_path: Path, vector: bytes) -> None:
    ids = _store(tmp_path / "s")
    _sql(tmp_path / "s", "UPDATE memories SET embedding = ? WHERE id = ?", (vector, ids[1]))
    new, imp = _export_then_import(tmp_path / "s", tmp_path)
    with new:
        assert (imp.memories, imp.reembedded) == (4, 1)
        assert new.get(ids[1]).content == "note 1 about cats and tea"
        assert new.search("note 1 about cats", S, k=1, learn=False).ids == [ids[1]]


def test_an_edge_weight_over_one_written_before_is_exported_within_range(
    tmp_path: Path,
) -> None:
    _store(tmp_path / "s")
    _sql(tmp_path / "s", "UPDATE edges SET weight = ?", (1.000002,))  # an older version's
    new, imp = _export_then_import(tmp_path / "s", tmp_path)
    with new:
        assert imp.edges >= 3
        assert new.stats(S).mean_edge_weight == 1.0


def test_an_edge_across_scopes_is_left_out_of_the_export(tmp_path: Path) -> None:
    ids = _store(tmp_path / "s")
    with HelaMemory(HelaMemConfig(path=tmp_path / "s"), embedder=HashingEmbedder(64)) as m:
        other = m.add("a note of bob", ("users", "bob")).id
        edges = m.stats(S).edges
    db = sqlite3.connect(tmp_path / "s" / "helamem.sqlite3")
    (n,) = db.execute("SELECT n FROM memories WHERE id = ?", (other,)).fetchone()
    (first,) = db.execute("SELECT n FROM memories WHERE id = ?", (ids[0],)).fetchone()
    (sid,) = db.execute("SELECT scope_id FROM memories WHERE id = ?", (ids[0],)).fetchone()
    db.close()
    # damage `helamem check` reports as edge_scope (and `reindex` drops)
    _sql(
        tmp_path / "s",
        "INSERT INTO edges(a, b, scope_id, weight, tick) VALUES (?, ?, ?, 0.5, 1)",
        (min(first, n), max(first, n), sid),
    )
    new, imp = _export_then_import(tmp_path / "s", tmp_path)
    with new:
        assert (imp.memories, imp.edges) == (4, edges)
