"""LoCoMo retrieval benchmark: HeLa-Mem beside dense, BM25 and fusion baselines.

Every conversation of a LoCoMo file (the ``locomo10.json`` schema) goes into
its own scope, one memory per turn (``"speaker: text"``, plus
``" [image: caption]"`` when the turn shares an image), stamped with its
session's date. Every question is then asked against its own conversation
only, with the conversation's last session date as the reference time, and
the retrieved turns are compared with the question's evidence.

Methods run side by side in one run over the same embeddings (one store per
method, one shared caching embedder); they differ only in
:class:`~helamem.core.RetrievalConfig` and the ``spread``/``learn`` flags:

=====================  ================  ======  =====
method                 keyword_weight    spread  learn
=====================  ================  ======  =====
``dense``              0                 no      no
``bm25``               1                 no      no
``fusion``             default           no      no
``helamem``            default           yes     yes
``helamem-no-spread``  default           no      yes
``helamem-no-learn``   default           yes     no
=====================  ================  ======  =====

Metrics, for k = 5, 10, 20, per category (1 multi-hop, 2 temporal,
3 open-domain, 4 single-hop, 5 adversarial), for 1-4 together and overall:

- ``r@k``: share of questions with at least one evidence turn among the hits
  of ``search(k=k)``;
- ``recall@k``: mean share of a question's evidence turns among those hits;
- ``tokens@k``: mean context tokens of those hits (their contents, one per
  line), with tiktoken's cl100k_base when it is available offline, else an
  estimate of 4 characters per token (the output says which);
- ``hits@k``: mean number of hits: ``search(k=k)`` returns at most k (with
  ``selection="append"``, the reference behaviour, up to k + ``max_flipped``).

Without spreading, ``search(k=k)`` is the best k by activation of the hits of
``search(k=20)`` (hits come sorted by relevance, not activation), so
one search per question serves every k. With spreading each k is its own
search, read-only, and the learning search (``k = default_k``) comes last, so
that every k sees the same learned state; questions are asked in order.

Examples:
    >>> from helamem.core.bench.locomo import parse_evidence
    >>> parse_evidence("D8:6; D9:17")
    (['D8:6', 'D9:17'], 'split')
    >>> parse_evidence("D:11:26")
    (['D11:26'], 'repaired')
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import random
import re
import sqlite3
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from ..config import DynamicsConfig, HelaMemConfig, RetrievalConfig
from ..dynamics import decayed
from ..embeddings import Embedder, MiniLMEmbedder
from ..engine import HelaMemory
from ..types import Hit, NewMemory, NewTurn, ranking_order
from ._common import CachingEmbedder, Progress, TokenCounter, token_counter, versions
from .qa import QARunner, QASettings, render_qa_markdown

__all__ = [
    "CATEGORIES",
    "DEFAULT_KS",
    "INGESTS",
    "LOOP_K",
    "METHODS",
    "REPLAYS",
    "Conversation",
    "EvidenceReport",
    "LocomoFormatError",
    "Method",
    "Question",
    "Turn",
    "gini",
    "graph_shape",
    "load_locomo",
    "parse_evidence",
    "parse_session_date",
    "render_markdown",
    "replay_agent_loop",
    "run_locomo",
    "token_parity",
    "turn_pairs",
    "write_results",
]

CATEGORIES: dict[int, str] = {
    1: "multi-hop",
    2: "temporal",
    3: "open-domain",
    4: "single-hop",
    5: "adversarial",
}
"""LoCoMo question categories, numbered as in the official evaluation code."""

DEFAULT_KS: tuple[int, ...] = (5, 10, 20)
BUDGETS: tuple[int, ...] = (256, 512, 1024)
"""Context budgets (tokens) at which every method is also scored: ``R@256t`` etc."""
_BUDGET_K = 60  # hits fetched to fill the largest budget (LoCoMo turns: ~36 tokens each)

_EVIDENCE = re.compile(r"D:?(\d+):(\d+)")
_SEPARATORS = re.compile(r"[;,\s]+")
_SESSION = re.compile(r"session_(\d+)")
_DATE_FORMATS = ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y", "%d %B, %Y", "%d %B %Y")


class LocomoFormatError(ValueError):
    """The file is not in the LoCoMo (``locomo10.json``) schema."""


FACTS_EVERY = 20
"""The ``helamem-facts`` method consolidates its scope after every this many turns."""


@dataclass(frozen=True, slots=True)
class Method:
    """One benchmarked retrieval method.

    Attributes:
        name: Its name in the results.
        retrieval: Overrides of :class:`~helamem.core.RetrievalConfig`.
        spread: ``search(spread=...)``.
        learn: ``search(learn=...)``.
        description: One line for the report.
        ingest: How its store is filled: ``"plain"`` (``add_many``, one memory
            per turn), ``"loop-learn"`` or ``"loop-off"`` (the agent loop,
            see :func:`replay_agent_loop`), or ``"facts"`` (``add_many`` in
            chunks of :data:`FACTS_EVERY` turns, each followed by
            ``consolidate``; searches return facts as the defaults do).
    """

    name: str
    retrieval: Mapping[str, Any]
    spread: bool
    learn: bool
    description: str
    ingest: str = "plain"


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "dense",
            {"keyword_weight": 0.0, "late_weight": 0.0},
            False,
            False,
            "dense (MiniLM pooled cosine) only",
        ),
        Method(
            "maxsim",
            {"keyword_weight": 0.0, "late_weight": 1.0},
            False,
            False,
            "late interaction (MiniLM token MaxSim) only",
        ),
        Method("bm25", {"keyword_weight": 1.0}, False, False, "lexical (FTS5 BM25) only"),
        Method(
            "hybrid",
            {"late_weight": 0.0, "keyword_weight": 0.7},
            False,
            False,
            "the usual hybrid: z-score fusion of pooled cosine and BM25",
        ),
        Method("fusion", {}, False, False, "HeLa-Mem's base ranking: no spreading, no learning"),
        Method("helamem", {}, True, True, "fusion + spreading + Hebbian learning"),
        Method("helamem-no-spread", {}, False, True, "ablation: learning, no spreading"),
        Method("helamem-no-learn", {}, True, False, "ablation: spreading, no learning"),
        Method(
            "helamem-facts",
            {},
            True,
            True,
            f"helamem plus distilled facts (extractive, consolidating every {FACTS_EVERY} "
            f"turns; a fact's hits are its source turns)",
            "facts",
        ),
    )
}
"""The methods, by name, in report order."""

INGESTS: tuple[str, ...] = ("plain", "agent-loop")
"""``run_locomo(ingest=...)``: ``"agent-loop"`` runs :data:`REPLAYS` instead of the methods."""

LOOP_K = 5
"""``k`` of the agent loop's search for each turn pair's first message."""

REPLAYS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "loop-learn",
            {},
            True,
            False,
            f"agent loop, learning on: search(a, k={LOOP_K}), add_turns(a, b, used_ids=hits)",
            "loop-learn",
        ),
        Method(
            "loop-off",
            {},
            True,
            False,
            "agent loop, learning off: add_turns(a, b), no used_ids",
            "loop-off",
        ),
        Method("plain", {}, True, False, "plain add_many ingest (one memory per turn)", "plain"),
    )
}
"""The replays of ``--ingest agent-loop``: helamem's defaults, questions read-only."""


