"""Smoke test of the LoCoMo retrieval benchmark on a tiny synthetic LoCoMo file."""

from __future__ import annotations

import doctest
import json
from pathlib import Path
from typing import Any

import pytest

from helamem.bench import _common, _stores, locomo_report
from helamem.bench import locomo as locomo_module
from helamem.bench import sweep as sweep_module
from helamem.bench.locomo import (
    load_locomo,
    parse_evidence,
    parse_session_date,
    render_markdown,
    run_locomo,
)
from helamem.core import HashingEmbedder, RetrievalConfig
from helamem.core.cli import main


def _turn(speaker: str, dia_id: str, text: str, **extra: str) -> dict[str, str]:
    return {"speaker": speaker, "dia_id": dia_id, "text": text, **extra}


def _sample() -> list[dict[str, Any]]:
    """Two LoCoMo-shaped conversations with good and malformed evidence."""
    conv_a = {
        "speaker_a": "Ann",
        "speaker_b": "Bob",
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": [
            _turn("Ann", "D1:1", "Hello Bob, how are you today?"),
            _turn("Bob", "D1:2", "I adopted a kitten called Pixel last week."),
            _turn(
                "Ann",
                "D1:3",
                "Look at my garden!",
                blip_caption="a photo of sunflowers",
                img_url="x",
            ),
        ],
        "session_2_date_time": "10:00 am on 2 June, 2023",
        "session_2": [
            _turn("Bob", "D2:1", "The marathon in Lisbon went great."),
            _turn("Ann", "D2:2", "Congratulations on finishing!"),
        ],
        # a date of a session without turns (as in the real file) is ignored
        "session_3_date_time": "9:00 am on 1 July, 2023",
    }
    conv_b = {
        "speaker_a": "Cy",
        "speaker_b": "Di",
        "session_1_date_time": "8:00 pm on 1 March, 2022",
        "session_1": [
            _turn("Cy", "D1:1", "My violin teacher moved to Oslo."),
            _turn("Di", "D1:2", "I started baking sourdough bread."),
        ],
    }
    qa_a = [
        # the evidence turn is the only one sharing words with the question
        {
            "question": "What kitten did Bob adopt?",
            "answer": "Pixel",
            "evidence": ["D1:2"],
            "category": 4,
        },
        {
            "question": "Where was the marathon?",
            "answer": "Lisbon",
            "evidence": ["D2:1; D1:2"],
            "category": 1,
        },  # split
        {
            "question": "What flowers grow in the garden?",
            "answer": "sunflowers",
            "evidence": ["D:1:3"],
            "category": 2,
        },  # repaired
        {
            "question": "When did Bob adopt?",
            "answer": "May 2023",
            "evidence": ["D01:02"],
            "category": 3,
        },  # repaired (leading zeros)
        {
            "question": "What did Ann say about chess?",
            "evidence": ["D"],
            "category": 5,
            "adversarial_answer": "nothing",
        },  # unparseable: not scored
        {
            "question": "What did Bob cook?",
            "answer": "?",
            "evidence": ["D9:9", "D2:2"],
            "category": 4,
        },  # one unknown id skipped
        {"question": "Anything?", "answer": "?", "evidence": [], "category": 4},
    ]
    qa_b = [
        {
            "question": "Where did the violin teacher move?",
            "answer": "Oslo",
            "evidence": ["D1:1"],
            "category": 4,
        },
        {
            "question": "What bread is Di baking?",
            "evidence": ["D1:2"],
            "category": 5,
            "adversarial_answer": "rye",
        },
    ]
    return [
        {"sample_id": "conv-a", "conversation": conv_a, "qa": qa_a},
        {"sample_id": "conv-b", "conversation": conv_b, "qa": qa_b},
    ]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "locomo-tiny.json"
    path.write_text(json.dumps(_sample()), encoding="utf-8")
    return path


