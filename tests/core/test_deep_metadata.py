"""Metadata stored before ``MAX_JSON_DEPTH`` existed (nested ~990 levels, which Python's
decoder refuses with ``RecursionError``) never breaks its scope's reads: it reads with the
too-deep value as its JSON text, ``helamem check`` reports it, ``helamem reindex`` mends it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory
from helamem.core.cli import main
from helamem.core.types import MAX_JSON_DEPTH

A = ("users", "alice")
DEEP = "[" * 990 + "]" * 990  # what the encoder wrote before the limit (it went to ~979)


def _mem(path: Path) -> HelaMemory:
    return HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64))


def _store_with_deep_row(path: Path) -> str:
    with _mem(path) as m:
        deep = m.add("tea with milk", A, metadata={"topic": "tea"}).id
        m.add("coffee, black", A, metadata={"topic": "coffee"})
    db = sqlite3.connect(path / "helamem.sqlite3")
    with db:  # as the store held it before the limit: written raw
        db.execute(
            "UPDATE memories SET metadata = ? WHERE id = ?",
            (f'{{"nested": {DEEP}, "topic": "tea"}}', deep),
        )
    db.close()
    return deep


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    code = main(["check", str(path), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_a_too_deep_stored_row_reads_is_reported_and_mended(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    deep = _store_with_deep_row(path)
    with pytest.raises(RecursionError):
        json.loads(f'{{"nested": {DEEP}}}')  # what every read of it raised
    want = {"nested": DEEP, "topic": "tea"}
    with _mem(path) as m:
        hits = m.search("tea with milk", A, k=5)
        assert {h.memory.id: h.memory.metadata for h in hits}[deep] == want
        assert m.get(deep).metadata == want  # type: ignore[union-attr]
        assert m.find_ids(A, metadata={"topic": "tea"}) == [deep]
        m.consolidate(A)
        m.export_scope(A, tmp_path / "a.jsonl")
    with _mem(tmp_path / "copy") as c:
        c.import_scope(tmp_path / "a.jsonl")
        assert c.get(deep).metadata == want  # type: ignore[union-attr]

    code, report = _check(path, capsys)
    assert code == 1
    (defect,) = report["defects"]  # type: ignore[misc]
    assert defect["kind"] == "metadata_depth" and defect["examples"] == [deep]
    assert f"helamem reindex {path}" in defect["fix"]
    assert main(["reindex", str(path)]) == 0
    assert "1 memories' too-deep metadata mended" in capsys.readouterr().out
    assert _check(path, capsys)[0] == 0
    with _mem(path) as m:
        assert m.get(deep).metadata == want  # type: ignore[union-attr]


def test_load_metadata_keeps_every_member_and_no_value_too_deep() -> None:
    from helamem.core.jsontext import json_text_depth, load_metadata

    text = (
        '{"a": '
        + "[" * 2000
        + "]" * 2000
        + ', "b": {"k": "x,:}]"}, "c": '
        + "[" * (MAX_JSON_DEPTH - 1)
        + "]" * (MAX_JSON_DEPTH - 1)
        + ', "d": "'
        + "[" * 200
        + '"}'
    )
    got = load_metadata(text)
    assert list(got) == ["a", "b", "c", "d"]
    assert got["a"] == "[" * 2000 + "]" * 2000 and got["b"] == {"k": "x,:}]"}
    assert json_text_depth(json.dumps(got)) == MAX_JSON_DEPTH  # "c" kept as a value
    assert got["d"] == "[" * 200
    assert load_metadata('{"a": [1, {"b": []}]}') == {"a": [1, {"b": []}]}
