"""Scale benchmark: HeLa-Mem beside a plain Chroma query over the same vectors.

Synthetic but realistic memories (agent-conversation turns generated offline
from seeded templates, every slot word drawn from a Zipf-like distribution
over a vocabulary of real words and a long tail of made-up names) are stored
at each size (default 1k, 10k and 100k; 1M on request) in two layouts:

- ``one-scope``: every memory in one scope, every query against it;
- ``spread``: the same memories in contiguous blocks over 100 scopes
  (tenants; ``scopes`` changes the number); each query goes to one scope,
  in turn;
- ``tenants`` (many tenants, on request): the same, over ``tenants`` scopes
  (default 10,000; 1M memories make 100 per tenant, the issue's cell). Each
  query goes to another tenant. Plain Chroma gets one collection per tenant,
  as a naive per-tenant layout would; a query or add it fails (e.g. "Nothing
  found on disk" once it opens more HNSW indexes than the open-file limit
  allows) is counted, not fatal. Run it under ``ulimit -n 1024``.

Every text is embedded once per run (queries and recorded turns included)
and the vectors are reused by every size and layout: HeLa-Mem gets an
embedder that looks a text's vector up in that table, and the plain Chroma
baseline (a ``chromadb.PersistentClient`` collection per scope holding the
same vectors, cosine space, queried with ``n_results = k``) gets the same
query vector. So neither side pays for the query embedding, and ingest
throughput is that of the store (the embedder's own throughput is reported
beside it). The one exception is token vectors: when the embedder gives them
(MiniLM; the hashing embedder gives one hashed vector per word) HeLa-Mem
computes and stores them at ingest, as the default retrieval's
late-interaction leg needs them; ``late=False`` stores none.

Measured per size and layout (timings are medians over ``repeats`` passes;
each pass asks every query once per method, methods interleaved):

- ingest: turns/s through ``add_many`` (batches of 1,000), and the plain
  Chroma ``add`` of the same vectors;
- search: p50/p95 of ``search()`` with its defaults (spreading and learning
  on), read-only with spreading (``learn=False``) and without it
  (``spread=False, learn=False``), beside the plain Chroma query; the
  headline is ``search()`` p50 / Chroma p50;
- ``record_turn``: agent-visible latency of
  :meth:`~helamem.core.hooks.TurnRecorder.record_turn_sync` (the turn is
  stored in the background; consolidation off), with the background
  throughput and a direct ``add_turn`` for comparison;
- resources: resident memory of the process (``/proc/self/status``) grown
  while building the store, divided by the memories, and bytes on disk per
  memory (SQLite with its WAL, plus Chroma), each beside plain Chroma's.

The stores are embedded by default (SQLite, Chroma's files). With
:class:`~._stores.BenchStores` the graph goes to PostgreSQL (a fresh schema
per cell, dropped after it; its tables' size counts as HeLa-Mem's disk) and
the vectors to a Chroma server (a fresh collection prefix per cell, deleted
after it), plain Chroma's collections too, so both sides pay the same network
hop; a server's files are not measured (disk then counts only what lies
here, and PostgreSQL's tables).

Examples:
    >>> from helamem.bench.scale import Corpus
    >>> c = Corpus(seed=1)
    >>> turns = c.turns(4)
    >>> len(turns), turns[0][1]
    (4, 'user')
    >>> turns == Corpus(seed=1).turns(4)
    True
"""

from __future__ import annotations

import gc
import os
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from helamem.core.config import HelaMemConfig
from helamem.core.embeddings import Embedder, Vectors
from helamem.core.engine import HelaMemory
from helamem.core.hooks import TurnRecorder
from helamem.core.types import NewMemory

from ._common import Progress, config_overrides, versions
from ._stores import BenchStores
from .scale_corpus import Corpus, TableEmbedder
from .scale_report import render_markdown, write_results

__all__ = [
    "DEFAULT_LAYOUTS",
    "DEFAULT_SIZES",
    "LAYOUTS",
    "TENANTS",
    "Corpus",
    "TableEmbedder",
    "render_markdown",
    "run_scale",
    "write_results",
]

DEFAULT_SIZES = (1_000, 10_000, 100_000)
LAYOUTS = ("one-scope", "spread", "tenants")
DEFAULT_LAYOUTS = ("one-scope", "spread")
SCOPES_SPREAD = 100
TENANTS = 10_000
LEGS = ("dense", "lexical", "late", "rest", "engine")  # see _legs
BATCH = 1_000