def test_parse_evidence_and_dates() -> None:
    assert parse_evidence("D1:3") == (["D1:3"], None)
    assert parse_evidence("D8:6; D9:17") == (["D8:6", "D9:17"], "split")
    assert parse_evidence("D9:1 D4:4 D4:6") == (["D9:1", "D4:4", "D4:6"], "split")
    assert parse_evidence("D:11:26") == (["D11:26"], "repaired")
    assert parse_evidence("D30:05") == (["D30:5"], "repaired")
    assert parse_evidence("D") == ([], "unparseable")
    assert parse_evidence("") == ([], "unparseable")
    when = parse_session_date("1:56 pm on 8 May, 2023")
    assert when is not None
    assert (when.year, when.month, when.day, when.hour, when.minute) == (2023, 5, 8, 13, 56)
    assert parse_session_date("someday") is None


def test_loader_counts_malformed_evidence(data: Path) -> None:
    convs, report = load_locomo(data)
    a, b = convs
    assert [t.dia_id for t in a.turns] == ["D1:1", "D1:2", "D1:3", "D2:1", "D2:2"]
    assert a.turns[1].content == "Bob: I adopted a kitten called Pixel last week."
    assert a.turns[2].content == "Ann: Look at my garden! [image: a photo of sunflowers]"
    assert a.turns[3].event_time.month == 6
    assert a.reference_time == a.turns[-1].event_time  # last session with turns
    assert [q.evidence for q in a.questions] == [
        ("D1:2",),
        ("D2:1", "D1:2"),
        ("D1:3",),
        ("D1:2",),
        ("D2:2",),
    ]
    assert len(b.questions) == 2
    assert report.entries == 9
    assert (report.split, report.repaired) == (1, 2)
    assert (report.skipped_unparseable, report.skipped_unknown) == (1, 1)
    assert report.questions_without_evidence == 2  # "D" only, and an empty list
    assert report.ok == 4  # well-formed ids of existing turns, unsplit