@dataclass(frozen=True, slots=True)
class Turn:
    """One conversation turn, as stored.

    Attributes:
        dia_id: LoCoMo's turn id, e.g. ``"D1:3"``.
        content: ``"speaker: text"`` plus ``" [image: caption]"``.
        event_time: The date of the turn's session.
    """

    dia_id: str
    content: str
    event_time: datetime


@dataclass(frozen=True, slots=True)
class Question:
    """One question with its parsed evidence.

    Attributes:
        index: Position in the conversation's ``qa`` list.
        text: The question.
        category: 1-5 (see :data:`CATEGORIES`).
        evidence: Evidence turn ids that exist in the conversation.
    """

    index: int
    text: str
    category: int
    evidence: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Conversation:
    """One LoCoMo sample.

    Attributes:
        sample_id: E.g. ``"conv-26"``.
        turns: Every turn, in session order.
        questions: Every question with usable evidence, in file order.
        reference_time: The last session's date ("now" for the questions).
    """

    sample_id: str
    turns: tuple[Turn, ...]
    questions: tuple[Question, ...]
    reference_time: datetime


@dataclass(slots=True)
class EvidenceReport:
    """What the loader did with the evidence lists.

    Attributes:
        entries: Evidence strings read.
        ok: Well-formed ids of turns that exist.
        split: Strings holding several ids (``"D8:6; D9:17"``), split.
        repaired: Ids normalised (``"D:11:26"`` → ``"D11:26"``,
            ``"D30:05"`` → ``"D30:5"``).
        skipped_unparseable: Strings (or parts) that are no turn id (``"D"``).
        skipped_unknown: Well-formed ids of turns the conversation lacks.
        questions_without_evidence: Questions left with no usable evidence
            (not scored).
        unparsed_dates: Session dates that could not be parsed (the previous
            session's date was used).
        examples: A few raw strings per kind of problem.
    """

    entries: int = 0
    ok: int = 0
    split: int = 0
    repaired: int = 0
    skipped_unparseable: int = 0
    skipped_unknown: int = 0
    questions_without_evidence: int = 0
    unparsed_dates: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: str, raw: str) -> None:
        """Remember ``raw`` as an example of ``kind`` (at most 10 each).

        Args:
            kind: The problem, e.g. ``"split"``.
            raw: The string as found in the file.
        """
        seen = self.examples.setdefault(kind, [])
        if len(seen) < 10 and raw not in seen:
            seen.append(raw)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "entries": self.entries,
            "ok": self.ok,
            "split": self.split,
            "repaired": self.repaired,
            "skipped_unparseable": self.skipped_unparseable,
            "skipped_unknown": self.skipped_unknown,
            "questions_without_evidence": self.questions_without_evidence,
            "unparsed_dates": self.unparsed_dates,
            "examples": self.examples,
        }


def parse_evidence(raw: str) -> tuple[list[str], str | None]:
    """Parse one evidence string into normalised turn ids.

    Args:
        raw: An entry of a question's ``evidence`` list.

    Returns:
        ``(ids, problem)``: the ids found, and ``None`` when ``raw`` was one
        well-formed id, ``"split"`` when it held several, ``"repaired"`` when
        an id had to be normalised, ``"unparseable"`` when no id was found.

    Examples:
        >>> parse_evidence("D1:3")
        (['D1:3'], None)
        >>> parse_evidence("D30:05")
        (['D30:5'], 'repaired')
        >>> parse_evidence("D")
        ([], 'unparseable')
    """
    parts = [p for p in _SEPARATORS.split(raw.strip()) if p]
    ids: list[str] = []
    repaired = False
    for part in parts:
        m = _EVIDENCE.fullmatch(part)
        if m is None:
            repaired = True
            continue
        norm = f"D{int(m.group(1))}:{int(m.group(2))}"
        repaired = repaired or norm != part
        ids.append(norm)
    if not ids:
        return [], "unparseable"
    if len(parts) > 1:
        return ids, "split"
    return ids, "repaired" if repaired else None