def rss_bytes() -> int:
    """Resident memory of this process now (``/proc/self/status``; peak elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (``getrusage``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if os.uname().sysname == "Darwin" else 1024)


def disk_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _pct(xs: Sequence[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), p))


def _legs(mem: HelaMemory) -> dict[str, float]:
    """The last search's time per leg, in seconds (engine side, owner thread)."""
    t = mem._call(lambda core: core.last_search_timing)
    if t is None:
        return {}
    return {
        "dense": t.dense_s,
        "lexical": t.lexical_s,
        "late": t.late_s,
        "rest": t.rest_s,
        "engine": t.total_s,
    }


def _summary_ms(passes: Sequence[Sequence[float]]) -> dict[str, float]:
    """Median over passes of each pass's p50/p95 (inputs in seconds)."""
    return {
        "p50": round(statistics.median(_pct(x, 50) for x in passes) * 1e3, 3),
        "p95": round(statistics.median(_pct(x, 95) for x in passes) * 1e3, 3),
    }


def _scopes(
    layout: str, n: int, spread: int = SCOPES_SPREAD, tenants: int = TENANTS
) -> list[tuple[str, ...]]:
    if layout == "one-scope":
        return [("scale", "all")] * n
    parts = tenants if layout == "tenants" else spread
    return [("scale", f"t{i * parts // n:05d}") for i in range(n)]


def _plain_collections(
    path: Path,
    scopes: Sequence[tuple[str, ...]],
    vectors: Vectors,
    stores: BenchStores | None = None,
) -> tuple[Any, dict[tuple[str, ...], Any], float, int]:
    """Plain Chroma: a collection per scope (on the Chroma server of ``stores`` if it
    names one, else embedded at ``path``); returns (client, collections, seconds,
    vectors whose ``add`` failed)."""
    import chromadb
    from chromadb.config import Settings

    prefix = "plain"
    if stores is not None and stores.chroma_host is not None:
        client = stores.chroma_client()
        prefix = f"{stores.collection_prefix()}-plain"
    else:
        client = chromadb.PersistentClient(
            path=str(path), settings=Settings(anonymized_telemetry=False)
        )
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, s in enumerate(scopes):
        groups.setdefault(s, []).append(i)
    from chromadb.errors import ChromaError

    cols: dict[tuple[str, ...], Any] = {}
    failed = 0
    start = time.perf_counter()
    for j, (scope, rows) in enumerate(groups.items()):
        col = client.create_collection(
            f"{prefix}-{j}", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
        )
        for b in range(0, len(rows), BATCH):
            part = rows[b : b + BATCH]
            try:
                col.add(ids=[str(i) for i in part], embeddings=vectors[part])
            except ChromaError:
                failed += len(part)
        cols[scope] = col
    return client, cols, time.perf_counter() - start, failed


# -- one cell of the grid ----------------------------------------------------