def test_runner_metrics_and_outputs(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = run_locomo(
        data,
        out=out,
        methods=["bm25", "dense", "helamem"],
        ks=[1, 2, 5],
        embedder=HashingEmbedder(256),
        work_dir=tmp_path,
    )
    assert res["dataset"]["questions"] == 7
    assert res["dataset"]["turns"] == 7
    ev = res["dataset"]["evidence"]
    assert ev["skipped_unparseable"] == 1
    assert ev["split"] == 1
    assert ev["examples"]["split"] == ["D2:1; D1:2"]

    bm25 = res["methods"]["bm25"]["categories"]
    # single-hop: "kitten ... adopt" and "violin teacher move" each share words
    # with their evidence turn only: found first; "What did Bob cook?" (D2:2)
    # shares none, so only the larger cut-offs may hold it
    assert bm25["4"]["questions"] == 3
    assert bm25["4"]["r@1"] == pytest.approx(2 / 3, abs=1e-4)
    assert bm25["4"]["hits@1"] == 1.0
    # the split multi-hop question has two evidence turns; a hit on either counts
    assert bm25["1"]["questions"] == 1
    assert bm25["1"]["r@5"] == 1.0
    assert bm25["1"]["recall@5"] == 1.0
    assert bm25["3"]["r@5"] == 1.0
    # 5 adversarial questions: only conv-b's (conv-a's has unparseable evidence)
    assert bm25["5"]["questions"] == 1
    assert bm25["1-4"]["questions"] == 6
    assert bm25["all"]["questions"] == 7
    # every conversation has at most 5 turns: k = 5 retrieves them all
    for method in res["methods"].values():
        assert method["categories"]["all"]["r@5"] == 1.0
        assert method["categories"]["all"]["recall@5"] == 1.0
        assert method["categories"]["all"]["tokens@5"] > method["categories"]["all"]["tokens@1"]
        assert method["query_s"] > 0
        assert method["ingest_s"] > 0
        # per question = per search x searches per question (7 questions in all)
        per_q = method["calls_per_question"]
        assert per_q == round(method["searches"] / 7, 2)
        assert (per_q > 1) == method["spread"]  # spreading: one search per k and budget
        ms = 1000 * method["query_s"] / method["searches"]  # query_s is rounded to 1 ms
        assert method["query_ms_per_call"] == pytest.approx(ms, abs=1.0 / method["searches"])
    # equal tokens: whole hits while their contents fit; every turn fits 1024 tokens
    for method in res["methods"].values():
        c = method["categories"]["all"]
        assert c["hits@256t"] <= c["hits@512t"] <= c["hits@1024t"]
        assert c["r@1024t"] == 1.0 and c["hits@1024t"] >= c["hits@5"]
        assert c["tokens@256t"] <= 256 and c["tokens@1024t"] <= 1024
    assert res["config"]["token_budgets"] == [256, 512, 1024]
    assert res["methods"]["helamem"]["learn"] is True
    assert res["methods"]["dense"]["retrieval"]["keyword_weight"] == 0.0
    assert res["methods"]["bm25"]["retrieval"]["keyword_weight"] == 1.0
    assert res["token_counter"]["name"]

    written = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert written["methods"]["bm25"]["categories"]["4"]["r@1"] == bm25["4"]["r@1"]
    assert written["seed"] == 0
    assert "helamem-core" in written["versions"]
    assert written["plot"]["written"] == (out / "recall_at_k.png").exists()
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "| bm25 |" in md
    assert "R@1" in md
    assert "ms/call" in md and "calls/q" in md
    assert "## Equal tokens" in md and "R@512 tokens" in md
    assert md == render_markdown(written)


def test_runner_question_sample_is_seeded(data: Path, tmp_path: Path) -> None:
    def run(seed: int) -> dict[str, Any]:
        return run_locomo(
            data,
            conversations=1,
            questions=2,
            methods=["fusion"],
            seed=seed,
            embedder=HashingEmbedder(64),
            work_dir=tmp_path,
        )

    first = run(3)
    assert first["dataset"]["conversations"] == ["conv-a"]
    assert first["dataset"]["questions"] == 2
    assert run(3)["methods"]["fusion"]["categories"] == first["methods"]["fusion"]["categories"]


def test_runner_rejects_unknown_method(data: Path) -> None:
    with pytest.raises(ValueError, match="unknown methods"):
        run_locomo(data, methods=["nope"], embedder=HashingEmbedder(64))
    with pytest.raises(ValueError, match="no_such_setting"):
        run_locomo(data, retrieval={"no_such_setting": 1}, embedder=HashingEmbedder(64))


def test_cli_bench_locomo(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-out"
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
            "helamem-no-learn",
            "--embedder",
            "hashing",
            "--set",
            "activation_alpha=0.3",
            "--seed",
            "7",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "| helamem-no-learn |" in captured.out
    assert "questions" in captured.err  # progress on stderr
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert res["seed"] == 7
    assert res["config"]["methods"] == ["bm25", "helamem-no-learn"]
    assert res["methods"]["helamem-no-learn"]["retrieval"]["activation_alpha"] == 0.3
    assert (out / "results.md").is_file()

    assert main(["bench", "locomo", "--data", str(tmp_path / "missing.json")]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    assert main(["bench", "locomo", "--data", str(bad), "--out", str(out), "--quiet"]) == 2


@pytest.mark.parametrize("module", [locomo_module, _common, sweep_module, _stores, locomo_report])
def test_bench_doctests(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert result.failed == 0
    assert result.attempted > 0


def test_results_carry_per_conversation_recall(data: Path) -> None:
    res = run_locomo(
        data, methods=["fusion"], ks=[1, 5], embedder=HashingEmbedder(128), retrieval={}
    )
    per = res["methods"]["fusion"]["conversations"]
    assert set(per) == {"conv-a", "conv-b"}
    total = res["methods"]["fusion"]["categories"]["1-4"]
    assert sum(p["questions"] for p in per.values()) == total["questions"]
    hits = sum(p["r@5"] * p["questions"] for p in per.values())
    assert hits == pytest.approx(total["r@5"] * total["questions"])


def test_leave_one_out_never_scores_a_fold_on_its_own_choice() -> None:
    # point 0 is best overall only thanks to c1; held out, c1 is scored with point 1
    a = {"c1": (10.0, 10), "c2": (3.0, 10), "c3": (3.0, 10)}
    b = {"c1": (2.0, 10), "c2": (4.0, 10), "c3": (4.0, 10)}
    loo = sweep_module.leave_one_out([a, b])
    assert [f["point"] for f in loo["folds"]] == [1, 0, 0]
    assert loo["estimate"] == pytest.approx((2 + 3 + 3) / 30, abs=1e-4)
    assert loo["chosen"] == 0
    assert loo["stable"] == 2
    with pytest.raises(ValueError, match="at least one"):
        sweep_module.leave_one_out([])
    with pytest.raises(ValueError, match="no values"):
        sweep_module.grid_points({"activation_alpha": []})


def test_cli_bench_sweep(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    argv = ["bench", "sweep", "--data", str(data), "--embedder", "hashing", "--out", str(out)]
    code = main([*argv, "--grid", "activation_alpha=0.3,1", "--set", "spread_seeds=3"])
    assert code == 0
    captured = capsys.readouterr()
    assert "Leave one conversation out" in captured.out
    assert "sweep" in captured.err  # progress on stderr
    res = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    assert [p["point"] for p in res["points"]] == [
        {"activation_alpha": 0.3},
        {"activation_alpha": 1},
    ]
    assert res["config"]["base"] == {"spread_seeds": 3}
    assert {f["held_out"] for f in res["loo"]["folds"]} == {"conv-a", "conv-b"}
    # fusion neither spreads nor learns: one reference for every point
    assert {p["fusion_r"] for p in res["points"]} == {res["fusion"]["r"]}
    assert (out / "sweep.md").is_file()
    assert main([*argv, "--quiet"]) == 2  # no --grid
    assert main(["bench", "sweep", "--data", str(tmp_path / "nope.json"), "--grid", "a=1"]) == 2
    assert main([*argv, "--quiet", "--grid", "no_such_key=1"]) == 2


def test_token_parity_is_reported_against_dense(data: Path, tmp_path: Path) -> None:
    res = run_locomo(
        data,
        out=tmp_path / "out",
        methods=["dense", "helamem"],
        ks=[1, 5, 10],
        embedder=HashingEmbedder(128),
    )
    parity = res["token_parity"]
    dense = res["methods"]["dense"]["categories"]["1-4"]
    assert parity["reference"] == "dense" and parity["k"] == 10
    assert parity["r"] == dense["r@10"]
    own = parity["methods"]["dense"]  # dense matches itself at k <= 10
    assert own is not None and own["k"] <= 10 and own["r"] >= dense["r@10"]
    md = (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    assert "Context at equal recall" in md
    no_dense = run_locomo(data, methods=["fusion"], ks=[5], embedder=HashingEmbedder(128))
    assert no_dense["token_parity"] is None


def _run_benchmark(script: str, data: Path, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """Run ``benchmarks/<script>`` on ``data`` with the hashing embedder: (stdout, its JSON)."""
    import subprocess
    import sys

    path = Path(__file__).parents[2] / "benchmarks" / script
    out = tmp_path / "result.json"
    args = [sys.executable, str(path), "--data", str(data), "--embedder", "hashing"]
    done = subprocess.run(
        [*args, "--out", str(out)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(out.read_text())


def test_learning_ceiling_script_runs(data: Path, tmp_path: Path) -> None:
    """benchmarks/learning_ceiling.py (README): three passes, consistent counts."""
    stdout, res = _run_benchmark("learning_ceiling.py", data, tmp_path)
    assert "| oracle |" in stdout
    modes = res["modes"]
    assert list(modes) == ["read-only", "learn", "oracle"]
    for r in modes.values():
        assert r["questions"] == 6  # categories 1-4 of the tiny file
        assert r["missed"] == round((1 - r["r@10"]) * r["questions"])
        assert 0 <= r["missed_sharing_earlier_evidence"] <= r["missed"]


def test_association_ceiling_script_runs(data: Path, tmp_path: Path) -> None:
    """benchmarks/association_ceiling.py (README): the oracle bounds what it should."""
    stdout, res = _run_benchmark("association_ceiling.py", data, tmp_path)
    assert "| oracle: seeds |" in stdout
    assert res["questions"] == 6  # categories 1-4 of the tiny file
    cells = {(o["seeds"], o["window"], o["slots"]): o["r@10"] for o in res["oracle"]}
    assert len(cells) == 8
    for (s, w, a), r in cells.items():
        assert 0 <= r <= 1
        if w == 1:  # a wider window, or more seeds, only adds candidates
            assert cells[(s, 2, a)] >= r
        if s == 3:
            assert cells[(8, w, a)] >= r


def test_a_fact_counts_as_its_source_turns() -> None:
    from helamem.bench import locomo_score, token_counter

    hits: dict[int | str, list[tuple[str, str]]] = {
        10: [("D1:1", "a turn"), (locomo_score.FACT + "D1:2|D2:7", "a fact")]
    }
    hit, recall, _, items = locomo_score.score(hits, {"D2:7", "D3:1"}, token_counter())
    assert hit[10] == 1.0 and recall[10] == 0.5 and items[10] == 2
    assert locomo_score.fact_dias(locomo_score.FACT + "D1:2|D2:7") == ["D1:2", "D2:7"]
    assert locomo_score.fact_dias("D1:2") == ["D1:2"]


def test_facts_method_consolidates_and_reports_citing_rate(data: Path, tmp_path: Path) -> None:
    res = run_locomo(
        data,
        methods=["helamem", "helamem-facts"],
        ks=[1, 5],
        embedder=HashingEmbedder(256),
        work_dir=tmp_path,
    )
    plain, facts = res["methods"]["helamem"], res["methods"]["helamem-facts"]
    assert plain["facts"]["512t"]["returned"] == 0  # semantic_k=0: no facts asked for
    assert facts["retrieval"] == plain["retrieval"]
    for f in facts["facts"].values():
        assert 0 <= f["citing_evidence"] <= f["returned"]
        assert f["citing_rate"] is None or 0.0 <= f["citing_rate"] <= 1.0


def _bench_schemas(dsn: str) -> list[str]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench%'")
        return [str(r[0]) for r in rows]


def test_backend_flags_parse_and_a_missing_dsn_is_an_argparse_error(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "locomo", "--data", str(data), "--out", str(tmp_path), "--quiet"]
    for extra, message in [
        (["--backend", "postgres"], "--backend postgres needs --postgres-dsn DSN"),
        (["--postgres-dsn", "postgresql://x@h/db"], "--postgres-dsn is only read with"),
        (["--backend", "mysql"], "invalid choice: 'mysql'"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main([*argv, *extra])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "usage: helamem bench locomo" in err and message in err
    with pytest.raises(SystemExit):  # bench sweep shares the options
        main(["bench", "sweep", "--data", str(data), "--grid", "a=1", "--backend", "postgres"])


def test_cli_bench_locomo_on_postgres_ranks_as_on_sqlite(
    data: Path, tmp_path: Path, pg_server: Any
) -> None:
    """--backend postgres: every store in a fresh schema (dropped after), same recall."""
    argv = ["bench", "locomo", "--data", str(data), "--embedder", "hashing", "--quiet"]
    argv += ["--methods", "fusion", "helamem", "--k", "1", "2", "5"]
    pg_out, lite_out = tmp_path / "pg", tmp_path / "sqlite"
    assert main([*argv, "--out", str(lite_out)]) == 0
    pg_argv = [*argv, "--backend", "postgres", "--postgres-dsn", pg_server.dsn]
    assert main([*pg_argv, "--out", str(pg_out)]) == 0
    pg = json.loads((pg_out / "results.json").read_text(encoding="utf-8"))
    lite = json.loads((lite_out / "results.json").read_text(encoding="utf-8"))
    port = pg_server.dsn.rsplit(":", 1)[1].split("/")[0]
    assert pg["config"]["backend"] == {
        "backend": "postgres",
        "postgres": f"127.0.0.1:{port}/postgres",  # where, never who or a password
        "chroma": "embedded",
    }
    assert lite["config"]["backend"] == {"backend": "sqlite", "chroma": "embedded"}
    for name in ("fusion", "helamem"):
        for cat in ("1-4", "all"):
            a, b = pg["methods"][name]["categories"][cat], lite["methods"][name]["categories"][cat]
            assert {k: a[k] for k in a if k.startswith(("r@", "recall@", "hits@"))} == {
                k: b[k] for k in b if k.startswith(("r@", "recall@", "hits@"))
            }, (name, cat)
    md = (pg_out / "results.md").read_text(encoding="utf-8")
    assert f"- stores: graph in PostgreSQL (127.0.0.1:{port}/postgres" in md
    assert "- stores: graph in SQLite, vectors in embedded Chroma" in (
        lite_out / "results.md"
    ).read_text(encoding="utf-8")
    assert _bench_schemas(pg_server.dsn) == []  # every store's schema dropped


def test_agent_loop_graph_shape_reads_postgres(data: Path, tmp_path: Path, pg_server: Any) -> None:
    from helamem.bench._stores import BenchStores

    def run(stores: BenchStores | None) -> dict[str, Any]:
        return run_locomo(
            data,
            ks=[1, 5],
            embedder=HashingEmbedder(128),
            ingest="agent-loop",
            conversations=1,
            work_dir=tmp_path,
            stores=stores,
        )

    pg = run(BenchStores("postgres", pg_server.dsn))
    assert pg["graph"] == run(None)["graph"]
    assert pg["graph"]["loop-learn"]["edges"] > 0
    assert _bench_schemas(pg_server.dsn) == []


def test_association_reranker_script_runs(data: Path, tmp_path: Path) -> None:
    """benchmarks/association_reranker.py (README): every variant scored on 10 hits, the
    variant chosen per conversation, a model fitted on all that the config accepts."""
    stdout, res = _run_benchmark("association_reranker.py", data, tmp_path)
    assert "| selection='learned', leave-one-conversation-out |" in stdout
    n = res["questions"]
    assert n == 6  # categories 1-4 of the tiny file
    figures = [res["fusion"], res["final"], res["shipped (in sample)"]]
    figures += [r["all"] for r in res["learned"].values()]
    figures.append(res["learned, variant chosen leave-one-out"])
    for r in figures:
        assert 0 <= r <= 1 and abs(r * n - round(r * n)) < 1e-3  # whole questions
    assert set(res["chosen"].values()) <= set(res["learned"])
    model = tuple(tuple(p) for p in res["fit on all"]["model"])
    RetrievalConfig(association_model=model)  # names the config accepts


def test_association_reranker_replays_the_store_bench_locomo_fills(
    data: Path, tmp_path: Path
) -> None:
    """The replay's questions are asked with every conversation stored, as `bench locomo`
    asks them: BM25's statistics are the store's, so the first conversation's rankings
    would differ if its questions came before the second conversation was stored."""
    import importlib.util
    import sys

    from helamem.bench import CachingEmbedder
    from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, retrieval

    path = Path(__file__).parents[2] / "benchmarks" / "association_reranker.py"
    spec = importlib.util.spec_from_file_location("association_reranker_under_test", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        embedder = CachingEmbedder(HashingEmbedder(token_vectors=True))
        questions = mod.collect(data, embedder, tmp_path / "replay")
    finally:
        del sys.modules[spec.name]
    convs, _ = load_locomo(data)
    assert [q.conv for q in questions] == ["conv-a"] * 5 + ["conv-b"]
    seen: list[float] = []
    real = retrieval.rank

    def keep(pool: retrieval.Pool, **kw: Any) -> retrieval.Ranking:
        seen.append(kw["lexical_mass"])
        return real(pool, **kw)

    cfg = HelaMemConfig(path=tmp_path / "full")
    with HelaMemory(cfg, embedder=embedder) as mem:
        for conv in convs:
            mem.add_many(t.memory(("locomo", conv.sample_id)) for t in conv.turns)
        first = convs[0]
        asked = [q for q in first.questions if 1 <= q.category <= 4]
        retrieval.rank = keep
        try:
            for q in asked:
                mem.search(
                    q.text,
                    ("locomo", first.sample_id),
                    k=10,
                    learn=False,
                    reference_time=first.reference_time,
                    semantic_k=0,
                )
        finally:
            retrieval.rank = real
    replayed = [q.args["lexical_mass"] for q in questions[: len(asked)]]
    assert replayed == pytest.approx(seen[-len(asked) :], abs=0.0)
    assert len(seen) >= len(asked) and any(m > 0 for m in replayed)


def test_a_sweep_refuses_an_invalid_grid_point_before_running_any(tmp_path: Path) -> None:
    """Review: a point the configs refuse (a learning rate under ``prune_below``) failed
    the sweep only when reached, after the points before it ran, and wrote nothing."""
    grid = {"dynamics.learning_rate": [0.05, 0.005], "dynamics.prune_below": [0.01]}
    with pytest.raises(ValueError, match="raise learning_rate or lower prune_below"):
        sweep_module.run_sweep(tmp_path / "never-read.json", grid=grid)


def test_a_sweep_over_fusions_weights_compares_each_fold_with_fusion_at_its_point(
    data: Path, tmp_path: Path
) -> None:
    """Review 137: a grid over ``keyword_weight`` changes fusion from point to point, and the
    held-out comparison used fusion at the grid's last point (0.718 at keyword_weight 0.7
    in the README) instead of fusion at the point each fold chose (the base ranking
    helamem ran on there)."""
    grid = {"keyword_weight": [0.0, 1.0]}
    res = sweep_module.run_sweep(data, grid=grid, k=1, embedder=HashingEmbedder(256))
    fusion_at = []
    for weight in grid["keyword_weight"]:
        ran = run_locomo(
            data,
            methods=["fusion"],
            ks=[1],
            retrieval={"keyword_weight": weight},
            embedder=HashingEmbedder(256),
            work_dir=tmp_path,
        )
        fusion_at.append(sweep_module._per_conv(ran["methods"]["fusion"], 1))
    assert fusion_at[0] != fusion_at[1]  # the case: fusion differs between the points
    hits = n = 0.0
    for fold in res["loo"]["folds"]:
        h, q = fusion_at[fold["point"]][fold["held_out"]]
        assert fold["fusion_r"] == round(h / q, 4)
        hits, n = hits + h, n + q
    assert res["loo"]["fusion_r"] == round(hits / n, 4)
    assert [p["fusion_r"] for p in res["points"]] == [
        round(sum(h for h, _ in f.values()) / sum(q for _, q in f.values()), 4) for f in fusion_at
    ]


def test_the_facts_method_is_scored_at_equal_hits() -> None:
    """Review 137: the "+ facts" rows' R@k counted facts beside the k episodes (11.4
    items at k=10), not at equal context. Facts now take slots of the k: the k best by
    score of episodes and facts together, so every method's R@k is over k items."""
    from types import SimpleNamespace

    from helamem.bench.locomo import _ask
    from helamem.bench.locomo_methods import METHODS

    def hit(dia: str, score: float, provenance: str) -> Any:
        memory = SimpleNamespace(metadata={"dia_id": dia}, role="user", provenance=("e1",))
        return SimpleNamespace(
            memory=memory,
            content=dia,
            score=score,
            provenance=provenance,
            activation=score,
            base=score,
        )

    class Stub:
        def search(self, query: str, scope: Any, *, k: int, **kw: Any) -> list[Any]:
            episodes = [hit(f"D1:{i}", 0.9 - 0.1 * i, "base") for i in range(k)]
            facts = [hit("fact", 0.85, "semantic")] if kw.get("semantic_k") is None else []
            return episodes + facts

    method = METHODS["helamem-facts"]
    conv = SimpleNamespace(reference_time=None)
    cfg = SimpleNamespace(default_k=10, association_share=0.5)
    out, _, _ = _ask(Stub(), method, cfg, "q", ("s",), conv, [1, 5], None, {"e1": "D9:9"})  # type: ignore[arg-type]
    assert [d for d, _ in out[1]] == ["D1:0"]
    assert [d for d, _ in out[5]] == ["D1:0", "fact:D9:9", "D1:1", "D1:2", "D1:3"]
