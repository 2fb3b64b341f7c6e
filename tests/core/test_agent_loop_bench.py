"""Smoke test of ``helamem bench locomo --ingest agent-loop`` on a tiny LoCoMo file."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from helamem.bench.locomo import (
    REPLAYS,
    Turn,
    gini,
    load_locomo,
    render_markdown,
    run_locomo,
    turn_pairs,
)
from helamem.core import HashingEmbedder
from helamem.core.cli import main

_TOPICS = [
    "I adopted a kitten called Pixel",
    "Pixel loves the red laser toy",
    "The marathon in Lisbon went great",
    "My running shoes are worn out after Lisbon",
    "I started baking sourdough bread",
    "The sourdough starter is called Bubbles",
    "My violin teacher moved to Oslo",
    "Oslo is cold but the violin lessons continue online",
    "We painted the garden fence blue",
    "The blue fence makes the sunflowers stand out",
]


def _sample() -> list[dict[str, Any]]:
    """One conversation, two sessions (the first with an odd number of turns)."""
    s1 = [
        {"speaker": "Ann" if i % 2 == 0 else "Bob", "dia_id": f"D1:{i + 1}", "text": t}
        for i, t in enumerate(_TOPICS[:5])
    ]
    s2 = [
        {"speaker": "Ann" if i % 2 == 0 else "Bob", "dia_id": f"D2:{i + 1}", "text": t}
        for i, t in enumerate([*_TOPICS[5:], "How is Pixel doing?", "Pixel chased the laser"])
    ]
    conv = {
        "speaker_a": "Ann",
        "speaker_b": "Bob",
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": s1,
        "session_2_date_time": "10:00 am on 2 June, 2023",
        "session_2": s2,
    }
    qa = [
        {"question": "What toy does Pixel like?", "evidence": ["D1:2"], "category": 4},
        {"question": "What is the starter called?", "evidence": ["D2:1"], "category": 1},
        {"question": "Where did the violin teacher go?", "evidence": ["D2:2"], "category": 2},
        {"question": "What colour is the fence?", "evidence": ["D2:4"], "category": 3},
    ]
    return [{"sample_id": "conv-x", "conversation": conv, "qa": qa}]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "locomo-loop.json"
    path.write_text(json.dumps(_sample()), encoding="utf-8")
    return path


def test_turn_pairs_stay_within_a_session() -> None:
    d1 = datetime(2023, 5, 8, tzinfo=UTC)
    d2 = datetime(2023, 6, 2, tzinfo=UTC)
    turns = [Turn("a", "a", d1), Turn("b", "b", d1), Turn("c", "c", d1), Turn("d", "d", d2)]
    assert [(a.dia_id, b and b.dia_id) for a, b in turn_pairs(turns)] == [
        ("a", "b"),
        ("c", None),
        ("d", None),
    ]


def test_gini() -> None:
    assert gini([]) == 0.0
    assert gini([2.0, 2.0]) == 0.0
    assert gini([0.0, 0.0, 0.0, 4.0]) == 0.75


def test_agent_loop_replays_side_by_side(data: Path, tmp_path: Path) -> None:
    convs, _ = load_locomo(data)
    pairs = turn_pairs(convs[0].turns)
    res = run_locomo(data, out=tmp_path / "out", ingest="agent-loop", embedder=HashingEmbedder(64))
    assert list(res["methods"]) == list(REPLAYS) == ["loop-learn", "loop-off", "plain"]
    assert res["config"]["ingest"] == "agent-loop"
    # one search per turn pair with a reply, in the learning replay only
    searched = sum(1 for _, b in pairs if b is not None)
    assert searched == 5
    assert res["methods"]["loop-learn"]["ingest_searches"] == searched
    assert res["methods"]["loop-off"]["ingest_searches"] == 0
    g = res["graph"]
    # every turn is stored once, with its LoCoMo id
    assert {name: shape["nodes"] for name, shape in g.items()} == dict.fromkeys(REPLAYS, 12)
    # no learning: only the temporal chain (11 edges among 12 turns)
    assert g["loop-off"]["edges"] == g["plain"]["edges"] == 11
    assert g["plain"]["strength_max"] <= 1.0
    # learning adds co-activation edges: more edges, a stronger strongest node
    assert g["loop-learn"]["edges"] > 11
    assert g["loop-learn"]["strength_max"] > g["loop-off"]["strength_max"]
    for shape in g.values():
        assert 0.0 <= shape["strength_gini"] < 1.0
        assert shape["strength_p50"] <= shape["strength_p99"] <= shape["strength_max"]
    for m in res["methods"].values():
        cats = m["categories"]
        assert cats["1-4"]["questions"] == 4
        assert cats["1-4"]["hits@10"] == 10.0  # every hit maps back to a turn of the file
    md = render_markdown(res)
    assert "## Agent loop" in md and "| loop-learn |" in md and "Gini" in md
    assert (tmp_path / "out" / "results.md").read_text(encoding="utf-8") == md


def test_agent_loop_finds_the_reply_turns(data: Path) -> None:
    """A reply (the pair's second turn) keeps its own LoCoMo id: evidence D2:2 is found."""
    res = run_locomo(data, ingest="agent-loop", embedder=HashingEmbedder(64), ks=[10])
    for m in res["methods"].values():
        assert m["categories"]["2"]["r@10"] == 1.0  # the violin question, evidence D2:2


def test_unknown_ingest_is_refused(data: Path) -> None:
    with pytest.raises(ValueError, match="unknown ingest 'loop'"):
        run_locomo(data, ingest="loop", embedder=HashingEmbedder(64))


def test_cli_ingest_agent_loop(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    argv = ["bench", "locomo", "--data", str(data), "--out", str(out), "--embedder", "hashing"]
    assert main([*argv, "--ingest", "agent-loop", "--quiet", "--k", "5", "10"]) == 0
    assert "| loop-off |" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert res["config"]["ingest"] == "agent-loop" and set(res["graph"]) == set(REPLAYS)
