"""Smoke test of the scale benchmark: tiny sizes, the hashing embedder, the real CLI."""

from __future__ import annotations

import doctest
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helamem.bench import scale as scale_module
from helamem.bench.scale import Corpus, TableEmbedder, render_markdown, run_scale
from helamem.core import HashingEmbedder
from helamem.core.cli import main
from helamem.core.embeddings import token_embedder


def test_doctests() -> None:
    assert doctest.testmod(scale_module).failed == 0


def test_corpus_is_seeded_zipf_like_and_prefix_stable() -> None:
    a, b = Corpus(3), Corpus(3)
    assert a.turns(50) == b.turns(50)
    assert a.turns(20) == a.turns(50)[:20]
    assert a.turns(20) != Corpus(4).turns(20)
    texts = [t for t, _ in a.turns(2000)]
    assert len(set(texts)) == len(texts)
    assert [r for _, r in a.turns(4)] == ["user", "assistant", "user", "assistant"]
    # Zipf-like: the commonest made-up entity is far more frequent than the median one
    counts: dict[str, int] = {}
    for text in texts:
        for word in text.split():
            counts[word.strip("?.,!")] = counts.get(word.strip("?.,!"), 0) + 1
    freq = sorted(counts.values(), reverse=True)
    assert freq[0] > 20 * freq[len(freq) // 2]
    assert len(a.questions(7)) == 7 and all(q.endswith(("?", ".")) for q in a.questions(7))


def test_table_embedder_looks_up_and_falls_back() -> None:
    inner = HashingEmbedder(32)
    texts = ["tea with alice", "bob rides a bike"]
    table = TableEmbedder(inner, texts, inner.embed(texts))
    assert np.allclose(table.embed(texts[::-1]), inner.embed(texts[::-1]))
    assert table.misses == 0
    mixed = table.embed(["unknown words here", texts[0]])
    assert table.misses == 1
    assert np.allclose(mixed, inner.embed(["unknown words here", texts[0]]))
    assert table.name == inner.name and table.dimension == 32
    assert token_embedder(table) is None  # the inner embedder gives no token vectors


def test_table_embedder_gives_the_inner_token_vectors_unless_told_not_to() -> None:
    inner = HashingEmbedder(32, token_vectors=True)
    texts = ["tea with alice", "bob rides a bike"]
    table = TableEmbedder(inner, texts, inner.embed(texts))
    assert token_embedder(table) is table  # so stores keep token vectors (late interaction)
    pooled, toks = table.embed_with_tokens(texts)
    want_pooled, want_toks = inner.embed_with_tokens(texts)
    assert np.allclose(pooled, want_pooled) and table.misses == 0
    assert [t.shape for t in toks] == [t.shape for t in want_toks] == [(2, 32), (3, 32)]
    assert all(np.allclose(a, b) for a, b in zip(toks, want_toks, strict=True))
    off = TableEmbedder(inner, texts, inner.embed(texts), tokens=False)
    assert token_embedder(off) is None
    with pytest.raises(TypeError, match="gives no token vectors"):
        off.embed_with_tokens(texts)


def test_table_embedder_precomputes_the_queries_token_vectors() -> None:
    """The queries' token vectors are computed once, up front: a search pays for none
    of its embeddings (as plain Chroma pays for none); stored turns' are computed."""
    inner = HashingEmbedder(32, token_vectors=True)
    texts, queries = ["tea with alice", "bob rides a bike"], ["who rides a bike?"]
    table = TableEmbedder(inner, texts + queries, inner.embed(texts + queries), token_texts=queries)
    calls: list[list[str]] = []
    real = inner.embed_with_tokens

    def counted(batch: list[str]) -> tuple[object, list[np.ndarray]]:
        calls.append(list(batch))
        return real(batch)

    inner.embed_with_tokens = counted  # type: ignore[method-assign,assignment]
    pooled, toks = table.embed_with_tokens(queries)
    assert calls == []  # looked up, not computed
    want_pooled, want_toks = real(queries)
    assert np.allclose(pooled, want_pooled)
    assert all(np.array_equal(a, b) for a, b in zip(toks, want_toks, strict=True))
    _, turn_toks = table.embed_with_tokens([texts[1], queries[0]])  # a turn among them
    assert calls == [[texts[1], queries[0]]]
    assert np.array_equal(turn_toks[1], want_toks[0])


def test_cli_writes_json_and_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "bench",
            "scale",
            "--sizes",
            "200",
            "--embedder",
            "hashing",
            "--queries",
            "12",
            "--repeats",
            "2",
            "--record-turns",
            "6",
            "--scopes",
            "10",
            "--out",
            str(out),
            "--workdir",
            str(tmp_path / "work"),  # created when missing
            "--quiet",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["benchmark"] == "scale"
    assert results["seed"] == 0
    assert results["config"]["sizes"] == [200]
    assert results["config"]["embedder"] == "hashing-384"
    assert results["config"]["late_interaction"] is True  # the default retrieval's MaxSim leg
    assert {"helamem-core", "chromadb", "numpy"} <= set(results["versions"])
    assert results["embedding"]["table_misses"] == 0
    cells = results["cells"]
    assert [(c["size"], c["layout"]) for c in cells] == [(200, "one-scope"), (200, "spread")]
    assert [c["scopes"] for c in cells] == [1, 10]
    for c in cells:
        assert c["ingest"]["turns_per_s"] > 0 and c["ingest"]["chroma_turns_per_s"] > 0
        for m in ("search", "search_learn_false", "search_no_spread", "chroma"):
            assert 0 < c["search_ms"][m]["p50"] <= c["search_ms"][m]["p95"] < 10_000
        # per search: engine time >= each leg's, and the call >= the engine (so the p50s too)
        legs = c["search_legs_ms"]
        assert set(legs) == {"dense", "lexical", "late", "rest", "engine"}
        assert legs["late"]["p50"] > 0  # token vectors stored: the MaxSim leg ran
        for leg in ("dense", "lexical", "late", "rest"):
            assert 0 <= legs[leg]["p50"] <= legs["engine"]["p50"]
        assert legs["engine"]["p50"] <= c["search_ms"]["search"]["p50"]
        ratio = c["ratio_p50"]["search"]
        assert ratio == pytest.approx(
            c["search_ms"]["search"]["p50"] / c["search_ms"]["chroma"]["p50"], rel=0.01
        )
        rt = c["record_turn"]
        assert rt["turns"] == 6
        assert 0 < rt["record_turn_sync_us"]["p50"] <= rt["record_turn_sync_us"]["p95"]
        assert rt["background_turns_per_s"] > 0 and rt["add_turn_direct_ms"]["p50"] > 0
        # a store of 200 memories takes disk (SQLite + Chroma files), more than plain Chroma
        assert c["disk"]["helamem_bytes"] > 0 and c["disk"]["chroma_bytes"] > 0
        assert c["disk"]["helamem_bytes_per_memory"] == pytest.approx(
            c["disk"]["helamem_bytes"] / 200, rel=0.01
        )
        assert isinstance(c["rss"]["helamem_bytes_per_memory"], float)
    assert results["peak_rss_mb"] > 0
    md = (out / "results.md").read_text()
    assert md.startswith("# Scale benchmark")
    assert "| 200 | 1 scope |" in md and "| 200 | 10 scopes |" in md
    assert f"**{cells[0]['ratio_p50']['search']:,.2f}x**" in md
    assert "# Scale benchmark" in capsys.readouterr().out
    assert "| dense | lexical | late (MaxSim) | rest | engine | search |" in md
    # every store was built under --workdir and removed afterwards
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "work"]
    assert list((tmp_path / "work").iterdir()) == []


