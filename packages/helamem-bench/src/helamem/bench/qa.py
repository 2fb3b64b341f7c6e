"""LoCoMo question answering: answer from each method's retrieved turns, score as LoCoMo does.

``helamem bench locomo --llm MODEL`` runs the retrieval benchmark and, for
every asked question and every method, gives the top ``k`` hits of that
method's ``search(k=k)`` (association hits included when the method spreads)
to an LLM with :data:`~helamem.core.prompts.ANSWER_QUESTION`, LoCoMo's answer
prompt, one message per line with the date of its session. Questions are
asked as the official LoCoMo evaluation asks them: temporal ones (category 2)
with its date hint, adversarial ones (category 5) as a choice between the
trap answer and "Not mentioned in the conversation", in an order drawn per
question from the run's seed (the same for every method). Answers are scored
with :mod:`~helamem.bench.locomo_eval` (official F1, BLEU-1) and, with a
judge model, labelled CORRECT or WRONG by
:data:`~helamem.core.prompts.JUDGE_ANSWER`.

All LLM calls go through :class:`~helamem.core.LLMClient`, which counts
tokens; identical prompts (two methods retrieving the same turns) are asked
once and their answer reused, with the tokens of the original call counted
for both.

Examples:
    >>> pick_choice("(b)", ("Tom", "Not mentioned in the conversation"))
    'Not mentioned in the conversation'
    >>> pick_choice("It was Tom", ("Tom", "Not mentioned in the conversation"))
    'It was Tom'
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import SecretStr

from helamem.core.config import LLMConfig
from helamem.core.errors import LLMResponseError
from helamem.core.llm import LLMClient
from helamem.core.prompts import (
    ANSWER_INSTRUCTION,
    ANSWER_INSTRUCTION_CHOICE,
    ANSWER_QUESTION,
    JUDGE_ANSWER,
    NOT_MENTIONED,
    render_excerpts,
    render_question,
)

from .locomo_eval import gold_answer, score_answer

if TYPE_CHECKING:
    from .locomo_data import Conversation, Question

__all__ = [
    "DEFAULT_QA_K",
    "GoldAnswer",
    "QARunner",
    "QASettings",
    "load_gold_answers",
    "pick_choice",
    "qa_client",
    "render_qa_markdown",
]

DEFAULT_QA_K = 10
"""Retrieved turns given to the answering model."""


def qa_client(
    model: str,
    *,
    api_base: str | None = None,
    api_key: str | None = None,
    json_mode: Literal["off", "object", "schema"] = "schema",
    max_tokens: int = 128,
    timeout_s: float = 120.0,
    max_retries: int = 2,
) -> LLMClient:
    """An :class:`~helamem.core.LLMClient` for answering or judging (temperature 0).

    Args:
        model: Any LiteLLM model string (``gpt-4o-mini``, ``openai/smollm2``...).
        api_base: E.g. ``http://127.0.0.1:8080/v1`` for a local
            OpenAI-compatible server.
        api_key: The provider key (default: LiteLLM reads the provider's
            environment variable, e.g. ``OPENAI_API_KEY``).
        json_mode: How JSON is asked for (see :class:`~helamem.core.LLMConfig`);
            ``"schema"`` constrains local servers to the answer schema.
        max_tokens: Completion budget per call.
        timeout_s: Per-request timeout.
        max_retries: Retries on rate limits, timeouts and 5xx.

    Returns:
        The client; nothing is imported or called yet.

    Examples:
        >>> qa_client("openai/smollm2", api_base="http://127.0.0.1:8080/v1").config.json_mode
        'schema'
    """
    return LLMClient(
        LLMConfig(
            model=model,
            api_base=api_base,
            api_key=SecretStr(api_key) if api_key is not None else None,
            json_mode=json_mode,
            max_tokens=max_tokens,
            timeout_s=timeout_s,
            max_retries=max_retries,
            temperature=0.0,
        )
    )


@dataclass(frozen=True)
class QASettings:
    """What QA mode needs.

    Attributes:
        answerer: The client that answers the questions.
        judge: The client that labels answers CORRECT/WRONG; ``None``: no judge.
        k: Hits of ``search(k=k)`` given as context.
    """

    answerer: LLMClient
    judge: LLMClient | None = None
    k: int = DEFAULT_QA_K

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"the QA k must be >= 1, got {self.k}")


@dataclass(frozen=True, slots=True)
class GoldAnswer:
    """The reference of one question, as read from the LoCoMo file.

    Attributes:
        answer: The ``answer`` field as text (``""`` when absent).
        adversarial: The ``adversarial_answer`` (category 5 trap), if any.
    """

    answer: str
    adversarial: str | None


def load_gold_answers(path: Path) -> dict[tuple[str, int], GoldAnswer]:
    """The gold answers of a LoCoMo file, by ``(sample_id, index in qa)``.

    Args:
        path: A LoCoMo JSON file (already validated by the loader).

    Returns:
        One entry per question.

    Examples:
        >>> import json, tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "l.json"
        >>> _ = f.write_text(json.dumps([{"sample_id": "c", "qa": [{"answer": 2022}]}]))
        >>> load_gold_answers(f)
        {('c', 0): GoldAnswer(answer='2022', adversarial=None)}
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    out: dict[tuple[str, int], GoldAnswer] = {}
    for sample in data:
        sample_id = str(sample.get("sample_id", "?"))
        for index, qa in enumerate(sample.get("qa", [])):
            answer = qa.get("answer")
            adversarial = qa.get("adversarial_answer")
            out[(sample_id, index)] = GoldAnswer(
                "" if answer is None else str(answer),
                None if adversarial is None else str(adversarial),
            )
    return out


