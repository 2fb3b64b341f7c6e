"""End to end: ``helamem bench locomo --llm`` (QA mode) against SmolLM2-135M-Instruct
served by llama.cpp on 127.0.0.1, through LiteLLM's OpenAI-compatible route.

A small subset (1 conversation, 2 questions, 2 methods, top 3 hits) of the LoCoMo
dev split when it is at ``../shared/data/locomo/locomo-dev.json`` (or
``$HELAMEM_LOCOMO_DATA``), else a tiny LoCoMo-shaped conversation. The 135M model
scores low; the test checks that the path works: prompts reach the server, answers
come back as schema-valid JSON, are scored, judged and counted. Skipped only when
the model packages are absent (``./dev test`` installs them)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from smollm_server import SmolLMServer, available, serve_smollm, unavailable_reason

from helamem.core.cli import main

pytestmark = [
    pytest.mark.llm,
    pytest.mark.skipif(not available(), reason=str(unavailable_reason())),
]

ROOT = Path(__file__).resolve().parents[2]
LOCOMO = Path(
    os.environ.get("HELAMEM_LOCOMO_DATA", ROOT.parent / "shared/data/locomo/locomo-dev.json")
)


def _tiny_locomo(path: Path) -> Path:
    turns = [
        ("Ann", "I adopted a kitten called Pixel last week."),
        ("Bob", "Pixel is a lovely name! What colour is she?"),
        ("Ann", "She is grey with white paws."),
        ("Bob", "I ran the Lisbon marathon on Sunday."),
        ("Ann", "Congratulations, how long did it take?"),
        ("Bob", "Four hours and ten minutes."),
    ]
    conv = {
        "speaker_a": "Ann",
        "speaker_b": "Bob",
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": [
            {"speaker": s, "dia_id": f"D1:{i}", "text": t} for i, (s, t) in enumerate(turns, 1)
        ],
    }
    qa = [
        {"question": "What is the name of Ann's kitten?", "answer": "Pixel", "evidence": ["D1:1"],
         "category": 4},
        {"question": "Which marathon did Bob run?", "answer": "Lisbon marathon",
         "evidence": ["D1:4"], "category": 4},
        {"question": "What is Ann's dog called?", "adversarial_answer": "Rex",
         "evidence": ["D1:1"], "category": 5},
    ]  # fmt: skip
    path.write_text(json.dumps([{"sample_id": "tiny", "conversation": conv, "qa": qa}]))
    return path


@pytest.fixture(scope="module")
def server() -> Iterator[SmolLMServer]:
    with serve_smollm() as srv:
        yield srv


def test_locomo_qa_mode_with_a_real_llm(
    tmp_path: Path, server: SmolLMServer, capsys: pytest.CaptureFixture[str]
) -> None:
    data = LOCOMO if LOCOMO.is_file() else _tiny_locomo(tmp_path / "tiny.json")
    out = tmp_path / "qa"
    code = main(
        [
            "bench",
            "locomo",
            "--data",
            str(data),
            "--conversations",
            "1",
            "--questions",
            "2",
            "--methods",
            "fusion",
            "helamem",
            "--embedder",
            "hashing",
            "--k",
            "3",
            "--llm",
            server.model,
            "--llm-api-base",
            server.api_base,  # no key given: the CLI sends a placeholder
            "--judge",
            server.model,
            "--qa-k",
            "3",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "## Question answering" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    qa = res["qa"]
    assert qa["model"] == server.model
    assert qa["judge"] == server.model
    assert qa["calls"]["answer"] + qa["calls"]["answer_reused"] == 2 * 2
    assert qa["usage"]["answerer"]["calls"] >= 1
    assert qa["usage"]["answerer"]["failed_calls"] == 0
    assert len(qa["answers"]) == 4
    for record in qa["answers"]:
        assert "error" not in record, record  # schema-constrained JSON came back
        assert 0.0 <= record["f1"] <= 1.0
        assert 0.0 <= record["bleu1"] <= 1.0
        assert record["judge"] in ("CORRECT", "WRONG")
        assert 1 <= len(record["context"]) <= 3  # k means k: never more than asked
        assert record["prompt_tokens"] > 0
    for method in ("fusion", "helamem"):
        everything = qa["methods"][method]["categories"]["all"]
        assert everything["questions"] == 2
        assert everything["judged"] == 2
        assert everything["failed_answers"] == 0
        assert everything["prompt_tokens_per_question"] > 50  # the retrieved context was sent
        assert everything["completion_tokens_per_question"] > 0
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "| helamem |" in md
    assert "### F1 by category" in md
