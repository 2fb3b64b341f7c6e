"""README (Turn hooks): ``flush()``/``flush_sync()`` return once every turn queued
before them is committed to SQLite, which a later kill cannot undo. A child records
turns through a ``TurnRecorder``, flushes, says so and is killed with SIGKILL at once
(no exit hook runs); every turn it flushed is in the reopened store."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory
from kill import killed_at

TURNS = 300

_CHILD = textwrap.dedent(
    """
    import os, sys, time
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    from pathlib import Path
    from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory, TurnRecorder
    cfg = HelaMemConfig(path=Path(sys.argv[1]), chroma=ChromaConfig(exact_below=int(sys.argv[2])))
    mem = HelaMemory(cfg, embedder=HashingEmbedder(64))
    rec = TurnRecorder(mem)
    for i in range(int(sys.argv[3])):
        rec.record_turn_sync(("users", "alice"), f"question {i} about tea", f"answer {i}")
    rec.flush_sync(60)
    print("flushed", flush=True)
    time.sleep(120)  # killed here
    """
)


@pytest.mark.parametrize("exact_below", [2000, 50], ids=["exact", "hnsw"])
def test_turns_flushed_before_a_sigkill_are_all_stored(tmp_path: Path, exact_below: int) -> None:
    path = tmp_path / "store"
    killed_at(_CHILD, [str(path), str(exact_below), str(TURNS)], "flushed")
    cfg = HelaMemConfig(path=path, chroma=ChromaConfig(exact_below=exact_below))
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as mem:
        stats = mem.stats(("users", "alice"))
        assert stats.episodic == 2 * TURNS  # each turn: the question and the answer
        assert stats.vectors == stats.memories and stats.unindexed == 0  # facts too
        hits = mem.search("question 123 about tea", ("users", "alice"), k=3, learn=False)
        assert "question 123 about tea" in [h.content for h in hits]