def test_bad_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="layout"):
        run_scale(out=None, sizes=[10], layouts=["nope"], embedder=HashingEmbedder(8))
    with pytest.raises(SystemExit):
        main(["bench", "scale", "--sizes", "0", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown setting 'k_typo' \\(known: candidates, "):
        run_scale(out=None, sizes=[10], embedder=HashingEmbedder(8), retrieval={"k_typo": 1})
    with pytest.raises(ValueError, match=r"dynamics.decay_rate: .* \(got 5\)"):
        run_scale(
            out=None, sizes=[10], embedder=HashingEmbedder(8), retrieval={"dynamics.decay_rate": 5}
        )
    args = ["bench", "scale", "--sizes", "10", "--set", "lexical_max_postings=-1", "--quiet"]
    assert main([*args, "--out", str(tmp_path)]) == 2


def test_retrieval_overrides_reach_the_store(tmp_path: Path) -> None:
    res = run_scale(
        out=None,
        sizes=[60],
        layouts=["one-scope"],
        embedder=HashingEmbedder(64, token_vectors=True),
        queries=3,
        repeats=1,
        record_turns=2,
        retrieval={"lexical_max_postings": 7, "late_weight": 0.0},
        workdir=tmp_path,
    )
    assert res["config"]["retrieval_overrides"] == {"lexical_max_postings": 7, "late_weight": 0.0}
    assert res["config"]["retrieval"]["lexical_max_postings"] == 7
    # late_weight 0: the store reads no token vectors, so the MaxSim leg took no time
    assert res["cells"][0]["search_legs_ms"]["late"]["p50"] == 0
    assert res["config"]["late_interaction"] is False
    md = render_markdown(res)
    assert "Config overrides (`--set`): `lexical_max_postings=7`, `late_weight=0.0`" in md
    assert "): off (no token vectors stored)" in md


def test_tenants_layout_spreads_over_many_scopes(tmp_path: Path) -> None:
    # the many-tenants cell at tiny size: 300 memories over 60 tenants (5 each)
    results = run_scale(
        out=tmp_path / "out",
        sizes=[300],
        layouts=["tenants"],
        embedder=HashingEmbedder(32, token_vectors=True),
        late=False,  # no token vectors stored: searches skip the MaxSim leg
        queries=8,
        repeats=1,
        record_turns=4,
        tenants=60,
        workdir=tmp_path,
    )
    assert results["config"]["late_interaction"] is False
    (cell,) = results["cells"]
    assert (cell["size"], cell["layout"], cell["scopes"]) == (300, "tenants", 60)
    assert results["config"]["tenants"] == 60
    assert cell["ingest"]["chroma_add_failed"] == 0 and cell["chroma_query_failed"] == 0
    assert cell["nofile_soft_limit"] > 0
    for m in ("search", "search_learn_false", "search_no_spread", "chroma"):
        assert 0 < cell["search_ms"][m]["p50"] <= cell["search_ms"][m]["p95"] < 10_000
    assert "| 300 | 60 scopes |" in (tmp_path / "out" / "results.md").read_text()
    with pytest.raises(ValueError, match="tenants"):
        run_scale(out=None, sizes=[10], layouts=["tenants"], embedder=HashingEmbedder(8), tenants=0)


def test_backend_flags_parse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from helamem.bench.cli import _stores
    from helamem.core.cli import build_parser

    base = ["bench", "scale", "--sizes", "10", "--out", str(tmp_path)]
    args = build_parser().parse_args(base)
    assert (args.backend, args.postgres_dsn, args.chroma_host) == ("sqlite", None, None)
    default = _stores(args)
    assert default.store() is None and default.chroma().mode == "persistent"
    pg = ["--backend", "postgres", "--postgres-dsn", "postgresql://u:secret@db:5433/x"]
    chroma = ["--chroma-host", "chroma.internal", "--chroma-port", "8123"]
    args = build_parser().parse_args([*base, *pg, *chroma])
    stores = _stores(args)
    one, two = stores.store(), stores.store()
    assert one is not None and two is not None and one.schema_name != two.schema_name
    assert one.schema_name.startswith("bench_")
    a, b = stores.chroma(), stores.chroma()
    assert (a.mode, a.host, a.port) == ("http", "chroma.internal", 8123)
    assert a.collection != b.collection  # a fresh prefix per store: runs never collide
    assert stores.describe() == {
        "backend": "postgres",
        "postgres": "db:5433/x",  # no user, no password
        "chroma": "http chroma.internal:8123",
    }
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--backend", "postgres"])
    assert exit_.value.code == 2
    assert "--backend postgres needs --postgres-dsn" in capsys.readouterr().err


def test_cli_scale_on_postgres(tmp_path: Path, pg_server: Any) -> None:
    import psycopg

    out = tmp_path / "out"
    tiny = ["--sizes", "60", "--layouts", "one-scope", "--embedder", "hashing", "--quiet"]
    tiny += ["--queries", "3", "--repeats", "1", "--record-turns", "2"]
    where = ["--out", str(out), "--workdir", str(tmp_path / "work")]
    pg = ["--backend", "postgres", "--postgres-dsn", pg_server.dsn]
    code = main(["bench", "scale", *tiny, *where, *pg])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["backend"]["backend"] == "postgres"
    assert results["config"]["backend"]["chroma"] == "embedded"
    (cell,) = results["cells"]
    assert cell["search_ms"]["search"]["p50"] > 0
    assert cell["record_turn"]["turns"] == 2
    # the graph's disk is PostgreSQL's tables; no SQLite file was made
    assert cell["disk"]["helamem_postgres_bytes"] > 0
    # + Chroma's files (none below exact_below vectors: they are scanned from PostgreSQL)
    assert cell["disk"]["helamem_bytes"] >= cell["disk"]["helamem_postgres_bytes"]
    assert "Stores: graph in PostgreSQL (127.0.0.1:" in (out / "results.md").read_text()
    with psycopg.connect(pg_server.dsn) as conn:  # the cell's schema was dropped after it
        rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench%'")
        assert rows.fetchall() == []
