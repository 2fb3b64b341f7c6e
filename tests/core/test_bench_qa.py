"""QA mode of the LoCoMo benchmark, with LiteLLM mock responses on a tiny LoCoMo file."""

from __future__ import annotations

import doctest
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_bench_locomo import _sample

from helamem.bench import cli as cli_module
from helamem.bench import qa as qa_module
from helamem.bench.locomo import load_locomo, render_markdown, run_locomo
from helamem.bench.qa import QASettings, pick_choice
from helamem.core import HashingEmbedder, LLMClient, LLMConfig
from helamem.core.cli import build_parser, main
from helamem.core.prompts import NOT_MENTIONED, salvage_answer

litellm = pytest.importorskip("litellm")

Reply = Callable[[list[dict[str, str]]], str]

ANSWERS = {
    "What kitten did Bob adopt?": "Pixel",  # cat 4, gold Pixel: F1 1
    "Where was the marathon?": "Lisbon, Porto",  # cat 1, gold Lisbon: multi-answer F1 1
    "What flowers grow in the garden?": "roses",  # cat 2, gold sunflowers: 0
    "When did Bob adopt?": "in May 2023",  # cat 3, gold May 2023: P 2/3, R 1 -> 0.8
    "What did Bob cook?": "pasta",  # cat 4, gold "?": 0
    "Where did the violin teacher move?": "Oslo",  # cat 4: 1
}


