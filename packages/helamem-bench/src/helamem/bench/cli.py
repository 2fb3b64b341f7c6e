"""The ``helamem bench`` subcommands (``locomo``, ``scale``, ``sweep``): parsers and runners.

Registered on the ``helamem`` command line through the ``helamem.commands``
entry point (see :func:`register`).

Examples:
    Run the LoCoMo retrieval benchmark on a local copy of the data::

        helamem bench locomo --data ../shared/data/locomo/locomo-dev.json
        helamem bench locomo --data locomo.json --conversations 1 --questions 20 \\
            --methods fusion helamem --embedder hashing --out /tmp/smoke

    The same with the graph in PostgreSQL (a fresh schema per store, dropped
    after the run)::

        helamem bench locomo --data locomo.json --methods fusion helamem \\
            --backend postgres --postgres-dsn postgresql://user@db:5432/bench

    Run the scale benchmark (1k, 10k, 100k memories beside plain Chroma)::

        helamem bench scale --embedder hashing --sizes 1000 10000 100000
        helamem bench scale --embedder hashing --sizes 1000 --backend postgres \\
            --postgres-dsn postgresql://user@db:5432/bench --chroma-host 127.0.0.1

    Sweep spreading parameters with leave-one-conversation-out selection::

        helamem bench sweep --data locomo.json --grid activation_alpha=0.3,1 \\
            --grid max_flipped=3,5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from helamem.core.llm import LLMClient

    from ._stores import BenchStores
    from .qa import QASettings

__all__ = ["register"]


def _override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed: Any = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _add_backend_arguments(p: argparse.ArgumentParser, chroma: bool = False) -> None:
    """``--backend {sqlite,postgres}`` and ``--postgres-dsn`` (``--chroma-host/-port``:
    ``bench scale``); :func:`_stores` reads them (and reports a missing DSN through
    ``p``, kept as the ``bench_parser`` default)."""
    p.set_defaults(bench_parser=p)
    g = p.add_argument_group(
        "stores",
        "where the benchmark's stores keep their graph"
        + (" and vectors" if chroma else "")
        + " (default: SQLite and the embedded Chroma in a temporary directory)",
    )
    g.add_argument(
        "--backend",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="graph store: sqlite (default, <store>/helamem.sqlite3) or postgres (a fresh "
        "schema per store in --postgres-dsn, dropped when the run ends)",
    )
    g.add_argument(
        "--postgres-dsn",
        metavar="DSN",
        help="the PostgreSQL server of --backend postgres, e.g. postgresql://user@host:5432/db "
        "(needs psycopg: pip install 'helamem-core[postgres]')",
    )
    if chroma:
        g.add_argument(
            "--chroma-host",
            metavar="HOST",
            help="a Chroma server (`chroma run`) for the vectors, HeLa-Mem's and plain "
            "Chroma's (a fresh collection prefix per store, deleted after it); default: "
            "embedded Chroma",
        )
        g.add_argument(
            "--chroma-port", type=_positive, default=8000, help="its port (default 8000)"
        )


def _stores(args: argparse.Namespace) -> BenchStores:
    """The :class:`~._stores.BenchStores` of the parsed backend options.

    Raises:
        SystemExit: (status 2, argparse's usage error) ``--backend postgres``
            without ``--postgres-dsn``, or ``--postgres-dsn`` without it.
    """
    from ._stores import BenchStores

    p: argparse.ArgumentParser = args.bench_parser
    if args.backend == "postgres" and not args.postgres_dsn:
        p.error(
            "--backend postgres needs --postgres-dsn DSN (a PostgreSQL server to hold the "
            "benchmark's stores, e.g. postgresql://user@localhost:5432/postgres)"
        )
    if args.backend != "postgres" and args.postgres_dsn:
        p.error("--postgres-dsn is only read with --backend postgres")
    if args.backend == "postgres":
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError:
            p.error("--backend postgres needs psycopg: pip install 'helamem-core[postgres]'")
    return BenchStores(
        backend=args.backend,
        postgres_dsn=args.postgres_dsn,
        chroma_host=getattr(args, "chroma_host", None),
        chroma_port=getattr(args, "chroma_port", 8000),
    )


def register(commands: Any) -> None:
    """Add ``bench locomo|scale|sweep`` to the ``helamem`` command line.

    The ``helamem.commands`` entry point of this package: the ``helamem``
    parser calls it with its subparsers. Each benchmark parser sets ``run``
    (``Namespace -> int``: 0 on success, 2 on bad input) as a default.

    Args:
        commands: The ``argparse`` subparsers action of ``helamem``.
    """
    from .locomo import DEFAULT_KS, METHODS

    bench = commands.add_parser("bench", help="run a benchmark")
    benches = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    _add_scale_parser(benches)
    _add_sweep_parser(benches)
    loc = benches.add_parser(
        "locomo",
        help="LoCoMo retrieval: HeLa-Mem beside dense, BM25 and fusion baselines",
        description=(
            "Ingest every LoCoMo conversation into its own scope (one memory per turn), "
            "ask each question against its own conversation, and report R@k, evidence "
            "recall@k and context tokens per method and category. Progress goes to stderr."
        ),
    )
    _add_locomo_arguments(loc, "bench-results/locomo", ingest=True)
    loc.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=list(METHODS),
        metavar="METHOD",
        help=f"methods to run (default: all of {', '.join(METHODS)})",
    )
    loc.add_argument(
        "--k",
        nargs="+",
        type=_positive,
        default=list(DEFAULT_KS),
        help="cut-offs k (default: 5 10 20)",
    )
    loc.add_argument(
        "--tokenizer-file",
        type=Path,
        help="local cl100k_base.tiktoken file (or tiktoken cache dir) for token counts",
    )
    _add_qa_arguments(loc)
    _add_backend_arguments(loc)
    loc.set_defaults(run=_bench_locomo)


def _add_set_argument(p: argparse.ArgumentParser, target: str, example: str) -> None:
    """``--set KEY=VALUE``, repeatable (read by :func:`._common.config_overrides`)."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_override,
        default=[],
        metavar="KEY=VALUE",
        help=f"RetrievalConfig override for {target}, e.g. --set {example};"
        " dynamics.KEY=VALUE overrides DynamicsConfig (e.g. dynamics.decay_rate=0.9995)",
    )