def parse_session_date(text: str) -> datetime | None:
    """Parse a LoCoMo session date such as ``"1:56 pm on 8 May, 2023"`` (UTC).

    Args:
        text: The ``session_N_date_time`` value.

    Returns:
        The date, or ``None`` when it is in no known format.

    Examples:
        >>> parse_session_date("1:56 pm on 8 May, 2023")
        datetime.datetime(2023, 5, 8, 13, 56, tzinfo=datetime.timezone.utc)
    """
    clean = " ".join(text.split())
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(clean, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def _turn_content(turn: Mapping[str, Any]) -> str:
    text = f"{turn.get('speaker', '?')}: {turn.get('text', '')}"
    caption = turn.get("blip_caption")
    if isinstance(caption, str) and caption.strip():
        text += f" [image: {caption.strip()}]"
    return text


def _conversation(sample: Any, report: EvidenceReport) -> Conversation:
    if not isinstance(sample, dict) or not isinstance(sample.get("conversation"), dict):
        raise LocomoFormatError("every sample needs a 'conversation' object")
    sample_id = str(sample.get("sample_id", "?"))
    conv = sample["conversation"]
    sessions = sorted(
        (int(m.group(1)), key)
        for key, value in conv.items()
        if (m := _SESSION.fullmatch(key)) and isinstance(value, list)
    )
    turns: list[Turn] = []
    previous = datetime(2000, 1, 1, tzinfo=UTC)
    for _, key in sessions:
        when = parse_session_date(str(conv.get(f"{key}_date_time", "")))
        if when is None:
            report.unparsed_dates += 1
            report.note("unparsed_date", f"{sample_id} {key}: {conv.get(f'{key}_date_time')!r}")
            when = previous
        previous = when
        for turn in conv[key]:
            if not isinstance(turn, dict) or "dia_id" not in turn:
                raise LocomoFormatError(f"{sample_id} {key}: a turn without 'dia_id'")
            turns.append(Turn(str(turn["dia_id"]), _turn_content(turn), when))
    if not turns:
        raise LocomoFormatError(f"{sample_id}: no sessions with turns")
    known = {t.dia_id for t in turns}
    questions: list[Question] = []
    for index, qa in enumerate(sample.get("qa", [])):
        evidence: list[str] = []
        for raw in qa.get("evidence", []):
            report.entries += 1
            ids, problem = parse_evidence(str(raw))
            if problem == "unparseable":
                report.skipped_unparseable += 1
                report.note("unparseable", str(raw))
                continue
            if problem is not None:
                setattr(report, problem, getattr(report, problem) + 1)
                report.note(problem, str(raw))
            for i in ids:
                if i in known:
                    if problem is None:
                        report.ok += 1
                    if i not in evidence:
                        evidence.append(i)
                else:
                    report.skipped_unknown += 1
                    report.note("unknown", f"{sample_id}: {i}")
        if not evidence:
            report.questions_without_evidence += 1
            continue
        questions.append(
            Question(
                index, str(qa.get("question", "")), int(qa.get("category", 0)), tuple(evidence)
            )
        )
    return Conversation(sample_id, tuple(turns), tuple(questions), previous)


def load_locomo(path: Path) -> tuple[list[Conversation], EvidenceReport]:
    """Read a LoCoMo file.

    Args:
        path: A JSON file in the ``locomo10.json`` schema.

    Returns:
        The conversations and what was done with malformed evidence.

    Raises:
        LocomoFormatError: When the file is not LoCoMo-shaped.
        OSError: When it cannot be read.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LocomoFormatError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise LocomoFormatError(f"{path}: expected a list of samples")
    report = EvidenceReport()
    return [_conversation(s, report) for s in data], report


@dataclass(slots=True)
class _Tally:
    """Sums over the questions of one (method, category)."""

    questions: int = 0
    hit: defaultdict[int | str, float] = field(default_factory=lambda: defaultdict(float))
    recall: defaultdict[int | str, float] = field(default_factory=lambda: defaultdict(float))
    tokens: defaultdict[int | str, float] = field(default_factory=lambda: defaultdict(float))
    items: defaultdict[int | str, float] = field(default_factory=lambda: defaultdict(float))

    def add(
        self,
        hit: Mapping[int | str, float],
        recall: Mapping[int | str, float],
        tokens: Mapping[int | str, int],
        items: Mapping[int | str, int],
    ) -> None:
        self.questions += 1
        for total, values in (
            (self.hit, hit),
            (self.recall, recall),
            (self.tokens, tokens),
            (self.items, items),
        ):
            for k, v in values.items():
                total[k] += v

    def summary(self, ks: Sequence[int | str]) -> dict[str, Any]:
        n = self.questions
        out: dict[str, Any] = {"questions": n}
        for key, counter in (
            ("r", self.hit),
            ("recall", self.recall),
            ("tokens", self.tokens),
            ("hits", self.items),
        ):
            for k in ks:
                out[f"{key}@{k}"] = round(counter[k] / n, 4) if n else None
        return out


def _score(
    retrieved: Mapping[int | str, list[tuple[str, str]]],
    evidence: set[str],
    counter: TokenCounter,
) -> tuple[
    dict[int | str, float], dict[int | str, float], dict[int | str, int], dict[int | str, int]
]:
    hit: dict[int | str, float] = {}
    recall: dict[int | str, float] = {}
    tokens: dict[int | str, int] = {}
    items: dict[int | str, int] = {}
    for k, hits in retrieved.items():
        if isinstance(k, str):  # a token budget "256t": fill it with whole hits, in order
            budget, used, kept = int(k[:-1]), 0, []
            for d, c in hits:
                cost = counter.count(c + "\n")
                if used + cost > budget:
                    break
                used += cost
                kept.append((d, c))
            hits = kept
        found = {x for d, _ in hits for x in _fact_dias(d)} & evidence
        hit[k] = 1.0 if found else 0.0
        recall[k] = len(found) / len(evidence)
        tokens[k] = counter.count("\n".join(c for _, c in hits)) if hits else 0
        items[k] = len(hits)
    return hit, recall, tokens, items


def _select(
    conversations: list[Conversation], n_conv: int | None, n_q: int | None, seed: int
) -> list[Conversation]:
    chosen = conversations if n_conv is None else conversations[:n_conv]
    if n_q is None:
        return chosen
    rng = random.Random(seed)
    out = []
    for conv in chosen:
        qs = conv.questions
        if len(qs) > n_q:
            keep = sorted(rng.sample(range(len(qs)), n_q))
            qs = tuple(qs[i] for i in keep)
        out.append(Conversation(conv.sample_id, conv.turns, qs, conv.reference_time))
    return out


def _bucket(category: int, sample_id: str) -> list[str]:
    keys = [str(category), "all"]
    if 1 <= category <= 4:
        keys += ["1-4", f"{sample_id}/1-4"]
    return keys


FACT = "fact:"
"""Prefix of a fact's pseudo turn id: ``"fact:D1:3|D2:5"`` names its source turns."""


def _fact_dias(dia: str) -> list[str]:
    return dia[len(FACT) :].split("|") if dia.startswith(FACT) else [dia]


def _dia(hit: Hit, sources: Mapping[str, str] | None = None) -> str:
    """The LoCoMo turn id of a hit (a turn pair's reply keeps its own in ``reply_dia_id``;
    a fact's is :data:`FACT` and its source turns, found in ``sources``)."""
    if hit.provenance == "semantic":
        known = sources or {}
        cited = sorted({known[i] for i in hit.memory.provenance if i in known})
        return FACT + "|".join(cited)
    meta = hit.memory.metadata
    if hit.memory.role == "assistant" and "reply_dia_id" in meta:
        return str(meta["reply_dia_id"])
    return str(meta.get("dia_id"))


def turn_pairs(turns: Sequence[Turn]) -> list[tuple[Turn, Turn | None]]:
    """The conversation as an agent sees it: consecutive turns of one session, in pairs.

    A session with an odd number of turns ends with a turn alone (``None`` reply).

    Examples:
        >>> t = lambda d, day: Turn(d, d, datetime(2023, 1, day, tzinfo=UTC))
        >>> [(a.dia_id, b and b.dia_id) for a, b in turn_pairs([t("1", 1), t("2", 1), t("3", 1),
        ...     t("4", 2), t("5", 2)])]
        [('1', '2'), ('3', None), ('4', '5')]
    """
    out: list[tuple[Turn, Turn | None]] = []
    i = 0
    while i < len(turns):
        a = turns[i]
        b = turns[i + 1] if i + 1 < len(turns) else None
        if b is not None and b.event_time == a.event_time:
            out.append((a, b))
            i += 2
        else:
            out.append((a, None))
            i += 1
    return out


def replay_agent_loop(
    mem: HelaMemory, conv: Conversation, scope: tuple[str, ...], learn: bool, k: int = LOOP_K
) -> int:
    """Replay one conversation as an agent runs it; returns the searches made.

    For each turn pair ``(a, b)`` (:func:`turn_pairs`): with ``learn``, the
    agent first calls ``search(a, k=k)`` with the defaults (learning on), then
    ``add_turns([NewTurn(a, b, used_ids=<those hits>)])``, the call
    :class:`~helamem.core.TurnRecorder` makes for every recorded turn (and so
    every adapter); without ``learn`` it records the pair with no used ids. A
    turn alone is stored with ``add``. Each memory keeps its LoCoMo id
    (``dia_id``; the reply's in ``reply_dia_id``).
    """
    searches = 0
    for a, b in turn_pairs(conv.turns):
        if b is None:
            mem.add(a.content, scope, event_time=a.event_time, metadata={"dia_id": a.dia_id})
            continue
        used: list[str] = []
        if learn:
            used = mem.search(a.content, scope, k=k).ids
            searches += 1
        meta = {"dia_id": a.dia_id, "reply_dia_id": b.dia_id}
        mem.add_turns([NewTurn(scope, a.content, b.content, a.event_time, meta, tuple(used))])
    return searches


def gini(values: Sequence[float]) -> float:
    r"""Gini coefficient of non-negative values (0: all equal; near 1: one holds all).

    :math:`G = \frac{2 \sum_i i\, x_{(i)}}{n \sum_i x_i} - \frac{n+1}{n}` over the
    values sorted ascending (:math:`i = 1..n`); 0 when they sum to 0.

    Examples:
        >>> gini([1.0, 1.0, 1.0, 1.0])
        0.0
        >>> gini([0.0, 0.0, 0.0, 4.0])
        0.75
    """
    xs = sorted(values)
    n, total = len(xs), sum(xs)
    if n == 0 or total <= 0:
        return 0.0
    weighted = sum((i + 1) * x for i, x in enumerate(xs))
    return round(2 * weighted / (n * total) - (n + 1) / n, 6)


def _quantile(xs: Sequence[float], q: float) -> float:
    if not xs:
        return 0.0
    return float(xs[min(len(xs) - 1, math.ceil(q * len(xs)) - 1 if q > 0 else 0)])


def graph_shape(path: Path, decay_rate: float) -> dict[str, Any]:
    """The shape of a store's association graph, read from its SQLite file.

    Weights are decayed to their scope's current tick (``clock="turns"``).
    A node's strength is the sum of its edges' weights; every episodic
    memory counts, with or without edges.

    Args:
        path: The store directory (``HelaMemConfig.path``).
        decay_rate: δ of the store's :class:`~helamem.core.DynamicsConfig`.

    Returns:
        ``nodes``, ``edges``, ``mean_weight``, ``strength_p50``,
        ``strength_p99``, ``strength_max``, ``strength_gini`` and ``degree_max``.
    """
    uri = f"file:{path / 'helamem.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        nodes = [int(r[0]) for r in db.execute("SELECT n FROM memories WHERE kind = 'episodic'")]
        rows = db.execute(
            "SELECT e.a, e.b, e.weight, e.tick, s.tick FROM edges e "
            "JOIN scopes s ON s.id = e.scope_id"
        ).fetchall()
    strength = dict.fromkeys(nodes, 0.0)
    degree = dict.fromkeys(nodes, 0)
    weights = []
    for a, b, w, t, now in rows:
        w = decayed(float(w), int(now) - int(t), decay_rate)
        weights.append(w)
        for n in (int(a), int(b)):
            strength[n] = strength.get(n, 0.0) + w
            degree[n] = degree.get(n, 0) + 1
    xs = sorted(strength.values())
    return {
        "nodes": len(xs),
        "edges": len(weights),
        "mean_weight": round(sum(weights) / len(weights), 4) if weights else 0.0,
        "strength_p50": round(_quantile(xs, 0.5), 4),
        "strength_p99": round(_quantile(xs, 0.99), 4),
        "strength_max": round(xs[-1], 4) if xs else 0.0,
        "strength_gini": gini(xs),
        "degree_max": max(degree.values(), default=0),
    }


def run_locomo(
    data: Path,
    *,
    out: Path | None = None,
    conversations: int | None = None,
    questions: int | None = None,
    methods: Sequence[str] = tuple(METHODS),
    seed: int = 0,
    ks: Sequence[int] = DEFAULT_KS,
    retrieval: Mapping[str, Any] | None = None,
    embedder: Embedder | None = None,
    tokenizer_file: Path | None = None,
    progress: TextIO | None = None,
    work_dir: Path | None = None,
    qa: QASettings | None = None,
    ingest: str = "plain",
) -> dict[str, Any]:
    """Run the LoCoMo retrieval benchmark and (optionally) write its results.

    Args:
        data: The LoCoMo JSON file (read, never copied).
        out: Directory for ``results.json`` and ``results.md`` (and
            ``recall_at_k.png`` when matplotlib is installed); ``None``
            writes nothing.
        conversations: Use only the first this many conversations.
        questions: Ask at most this many questions per conversation, drawn
            with ``seed`` and asked in file order.
        methods: Names from :data:`METHODS`.
        seed: Seed of the question sample.
        ks: The cut-offs k.
        retrieval: :class:`~helamem.core.RetrievalConfig` overrides applied
            to every method (a method's own settings win); keys starting with
            ``dynamics.`` override :class:`~helamem.core.DynamicsConfig`.
        embedder: The embedder (default: offline MiniLM); it is wrapped in a
            cache shared by every method.
        tokenizer_file: A local ``cl100k_base.tiktoken`` file (or tiktoken
            cache directory) for token counts.
        progress: Stream for progress lines (e.g. ``sys.stderr``).
        work_dir: Where the per-method stores go (default: a temporary
            directory, removed afterwards).
        qa: QA mode (:mod:`~helamem.core.bench.qa`): every question is also
            answered by an LLM from each method's top ``qa.k`` hits and
            scored (F1, BLEU-1, judge); results under ``qa``.
        ingest: ``"plain"`` (default): every method's store is filled with
            ``add_many`` and questions are asked as the method says.
            ``"agent-loop"``: ``methods`` is ignored and the three
            :data:`REPLAYS` of helamem run side by side (agent loop with
            learning on, off, and plain ingest; see
            :func:`replay_agent_loop`), every question asked read-only; the
            results add each store's :func:`graph_shape` under ``graph``.

    Returns:
        The results (as written to ``results.json``).

    Raises:
        ValueError: On an unknown method, ingest, or a bad k or override.
        LocomoFormatError: When ``data`` is not LoCoMo-shaped.
    """
    if ingest not in INGESTS:
        raise ValueError(f"unknown ingest {ingest!r}; choose from {list(INGESTS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    ks = tuple(sorted(set(ks)))
    if not ks or ks[0] < 1:
        raise ValueError(f"k must be >= 1, got {ks}")
    overrides = dict(retrieval or {})
    dyn = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("dynamics.")}
    base_cfg = RetrievalConfig(  # validates the overrides
        **{k: v for k, v in overrides.items() if not k.startswith("dynamics.")}
    )
    dynamics = DynamicsConfig(**dyn)
    chosen = (
        list(REPLAYS.values())
        if ingest == "agent-loop"
        else [METHODS[m] for m in METHODS if m in set(methods)]
    )
    configs = {m.name: RetrievalConfig(**{**base_cfg.model_dump(), **m.retrieval}) for m in chosen}

    loaded, report = load_locomo(data)
    convs = _select(loaded, conversations, questions, seed)
    qa_runner = QARunner(qa, data, seed) if qa is not None else None
    search_ks = tuple(sorted({*ks, qa.k})) if qa is not None else ks
    counter = token_counter(tokenizer_file)
    budget_keys = tuple(f"{t}t" for t in BUDGETS)
    cache = CachingEmbedder(embedder if embedder is not None else MiniLMEmbedder())

    texts = list(
        dict.fromkeys(
            [t.content for c in convs for t in c.turns]
            + [q.text for c in convs for q in c.questions]
        )
    )
    bar = Progress("embedding", len(texts), progress)
    for first in range(0, len(texts), 256):
        cache.embed(texts[first : first + 256])
        bar.update(min(256, len(texts) - first))
    bar.close()
    embed_s = cache.seconds

    tally: dict[str, dict[str, _Tally]] = {m.name: defaultdict(_Tally) for m in chosen}
    ingest_s: dict[str, float] = dict.fromkeys(configs, 0.0)
    query_s: dict[str, float] = dict.fromkeys(configs, 0.0)
    searches: dict[str, int] = dict.fromkeys(configs, 0)
    assoc = {m.name: Counter[str]() for m in chosen}
    loop_searches: dict[str, int] = dict.fromkeys(configs, 0)
    graph: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}  # memory id -> dia_id, for facts' source turns

    with tempfile.TemporaryDirectory(prefix="helamem-locomo-", dir=work_dir) as tmp:
        stores = {
            m.name: HelaMemory(
                HelaMemConfig(
                    path=Path(tmp) / m.name, retrieval=configs[m.name], dynamics=dynamics
                ),
                embedder=cache,
            )
            for m in chosen
        }
        try:
            n_questions = sum(len(c.questions) for c in convs)
            ingest_bar = Progress("ingest", len(convs) * len(chosen), progress)
            for conv in convs:
                scope = ("locomo", conv.sample_id)
                items = [
                    NewMemory(
                        t.content, scope, event_time=t.event_time, metadata={"dia_id": t.dia_id}
                    )
                    for t in conv.turns
                ]
                for m in chosen:
                    start = time.perf_counter()
                    if m.ingest == "plain":
                        stores[m.name].add_many(items)
                    elif m.ingest == "facts":
                        for first in range(0, len(items), FACTS_EVERY):
                            added = stores[m.name].add_many(items[first : first + FACTS_EVERY])
                            sources.update((a.id, str(a.metadata["dia_id"])) for a in added)
                            stores[m.name].consolidate(scope)
                    else:
                        loop_searches[m.name] += replay_agent_loop(
                            stores[m.name], conv, scope, learn=m.ingest == "loop-learn"
                        )
                    ingest_s[m.name] += time.perf_counter() - start
                    ingest_bar.update()
            ingest_bar.close()
            if ingest == "agent-loop":
                graph = {
                    m.name: graph_shape(Path(tmp) / m.name, dynamics.decay_rate) for m in chosen
                }
            query_bar = Progress("questions", n_questions, progress)
            for conv in convs:
                scope = ("locomo", conv.sample_id)
                for q in conv.questions:
                    evidence = set(q.evidence)
                    for m in chosen:
                        start = time.perf_counter()
                        retrieved, n, flipped = _ask(
                            stores[m.name],
                            m,
                            configs[m.name],
                            q.text,
                            scope,
                            conv,
                            search_ks,
                            counter,
                            sources,
                        )
                        query_s[m.name] += time.perf_counter() - start
                        searches[m.name] += n
                        assoc[m.name]["hits"] += len(flipped)
                        assoc[m.name]["evidence"] += len(set(flipped) & evidence)
                        for key in (configs[m.name].default_k, "512t"):
                            facts = [d for d, _ in retrieved.get(key, []) if d.startswith(FACT)]
                            assoc[m.name][f"facts@{key}"] += len(facts)
                            assoc[m.name][f"facts_citing@{key}"] += sum(
                                bool(set(_fact_dias(d)) & evidence) for d in facts
                            )
                        wanted: list[int | str] = [*ks, *budget_keys]
                        scored = _score({k: retrieved[k] for k in wanted}, evidence, counter)
                        for key in _bucket(q.category, conv.sample_id):
                            tally[m.name][key].add(*scored)
                        if qa_runner is not None:
                            qa_runner.ask(m.name, conv, q, retrieved[qa_runner.k])
                    query_bar.update()
            query_bar.close()
        finally:
            for store in stores.values():
                store.close()

    results = _results(
        data=data,
        convs=convs,
        chosen=chosen,
        configs=configs,
        overrides=overrides,
        seed=seed,
        ks=ks,
        limits=(conversations, questions),
        report=report,
        counter=counter,
        cache=cache,
        embed_s=embed_s,
        tally=tally,
        ingest_s=ingest_s,
        query_s=query_s,
        searches=searches,
        assoc=assoc,
    )
    results["config"]["ingest"] = ingest
    if ingest == "agent-loop":
        results["config"]["loop_k"] = LOOP_K
        results["graph"] = graph
        for name, n in loop_searches.items():
            results["methods"][name]["ingest_searches"] = n
    if qa_runner is not None:
        results["qa"] = qa_runner.results()
    if out is not None:
        write_results(results, out)
    return results


