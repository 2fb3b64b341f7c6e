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
    >>> from helamem.bench.locomo import parse_evidence
    >>> parse_evidence("D8:6; D9:17")
    (['D8:6', 'D9:17'], 'split')
    >>> parse_evidence("D:11:26")
    (['D11:26'], 'repaired')
"""

from __future__ import annotations

import random
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from helamem.core.config import HelaMemConfig, RetrievalConfig
from helamem.core.embeddings import Embedder, MiniLMEmbedder
from helamem.core.engine import HelaMemory
from helamem.core.types import ranking_order

from ._common import CachingEmbedder, Progress, TokenCounter, config_overrides, token_counter
from ._stores import BenchStores
from .locomo_agent import gini, graph_shape, replay_agent_loop, turn_pairs
from .locomo_data import (
    _BUDGET_K,
    BUDGETS,
    CATEGORIES,
    DEFAULT_KS,
    LOOP_K,
    Conversation,
    EvidenceReport,
    LocomoFormatError,
    Question,
    Turn,
    load_locomo,
    parse_evidence,
    parse_session_date,
)
from .locomo_methods import FACTS_EVERY, INGESTS, METHODS, REPLAYS, Method
from .locomo_report import render_markdown, write_results
from .locomo_score import (
    FACT,
    Tally,
    assemble_results,
    bucket,
    dia_of,
    fact_dias,
    score,
    token_parity,
)
from .qa import QARunner, QASettings

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
    stores: BenchStores | None = None,
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
        qa: QA mode (:mod:`~helamem.bench.qa`): every question is also
            answered by an LLM from each method's top ``qa.k`` hits and
            scored (F1, BLEU-1, judge); results under ``qa``.
        ingest: ``"plain"`` (default): every method's store is filled with
            ``add_many`` and questions are asked as the method says.
            ``"agent-loop"``: ``methods`` is ignored and the three
            :data:`REPLAYS` of helamem run side by side (agent loop with
            learning on, off, and plain ingest; see
            :func:`replay_agent_loop`), every question asked read-only; the
            results add each store's :func:`graph_shape` under ``graph``.
        stores: Where the stores keep their graph (default: SQLite under
            ``work_dir``; :class:`~._stores.BenchStores` with ``"postgres"``
            gives each store a fresh schema, dropped when the run ends). The
            results record it under ``config.backend``.

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
    base_cfg, dynamics = config_overrides(overrides)
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

    tally: dict[str, dict[str, Tally]] = {m.name: defaultdict(Tally) for m in chosen}
    ingest_s: dict[str, float] = dict.fromkeys(configs, 0.0)
    query_s: dict[str, float] = dict.fromkeys(configs, 0.0)
    searches: dict[str, int] = dict.fromkeys(configs, 0)
    assoc = {m.name: Counter[str]() for m in chosen}
    loop_searches: dict[str, int] = dict.fromkeys(configs, 0)
    graph: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}  # memory id -> dia_id, for facts' source turns

    where = stores if stores is not None else BenchStores()
    backend = where.describe()
    graph_configs = {m.name: where.store() for m in chosen}
    with tempfile.TemporaryDirectory(prefix="helamem-locomo-", dir=work_dir) as tmp:
        mems = {
            m.name: HelaMemory(
                HelaMemConfig(
                    path=Path(tmp) / m.name,
                    retrieval=configs[m.name],
                    dynamics=dynamics,
                    store=graph_configs[m.name],
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
                items = [t.memory(scope) for t in conv.turns]
                for m in chosen:
                    start = time.perf_counter()
                    if m.ingest == "plain":
                        mems[m.name].add_many(items)
                    elif m.ingest == "facts":
                        for first in range(0, len(items), FACTS_EVERY):
                            added = mems[m.name].add_many(items[first : first + FACTS_EVERY])
                            sources.update((a.id, str(a.metadata["dia_id"])) for a in added)
                            mems[m.name].consolidate(scope)
                    else:
                        loop_searches[m.name] += replay_agent_loop(
                            mems[m.name], conv, scope, learn=m.ingest == "loop-learn"
                        )
                    ingest_s[m.name] += time.perf_counter() - start
                    ingest_bar.update()
            ingest_bar.close()
            if ingest == "agent-loop":
                graph = {
                    m.name: graph_shape(
                        Path(tmp) / m.name, dynamics.decay_rate, graph_configs[m.name]
                    )
                    for m in chosen
                }
            query_bar = Progress("questions", n_questions, progress)
            for conv in convs:
                scope = ("locomo", conv.sample_id)
                for q in conv.questions:
                    evidence = set(q.evidence)
                    for m in chosen:
                        start = time.perf_counter()
                        retrieved, n, flipped = _ask(
                            mems[m.name],
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
                                bool(set(fact_dias(d)) & evidence) for d in facts
                            )
                        wanted: list[int | str] = [*ks, *budget_keys]
                        scored = score({k: retrieved[k] for k in wanted}, evidence, counter)
                        for key in bucket(q.category, conv.sample_id):
                            tally[m.name][key].add(*scored)
                        if qa_runner is not None:
                            qa_runner.ask(m.name, conv, q, retrieved[qa_runner.k])
                    query_bar.update()
            query_bar.close()
        finally:
            for store in mems.values():
                store.close()
            where.drop_schemas([c.schema_name for c in graph_configs.values() if c is not None])

    results = assemble_results(
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
    results["config"]["backend"] = backend
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
        found = list(res)
        if sem_k is None:  # facts take slots of the k: equal hits with every other method
            found = sorted(found, key=lambda h: -h.score)[:k]
        return [(dia_of(h, sources), h.content, h.provenance) for h in found]

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
        top = [(dia_of(h), h.content, h.provenance) for h in ranked]
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
            (dia_of(h, sources), h.content) for h in ranking_order(list(res), cfg.association_share)
        ]
    n = len(order) + len(BUDGETS)
    if method.learn:
        found = hits(learn_k, True)
        n += 1
        flipped = [d for d, _, p in found if p == "association"]
        if learn_k in ks:
            out[learn_k] = [(d, c) for d, c, _ in found]
    return out, n, flipped