def _add_locomo_arguments(p: argparse.ArgumentParser, out: str, ingest: bool = False) -> None:
    """The arguments ``bench locomo`` and ``bench sweep`` share (``--ingest``: locomo only)."""
    p.add_argument("--data", type=Path, required=True, help="LoCoMo JSON file (locomo10 schema)")
    p.add_argument("--out", type=Path, default=Path(out), help=f"output directory (default: {out})")
    p.add_argument("--conversations", type=_positive, help="use the first N conversations")
    p.add_argument(
        "--questions", type=_positive, help="ask at most N questions per conversation (seeded)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the question sample")
    _add_set_argument(p, "every method", "activation_alpha=0.3")
    p.add_argument(
        "--embedder",
        choices=["minilm", "hashing"],
        default="minilm",
        help="minilm (default, offline) or hashing (no model: smoke runs only)",
    )
    if ingest:
        p.add_argument(
            "--ingest",
            choices=["plain", "agent-loop"],
            default="plain",
            help="plain (default): add_many, one memory per turn; agent-loop: replay each "
            "conversation as an agent does (search each turn pair's first message with k=5, then "
            "add_turns with those hits as used_ids), learning on beside learning off and plain "
            "ingest, questions read-only, plus the graph's shape (--methods is ignored)",
        )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _add_scale_parser(benches: Any) -> None:
    from .scale import DEFAULT_LAYOUTS, DEFAULT_SIZES, LAYOUTS, TENANTS

    sc = benches.add_parser(
        "scale",
        help="scale: ingest, search, record_turn, RSS and disk beside plain Chroma",
        description=(
            "Store synthetic agent-conversation memories at each size, in one scope and over "
            "100 scopes, and measure ingest throughput, search p50/p95 (with and without "
            "spreading), record_turn cost, RSS and disk per memory, each beside a plain Chroma "
            "query over the same vectors. Progress goes to stderr."
        ),
    )
    sc.add_argument(
        "--sizes",
        nargs="+",
        type=_positive,
        default=list(DEFAULT_SIZES),
        metavar="N",
        help="numbers of memories (default: 1000 10000 100000)",
    )
    sc.add_argument("--include-1m", action="store_true", help="also measure 1,000,000 memories")
    sc.add_argument(
        "--layouts",
        nargs="+",
        choices=list(LAYOUTS),
        default=list(DEFAULT_LAYOUTS),
        metavar="LAYOUT",
        help=f"layouts among {', '.join(LAYOUTS)} (default: {' '.join(DEFAULT_LAYOUTS)}); "
        f"tenants: many tenants (--tenants scopes; run it under `ulimit -n 1024`)",
    )
    sc.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results/scale"),
        help="output directory (default: bench-results/scale)",
    )
    sc.add_argument("--queries", type=_positive, default=100, help="queries per pass (100)")
    sc.add_argument("--repeats", type=_positive, default=3, help="passes; medians reported (3)")
    sc.add_argument(
        "--record-turns", type=_positive, default=100, help="turns recorded per cell (100)"
    )
    sc.add_argument("--k", type=_positive, default=10, help="top-k of every query (10)")
    sc.add_argument("--seed", type=int, default=0, help="seed of the corpus and queries")
    sc.add_argument(
        "--scopes", type=_positive, default=100, help="scopes of the spread layout (100)"
    )
    sc.add_argument(
        "--tenants",
        type=_positive,
        default=TENANTS,
        help=f"scopes of the tenants layout ({TENANTS:,})",
    )
    sc.add_argument(
        "--embedder",
        choices=["minilm", "hashing"],
        default="minilm",
        help="minilm (default, offline; ~6 min per 100k texts on 2 cores) or hashing (no model)",
    )
    sc.add_argument(
        "--no-late",
        action="store_true",
        help="store no token vectors, so searches skip the late-interaction (MaxSim) leg that "
        "the default retrieval uses (by default hashing stores one hashed vector per word and "
        "minilm its token vectors)",
    )
    _add_set_argument(sc, "HeLa-Mem's stores", "lexical_max_postings=8000")
    sc.add_argument(
        "--workdir",
        type=Path,
        help="where stores are built, in a temporary subdirectory removed with its stores "
        "after each run (default: the system's temp dir)",
    )
    sc.add_argument(
        "--profile", action="store_true", help="write a cProfile of the searches per cell to --out"
    )
    sc.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _add_backend_arguments(sc, chroma=True)
    sc.set_defaults(run=_bench_scale)