def _ask(
    mem: HelaMemory,
    method: Method,
    cfg: RetrievalConfig,
    query: str,
    scope: tuple[str, ...],
    conv: Conversation,
    ks: Sequence[int],
    counter: TokenCounter | None = None,
    sources: Mapping[str, str] | None = None,
) -> tuple[dict[int | str, list[tuple[str, str]]], int, list[str]]:
    """Ask one question; returns hits per k as (dia_id, content), searches, association dia_ids.

    Besides each k, key ``"{T}t"`` holds the hits for the token budget T
    (:func:`_score` keeps the prefix that fits): without spreading the base
    ranking; with it ``search(max_tokens=T)``, every hit costing its content's
    tokens (as :func:`_score` counts them) so that all methods pay alike.
    """
    budget_keys = [f"{t}t" for t in BUDGETS]
    sem_k = None if method.ingest == "facts" else 0  # facts as the defaults give them

    def hits(k: int, learn: bool) -> list[tuple[str, str, str]]:
        res = mem.search(
            query,
            scope,
            k=k,
            learn=learn,
            spread=method.spread,
            reference_time=conv.reference_time,
            semantic_k=sem_k,
        )
        return [(_dia(h, sources), h.content, h.provenance) for h in res]

    if not method.spread:
        res = mem.search(
            query,
            scope,
            k=max(*ks, _BUDGET_K),
            learn=method.learn,
            spread=False,
            reference_time=conv.reference_time,
            semantic_k=0,
        )
        ranked = sorted(res, key=lambda h: -h.activation)  # the base top-k of each k
        top = [(_dia(h), h.content, h.provenance) for h in ranked]
        cut: dict[int | str, list[tuple[str, str]]] = {
            k: [(d, c) for d, c, _ in top[:k]] for k in ks
        }
        cut.update({b: [(d, c) for d, c, _ in top] for b in budget_keys})
        return cut, 1, []
    # read-only searches first, the learning one last: every k sees the same state
    learn_k = cfg.default_k
    order = [k for k in ks if not (method.learn and k == learn_k)]
    out: dict[int | str, list[tuple[str, str]]] = {}
    flipped: list[str] = []
    for k in order:
        found = hits(k, False)
        out[k] = [(d, c) for d, c, _ in found]
        if k == learn_k:
            flipped = [d for d, _, p in found if p == "association"]
    count = (counter or token_counter()).count

    def content_cost(line: str) -> int:  # "- [date] content\n": the content and its newline
        return count(line.split("] ", 1)[-1])

    for t, b in zip(BUDGETS, budget_keys, strict=True):
        res = mem.search(
            query,
            scope,
            k=_BUDGET_K,
            max_tokens=t,
            count_tokens=content_cost,
            learn=False,
            spread=True,
            reference_time=conv.reference_time,
            semantic_k=sem_k,
        )
        out[b] = [
            (_dia(h, sources), h.content) for h in ranking_order(list(res), cfg.association_share)
        ]
    n = len(order) + len(BUDGETS)
    if method.learn:
        found = hits(learn_k, True)
        n += 1
        flipped = [d for d, _, p in found if p == "association"]
        if learn_k in ks:
            out[learn_k] = [(d, c) for d, c, _ in found]
    return out, n, flipped