def pick_choice(prediction: str, choices: tuple[str, str]) -> str:
    """Map a multiple-choice reply to its option, as LoCoMo's evaluation does.

    A reply of one character (``"a"``/``"b"``) or three (``"(a)"``) is the
    option it names; any other reply is kept as written.

    Args:
        prediction: The model's answer.
        choices: Options (a) and (b).

    Returns:
        The answer to score.

    Examples:
        >>> pick_choice("a", ("Not mentioned in the conversation", "Tom"))
        'Not mentioned in the conversation'
    """
    reply = prediction.strip().lower()
    if len(reply) == 1:
        return choices[0] if "a" in reply else choices[1]
    if len(reply) == 3:
        return choices[0] if "(a)" in reply else choices[1]
    return prediction


def _date(when: datetime) -> str:
    return f"{when.day} {when:%B %Y}"


@dataclass(slots=True)
class _QATally:
    questions: int = 0
    f1: float = 0.0
    bleu1: float = 0.0
    judged: int = 0
    correct: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    judge_prompt_tokens: int = 0
    judge_completion_tokens: int = 0
    failed: int = 0

    def summary(self, name: str) -> dict[str, Any]:
        n = self.questions

        def mean(total: float, count: int, digits: int = 4) -> float | None:
            return round(total / count, digits) if count else None

        return {
            "name": name,
            "questions": n,
            "f1": mean(self.f1, n),
            "bleu1": mean(self.bleu1, n),
            "judged": self.judged,
            "judge_accuracy": mean(self.correct, self.judged),
            "prompt_tokens_per_question": mean(self.prompt_tokens, n, 1),
            "completion_tokens_per_question": mean(self.completion_tokens, n, 1),
            "judge_prompt_tokens_per_question": mean(self.judge_prompt_tokens, self.judged, 1),
            "judge_completion_tokens_per_question": mean(
                self.judge_completion_tokens, self.judged, 1
            ),
            "failed_answers": self.failed,
        }


@dataclass(frozen=True, slots=True)
class _Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    error: str | None


_CATEGORY_NAMES = {
    "1": "multi-hop",
    "2": "temporal",
    "3": "open-domain",
    "4": "single-hop",
    "5": "adversarial",
    "1-4": "1-4",
    "all": "all",
}