def _run_cell(
    *,
    size: int,
    layout: str,
    turns: Sequence[tuple[str, str]],
    questions: Sequence[str],
    exchanges: Sequence[tuple[str, str]],
    table: TableEmbedder,
    vectors: Vectors,
    workdir: Path,
    repeats: int,
    k: int,
    progress: TextIO | None,
    profile: Path | None,
    spread: int,
    tenants: int = TENANTS,
    config: HelaMemConfig | None = None,
    stores: BenchStores | None = None,
) -> dict[str, Any]:
    from chromadb.errors import ChromaError

    label = f"{size:,} {layout}"
    scopes = _scopes(layout, size, spread, tenants)
    distinct = list(dict.fromkeys(scopes))
    hm_path = workdir / "helamem"
    plain_path = workdir / "plain"
    gc.collect()
    rss0 = rss_bytes()
    base = config or HelaMemConfig()
    mem = HelaMemory(base.model_copy(update={"path": hm_path}), embedder=table)
    mem.open()
    try:
        bar = Progress(f"ingest {label}", size, progress)
        start = time.perf_counter()
        for b in range(0, size, BATCH):
            mem.add_many(
                NewMemory(turns[i][0], scopes[i], role=turns[i][1])
                for i in range(b, min(size, b + BATCH))
            )
            bar.update(min(BATCH, size - b))
        ingest_s = time.perf_counter() - start
        bar.close()
        gc.collect()
        rss1 = rss_bytes()
        disk_hm = disk_bytes(hm_path)
        disk_pg = stores.schema_bytes(base.store.schema_name) if stores and base.store else None
        _client, cols, plain_s, plain_add_failed = _plain_collections(
            plain_path, scopes, vectors[:size], stores
        )
        gc.collect()
        rss2 = rss_bytes()
        disk_plain = None if stores and stores.chroma_host else disk_bytes(plain_path)

        qvecs = [table.vector(q).reshape(1, -1) for q in questions]
        targets = [distinct[i % len(distinct)] for i in range(len(questions))]

        plain_failed = [0]

        def plain(i: int) -> None:
            try:
                cols[targets[i]].query(
                    query_embeddings=qvecs[i], n_results=k, include=["distances"]
                )
            except ChromaError:
                plain_failed[0] += 1

        def full(i: int) -> None:
            mem.search(questions[i], targets[i], k=k)

        def read_only(i: int) -> None:
            mem.search(questions[i], targets[i], k=k, learn=False)

        def no_spread(i: int) -> None:
            mem.search(questions[i], targets[i], k=k, learn=False, spread=False)

        methods: dict[str, Callable[[int], None]] = {
            "chroma": plain,
            "search": full,
            "search_learn_false": read_only,
            "search_no_spread": no_spread,
        }
        for i in range(min(10, len(questions))):  # warm caches of both sides
            for fn in methods.values():
                fn(i)
        passes: dict[str, list[list[float]]] = {m: [] for m in methods}
        # per pass, per leg of the default search: seconds (see helamem.core._base.SearchTiming)
        legs: dict[str, list[list[float]]] = {leg: [] for leg in LEGS}
        names = list(methods)
        bar = Progress(f"search {label}", repeats * len(questions), progress)
        for r in range(repeats):
            times: dict[str, list[float]] = {m: [] for m in methods}
            parts: dict[str, list[float]] = {leg: [] for leg in LEGS}
            for i in range(len(questions)):
                shift = (i + r) % len(names)  # rotate which method goes first
                for name in names[shift:] + names[:shift]:
                    fn = methods[name]
                    t = time.perf_counter()
                    fn(i)
                    times[name].append(time.perf_counter() - t)
                    if name == "search":  # read after the clock stopped
                        for leg, sec in _legs(mem).items():
                            parts[leg].append(sec)
                bar.update()
            for m in methods:
                passes[m].append(times[m])
            for leg in LEGS:
                legs[leg].append(parts[leg])
        bar.close()
        if profile is not None:
            _profile(
                mem,
                [read_only, no_spread],
                len(questions),
                profile / f"profile-{size}-{layout}.txt",
            )
        search = {m: _summary_ms(p) for m, p in passes.items()}
        search_legs = {leg: _summary_ms(p) for leg, p in legs.items() if all(p)}

        record = _record_turns(mem, exchanges, distinct)
    finally:
        mem.close()
    gc.collect()
    chroma_p50 = search["chroma"]["p50"]
    return {
        "size": size,
        "layout": layout,
        "scopes": len(distinct),
        "ingest": {
            "seconds": round(ingest_s, 3),
            "turns_per_s": round(size / ingest_s, 1),
            "chroma_seconds": round(plain_s, 3),
            "chroma_turns_per_s": round(size / plain_s, 1),
            "chroma_add_failed": plain_add_failed,
        },
        "chroma_query_failed": plain_failed[0],
        "nofile_soft_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "search_ms": search,
        "search_legs_ms": search_legs,
        "ratio_p50": {
            m: round(search[m]["p50"] / chroma_p50, 3) if chroma_p50 > 0 else None
            for m in ("search", "search_learn_false", "search_no_spread")
        },
        "record_turn": record,
        "rss": {
            "helamem_bytes_per_memory": round((rss1 - rss0) / size, 1),
            "chroma_bytes_per_memory": round((rss2 - rss1) / size, 1),
            "process_mb_after_build": round(rss2 / 2**20, 1),
        },
        "disk": {
            "helamem_bytes_per_memory": round((disk_hm + (disk_pg or 0)) / size, 1),
            "chroma_bytes_per_memory": None if disk_plain is None else round(disk_plain / size, 1),
            "helamem_bytes": disk_hm + (disk_pg or 0),
            "chroma_bytes": disk_plain,
            # of helamem_bytes: PostgreSQL's tables (None: the graph is in SQLite, counted above)
            "helamem_postgres_bytes": disk_pg,
        },
    }