def _results(
    *,
    data: Path,
    convs: list[Conversation],
    chosen: list[Method],
    configs: Mapping[str, RetrievalConfig],
    overrides: Mapping[str, Any],
    seed: int,
    ks: Sequence[int],
    limits: tuple[int | None, int | None],
    report: EvidenceReport,
    counter: TokenCounter,
    cache: CachingEmbedder,
    embed_s: float,
    tally: Mapping[str, Mapping[str, _Tally]],
    ingest_s: Mapping[str, float],
    query_s: Mapping[str, float],
    searches: Mapping[str, int],
    assoc: Mapping[str, Counter[str]],
) -> dict[str, Any]:
    n_questions = sum(len(c.questions) for c in convs)
    scored_keys: list[int | str] = [*ks, *(f"{t}t" for t in BUDGETS)]
    keys = [str(c) for c in CATEGORIES] + ["1-4", "all"]
    names = {**{str(c): n for c, n in CATEGORIES.items()}, "1-4": "1-4", "all": "all"}
    methods_out: dict[str, Any] = {}
    for m in chosen:
        cats = {}
        for key in keys:
            entry = {"name": names[key], **tally[m.name].get(key, _Tally()).summary(scored_keys)}
            cats[key] = entry
        methods_out[m.name] = {
            "description": m.description,
            "spread": m.spread,
            "learn": m.learn,
            "retrieval": configs[m.name].model_dump(),
            "ingest_s": round(ingest_s[m.name], 3),
            "query_s": round(query_s[m.name], 3),
            "searches": searches[m.name],
            "query_ms_per_question": (
                round(1000 * query_s[m.name] / n_questions, 2) if n_questions else None
            ),
            "association_hits": {
                "at_k": configs[m.name].default_k,
                "total": assoc[m.name]["hits"],
                "evidence": assoc[m.name]["evidence"],
            },
            "facts": {
                str(key): {
                    "returned": assoc[m.name][f"facts@{key}"],
                    "citing_evidence": assoc[m.name][f"facts_citing@{key}"],
                    "citing_rate": (
                        round(
                            assoc[m.name][f"facts_citing@{key}"] / assoc[m.name][f"facts@{key}"],
                            4,
                        )
                        if assoc[m.name][f"facts@{key}"]
                        else None
                    ),
                }
                for key in (configs[m.name].default_k, "512t")
            },
            "categories": cats,
            "conversations": {
                c.sample_id: tally[m.name].get(f"{c.sample_id}/1-4", _Tally()).summary(scored_keys)
                for c in convs
            },
        }
    return {
        "benchmark": "locomo-retrieval",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": str(data),
        "config": {
            "conversations": limits[0],
            "questions_per_conversation": limits[1],
            "methods": [m.name for m in chosen],
            "ks": list(ks),
            "token_budgets": list(BUDGETS),
            "retrieval_overrides": dict(overrides),
            "embedder": cache.name,
            "scope": "one per conversation: ('locomo', sample_id)",
            "reference_time": "the conversation's last session date",
            "memory": "one per turn: 'speaker: text' + ' [image: caption]'",
        },
        "seed": seed,
        "versions": versions(),
        "token_counter": {"name": counter.name, "exact": counter.exact, "detail": counter.detail},
        "dataset": {
            "conversations": [c.sample_id for c in convs],
            "turns": sum(len(c.turns) for c in convs),
            "questions": n_questions,
            "evidence": report.as_dict(),
        },
        "embedding": {"texts": cache.computed, "seconds": round(embed_s, 3)},
        "methods": methods_out,
        "token_parity": token_parity(methods_out, ks),
        "plot": None,
    }


