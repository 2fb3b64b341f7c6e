"""Core benchmark: ingest throughput and search latency beside plain Chroma.

Superseded by ``helamem bench scale`` (``./dev bench-scale``): realistic
Zipf-like memories, one scope and 100 scopes, precomputed query vectors on
both sides, record_turn, RSS and disk. This script is kept for comparison
with its earlier numbers (which include the query embedding on both sides).

Not a test: it measures, repeats, and reports medians and ratios against a
baseline run in the same process (timings on a shared 2-core machine are
noisy; read the ratios first).

    ./dev bench                       # ingest 2,000 turns; search at 10k and 100k
    ./dev bench --sizes 10000 --queries 100

What it reports:
  * ingest: turns/s through ``add_many`` (batched, default MiniLM embedder,
    SQLite + FTS5 + Chroma), beside the embedder alone and a plain Chroma
    ``add`` of the same vectors.
  * search: p50/p95 of ``HelaMemory.search`` (query embedding included) at
    each size, with and without spreading, beside a plain Chroma query
    (same query embedding, same vectors, its own collection).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
from chromadb.config import Settings

from helamem.core import HelaMemConfig, HelaMemory, MiniLMEmbedder, NewMemory

NAMES = ["Alice", "Bob", "Caroline", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jon"]
VERBS = [
    "visited",
    "talked about",
    "started",
    "finished",
    "planned",
    "loved",
    "painted",
    "cooked",
    "read about",
    "signed up for",
    "cancelled",
    "recommended",
]
OBJECTS = [
    "a pottery class",
    "the Berlin marathon",
    "a camping trip to Yosemite",
    "a new violin",
    "an LGBTQ support group",
    "her grandmother's recipes",
    "a job interview",
    "a book by Ursula Le Guin",
    "the adoption agency",
    "a charity run",
    "a beach sunset",
    "his vintage guitar",
    "a photography workshop",
    "the local animal shelter",
    "a road trip across Canada",
    "a sci-fi convention",
    "a yoga retreat",
    "a tax audit",
]
TAILS = [
    "last weekend",
    "with the kids",
    "and felt proud",
    "because it was on sale",
    "after a long week",
    "with an old friend",
    "for the first time",
    "again this year",
    "despite the rain",
    "to relax",
    "and posted photos",
    "on a Tuesday evening",
]


def sentence(rng: random.Random, i: int) -> str:
    return (
        f"{rng.choice(NAMES)}: I {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
        f"{rng.choice(TAILS)} (note {i})."
    )


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def bench_ingest(n: int, repeats: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    texts = [sentence(rng, i) for i in range(n)]
    emb = MiniLMEmbedder()
    emb.embed(texts[:32])  # load the model outside the timing
    rates, embed_rates, chroma_rates = [], [], []
    for r in range(repeats):
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            vecs = emb.embed(texts)
            embed_rates.append(n / (time.perf_counter() - t))
            client = chromadb.PersistentClient(
                path=f"{d}/plain", settings=Settings(anonymized_telemetry=False)
            )
            col = client.create_collection(
                "plain", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
            )
            t = time.perf_counter()
            for i in range(0, n, 500):
                col.add(
                    ids=[str(j) for j in range(i, min(n, i + 500))], embeddings=vecs[i : i + 500]
                )
            chroma_rates.append(n / (time.perf_counter() - t))
            with HelaMemory(HelaMemConfig(path=Path(d) / "hm"), embedder=emb) as mem:
                mem.open()
                items = [NewMemory(x, ("bench", f"conv{r}")) for x in texts]
                t = time.perf_counter()
                for i in range(0, n, 500):
                    mem.add_many(items[i : i + 500])
                rates.append(n / (time.perf_counter() - t))
    return {
        "turns": n,
        "repeats": repeats,
        "helamem_turns_per_s_median": statistics.median(rates),
        "embedder_only_texts_per_s_median": statistics.median(embed_rates),
        "plain_chroma_add_per_s_median": statistics.median(chroma_rates),
        "all": {"helamem": rates, "embedder": embed_rates, "chroma": chroma_rates},
    }


class _Recorder:
    """The MiniLM embedder, keeping what it computed (to fill the plain collection)."""

    def __init__(self, inner: MiniLMEmbedder) -> None:
        self.inner = inner
        self.seen: list[np.ndarray] = []
        self.name = inner.name
        self.dimension = inner.dimension

    def embed(self, texts: list[str]) -> np.ndarray:
        out = self.inner.embed(texts)
        if len(texts) > 1:
            self.seen.append(out)
        return out


def bench_search(size: int, queries: int, seed: int, workdir: Path) -> dict[str, Any]:
    rng = random.Random(seed)
    texts = [sentence(rng, i) for i in range(size)]
    emb = MiniLMEmbedder()
    rec = _Recorder(emb)
    scope = ("bench", "scale")
    path = workdir / f"hm-{size}"
    t0 = time.perf_counter()
    with HelaMemory(HelaMemConfig(path=path), embedder=rec) as mem:
        for i in range(0, size, 1000):
            mem.add_many([NewMemory(x, scope) for x in texts[i : i + 1000]])
        build_s = time.perf_counter() - t0
        # the same vectors in a plain Chroma collection
        client = chromadb.PersistentClient(
            path=str(workdir / f"plain-{size}"), settings=Settings(anonymized_telemetry=False)
        )
        col = client.get_or_create_collection(
            "plain", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
        )
        vecs = np.concatenate(rec.seen)
        for i in range(0, size, 2000):
            col.add(
                ids=[str(j) for j in range(i, min(size, i + 2000))], embeddings=vecs[i : i + 2000]
            )
        qs = [
            f"What did {rng.choice(NAMES)} do with {rng.choice(OBJECTS)}?" for _ in range(queries)
        ]
        for q in qs[:5]:  # warm up both
            mem.search(q, scope, k=10, learn=False)
            col.query(query_embeddings=emb.embed([q]), n_results=10)
        rec.seen.clear()
        it = iter(qs * 6)
        plain = timed(
            lambda: col.query(query_embeddings=emb.embed([next(it)]), n_results=10), queries
        )
        full = timed(lambda: mem.search(next(it), scope, k=10), queries)
        ro = timed(lambda: mem.search(next(it), scope, k=10, learn=False), queries)
        nospread = timed(
            lambda: mem.search(next(it), scope, k=10, spread=False, learn=False), queries
        )
        embed_only = timed(lambda: emb.embed([next(it)]), queries)
    res = {
        "size": size,
        "queries": queries,
        "build_s": build_s,
        "plain_chroma_ms": {"p50": pct(plain, 50), "p95": pct(plain, 95)},
        "search_ms": {"p50": pct(full, 50), "p95": pct(full, 95)},
        "search_learn_false_ms": {"p50": pct(ro, 50), "p95": pct(ro, 95)},
        "search_no_spread_ms": {"p50": pct(nospread, 50), "p95": pct(nospread, 95)},
        "query_embedding_ms": {"p50": pct(embed_only, 50)},
    }
    res["ratio_p50_search_vs_chroma"] = res["search_ms"]["p50"] / res["plain_chroma_ms"]["p50"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description="HeLa-Mem core benchmark")
    ap.add_argument("--ingest", type=int, default=2000, help="turns for the ingest benchmark")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("bench-results/core.json"))
    args = ap.parse_args()
    report: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": __import__("os").cpu_count(),
            "platform": platform.platform(),
        },
        "seed": args.seed,
    }
    if args.ingest:
        report["ingest"] = bench_ingest(args.ingest, args.repeats, args.seed)
        ing = report["ingest"]
        print(
            f"ingest {args.ingest} turns (median of {args.repeats}): "
            f"helamem {ing['helamem_turns_per_s_median']:.0f} turns/s | "
            f"embedder alone {ing['embedder_only_texts_per_s_median']:.0f}/s | "
            f"plain chroma add {ing['plain_chroma_add_per_s_median']:.0f}/s",
            flush=True,
        )
    report["search"] = []
    with tempfile.TemporaryDirectory() as d:
        for size in args.sizes:
            r = bench_search(size, args.queries, args.seed, Path(d))
            report["search"].append(r)
            print(
                f"search @ {size}: helamem p50 {r['search_ms']['p50']:.1f} ms "
                f"(p95 {r['search_ms']['p95']:.1f}) | learn=False p50 "
                f"{r['search_learn_false_ms']['p50']:.1f} | no spread p50 "
                f"{r['search_no_spread_ms']['p50']:.1f} | plain chroma p50 "
                f"{r['plain_chroma_ms']['p50']:.1f} ms (both incl. query embedding "
                f"{r['query_embedding_ms']['p50']:.1f} ms) | ratio "
                f"{r['ratio_p50_search_vs_chroma']:.2f}x | build {r['build_s']:.0f} s",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