def _bench_scale(args: argparse.Namespace) -> int:
    from helamem.core.embeddings import Embedder, HashingEmbedder, MiniLMEmbedder
    from helamem.core.errors import StorageError

    from .scale import render_markdown, run_scale

    stores = _stores(args)  # a usage error before any model loads
    embedder: Embedder = (
        HashingEmbedder(384, token_vectors=True) if args.embedder == "hashing" else MiniLMEmbedder()
    )
    sizes = list(args.sizes) + ([1_000_000] if args.include_1m else [])
    try:
        results = run_scale(
            out=args.out,
            late=not args.no_late,
            sizes=sizes,
            layouts=args.layouts,
            embedder=embedder,
            queries=args.queries,
            repeats=args.repeats,
            record_turns=args.record_turns,
            k=args.k,
            seed=args.seed,
            scopes=args.scopes,
            tenants=args.tenants,
            workdir=args.workdir,
            progress=None if args.quiet else sys.stderr,
            profile=args.profile,
            retrieval=dict(args.overrides),
            stores=stores,
        )
    except ValueError as exc:
        print(f"helamem: error: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:  # e.g. PostgreSQL or a Chroma server out of reach
        print(f"helamem: error: {exc}", file=sys.stderr)
        return 1
    print(render_markdown(results))
    print(f"results written to {args.out}/ (results.json, results.md)", file=sys.stderr)
    return 0


def _add_qa_arguments(loc: argparse.ArgumentParser) -> None:
    qa = loc.add_argument_group(
        "QA mode",
        "answer every question from each method's retrieved turns with an LLM and score the "
        "answers with LoCoMo's F1 and BLEU-1 (and an optional LLM judge)",
    )
    qa.add_argument("--llm", metavar="MODEL", help="LiteLLM model answering (enables QA mode)")
    qa.add_argument(
        "--llm-api-base",
        metavar="URL",
        help="API base of the answering model, e.g. http://127.0.0.1:8080/v1 for a local "
        "OpenAI-compatible server (there, without a key, a placeholder key is sent)",
    )
    qa.add_argument(
        "--llm-api-key",
        metavar="KEY",
        help="API key of the answering model (default: the provider's environment variable)",
    )
    qa.add_argument(
        "--qa-k", type=_positive, default=10, help="hits given as context (default: 10)"
    )
    qa.add_argument(
        "--judge",
        metavar="MODEL",
        help="LiteLLM model labelling answers CORRECT/WRONG (judge accuracy)",
    )
    qa.add_argument(
        "--judge-api-base",
        metavar="URL",
        help="API base of the judge (default: --llm-api-base when the judge is the --llm model)",
    )
    qa.add_argument("--judge-api-key", metavar="KEY", help="API key of the judge")
    qa.add_argument(
        "--llm-json-mode",
        choices=["schema", "object", "off"],
        default="schema",
        help="how JSON answers are asked for (default: schema, which local servers enforce)",
    )
    qa.add_argument(
        "--llm-timeout", type=float, default=120.0, help="seconds per LLM call (default: 120)"
    )


def _qa_settings(args: argparse.Namespace) -> QASettings | None:
    """QASettings from the QA options, or ``None`` without ``--llm``."""
    import os

    from .qa import QASettings, qa_client

    if not args.llm:
        if args.judge:
            raise ValueError("--judge needs --llm (QA mode)")
        return None

    def client(model: str, api_base: str | None, api_key: str | None) -> LLMClient:
        if api_base and api_key is None and model.startswith("openai/"):
            api_key = os.environ.get("OPENAI_API_KEY") or "sk-no-key-needed"
        return qa_client(
            model,
            api_base=api_base,
            api_key=api_key,
            json_mode=args.llm_json_mode,
            timeout_s=args.llm_timeout,
        )

    judge = None
    if args.judge:
        same = args.judge == args.llm
        judge = client(
            args.judge,
            args.judge_api_base or (args.llm_api_base if same else None),
            args.judge_api_key or (args.llm_api_key if same else None),
        )
    answerer = client(args.llm, args.llm_api_base, args.llm_api_key)
    return QASettings(answerer=answerer, judge=judge, k=args.qa_k)


def _bench_locomo(args: argparse.Namespace) -> int:
    from helamem.core.embeddings import Embedder, HashingEmbedder, MiniLMEmbedder
    from helamem.core.errors import LLMError, StorageError

    from .locomo import LocomoFormatError, render_markdown, run_locomo

    stores = _stores(args)
    if not args.data.is_file():
        print(f"helamem: error: no such file: {args.data}", file=sys.stderr)
        return 2
    embedder: Embedder = HashingEmbedder(384) if args.embedder == "hashing" else MiniLMEmbedder()
    try:
        qa = _qa_settings(args)
        results = run_locomo(
            args.data,
            out=args.out,
            conversations=args.conversations,
            questions=args.questions,
            methods=args.methods,
            seed=args.seed,
            ks=args.k,
            retrieval=dict(args.overrides),
            embedder=embedder,
            tokenizer_file=args.tokenizer_file,
            progress=None if args.quiet else sys.stderr,
            qa=qa,
            ingest=args.ingest,
            stores=stores,
        )
    except (LocomoFormatError, ValueError, LLMError) as exc:
        print(f"helamem: error: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:  # e.g. PostgreSQL out of reach
        print(f"helamem: error: {exc}", file=sys.stderr)
        return 1
    print(render_markdown(results))
    print(f"results written to {args.out}/ (results.json, results.md)", file=sys.stderr)
    if not results["plot"]["written"]:
        print(f"plot skipped: {results['plot']['reason']}", file=sys.stderr)
    return 0


def _grid(text: str) -> tuple[str, list[Any]]:
    key, value = _override(text)
    values = value if isinstance(value, list) else str(value).split(",")
    parsed: list[Any] = []
    for v in values:
        try:
            parsed.append(json.loads(v) if isinstance(v, str) else v)
        except json.JSONDecodeError:
            parsed.append(v)
    if not parsed or any(v == "" for v in parsed):
        raise argparse.ArgumentTypeError(f"expected KEY=V1,V2,..., got {text!r}")
    return key, parsed


def _add_sweep_parser(benches: Any) -> None:
    sw = benches.add_parser(
        "sweep",
        help="LoCoMo parameter sweep of helamem with leave-one-conversation-out selection",
        description=(
            "Run the helamem method of the LoCoMo benchmark at every point of a grid of "
            "overrides (one embedding pass), fusion once as the reference, and choose the "
            "point by leave-one-conversation-out. Progress goes to stderr."
        ),
    )
    _add_locomo_arguments(sw, "bench-results/sweep")
    sw.add_argument(
        "--grid",
        action="append",
        type=_grid,
        default=[],
        metavar="KEY=V1,V2",
        help="values to sweep, e.g. --grid activation_alpha=0.3,1,2 (repeat per key)",
    )
    sw.add_argument("--k", type=_positive, default=10, help="the cut-off scored (default 10)")
    _add_backend_arguments(sw)
    sw.set_defaults(run=_bench_sweep)


def _bench_sweep(args: argparse.Namespace) -> int:
    from helamem.core.embeddings import Embedder, HashingEmbedder, MiniLMEmbedder
    from helamem.core.errors import StorageError

    from .locomo import LocomoFormatError
    from .sweep import render_sweep, run_sweep

    stores = _stores(args)
    if not args.data.is_file():
        print(f"helamem: error: no such file: {args.data}", file=sys.stderr)
        return 2
    if not args.grid:
        print("helamem: error: give at least one --grid KEY=V1,V2", file=sys.stderr)
        return 2
    embedder: Embedder = HashingEmbedder(384) if args.embedder == "hashing" else MiniLMEmbedder()
    try:
        results = run_sweep(
            args.data,
            grid=dict(args.grid),
            base=dict(args.overrides),
            conversations=args.conversations,
            questions=args.questions,
            seed=args.seed,
            k=args.k,
            embedder=embedder,
            progress=None if args.quiet else sys.stderr,
            out=args.out,
            stores=stores,
        )
    except (LocomoFormatError, ValueError) as exc:
        print(f"helamem: error: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:  # e.g. PostgreSQL out of reach
        print(f"helamem: error: {exc}", file=sys.stderr)
        return 1
    print(render_sweep(results))
    print(f"results written to {args.out}/ (sweep.json, sweep.md)", file=sys.stderr)
    return 0