def token_parity(
    methods: Mapping[str, Any], ks: Sequence[int], reference: str = "dense"
) -> dict[str, Any] | None:
    """Context tokens each method needs to match the reference's R@10 (categories 1-4).

    For every method, the smallest ``k`` whose R@k reaches the reference's
    R@10 (R@ the largest k when 10 is not measured), with its tokens and hits.

    Args:
        methods: ``results["methods"]``.
        ks: The cut-offs measured.
        reference: The method to match.

    Returns:
        ``None`` when the reference method did not run.

    Examples:
        >>> cat = lambda r5, r10, t5, t10: {"categories": {"1-4": {
        ...     "r@5": r5, "r@10": r10, "tokens@5": t5, "tokens@10": t10,
        ...     "hits@5": 5, "hits@10": 10}}}
        >>> p = token_parity({"dense": cat(.4, .5, 150, 300), "x": cat(.6, .7, 200, 400)}, [5, 10])
        >>> p["methods"]["x"]
        {'k': 5, 'r': 0.6, 'tokens': 200, 'hits': 5, 'no_more_tokens': True}
    """
    if reference not in methods:
        return None
    k_ref = 10 if 10 in ks else max(ks)
    ref = methods[reference]["categories"]["1-4"]
    target, budget = ref[f"r@{k_ref}"], ref[f"tokens@{k_ref}"]
    if target is None:
        return None
    out: dict[str, Any] = {"reference": reference, "k": k_ref, "r": target, "tokens": budget}
    per: dict[str, Any] = {}
    for name, m in methods.items():
        c = m["categories"]["1-4"]
        k = next((k for k in sorted(ks) if (c[f"r@{k}"] or 0.0) >= target), None)
        per[name] = (
            None
            if k is None
            else {
                "k": k,
                "r": c[f"r@{k}"],
                "tokens": c[f"tokens@{k}"],
                "hits": c[f"hits@{k}"],
                "no_more_tokens": c[f"tokens@{k}"] <= budget,
            }
        )
    out["methods"] = per
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_markdown(results: Mapping[str, Any]) -> str:
    """The results as markdown tables.

    Args:
        results: What :func:`run_locomo` returned.

    Returns:
        A markdown document: cat 1-4 metrics per method, then R@k per category.
    """
    ks = results["config"]["ks"]
    methods = results["methods"]
    ds = results["dataset"]
    ev = ds["evidence"]
    tok = results["token_counter"]["name"]
    lines = [
        "# LoCoMo retrieval benchmark",
        "",
        f"- data: `{Path(results['data']).name}`, conversations: {', '.join(ds['conversations'])}"
        f" ({ds['turns']} turns, {ds['questions']} scored questions)",
        f"- embedder: {results['config']['embedder']}; tokens: {tok}",
        f"- evidence in the file: {ev['entries']} entries, {ev['split']} split, "
        f"{ev['repaired']} repaired, "
        f"{ev['skipped_unparseable']} unparseable and {ev['skipped_unknown']} unknown skipped; "
        f"{ev['questions_without_evidence']} questions without usable evidence not scored",
        f"- seed {results['seed']}; retrieval overrides: "
        f"{results['config']['retrieval_overrides'] or 'none'}",
        "",
        "## Categories 1-4",
        "",
    ]
    head = (
        ["method"]
        + [f"R@{k}" for k in ks]
        + [f"recall@{k}" for k in ks]
        + [f"tokens@{k}" for k in ks]
        + [f"hits@{ks[-1]}", "ingest s", "query ms/q"]
    )
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in methods.items():
        c = m["categories"]["1-4"]
        row = (
            [name]
            + [_fmt(c[f"r@{k}"]) for k in ks]
            + [_fmt(c[f"recall@{k}"]) for k in ks]
            + [_fmt(c[f"tokens@{k}"], 0) for k in ks]
            + [_fmt(c[f"hits@{ks[-1]}"], 1), _fmt(m["ingest_s"], 1)]
            + [_fmt(m["query_ms_per_question"], 1)]
        )
        lines.append("| " + " | ".join(row) + " |")
    for k in ks:
        lines += ["", f"## R@{k} by category", ""]
        first = next(iter(methods.values()))["categories"]
        head = ["method"] + [
            f"{key} {v['name']} (n={v['questions']})" if key not in ("1-4", "all") else key
            for key, v in first.items()
        ]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, m in methods.items():
            row = [name] + [_fmt(v[f"r@{k}"]) for v in m["categories"].values()]
            lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "R@k: any evidence turn among the hits of `search(k=k)`; recall@k: share of the "
        "evidence found; hits@k: hits returned (at most k; association hits take some of the k).",
        "",
    ]
    if results.get("graph"):
        lines += _render_loop(results)
    budgets = results["config"].get("token_budgets") or []
    if budgets:
        lines += [
            "## Equal tokens (categories 1-4)",
            "",
            "Each method's ranked hits, whole hits in order, while their contents fit T tokens.",
            "",
            "| method | " + " | ".join(f"R@{t} tokens | hits@{t}" for t in budgets) + " |",
            "|---|" + "---|---|" * len(budgets),
        ]
        for name, m in methods.items():
            c = m["categories"]["1-4"]
            cells = [f"{_fmt(c[f'r@{t}t'])} | {_fmt(c[f'hits@{t}t'], 1)}" for t in budgets]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    with_facts = {
        n: m for n, m in methods.items() if any(f["returned"] for f in m["facts"].values())
    }
    if with_facts:
        lines += [
            "## Distilled facts",
            "",
            "Facts returned beside the episodes, and how many cite an evidence turn among "
            "their sources (a fact counts as hitting its source turns in every R above).",
            "",
            "| method | at | facts/question | citing evidence |",
            "|---|---|---|---|",
        ]
        n_q = next(iter(methods.values()))["categories"]["1-4"]["questions"] or 1
        for name, m in with_facts.items():
            for key, f in m["facts"].items():
                at = f"{key[:-1]} tokens" if key.endswith("t") else f"k={key}"
                lines.append(
                    f"| {name} | {at} | {_fmt(f['returned'] / n_q, 2)} | {_fmt(f['citing_rate'])} |"
                )
        lines.append("")
    parity = results.get("token_parity")
    if parity:
        lines += [
            f"## Context at equal recall (match {parity['reference']} R@{parity['k']} = "
            f"{_fmt(parity['r'])}, {_fmt(parity['tokens'], 0)} tokens)",
            "",
            "| method | smallest k | R@k | hits | tokens | no more tokens |",
            "|---|---|---|---|---|---|",
        ]
        for name, p in parity["methods"].items():
            if p is None:
                lines.append(f"| {name} | – | – | – | – | never reached |")
                continue
            lines.append(
                f"| {name} | {p['k']} | {_fmt(p['r'])} | {_fmt(p['hits'], 1)} | "
                f"{_fmt(p['tokens'], 0)} | {'yes' if p['no_more_tokens'] else 'no'} |"
            )
        lines.append("")
    if results.get("qa"):
        lines += render_qa_markdown(results["qa"])
    return "\n".join(lines)