class Scripted:
    """A completion function answering through litellm's mock_response, recording calls."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return litellm.completion(mock_response=self.reply(kwargs["messages"]), **kwargs)


def answer_from_script(messages: list[dict[str, str]]) -> str:
    user = messages[-1]["content"]
    m = re.search(r"Question: (.*?) Short answer:", user, flags=re.S)
    assert m is not None
    question = m.group(1)
    choice = re.search(r"\(a\) (.*?) \(b\) (.*?)\.$", question)
    if choice is not None:  # category 5: pick the abstention option by its letter
        return json.dumps({"answer": "(a)" if choice.group(1) == NOT_MENTIONED else "(b)"})
    plain = question.replace(" Use DATE of CONVERSATION to answer with an approximate date.", "")
    return json.dumps({"answer": ANSWERS[plain]})


def judge_exact(messages: list[dict[str, str]]) -> str:
    user = messages[-1]["content"]
    gold = re.search(r"Gold answer: (.*)\n", user)
    answer = re.search(r"Generated answer: (.*)\n", user)
    assert gold is not None and answer is not None
    label = "CORRECT" if gold.group(1).lower() == answer.group(1).lower() else "WRONG"
    return json.dumps({"label": label, "reason": "compared"})


def _client(script: Scripted, model: str = "gpt-4o-mini") -> LLMClient:
    cfg = LLMConfig(model=model, json_mode="schema", max_retries=0, backoff_s=0.0)
    return LLMClient(cfg, completion=script, sleep=lambda s: None)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "locomo-tiny.json"
    path.write_text(json.dumps(_sample()), encoding="utf-8")
    return path


def test_qa_mode_answers_scores_and_reports(data: Path, tmp_path: Path) -> None:
    answerer, judge = Scripted(answer_from_script), Scripted(judge_exact)
    out = tmp_path / "out"
    res = run_locomo(
        data,
        out=out,
        methods=["bm25", "helamem"],
        ks=[1, 5],
        embedder=HashingEmbedder(256),
        work_dir=tmp_path,
        qa=QASettings(answerer=_client(answerer), judge=_client(judge, "gpt-4o"), k=2),
    )
    # the retrieval report is unchanged by the QA k (2 is not one of the ks)
    assert "r@2" not in res["methods"]["bm25"]["categories"]["all"]
    qa = res["qa"]
    assert (qa["model"], qa["judge"], qa["k"]) == ("gpt-4o-mini", "gpt-4o", 2)
    assert qa["prompts"]["answer"] == {"name": "answer_question", "version": 1}
    asked = qa["calls"]["answer"] + qa["calls"]["answer_reused"]
    assert asked == 7 * 2  # every scored question, every method
    assert len(answerer.calls) == qa["calls"]["answer"]

    bm25 = qa["methods"]["bm25"]["categories"]
    assert bm25["4"]["questions"] == 3
    assert bm25["4"]["f1"] == pytest.approx(2 / 3, abs=1e-4)  # Pixel 1, Oslo 1, pasta 0
    assert bm25["1"]["f1"] == 1.0  # multi-answer F1: "Lisbon" found among the parts
    assert bm25["2"]["f1"] == 0.0
    assert bm25["3"]["f1"] == pytest.approx(0.8)
    assert bm25["5"]["f1"] == 1.0  # (a)/(b) mapped to "Not mentioned in the conversation"
    assert bm25["5"]["bleu1"] == 1.0
    assert bm25["1-4"]["questions"] == 6
    assert bm25["1-4"]["f1"] == pytest.approx((1 + 1 + 0 + 0.8 + 0 + 1) / 6, abs=1e-4)
    assert bm25["all"]["questions"] == 7
    # exact-match judge: Pixel, Oslo and the adversarial abstention are CORRECT
    assert bm25["all"]["judged"] == 7
    assert bm25["all"]["judge_accuracy"] == pytest.approx(3 / 7, abs=1e-4)
    assert bm25["all"]["prompt_tokens_per_question"] > 0
    assert bm25["all"]["completion_tokens_per_question"] > 0
    assert bm25["all"]["judge_prompt_tokens_per_question"] > 0
    assert bm25["all"]["failed_answers"] == 0
    assert qa["usage"]["answerer"]["prompt_tokens"] > 0
    assert qa["usage"]["judge"]["calls"] == len(judge.calls)

    answers = [a for a in qa["answers"] if a["method"] == "bm25"]
    assert len(answers) == 7
    kitten = next(a for a in answers if a["question"] == "What kitten did Bob adopt?")
    assert kitten["answer"] == "Pixel"
    assert kitten["gold"] == "Pixel"
    assert kitten["f1"] == 1.0
    assert kitten["judge"] == "CORRECT"
    assert kitten["context"][0] == "D1:2"
    assert len(kitten["context"]) <= 2
    adversarial = next(a for a in answers if a["category"] == 5)
    assert adversarial["answer"] == NOT_MENTIONED
    assert adversarial["raw_answer"] in ("(a)", "(b)")
    assert adversarial["gold"] == NOT_MENTIONED

    # the prompts: dated excerpts, LoCoMo's temporal hint and adversarial choice
    prompts = [c["messages"][-1]["content"] for c in answerer.calls]
    kitten_prompt = next(p for p in prompts if "What kitten did Bob adopt?" in p)
    assert "DATE: 8 May 2023 | Bob: I adopted a kitten called Pixel last week." in kitten_prompt
    assert "Answer with exact words from the context" in kitten_prompt
    assert any("Use DATE of CONVERSATION to answer with an approximate date." in p for p in prompts)
    choice = next(p for p in prompts if "What bread is Di baking?" in p)
    assert "Select the correct answer: (a)" in choice
    assert "rye" in choice
    assert NOT_MENTIONED in choice
    assert answerer.calls[0]["response_format"]["type"] == "json_schema"
    assert answerer.calls[0]["temperature"] == 0.0

    written = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert written["qa"]["methods"]["bm25"]["categories"]["4"]["f1"] == bm25["4"]["f1"]
    assert len(written["qa"]["answers"]) == 14
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "## Question answering" in md
    assert "### Judge accuracy by category" in md
    assert md == render_markdown(written)


def test_qa_mode_records_unusable_answers_and_goes_on(data: Path, tmp_path: Path) -> None:
    garbage = Scripted(lambda messages: "I think it is Pixel.")  # no JSON, not even on repair
    judge = Scripted(judge_exact)
    res = run_locomo(
        data,
        conversations=1,
        methods=["fusion"],
        ks=[5],
        embedder=HashingEmbedder(64),
        work_dir=tmp_path,
        qa=QASettings(answerer=_client(garbage), judge=_client(judge, "gpt-4o")),
    )
    qa = res["qa"]
    cats = qa["methods"]["fusion"]["categories"]
    assert cats["all"]["questions"] == 5
    assert cats["all"]["failed_answers"] == 5
    assert cats["all"]["f1"] == 0.0
    # a missing answer is judged WRONG without asking the judge
    assert cats["all"]["judged"] == 5
    assert cats["all"]["judge_accuracy"] == 0.0
    assert judge.calls == []
    assert all("error" in a and a["answer"] == "" for a in qa["answers"])
    assert len(garbage.calls) == 2 * 5  # one repair per question
    assert "### Judge accuracy" in render_markdown(res)


def test_qa_answers_are_reused_for_identical_prompts(data: Path) -> None:
    answerer = Scripted(answer_from_script)
    runner = qa_module.QARunner(QASettings(answerer=_client(answerer), k=2), data, seed=0)
    convs, _ = load_locomo(data)
    conv = convs[0]
    q = conv.questions[0]
    hits = [("D1:2", conv.turns[1].content), ("D1:1", conv.turns[0].content)]
    first = runner.ask("a", conv, q, hits)
    again = runner.ask("b", conv, q, hits)  # another method, the same turns: no new call
    other = runner.ask("c", conv, q, hits[::-1])  # another order: another prompt
    assert len(answerer.calls) == 2
    assert first["answer"] == again["answer"] == other["answer"] == "Pixel"
    assert again["prompt_tokens"] == first["prompt_tokens"] > 0  # counted for both
    res = runner.results()
    assert res["calls"] == {"answer": 2, "answer_reused": 1, "judge": 0, "judge_reused": 0}
    assert set(res["methods"]) == {"a", "b", "c"}
    assert res["methods"]["b"]["categories"]["4"]["f1"] == 1.0
    md = "\n".join(qa_module.render_qa_markdown(res))
    assert "| b | 1.000 |" in md
    assert "Judge accuracy" not in md  # no judge, no judge table


def test_cli_qa_options(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(
        [
            "bench",
            "locomo",
            "--data",
            str(data),
            "--llm",
            "openai/smollm2",
            "--llm-api-base",
            "http://127.0.0.1:9/v1",
            "--judge",
            "openai/smollm2",
            "--qa-k",
            "3",
        ]
    )
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = cli_module._qa_settings(args)
    assert settings is not None
    assert settings.k == 3
    assert settings.answerer.config.api_base == "http://127.0.0.1:9/v1"
    assert settings.answerer.config.api_key is not None  # placeholder for a local server
    assert settings.judge is not None
    assert settings.judge.config.api_base == "http://127.0.0.1:9/v1"  # same model, same server
    args.judge = "gpt-4o-mini"
    other = cli_module._qa_settings(args)
    assert other is not None and other.judge is not None
    assert other.judge.config.api_base is None
    assert main(["bench", "locomo", "--data", str(data), "--judge", "x", "--quiet"]) == 2
    assert "--judge needs --llm" in capsys.readouterr().err

    # a full CLI run with the clients replaced by scripted ones
    scripted = {
        "openai/smollm2": Scripted(answer_from_script),
        "openai/judge": Scripted(judge_exact),
    }

    def fake_client(model: str, **kwargs: Any) -> LLMClient:
        return _client(scripted[model], model)

    monkeypatch.setattr(qa_module, "qa_client", fake_client)
    out = tmp_path / "cli"
    code = main(
        [
            "bench",
            "locomo",
            "--data",
            str(data),
            "--out",
            str(out),
            "--methods",
            "bm25",
            "--embedder",
            "hashing",
            "--llm",
            "openai/smollm2",
            "--judge",
            "openai/judge",
            "--quiet",
        ]
    )
    assert code == 0
    assert "## Question answering" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert res["qa"]["k"] == 10
    assert res["qa"]["judge"] == "openai/judge"
    assert res["qa"]["methods"]["bm25"]["categories"]["4"]["f1"] == pytest.approx(2 / 3, abs=1e-4)


def test_helpers() -> None:
    choices = ("Tom", NOT_MENTIONED)
    assert pick_choice("b", choices) == NOT_MENTIONED
    assert pick_choice(" (A) ", choices) == "Tom"
    assert pick_choice("(b) Not mentioned", choices) == "(b) Not mentioned"
    salvaged = salvage_answer('```json\n{"answer": "15 July \\"2023')
    assert salvaged is not None
    assert salvaged.answer == '15 July "2023'
    assert salvage_answer('{"answer": ""}') is None
    with pytest.raises(ValueError, match="k must be"):
        QASettings(answerer=_client(Scripted(answer_from_script)), k=0)


def test_qa_doctests() -> None:
    result = doctest.testmod(qa_module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0
