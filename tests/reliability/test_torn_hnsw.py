"""A large scope's HNSW files torn by a kill: the store opens, and its graph is rebuilt.

chromadb writes a collection's HNSW files in place: a SIGKILL while it wrote them
left ``index_metadata.pickle`` empty (the store then raised chromadb's own
``InternalError`` on open, in ``helamem check`` and in ``helamem reindex``) or a
graph that opened, counted every vector and missed the newest 14 of 710 in every
query (``helamem check``: OK). Each case tears one file of a closed store the way
a kill does (the index marker left saying a process held it) and opens the store
in a child process (a torn file could crash chromadb's native code).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory, NewMemory
from helamem.core.storage.chroma_probe import PROBE_K, left_open, unreachable

N = 400
SCOPE = ("tenants", "acme")

_CHILD = textwrap.dedent(
    """
    import json, os, sys
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    from pathlib import Path
    import numpy as np
    from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory

    cfg = HelaMemConfig(path=Path(sys.argv[1]), chroma=ChromaConfig(exact_below=20))
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as mem:
        def misses(core):
            out = []
            for batch in core.store.all_rows():
                for r in batch:
                    v = np.frombuffer(r.embedding, dtype=np.float32)
                    if r.id not in [i for i, _ in core.index.query(v, 5, [r.scope_id], r.kind)]:
                        out.append(r.id)
            return out
        stats = mem.stats()
        print(json.dumps({"memories": stats.memories, "vectors": stats.vectors,
                          "misses": len(mem._call(misses))}))
    """
)


def _store(path: Path) -> HelaMemConfig:
    cfg = HelaMemConfig(path=path, chroma=ChromaConfig(exact_below=20))
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as mem:
        mem.add_many(
            NewMemory(f"note {i} about topic {i * 7919 % 1000} and {i % 13}", SCOPE)
            for i in range(N)
        )
    return cfg


def _as_a_kill_leaves_it(path: Path) -> None:
    marker = path / "chroma" / "helamem-index.json"
    data = json.loads(marker.read_text("utf-8"))
    assert data["open"] is False  # a clean close says so
    marker.write_text(json.dumps({**data, "open": True}), "utf-8")


def _reopen(path: Path) -> dict[str, int]:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    run = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got: dict[str, int] = json.loads(run.stdout.strip().splitlines()[-1])
    return got


@pytest.mark.parametrize(
    ("name", "keep"),
    [
        ("index_metadata.pickle", 0.0),  # as the kill left it: chromadb raised on open
        ("header.bin", 0.0),
        ("data_level0.bin", 0.5),  # opened, counted every vector, reached half
    ],
)
def test_a_torn_hnsw_file_is_rebuilt_on_open(tmp_path: Path, name: str, keep: float) -> None:
    path = tmp_path / "store"
    _store(path)
    files = sorted(path.glob(f"chroma/*/{name}"))
    assert files, f"no {name}: the scope has no HNSW collection"
    data = files[0].read_bytes()
    files[0].write_bytes(data[: int(len(data) * keep)])
    _as_a_kill_leaves_it(path)
    assert _reopen(path) == {"memories": N, "vectors": N, "misses": 0}
    marker = json.loads((path / "chroma" / "helamem-index.json").read_text("utf-8"))
    assert marker["open"] is False  # the child closed it cleanly


def test_a_killed_holder_leaves_the_marker_saying_so(tmp_path: Path) -> None:
    """The probe runs only after an unclean exit: a SIGKILL leaves ``open`` true."""
    path = tmp_path / "store"
    _store(path)
    assert not left_open(path / "chroma" / "helamem-index.json")
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import os, sys, time
                os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
                from pathlib import Path
                from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory
                cfg = HelaMemConfig(path=Path(sys.argv[1]), chroma=ChromaConfig(exact_below=20))
                mem = HelaMemory(cfg, embedder=HashingEmbedder(64))
                mem.add("one more note", ("tenants", "acme"))
                mem.stats()
                print("ready", flush=True)
                time.sleep(120)
                """
            ),
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        assert left_open(path / "chroma" / "helamem-index.json")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not left_open(path / "chroma" / "helamem-index.json"):
        time.sleep(0.05)
    assert left_open(path / "chroma" / "helamem-index.json")
    assert _reopen(path) == {"memories": N + 1, "vectors": N + 1, "misses": 0}


class _Collection:
    """A collection stand-in answering a query with fixed ids and distances."""

    def __init__(self, ids: list[list[str]], distances: list[list[float]]) -> None:
        self.answer = {"ids": ids, "distances": distances}

    def query(self, **kwargs: object) -> dict[str, list[list[object]]]:
        return self.answer  # type: ignore[return-value]


def test_the_probe_excuses_only_exact_duplicates() -> None:
    vectors = np.zeros((3, 4), dtype=np.float32)
    twins = [f"twin{i}" for i in range(PROBE_K)]
    col = _Collection(
        [["a", "x"], twins, ["y"] * PROBE_K],
        [[0.0, 0.1], [0.0] * PROBE_K, [0.0] * (PROBE_K - 1) + [0.2]],
    )
    # a: found; b: PROBE_K exact duplicates first (moot); c: not found, not all duplicates
    assert unreachable(col, ["a", "b", "c"], vectors) == ["c"]