def _profile(mem: HelaMemory, fns: Sequence[Callable[[int], None]], n: int, path: Path) -> None:
    """cProfile of ``fns`` over ``n`` queries, on the store's owner thread (where they run)."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    mem._call(lambda _core: profiler.enable())  # on the owner thread
    for fn in fns:
        for i in range(n):
            fn(i)
    mem._call(lambda _core: profiler.disable())
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(30)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue())


def _record_turns(
    mem: HelaMemory, exchanges: Sequence[tuple[str, str]], scopes: Sequence[tuple[str, ...]]
) -> dict[str, Any]:
    """Agent-visible ``record_turn_sync`` latency, then a direct ``add_turn`` baseline."""
    half = len(exchanges) // 2
    lat: list[float] = []
    start = time.perf_counter()
    with TurnRecorder(mem, consolidate_every=None) as rec:
        for i, (user, answer) in enumerate(exchanges[:half]):
            t = time.perf_counter()
            rec.record_turn_sync(scopes[i % len(scopes)], user, answer)
            lat.append(time.perf_counter() - t)
        rec.flush_sync()
        background = time.perf_counter() - start
    direct: list[float] = []
    for i, (user, answer) in enumerate(exchanges[half:]):
        t = time.perf_counter()
        mem.add_turn(scopes[i % len(scopes)], user, answer)
        direct.append(time.perf_counter() - t)
    return {
        "turns": half,
        "record_turn_sync_us": {
            "p50": round(_pct(lat, 50) * 1e6, 1),
            "p95": round(_pct(lat, 95) * 1e6, 1),
        },
        "background_turns_per_s": round(half / background, 1),
        "add_turn_direct_ms": {
            "p50": round(_pct(direct, 50) * 1e3, 3),
            "p95": round(_pct(direct, 95) * 1e3, 3),
        },
    }


# -- the run -----------------------------------------------------------------


def run_scale(
    *,
    out: Path | None,
    sizes: Sequence[int] = DEFAULT_SIZES,
    layouts: Sequence[str] = DEFAULT_LAYOUTS,
    embedder: Embedder,
    queries: int = 100,
    repeats: int = 3,
    record_turns: int = 100,
    k: int = 10,
    seed: int = 0,
    scopes: int = SCOPES_SPREAD,
    tenants: int = TENANTS,
    workdir: Path | None = None,
    progress: TextIO | None = None,
    profile: bool = False,
    late: bool = True,
    retrieval: Mapping[str, Any] | None = None,
    stores: BenchStores | None = None,
) -> dict[str, Any]:
    """Run the scale benchmark and (when ``out`` is given) write its results.

    Args:
        out: Directory for ``results.json`` and ``results.md``; ``None``
            writes nothing.
        sizes: Numbers of memories, each measured in every layout.
        layouts: Among :data:`LAYOUTS`.
        embedder: Computes every vector once (queries and recorded turns too).
        queries: Questions per pass.
        repeats: Passes over the questions; timings are medians over passes.
        record_turns: Turns recorded through :class:`TurnRecorder` (as many
            again through ``add_turn``) after the searches.
        k: Top-k of every search and of the plain Chroma query.
        seed: Seed of the corpus, the questions and the recorded turns.
        scopes: Number of scopes of the ``spread`` layout.
        tenants: Number of scopes of the ``tenants`` layout.
        workdir: Where the stores are built, created when missing (a temporary directory by
            default; each cell's stores are removed after it).
        progress: Stream for progress lines (``None``: silent).
        profile: Write a cProfile summary of HeLa-Mem's searches per cell
            to ``out`` (``profile-SIZE-LAYOUT.txt``).
        late: Store token vectors when ``embedder`` gives them, so searches
            include the late-interaction (MaxSim) leg of the default
            retrieval (``RetrievalConfig.late_weight``); ``False`` stores
            none and searches skip it.
        retrieval: :class:`~helamem.core.RetrievalConfig` overrides for
            HeLa-Mem's store (e.g. ``{"lexical_max_postings": 8000}``);
            ``dynamics.KEY`` keys override :class:`~helamem.core.DynamicsConfig`.
        stores: Where the stores keep their graph and vectors (default:
            SQLite and embedded Chroma under ``workdir``); see
            :class:`~._stores.BenchStores`. Recorded under ``config.backend``.

    Returns:
        The results (as written to ``results.json``).

    Raises:
        ValueError: On an unknown layout or a size, query or turn count
            below 1, or an invalid retrieval override.
    """
    ret, dyn = config_overrides(retrieval or {})
    config = HelaMemConfig(retrieval=ret, dynamics=dyn)
    sizes = sorted(set(sizes))
    if not sizes or min(sizes) < 1:
        raise ValueError("sizes must be positive")
    bad = [x for x in layouts if x not in LAYOUTS]
    if bad or not layouts:
        raise ValueError(f"unknown layout {bad[0] if bad else None!r}; choose from {LAYOUTS}")
    if min(queries, repeats, record_turns, k, scopes, tenants) < 1:
        raise ValueError("queries, repeats, record_turns, k, scopes and tenants must be >= 1")
    corpus = Corpus(seed)
    turns = corpus.turns(max(sizes))
    questions = corpus.questions(queries)
    exchanges = corpus.exchanges(2 * record_turns)
    texts = [t for t, _ in turns] + list(questions) + [x for pair in exchanges for x in pair]
    bar = Progress(f"embedding ({embedder.name})", len(texts), progress)
    start = time.perf_counter()
    parts = []
    for b in range(0, len(texts), 4 * BATCH):
        parts.append(embedder.embed(texts[b : b + 4 * BATCH]))
        bar.update(len(parts[-1]))
    bar.close()
    embed_s = time.perf_counter() - start
    vectors = np.concatenate(parts).astype(np.float32)
    table = TableEmbedder(embedder, texts, vectors, tokens=late, token_texts=questions)
    cells = []
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    where = stores if stores is not None else BenchStores()
    with tempfile.TemporaryDirectory(prefix="helamem-scale-", dir=workdir) as tmp:
        for size in sizes:
            for layout in layouts:
                cell_dir = Path(tmp) / f"{size}-{layout}"
                # a fresh schema and collection prefix per cell, dropped after it
                cell_config = config.model_copy(
                    update={"store": where.store(), "chroma": where.chroma(config.chroma)}
                )
                try:
                    cells.append(
                        _run_cell(
                            size=size,
                            layout=layout,
                            turns=turns,
                            questions=questions,
                            exchanges=exchanges,
                            table=table,
                            vectors=vectors,
                            workdir=cell_dir,
                            repeats=repeats,
                            k=k,
                            progress=progress,
                            profile=out if profile else None,
                            spread=scopes,
                            tenants=tenants,
                            config=cell_config,
                            stores=where,
                        )
                    )
                finally:
                    where.cleanup()
                    shutil.rmtree(cell_dir, ignore_errors=True)
    words = [len(t.split()) for t, _ in turns]
    results: dict[str, Any] = {
        "benchmark": "scale",
        "config": {
            "sizes": sizes,
            "layouts": list(layouts),
            "scopes_spread": scopes,
            "tenants": tenants,
            "queries": queries,
            "repeats": repeats,
            "record_turns": record_turns,
            "k": k,
            "ingest_batch": BATCH,
            "embedder": embedder.name,
            # token vectors are stored and read only when the store's retrieval uses them
            "late_interaction": table.gives_tokens and config.retrieval.late_weight > 0,
            "retrieval": config.retrieval.model_dump(),
            "retrieval_overrides": dict(retrieval or {}),
            "cpus": os.cpu_count(),
            "backend": where.describe(),
        },
        "seed": seed,
        "versions": versions(),
        "corpus": {
            "turns": len(turns),
            "mean_words_per_turn": round(statistics.fmean(words), 2),
            "example_turns": [t for t, _ in turns[:4]],
            "example_questions": list(questions[:4]),
        },
        "embedding": {
            "texts": len(texts),
            "seconds": round(embed_s, 3),
            "texts_per_s": round(len(texts) / embed_s, 1) if embed_s > 0 else None,
            "table_misses": table.misses,
        },
        "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
        "cells": cells,
    }
    if out is not None:
        write_results(results, out)
    return results
