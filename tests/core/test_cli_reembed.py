"""Switching embedders (issue 14 case 8): possible, documented, and crash-safe.

The embedder recorded in the store changes only when every vector is rewritten;
a switch cut short (an embedder failing half-way, a SIGKILL) leaves a state the
next open detects: it refuses with a message naming the command that finishes
the switch, and that command works.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from helamem.core import (
    ConfigError,
    EmbeddingError,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    _reembed,
)
from helamem.core.cli import main

A = ("users", "alice")
N = 20


def _build(path: Path, n: int = N, dim: int = 64) -> list[str]:
    with HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(dim)) as m:
        return [m.add(f"note {i} about topic{i} and cats", A).id for i in range(n)]


def _meta(path: Path, key: str) -> dict[str, object] | None:
    db = sqlite3.connect(path / "helamem.sqlite3")
    r = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    db.close()
    return None if r is None else dict(json.loads(r[0]))


def _vectors(path: Path) -> dict[str, tuple[str, bytes]]:
    db = sqlite3.connect(path / "helamem.sqlite3")
    rows = db.execute("SELECT id, content, embedding FROM memories").fetchall()
    db.close()
    return {str(i): (str(c), bytes(e)) for i, c, e in rows}


def _all_vectors_of(path: Path, embedder: HashingEmbedder) -> bool:
    rows = _vectors(path)
    want = embedder.embed([c for c, _ in rows.values()])
    return all(e == w.tobytes() for (_, e), w in zip(rows.values(), want, strict=True))


class Flaky(HashingEmbedder):
    """``hashing-32`` that fails on call ``fail_on`` (and counts what it embedded)."""

    def __init__(self, fail_on: int | None) -> None:
        super().__init__(32)
        self.fail_on = fail_on
        self.calls = 0
        self.texts = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("the model server went away")
        self.texts += len(texts)
        return super().embed(texts)


def _command(message: str) -> list[str]:
    """The ``helamem ...`` command a message names, as ``main()`` arguments."""
    m = re.search(r"`(helamem [^`]+)`", message)
    assert m is not None, message
    return shlex.split(m.group(1))[1:]


def test_switch_embedders_from_python(tmp_path: Path) -> None:
    path = tmp_path / "s"
    ids = _build(path)
    with pytest.raises(ConfigError) as info:
        HelaMemory.from_path(path, embedder=HashingEmbedder(32)).open()
    msg = str(info.value)
    assert "built with embedder 'hashing-64' (dimension 64), not 'hashing-32' (32)" in msg
    assert "reembed=True" in msg
    with HelaMemory.from_path(path, embedder=HashingEmbedder(32), reembed=True) as m:
        assert m.reembedded == N
        st = m.stats()
        assert (st.embedder, st.memories, st.vectors, st.unindexed) == ("hashing-32", N, N, 0)
        hits = m.search("topic7", A, k=1, learn=False)
        assert hits.ids[0] == ids[7]
    assert _meta(path, "embedder") == {"name": "hashing-32", "dimension": 32}
    assert _meta(path, "embedder.switch") is None
    assert _all_vectors_of(path, HashingEmbedder(32))
    with HelaMemory.from_path(path, embedder=HashingEmbedder(32), reembed=True) as m:
        assert m.stats().memories == N
        assert m.reembedded is None  # nothing left to switch
    with pytest.raises(ConfigError, match="reindex --reembed"):
        HelaMemory.from_path(path, embedder=HashingEmbedder(64)).open()


def test_a_store_whose_embedder_record_is_lost_is_not_reembedded_with_another(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 117: with the ``embedder`` meta row gone, ``helamem reindex`` (and any open)
    recorded the embedder it was given (MiniLM by default) and re-embedded every memory
    silently: 64-d vectors became 384-d, and the app's own embedder was refused. Now the
    open is refused naming the stored vectors' dimension; the embedder that made them
    opens it, and is recorded."""
    path = tmp_path / "s"
    _build(path)
    with sqlite3.connect(path / "helamem.sqlite3") as db:
        db.execute("DELETE FROM meta WHERE key = 'embedder'")
    assert main(["reindex", str(path)]) == 1
    assert "vectors of dimension 64" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"dimension 64, not 32 \('hashing-32'\)"):
        HelaMemory.from_path(path, embedder=HashingEmbedder(32)).open()
    assert _all_vectors_of(path, HashingEmbedder(64))  # untouched
    assert main(["reindex", str(path), "--embedder", "hashing", "--dimension", "64"]) == 0
    assert _meta(path, "embedder") == {"name": "hashing-64", "dimension": 64}
    with HelaMemory.from_path(path, embedder=HashingEmbedder(64)) as m:
        assert m.stats().vectors == N
    # review 118: asked to re-embed (reembed=True, `reindex --reembed`), it switches
    with sqlite3.connect(path / "helamem.sqlite3") as db:
        db.execute("DELETE FROM meta WHERE key = 'embedder'")
    with HelaMemory.from_path(path, embedder=HashingEmbedder(32), reembed=True) as m:
        assert m.reembedded == N
    assert _meta(path, "embedder") == {"name": "hashing-32", "dimension": 32}
    assert _all_vectors_of(path, HashingEmbedder(32))