def _render_loop(results: Mapping[str, Any]) -> list[str]:
    """The agent-loop section: recall per category and the graph's shape per replay."""
    ks = results["config"]["ks"]
    methods = results["methods"]
    k = 10 if 10 in ks else ks[-1]
    first = next(iter(methods.values()))["categories"]
    cats = [key for key in first if key in ("1", "2", "3", "4")]
    lines = [
        f"## Agent loop (search(a, k={results['config'].get('loop_k', LOOP_K)}) then "
        "add_turns(a, b, used_ids=hits); questions read-only)",
        "",
        "| replay | "
        + " | ".join(f"R@{x} | recall@{x}" for x in ks)
        + " | "
        + " | ".join(f"R@{k} / recall@{k} {first[c]['name']}" for c in cats)
        + " |",
        "|---|" + "---|---|" * len(ks) + "---|" * len(cats),
    ]
    for name, m in methods.items():
        c = m["categories"]
        cells = [f"{_fmt(c['1-4'][f'r@{x}'])} | {_fmt(c['1-4'][f'recall@{x}'])}" for x in ks]
        cells += [f"{_fmt(c[key][f'r@{k}'])} / {_fmt(c[key][f'recall@{k}'])}" for key in cats]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Graph shape after ingest (node strength: the sum of a memory's edge weights):",
        "",
        "| replay | edges | mean weight | strength p50 | p99 | max | Gini | max degree |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, g in results["graph"].items():
        lines.append(
            f"| {name} | {g['edges']} | {_fmt(g['mean_weight'])} | {_fmt(g['strength_p50'])} | "
            f"{_fmt(g['strength_p99'])} | {_fmt(g['strength_max'])} | "
            f"{_fmt(g['strength_gini'])} | {g['degree_max']} |"
        )
    return [*lines, ""]


def _plot(results: Mapping[str, Any], path: Path) -> dict[str, Any]:
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return {"written": False, "reason": "matplotlib is not installed; no plot"}
    ks = results["config"]["ks"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, m in results["methods"].items():
        c = m["categories"]["1-4"]
        ax.plot(ks, [c[f"recall@{k}"] for k in ks], marker="o", label=name)
    ax.set_xlabel("k")
    ax.set_ylabel("evidence recall@k (categories 1-4)")
    ax.set_xticks(ks)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"written": True, "path": path.name}


def write_results(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and (with matplotlib) the plot.

    Args:
        results: What :func:`run_locomo` returned; its ``plot`` entry is filled in.
        out: The directory (created when missing).

    Returns:
        The paths written, by kind.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    results["plot"] = _plot(results, out / "recall_at_k.png")
    if results["plot"]["written"]:
        paths["plot"] = out / "recall_at_k.png"
    paths["json"].write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_markdown(results), encoding="utf-8")
    return paths
