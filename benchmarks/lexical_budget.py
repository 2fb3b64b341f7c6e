"""What ``lexical_max_postings`` costs in ranking and buys in time, at one store size.

Not a test: builds one store of ``--size`` synthetic agent turns in one scope
(``bench scale``'s seeded corpus, hashing vectors), then asks ``--queries``
of its questions once per budget, read-only, with every other setting at its
default. Per budget it reports:

* the lexical leg alone (``SearchTiming.lexical_s``: term statistics, FTS5,
  the candidates' rows): p50 / p95 ms;
* the whole search (engine side): p50 / p95 ms;
* agreement with no budget: the mean share of the unbudgeted BM25 top-M
  candidates that the budgeted query still returns (``lexical@M``), and of the
  unbudgeted search's top-k hits (``hits@k``), the ranking a caller sees.

Budgets are run in turn on the same store (the config swapped on the owner
thread between runs), each after one warm-up pass.

    .venv/bin/python benchmarks/lexical_budget.py --size 100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from helamem.bench.scale_corpus import Corpus, TableEmbedder
from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, NewMemory, RetrievalConfig
from helamem.core.text import drop_common, fts_match, fts_terms

SCOPE = ("scale", "all")


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def _lexical_top(core: Any, query: str, budget: int) -> list[int]:
    """The BM25 candidates the lexical leg would take (no scope filter: one scope)."""
    cfg = core.config.retrieval
    terms = fts_terms(query)
    rows, df = core.store.term_stats(terms)
    terms = drop_common(terms, df, rows, cfg.lexical_max_df, max_postings=budget)
    match = fts_match(terms)
    return [n for n, _ in core.store.lexical(match, None, 2 * cfg.candidates)] if match else []


def run(size: int, queries: int, budgets: list[int], k: int, seed: int) -> dict[str, Any]:
    corpus = Corpus(seed)
    turns = corpus.turns(size)
    questions = corpus.questions(queries)
    inner = HashingEmbedder(384, token_vectors=True)
    texts = [t for t, _ in turns] + questions
    table = TableEmbedder(inner, texts, inner.embed(texts), tokens=True)
    out: dict[str, Any] = {"size": size, "queries": queries, "k": k, "seed": seed, "budgets": {}}
    with (
        tempfile.TemporaryDirectory(prefix="helamem-lexbudget-") as tmp,
        HelaMemory(HelaMemConfig(path=Path(tmp)), embedder=table) as mem,
    ):
        for b in range(0, size, 1000):
            mem.add_many(NewMemory(t, SCOPE, role=r) for t, r in turns[b : b + 1000])
        base_cfg = mem._call(lambda core: core.config)
        exact_lex: list[list[int]] = []
        exact_hits: list[list[str]] = []
        for budget in [0, *budgets]:
            cfg = base_cfg.model_copy(
                update={"retrieval": RetrievalConfig(lexical_max_postings=budget)}
            )
            mem._call(lambda core, cfg=cfg: setattr(core, "config", cfg))
            for q in questions[: min(10, queries)]:  # warm-up
                mem.search(q, SCOPE, k=k, learn=False)
            lex_s, total_s, lex_agree, hit_agree = [], [], [], []
            for i, q in enumerate(questions):
                hits = [h.memory.id for h in mem.search(q, SCOPE, k=k, learn=False)]
                t = mem._call(lambda core: core.last_search_timing)
                lex_s.append(t.lexical_s)
                total_s.append(t.total_s)
                lex = mem._call(lambda core, q=q, b=budget: _lexical_top(core, q, b))
                if budget == 0:
                    exact_lex.append(lex)
                    exact_hits.append(hits)
                want_lex, want_hits = set(exact_lex[i]), set(exact_hits[i])
                lex_agree.append(len(want_lex & set(lex)) / len(want_lex) if want_lex else 1.0)
                hit_agree.append(len(want_hits & set(hits)) / len(want_hits) if hits else 1.0)
            out["budgets"][str(budget)] = {
                "lexical_ms": {"p50": _pct(lex_s, 50), "p95": _pct(lex_s, 95)},
                "engine_ms": {"p50": _pct(total_s, 50), "p95": _pct(total_s, 95)},
                "lexical_agreement": statistics.fmean(lex_agree),
                "hits_agreement": statistics.fmean(hit_agree),
            }
            print(budget, json.dumps(out["budgets"][str(budget)]), file=sys.stderr)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--budgets", type=int, nargs="+", default=[20_000, 8_000, 4_000, 2_000])
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    res = run(args.size, args.queries, args.budgets, args.k, args.seed)
    print(f"| budget | lexical p50 / p95 ms | engine p50 / p95 ms | lexical@M | hits@{args.k} |")
    print("|---:|---:|---:|---:|---:|")
    for b, r in res["budgets"].items():
        print(
            f"| {int(b):,} | {r['lexical_ms']['p50']:.2f} / {r['lexical_ms']['p95']:.2f} "
            f"| {r['engine_ms']['p50']:.2f} / {r['engine_ms']['p95']:.2f} "
            f"| {r['lexical_agreement']:.3f} | {r['hits_agreement']:.3f} |"
        )


if __name__ == "__main__":
    main()
