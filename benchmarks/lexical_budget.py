"""What ``lexical_max_postings`` costs in ranking and buys in time, at one store size.

Not a test: builds one store of ``--size`` synthetic agent turns in one scope
(``bench scale``'s seeded corpus, hashing vectors with token vectors), then
asks ``--queries`` of its questions, read-only, under each budget (0, no
budget, is always the reference), every other setting at its default. The
budgets take turns query by query (the order rotated per query, after one
warm-up pass), so machine noise falls on all of them alike. Per budget:

* ``trimmed``: queries whose BM25 terms the budget cut;
* the lexical leg (``SearchTiming.lexical_s``: term statistics, FTS5, the
  candidates' rows) and the whole search (engine side): p50 / p95 ms;
* ``lexical@M``: the mean share of the unbudgeted BM25 candidates (the top
  M = 2 x ``candidates`` rows the lexical leg takes) that the budgeted query
  still returns;
* ``hits@k``: the mean share of the unbudgeted search's top-k hits that the
  budgeted search returns (what a caller sees).

    .venv/bin/python benchmarks/lexical_budget.py --size 100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from helamem.bench.scale_corpus import Corpus, TableEmbedder
from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, NewMemory, RetrievalConfig

SCOPE = ("scale", "all")


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def _lexical_top(core: Any, query: str) -> tuple[list[int], list[str]]:
    """The BM25 candidates the lexical leg takes (one scope: no scope filter), and its words."""
    stats = core._term_stats(query)
    top = core._lexical(query, None, [], "episodic", core.config.retrieval.default_k, stats)
    return list(top), core._lexical_terms(stats)


def run(size: int, queries: int, budgets: list[int], k: int, seed: int) -> dict[str, Any]:
    corpus = Corpus(seed)
    turns = corpus.turns(size)
    questions = corpus.questions(queries)
    inner = HashingEmbedder(384, token_vectors=True)
    texts = [t for t, _ in turns] + questions
    table = TableEmbedder(inner, texts, inner.embed(texts), tokens=True)
    order = list(dict.fromkeys([0, *budgets]))  # the reference first, each budget once
    per: dict[int, dict[str, list[float]]] = {
        b: {"lex": [], "total": [], "lex_agree": [], "hit_agree": [], "trimmed": []} for b in order
    }
    with (
        tempfile.TemporaryDirectory(prefix="helamem-lexbudget-") as tmp,
        HelaMemory(HelaMemConfig(path=Path(tmp)), embedder=table) as mem,
    ):
        for b in range(0, size, 1000):
            mem.add_many(NewMemory(t, SCOPE, role=r) for t, r in turns[b : b + 1000])
        base = mem._call(lambda core: core.config)
        configs = {
            b: base.model_copy(update={"retrieval": RetrievalConfig(lexical_max_postings=b)})
            for b in order
        }

        def ask(budget: int, q: str) -> tuple[list[str], Any, list[int], list[str]]:
            mem._call(lambda core: setattr(core, "config", configs[budget]))
            hits = [h.memory.id for h in mem.search(q, SCOPE, k=k, learn=False)]
            timing = mem._call(lambda core: core.last_search_timing)
            lex, terms = mem._call(lambda core: _lexical_top(core, q))
            return hits, timing, lex, terms

        for q in questions[: min(10, queries)]:  # warm-up
            for b in order:
                ask(b, q)
        for i, q in enumerate(questions):
            got = {}
            for j in range(len(order)):
                b = order[(i + j) % len(order)]
                got[b] = ask(b, q)
            want_hits, _, want_lex, want_terms = got[0]
            for b, (hits, timing, lex, terms) in got.items():
                r = per[b]
                r["lex"].append(timing.lexical_s)
                r["total"].append(timing.total_s)
                r["lex_agree"].append(
                    len(set(want_lex) & set(lex)) / len(want_lex) if want_lex else 1.0
                )
                r["hit_agree"].append(
                    len(set(want_hits) & set(hits)) / len(want_hits) if want_hits else 1.0
                )
                r["trimmed"].append(float(terms != want_terms))
    return {
        "size": size,
        "queries": queries,
        "k": k,
        "seed": seed,
        "embedder": inner.name,
        "budgets": [
            {
                "budget": b,
                "trimmed": int(sum(r["trimmed"])),
                "lexical_ms": {"p50": _pct(r["lex"], 50), "p95": _pct(r["lex"], 95)},
                "engine_ms": {"p50": _pct(r["total"], 50), "p95": _pct(r["total"], 95)},
                "lexical_agreement": statistics.fmean(r["lex_agree"]),
                "hits_agreement": statistics.fmean(r["hit_agree"]),
            }
            for b, r in per.items()
        ],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--size", type=int, default=100_000, help="memories in the one scope (100,000)")
    p.add_argument("--queries", type=int, default=200, help="questions asked per budget (200)")
    p.add_argument(
        "--budgets",
        type=int,
        nargs="+",
        default=[20_000, 8_000, 4_000, 2_000],
        help="lexical_max_postings values measured beside 0 (no budget, the reference)",
    )
    p.add_argument("--k", type=int, default=10, help="top-k of every search (10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corpus and questions")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args()
    res = run(args.size, args.queries, args.budgets, args.k, args.seed)
    if args.out is not None:
        args.out.write_text(json.dumps(res, indent=2), encoding="utf-8")
    print(
        f"{res['size']:,} memories in one scope, {res['queries']} queries, k={res['k']}, "
        f"{res['embedder']}; agreement is with budget 0 (no budget)\n"
    )
    print(
        f"| budget | queries trimmed | lexical p50 / p95 ms | engine p50 / p95 ms "
        f"| lexical@M | hits@{res['k']} |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in res["budgets"]:
        print(
            f"| {r['budget']:,} | {r['trimmed']} "
            f"| {r['lexical_ms']['p50']:.2f} / {r['lexical_ms']['p95']:.2f} "
            f"| {r['engine_ms']['p50']:.2f} / {r['engine_ms']['p95']:.2f} "
            f"| {r['lexical_agreement']:.3f} | {r['hits_agreement']:.3f} |"
        )


if __name__ == "__main__":
    main()
