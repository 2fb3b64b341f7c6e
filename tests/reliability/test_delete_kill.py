"""A delete killed after its commit and before its vector delete (SIGKILL, a real Chroma
server on 127.0.0.1, another process's store open throughout): the README says it leaves
tombstones, searches never return the deleted memories meanwhile, and every other open
store drops those vectors (review 135: the cited test only made the delete raise)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory, NewMemory

S = ("u", "big")

_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    from pathlib import Path
    from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory
    path, port, ids = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
    chroma = ChromaConfig(mode="http", host="127.0.0.1", port=port, exact_below=5)
    mem = HelaMemory(HelaMemConfig(path=path, chroma=chroma), embedder=HashingEmbedder(64))
    mem.search("meadow", ("u", "big"), k=3, learn=False)

    def killed(*args, **kwargs):  # after the delete's commit, before its vector delete
        os.kill(os.getpid(), signal.SIGKILL)

    mem._call(lambda core: setattr(core.index, "delete", killed))
    mem.delete(ids)
    print("not killed", flush=True)
    """
)


def test_a_delete_killed_before_its_vector_delete_returns_nothing_deleted(
    tmp_path: Path, chroma_port: int
) -> None:
    chroma = ChromaConfig(mode="http", host="127.0.0.1", port=chroma_port, exact_below=5)
    cfg = HelaMemConfig(path=tmp_path / "s", chroma=chroma)
    other = HelaMemory(cfg, embedder=HashingEmbedder(64))  # open throughout
    try:
        notes = other.add_many(NewMemory(f"meadow note {i} river{i}", S) for i in range(40))
        other.flush()
        gone = {m.id for m in notes[:30]}
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, str(cfg.path), str(chroma_port), ",".join(gone)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
        with sqlite3.connect(cfg.path / "helamem.sqlite3") as db:
            rows = db.execute("SELECT COUNT(*) FROM memories").fetchone()[0]
            tombstones = db.execute("SELECT COUNT(*) FROM tombstones").fetchone()[0]
        assert (rows, tombstones) == (10, 30)  # committed; its vectors left for others
        for query in ("meadow note", "river3", "river12", "note river25"):
            hits = other.search(query, S, k=10, learn=False)
            assert not gone & set(hits.ids), query
            assert len(hits) == 10  # the survivors fill the page
        st = other.stats(S)
        assert (st.memories, st.vectors) == (10, 10)  # the other store dropped them
    finally:
        other.close()
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as fresh:
        assert not gone & set(fresh.search("meadow note", S, k=10, learn=False).ids)
        assert fresh.stats(S).vectors == 10
    with sqlite3.connect(cfg.path / "helamem.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM tombstones").fetchone()[0] == 0