def test_embedder_failing_half_way_leaves_a_resumable_switch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_reembed, "BATCH", 4)
    path = tmp_path / "s"
    ids = _build(path)
    before = _vectors(path)
    flaky = Flaky(fail_on=3)  # two batches (8 memories) re-embedded, then it fails
    with pytest.raises(EmbeddingError, match="the model server went away"):
        HelaMemory.from_path(path, embedder=flaky, reembed=True).open()
    assert flaky.texts == 8
    # the recorded embedder is still the old one; the switch is recorded apart
    assert _meta(path, "embedder") == {"name": "hashing-64", "dimension": 64}
    switch = _meta(path, "embedder.switch")
    assert switch is not None and switch["name"] == "hashing-32"
    after = _vectors(path)
    assert sum(after[i] != before[i] for i in ids) == 8

    # every other open is refused, naming the command that finishes the switch
    for other in (HashingEmbedder(64), HashingEmbedder(32)):
        with pytest.raises(ConfigError) as info:
            HelaMemory.from_path(path, embedder=other).open()
        msg = str(info.value)
        assert "from 'hashing-64' to 'hashing-32' (dimension 32) was interrupted" in msg
        assert f"after 8 of {N} memories" in msg
        assert f"`helamem reindex --reembed --embedder hashing --dimension 32 {path}`" in msg
    # check reports it
    assert main(["check", str(path), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert {d["kind"] for d in rep["defects"]} == {"embedder_switch"}

    # resuming re-embeds only what is left
    resumed = Flaky(fail_on=None)
    with HelaMemory.from_path(path, embedder=resumed, reembed=True) as m:
        assert m.reembedded == N - 8
        assert resumed.texts == N - 8  # the 8 done before the failure are kept
        assert m.stats().vectors == N
        assert m.search("topic11", A, k=1, learn=False).ids[0] == ids[11]
    assert _meta(path, "embedder") == {"name": "hashing-32", "dimension": 32}
    assert _meta(path, "embedder.switch") is None
    assert _all_vectors_of(path, HashingEmbedder(32))
    assert main(["check", str(path)]) == 0


def test_interrupted_switch_can_go_back_to_the_old_embedder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_reembed, "BATCH", 4)
    path = tmp_path / "s"
    _build(path)
    with pytest.raises(EmbeddingError):
        HelaMemory.from_path(path, embedder=Flaky(fail_on=2), reembed=True).open()
    with HelaMemory.from_path(path, embedder=HashingEmbedder(64), reembed=True) as m:
        assert m.reembedded == N  # every vector again: some were the other embedder's
        assert m.stats().vectors == N
    assert _meta(path, "embedder") == {"name": "hashing-64", "dimension": 64}
    assert _meta(path, "embedder.switch") is None
    assert _all_vectors_of(path, HashingEmbedder(64))


def test_the_command_the_mismatch_error_names_switches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    ids = _build(path)
    with pytest.raises(ConfigError) as info:
        HelaMemory.from_path(path, embedder=HashingEmbedder(48)).open()
    argv = _command(str(info.value))
    assert argv == ["reindex", "--reembed", "--embedder", "hashing", "--dimension", "48", str(path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"switched the embedder to hashing-48: {N} memories re-embedded" in out
    with HelaMemory.from_path(path, embedder=HashingEmbedder(48)) as m:
        assert m.search("topic3", A, k=1, learn=False).ids[0] == ids[3]
    assert main(["check", str(path)]) == 0


_CHILD = """
import sys, time
from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory
from helamem.core import _reembed
_reembed.BATCH = 5

class Slow(HashingEmbedder):
    def embed(self, texts):
        time.sleep(0.15)
        return super().embed(texts)

HelaMemory(HelaMemConfig(path=sys.argv[1]), embedder=Slow(32), reembed=True).open()
print("finished", flush=True)
"""


def test_switch_killed_mid_way_is_detected_and_finished(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    ids = _build(path, n=60)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    done_n = 0
    try:
        while time.monotonic() < deadline:
            try:
                switch = _meta(path, "embedder.switch")
            except sqlite3.OperationalError:  # the child holds the write lock
                switch = None
            done_n = int(switch["done_n"]) if switch else 0  # type: ignore[call-overload]
            if done_n >= 10:
                break
            assert child.poll() is None, child.communicate()
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert done_n >= 10, "the child never got half-way"
    assert child.returncode == -signal.SIGKILL
    # killed before the end: the old embedder is still recorded, the switch is pending
    assert _meta(path, "embedder") == {"name": "hashing-64", "dimension": 64}
    assert _meta(path, "embedder.switch") is not None
    with pytest.raises(ConfigError) as info:
        HelaMemory.from_path(path, embedder=HashingEmbedder(64)).open()
    assert "was interrupted after" in str(info.value)
    assert main(["check", str(path)]) == 1
    assert "[embedder_switch]" in capsys.readouterr().out
    # `--reembed` alone finishes the switch it finds
    assert main(["reindex", "--reembed", str(path)]) == 0
    assert "switched the embedder to hashing-32" in capsys.readouterr().out
    assert _meta(path, "embedder") == {"name": "hashing-32", "dimension": 32}
    assert _all_vectors_of(path, HashingEmbedder(32))
    assert main(["check", str(path)]) == 0
    with HelaMemory.from_path(path, embedder=HashingEmbedder(32)) as m:
        assert m.stats().vectors == 60
        assert m.search("topic42", A, k=1, learn=False).ids[0] == ids[42]


def test_reindex_reembed_with_the_same_embedder_recomputes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    _build(path)
    db = sqlite3.connect(path / "helamem.sqlite3")
    with db:
        db.execute("UPDATE memories SET embedding = zeroblob(256)")  # 64 zero floats
    db.close()
    assert main(["reindex", "--reembed", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"re-embedded {N} memories with hashing-64" in out
    assert _all_vectors_of(path, HashingEmbedder(64))