@dataclass
class QARunner:
    """Answers, scores and tallies the questions of one benchmark run.

    Args:
        settings: Clients and k.
        data: The LoCoMo file (for the gold answers).
        seed: Seed of the per-question order of the category-5 options.
    """

    settings: QASettings
    data: Path
    seed: int = 0
    _gold: dict[tuple[str, int], GoldAnswer] = field(init=False, repr=False)
    _dates: dict[str, dict[str, str]] = field(init=False, repr=False, default_factory=dict)
    _tally: dict[str, defaultdict[str, _QATally]] = field(
        init=False, repr=False, default_factory=dict
    )
    _cache: dict[tuple[str, ...], _Reply] = field(init=False, repr=False, default_factory=dict)
    _answers: list[dict[str, Any]] = field(init=False, repr=False, default_factory=list)
    _calls: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._gold = load_gold_answers(self.data)
        self._calls = {"answer": 0, "answer_reused": 0, "judge": 0, "judge_reused": 0}

    @property
    def k(self) -> int:
        """Hits given as context."""
        return self.settings.k

    def _choices(self, sample_id: str, index: int, trap: str) -> tuple[str, str]:
        rng = random.Random(f"{self.seed}:{sample_id}:{index}")
        return (NOT_MENTIONED, trap) if rng.random() < 0.5 else (trap, NOT_MENTIONED)

    def _call(self, kind: str, client: LLMClient, key: tuple[str, ...], **variables: str) -> _Reply:
        cached = self._cache.get(key)
        if cached is not None:
            self._calls[f"{kind}_reused"] += 1
            return cached
        before = client.usage
        text, error = "", None
        try:
            if kind == "answer":
                text = client.complete_json(ANSWER_QUESTION, **variables).answer.strip()
            else:
                text = client.complete_json(JUDGE_ANSWER, **variables).label
        except LLMResponseError as exc:
            error = str(exc)
        after = client.usage
        self._calls[kind] += 1
        reply = _Reply(
            text,
            after.prompt_tokens - before.prompt_tokens,
            after.completion_tokens - before.completion_tokens,
            error,
        )
        self._cache[key] = reply
        return reply

    def ask(
        self,
        method: str,
        conv: Conversation,
        question: Question,
        hits: Sequence[tuple[str, str]],
    ) -> dict[str, Any]:
        """Answer one question from one method's hits, score it and tally it.

        Args:
            method: The method's name.
            conv: The question's conversation.
            question: The question.
            hits: ``(dia_id, content)`` of the method's ``search(k=k)``, in rank order.

        Returns:
            The answer record (as listed in the results' ``answers``).

        Raises:
            LLMUnavailableError: When the answering (or judge) model keeps failing.
        """
        dates = self._dates.get(conv.sample_id)
        if dates is None:
            dates = {t.dia_id: _date(t.event_time) for t in conv.turns}
            self._dates[conv.sample_id] = dates
        gold = self._gold.get((conv.sample_id, question.index), GoldAnswer("", None))
        cat = question.category
        trap = gold.adversarial if gold.adversarial is not None else gold.answer
        choices = self._choices(conv.sample_id, question.index, trap) if cat == 5 and trap else None
        context = render_excerpts([(dates.get(d, "?"), c) for d, c in hits])
        instruction = ANSWER_INSTRUCTION_CHOICE if choices else ANSWER_INSTRUCTION
        asked = render_question(question.text, cat, choices)
        reply = self._call(
            "answer",
            self.settings.answerer,
            ("answer", context, instruction, asked),
            context=context,
            instruction=instruction,
            question=asked,
        )
        answer = pick_choice(reply.text, choices) if choices else reply.text
        reference = NOT_MENTIONED if cat == 5 else gold_answer(gold.answer, cat)
        score = score_answer(answer, gold.answer, cat)
        record: dict[str, Any] = {
            "method": method,
            "conversation": conv.sample_id,
            "index": question.index,
            "category": cat,
            "question": question.text,
            "gold": reference,
            "answer": answer,
            "raw_answer": reply.text,
            "f1": round(score.f1, 4),
            "bleu1": round(score.bleu1, 4),
            "judge": None,
            "context": [d for d, _ in hits],
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
        }
        if reply.error is not None:
            record["error"] = reply.error
        judged: _Reply | None = None
        if self.settings.judge is not None and reply.error is not None:
            judged = _Reply("WRONG", 0, 0, None)  # no usable answer: wrong, no call
            record["judge"] = judged.text
        elif self.settings.judge is not None:
            judged = self._call(
                "judge",
                self.settings.judge,
                ("judge", question.text, reference, answer),
                question=question.text,
                gold=reference,
                answer=answer or "(no answer)",
            )
            if judged.error is None:
                record["judge"] = judged.text
            else:
                record["judge_error"] = judged.error
        tallies = self._tally.setdefault(method, defaultdict(_QATally))
        keys = [str(cat), "all"] + (["1-4"] if 1 <= cat <= 4 else [])
        for key in keys:
            t = tallies[key]
            t.questions += 1
            t.f1 += score.f1
            t.bleu1 += score.bleu1
            t.prompt_tokens += reply.prompt_tokens
            t.completion_tokens += reply.completion_tokens
            t.failed += reply.error is not None
            if judged is not None and judged.error is None:
                t.judged += 1
                t.correct += judged.text == "CORRECT"
                t.judge_prompt_tokens += judged.prompt_tokens
                t.judge_completion_tokens += judged.completion_tokens
        self._answers.append(record)
        return record

    def results(self) -> dict[str, Any]:
        """The QA results: settings, per method and category, and every answer."""
        judge = self.settings.judge
        answerer = self.settings.answerer
        methods = {
            name: {
                "categories": {
                    key: tallies.get(key, _QATally()).summary(label)
                    for key, label in _CATEGORY_NAMES.items()
                }
            }
            for name, tallies in self._tally.items()
        }
        usage = {"answerer": asdict(answerer.usage)}
        if judge is not None:
            usage["judge"] = asdict(judge.usage)
        return {
            "model": answerer.config.model,
            "api_base": answerer.config.api_base,
            "json_mode": answerer.config.json_mode,
            "judge": judge.config.model if judge is not None else None,
            "k": self.k,
            "prompts": {
                "answer": {"name": ANSWER_QUESTION.name, "version": ANSWER_QUESTION.version},
                "judge": {"name": JUDGE_ANSWER.name, "version": JUDGE_ANSWER.version},
            },
            "scoring": (
                "LoCoMo official: normalised (commas, punctuation, a/an/the/and removed, "
                "lowercased), Porter-stemmed token F1; category 1 multi-answer F1; category 3 "
                "gold before ';'; category 5 scores 1 when the answer says 'not mentioned' or "
                "'no information available'. BLEU-1: sentence BLEU (1,0,0,0) over the same "
                "tokens (category 5: the same 0/1)."
            ),
            "calls": dict(self._calls),
            "usage": usage,
            "methods": methods,
            "answers": list(self._answers),
        }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_qa_markdown(qa: Mapping[str, Any]) -> list[str]:
    """Markdown lines of the QA results (appended to the retrieval report).

    Args:
        qa: The ``qa`` entry of the results.

    Returns:
        The lines: a categories 1-4 table per method, then F1 by category.

    Examples:
        >>> render_qa_markdown({"model": "m", "judge": None, "k": 10, "calls": {},
        ...                     "methods": {}})[0]
        '## Question answering'
    """
    judge = qa.get("judge")
    calls = qa.get("calls", {})
    lines = [
        "## Question answering",
        "",
        f"- answering model: `{qa['model']}` with the top {qa['k']} hits of each method; "
        f"judge: {f'`{judge}`' if judge else 'none'}",
        f"- LLM calls: {calls.get('answer', 0)} answers ({calls.get('answer_reused', 0)} "
        f"reused for identical prompts), {calls.get('judge', 0)} judgements",
        "",
        "### Categories 1-4",
        "",
    ]
    head = ["method", "F1", "BLEU-1", "judge acc", "prompt tok/q", "completion tok/q", "failed"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in qa["methods"].items():
        c = m["categories"]["1-4"]
        row = [
            name,
            _fmt(c["f1"]),
            _fmt(c["bleu1"]),
            _fmt(c["judge_accuracy"]),
            _fmt(c["prompt_tokens_per_question"], 0),
            _fmt(c["completion_tokens_per_question"], 1),
            str(c["failed_answers"]),
        ]
        lines.append("| " + " | ".join(row) + " |")
    for metric, label in (("f1", "F1"), ("bleu1", "BLEU-1"), ("judge_accuracy", "Judge accuracy")):
        if metric == "judge_accuracy" and not judge:
            continue
        lines += ["", f"### {label} by category", ""]
        first = next(iter(qa["methods"].values()), None)
        if first is None:
            break
        head = ["method"] + [
            f"{key} {v['name']} (n={v['questions']})" if key not in ("1-4", "all") else key
            for key, v in first["categories"].items()
        ]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, m in qa["methods"].items():
            row = [name] + [_fmt(v[metric]) for v in m["categories"].values()]
            lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "F1: LoCoMo's official token F1 (multi-answer for category 1; category 5: 1 when the "
        "answer says the information is not mentioned); BLEU-1 over the same tokens; "
        "tokens per question of the answering calls.",
        "",
    ]
    return lines
