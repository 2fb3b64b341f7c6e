"""The ``helamem`` command line.

Store commands (``PATH`` is a store directory, holding ``helamem.sqlite3``;
a scope is written as repeated ``--scope SEGMENT`` options, in order)::

    helamem check PATH [--json]          # integrity: exit 0 clean, 1 on a defect
    helamem reindex PATH                 # rebuild the vector and full-text indexes
    helamem reindex --reembed --embedder hashing --dimension 64 PATH   # switch embedders
    helamem stats PATH [--scope users --scope alice] [--json]
    helamem export PATH --scope users --scope alice --out alice.jsonl
    helamem import PATH alice.jsonl [--scope users --scope bob]

Every store command opens the store with the embedder it records (MiniLM,
hashing or LiteLLM); ``--embedder`` chooses another (with ``reindex
--reembed``: the one to switch to). Exit status: 0 on success, 1 when the
store reports an error (message on stderr) or ``check`` finds a defect, 2 on
a usage error.

Examples:
    Run the LoCoMo retrieval benchmark on a local copy of the data::

        helamem bench locomo --data ../shared/data/locomo/locomo-dev.json
        helamem bench locomo --data locomo.json --conversations 1 --questions 20 \\
            --methods fusion helamem --embedder hashing --out /tmp/smoke

    Run the scale benchmark (1k, 10k, 100k memories beside plain Chroma)::

        helamem bench scale --embedder hashing --sizes 1000 10000 100000

    Sweep spreading parameters with leave-one-conversation-out selection::

        helamem bench sweep --data locomo.json --grid activation_alpha=0.3,1 \\
            --grid max_flipped=3,5
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, CorruptStoreError

if TYPE_CHECKING:
    from .bench.qa import QASettings
    from .config import EmbedderConfig
    from .engine import HelaMemory
    from .llm import LLMClient

__all__ = ["build_parser", "main"]


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``helamem``.

    Returns:
        A parser with the store commands (``check``, ``reindex``, ``stats``,
        ``export``, ``import``) and the ``bench`` subcommands.
    """
    from .bench.locomo import DEFAULT_KS, METHODS

    parser = argparse.ArgumentParser(
        prog="helamem", description="HeLa-Mem: Hebbian associative memory for LLM agents."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_store_parsers(commands)
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
    return parser


def _add_locomo_arguments(p: argparse.ArgumentParser, out: str, ingest: bool = False) -> None:
    """The arguments ``bench locomo`` and ``bench sweep`` share (``--ingest``: locomo only)."""
    p.add_argument("--data", type=Path, required=True, help="LoCoMo JSON file (locomo10 schema)")
    p.add_argument("--out", type=Path, default=Path(out), help=f"output directory (default: {out})")
    p.add_argument("--conversations", type=_positive, help="use the first N conversations")
    p.add_argument(
        "--questions", type=_positive, help="ask at most N questions per conversation (seeded)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the question sample")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_override,
        default=[],
        metavar="KEY=VALUE",
        help="RetrievalConfig override for every method, e.g. --set activation_alpha=0.3;"
        " dynamics.KEY=VALUE overrides DynamicsConfig (e.g. dynamics.decay_rate=0.9995)",
    )
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
    from .bench.scale import DEFAULT_LAYOUTS, DEFAULT_SIZES, LAYOUTS, TENANTS

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
    sc.add_argument("--workdir", type=Path, help="where stores are built (default: a temp dir)")
    sc.add_argument(
        "--profile", action="store_true", help="write a cProfile of the searches per cell to --out"
    )
    sc.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _bench_scale(args: argparse.Namespace) -> int:
    from .bench.scale import render_markdown, run_scale
    from .embeddings import Embedder, HashingEmbedder, MiniLMEmbedder

    embedder: Embedder = HashingEmbedder(384) if args.embedder == "hashing" else MiniLMEmbedder()
    sizes = list(args.sizes) + ([1_000_000] if args.include_1m else [])
    try:
        results = run_scale(
            out=args.out,
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
        )
    except ValueError as exc:
        print(f"helamem: error: {exc}", file=sys.stderr)
        return 2
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

    from .bench.qa import QASettings, qa_client

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
    from .bench.locomo import LocomoFormatError, render_markdown, run_locomo
    from .embeddings import Embedder, HashingEmbedder, MiniLMEmbedder
    from .errors import LLMError

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
        )
    except (LocomoFormatError, ValueError, LLMError) as exc:
        print(f"helamem: error: {exc}", file=sys.stderr)
        return 2
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


def _bench_sweep(args: argparse.Namespace) -> int:
    from .bench.locomo import LocomoFormatError
    from .bench.sweep import render_sweep, run_sweep
    from .embeddings import Embedder, HashingEmbedder, MiniLMEmbedder

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
        )
    except (LocomoFormatError, ValueError) as exc:
        print(f"helamem: error: {exc}", file=sys.stderr)
        return 2
    print(render_sweep(results))
    print(f"results written to {args.out}/ (sweep.json, sweep.md)", file=sys.stderr)
    return 0


# -- store commands: check, reindex, stats, export, import ---------------------

_STORE_COMMANDS = ("check", "reindex", "stats", "export", "import")


class _UsageError(Exception):
    """Bad command-line input (exit status 2)."""


def _store_path(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, metavar="PATH", help="the store directory")
    g = p.add_argument_group(
        "vector index", "default: the embedded Chroma under PATH/chroma; a server with these"
    )
    g.add_argument(
        "--chroma-host", metavar="HOST", help="a Chroma server (`chroma run`) holding the vectors"
    )
    g.add_argument("--chroma-port", type=_positive, default=8000, help="its port (default 8000)")


def _chroma_config(args: argparse.Namespace) -> Any:
    from .config import ChromaConfig

    if getattr(args, "chroma_host", None):
        return ChromaConfig(mode="http", host=args.chroma_host, port=args.chroma_port)
    return ChromaConfig()


def _scope_option(p: argparse.ArgumentParser, required: bool, what: str) -> None:
    p.add_argument(
        "--scope",
        dest="scope",
        action="append",
        required=required,
        default=None,
        metavar="SEGMENT",
        help=f"{what}; one segment per option, in order: --scope users --scope alice "
        f"is ('users', 'alice')",
    )


def _embedder_options(p: argparse.ArgumentParser, switch: bool = False) -> None:
    g = p.add_argument_group(
        "embedder",
        "the embedder to switch to (with --reembed)"
        if switch
        else "default: the embedder the store records (an unfinished switch: its target)",
    )
    g.add_argument(
        "--embedder",
        choices=["minilm", "hashing", "litellm"],
        help="minilm (offline all-MiniLM-L6-v2, 384), hashing (no model; --dimension) or "
        "litellm (--model, --dimension; needs the litellm extra)",
    )
    g.add_argument("--dimension", type=_positive, help="vector size (hashing, litellm)")
    g.add_argument("--model", help="LiteLLM embedding model, e.g. text-embedding-3-small")
    g.add_argument("--api-base", metavar="URL", help="LiteLLM API base")


def _add_store_parsers(commands: Any) -> None:
    ck = commands.add_parser(
        "check",
        help="check a store's integrity (exit 0 clean, 1 on a defect)",
        description=(
            "Read-only integrity check: SQLite integrity_check, the full-text index against "
            "the memories (FTS5 integrity-check, a row per memory and no other), the vector "
            "index against the memories (a vector per indexed memory, none of a missing "
            "memory), edges of missing memories or crossing scopes, scope nodes, stored "
            "vectors, an interrupted embedder switch; pending index work is counted. Each "
            "defect is printed with its fix. Exit status: 0 clean, 1 a defect, 2 bad usage."
        ),
    )
    _store_path(ck)
    ck.add_argument("--json", action="store_true", help="print the report as JSON")

    ri = commands.add_parser(
        "reindex",
        help="rebuild the vector and full-text indexes; --reembed: recompute or switch embedder",
        description=(
            "Rebuild what derives from the memories: the full-text index, the vector index "
            "(from the vectors SQLite stores), and drop edges of missing memories. With "
            "--reembed, recompute every vector: with --embedder (and its options) naming "
            "another embedder than the store's, the store switches to it (resumable: an "
            "interrupted switch resumes when the command is run again, and `--reembed` alone "
            "finishes it). Close every other process using the store first."
        ),
    )
    _store_path(ri)
    ri.add_argument(
        "--reembed", action="store_true", help="recompute every vector (switch with --embedder)"
    )
    _embedder_options(ri, switch=True)
    ri.add_argument("--quiet", action="store_true", help="no progress on stderr")

    st = commands.add_parser(
        "stats",
        help="counts of memories, edges, scopes and vectors",
        description="Counts for the whole store, or for a scope and the scopes under it.",
    )
    _store_path(st)
    _scope_option(st, False, "count only this scope and the scopes under it")
    st.add_argument("--json", action="store_true", help="print the counts as JSON")
    _embedder_options(st)

    ex = commands.add_parser(
        "export",
        help="write a scope (and the scopes under it) to a JSON-lines file",
        description=(
            "Write a scope and the scopes under it (memories with vectors, edges, decay "
            "clocks, distilled facts) to a JSON-lines file, atomically; see "
            "HelaMemory.export_scope."
        ),
    )
    _store_path(ex)
    _scope_option(ex, True, "the scope to export")
    ex.add_argument("--out", type=Path, required=True, metavar="FILE", help="the file to write")
    _embedder_options(ex)

    im = commands.add_parser(
        "import",
        help="load a file written by export into a store",
        description=(
            "Load a file written by `helamem export` in one transaction (into a new store "
            "too); the target scope must hold no memories. Vectors are reused when the file's "
            "embedder is the store's, else recomputed."
        ),
    )
    _store_path(im)
    im.add_argument("file", type=Path, metavar="FILE", help="a file written by export")
    _scope_option(im, False, "where to put the exported scope (default: where it came from)")
    _embedder_options(im)


def _embedder_config(args: argparse.Namespace, reembed: bool = False) -> EmbedderConfig:
    """The embedder the options name, or the one the store records."""
    from pydantic import ValidationError

    from ._check import stored_embedder
    from ._reembed import embedder_config
    from .config import EmbedderConfig

    given = getattr(args, "embedder", None)
    dim = getattr(args, "dimension", None)
    model = getattr(args, "model", None)
    api_base = getattr(args, "api_base", None)
    try:
        if given is None:
            if model is not None or dim is not None:
                raise _UsageError("--model and --dimension need --embedder")
            info = stored_embedder(args.path) if (args.path / "helamem.sqlite3").is_file() else None
            if info is None:
                return EmbedderConfig(api_base=api_base)
            name, stored_dim, switch = info
            if reembed and switch is not None:  # finish the interrupted switch
                name, stored_dim = str(switch.get("name")), int(switch.get("dimension", 0))
            cfg = embedder_config(name, stored_dim)
            if cfg is None:
                raise ConfigError(
                    f"the store's embedder {name!r} ({stored_dim}) is not one the command line "
                    f"builds (minilm, hashing, litellm); open the store from Python with that "
                    f"embedder (HelaMemory(config, embedder=...))"
                )
            return cfg.model_copy(update={"api_base": api_base}) if api_base else cfg
        if given == "minilm":
            if dim not in (None, 384) or model is not None:
                raise _UsageError("--embedder minilm takes no --model, and its dimension is 384")
            return EmbedderConfig(provider="minilm")
        if given == "hashing":
            if model is not None:
                raise _UsageError("--embedder hashing takes no --model")
            return EmbedderConfig(provider="hashing", dimension=dim or 384)
        if model is None or dim is None:
            raise _UsageError("--embedder litellm needs --model and --dimension")
        return EmbedderConfig(provider="litellm", model=model, dimension=dim, api_base=api_base)
    except ValidationError as exc:
        raise _UsageError(f"bad embedder options: {exc}") from None


def _need_store(path: Path) -> None:
    if not (path / "helamem.sqlite3").is_file():
        raise _UsageError(f"no HeLa-Mem store at {path} (helamem.sqlite3 not found)")


def _open_store(args: argparse.Namespace, reembed: bool = False) -> HelaMemory:
    from .config import HelaMemConfig
    from .engine import HelaMemory

    cfg = HelaMemConfig(
        path=args.path, embedder=_embedder_config(args, reembed), chroma=_chroma_config(args)
    )
    return HelaMemory(cfg, reembed=reembed).open()


def _scope_arg(args: argparse.Namespace) -> tuple[str, ...] | None:
    from .types import normalize_scope

    if not args.scope:
        return None
    return normalize_scope(list(args.scope))


def _cmd_check(args: argparse.Namespace) -> int:
    from ._check import check_store
    from .config import HelaMemConfig

    _need_store(args.path)
    report = check_store(args.path, HelaMemConfig(path=args.path, chroma=_chroma_config(args)))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    return 0 if report.ok else 1


def _cmd_reindex(args: argparse.Namespace) -> int:
    from ._check import repair_derived

    _need_store(args.path)
    try:
        mem = _open_store(args, reembed=args.reembed)
    except CorruptStoreError:
        if not _sqlite_sound(args.path):
            raise
        # the database is sound, so the damaged or foreign part is the vector index,
        # which is derived: discard it and build it again from the database
        from .storage.chroma import discard_index

        logging.getLogger("helamem").warning(
            "the vector index of %s does not match its database; discarding it and "
            "rebuilding it from helamem.sqlite3",
            args.path,
        )
        discard_index(args.path)
        mem = _open_store(args, reembed=args.reembed)
    with mem:
        switched = mem.reembedded
        # a switch has just rebuilt the vector index with the new vectors
        report = mem._call(
            lambda c: repair_derived(
                c, reembed=args.reembed and switched is None, vectors=switched is None
            )
        )
        st = mem.stats()
    if switched is not None:
        print(f"switched the embedder to {st.embedder}: {switched} memories re-embedded")
    elif args.reembed:
        print(f"re-embedded {report.vectors} memories with {st.embedder}")
    vectors = report.vectors if switched is None else st.vectors
    print(
        f"reindexed {args.path}: {vectors} vectors, {report.fts_rows} full-text rows"
        f", {report.edges_dropped} edges of missing memories dropped"
    )
    return 0


def _sqlite_sound(path: Path) -> bool:
    """Whether the store's database passes ``PRAGMA quick_check`` and holds memories."""
    import sqlite3
    from contextlib import closing

    try:
        uri = f"{(path / 'helamem.sqlite3').resolve().as_uri()}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True)) as db:
            ok = [r[0] for r in db.execute("PRAGMA quick_check")] == ["ok"]
            table = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'memories'"
            ).fetchone()
    except sqlite3.Error:
        return False
    return ok and table is not None


def _cmd_stats(args: argparse.Namespace) -> int:
    import dataclasses

    _need_store(args.path)
    scope = _scope_arg(args)
    with _open_store(args) as mem:
        st = dataclasses.asdict(mem.stats(scope))
    if args.json:
        print(json.dumps({"scope": None if scope is None else list(scope), **st}, indent=2))
    else:
        print(f"{'scope':<18} {'(all)' if scope is None else json.dumps(list(scope))}")
        for key, value in st.items():
            if not key.startswith("llm_"):
                print(f"{key:<18} {value}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    _need_store(args.path)
    scope = _scope_arg(args)
    assert scope is not None  # --scope is required
    with _open_store(args) as mem:
        r = mem.export_scope(scope, args.out)
    print(
        f"exported {json.dumps(list(r.scope))}: {r.memories} memories, {r.edges} edges, "
        f"{r.scopes} scopes, {r.clusters} clusters to {r.path}"
    )
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        raise _UsageError(f"no such file: {args.file}")
    scope = _scope_arg(args)
    with _open_store(args) as mem:
        r = mem.import_scope(args.file, scope=scope)
    print(
        f"imported {json.dumps(list(r.scope))}: {r.memories} memories, {r.edges} edges, "
        f"{r.scopes} scopes, {r.clusters} clusters ({r.reembedded} vectors recomputed) "
        f"from {r.path}"
    )
    return 0


@contextmanager
def _progress_to_stderr(quiet: bool) -> Iterator[None]:
    """HeLa-Mem's log records (warnings; progress unless ``quiet``) on stderr."""
    log = logging.getLogger("helamem")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("helamem: %(message)s"))
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _run_store_command(args: argparse.Namespace) -> int:
    from .errors import HelaMemError, InvalidScopeError

    handlers = {
        "check": _cmd_check,
        "reindex": _cmd_reindex,
        "stats": _cmd_stats,
        "export": _cmd_export,
        "import": _cmd_import,
    }
    try:
        with _progress_to_stderr(getattr(args, "quiet", False)):
            return handlers[args.command](args)
    except (_UsageError, InvalidScopeError) as exc:
        print(f"helamem {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except HelaMemError as exc:
        print(f"helamem {args.command}: error: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``helamem`` console script.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 when the store reports an error or
        ``check`` finds a defect, 2 on bad input.
    """
    args = build_parser().parse_args(argv)
    if args.command in _STORE_COMMANDS:
        return _run_store_command(args)
    if args.command == "bench" and args.benchmark == "locomo":
        return _bench_locomo(args)
    if args.command == "bench" and args.benchmark == "scale":
        return _bench_scale(args)
    if args.command == "bench" and args.benchmark == "sweep":
        return _bench_sweep(args)
    return 2  # pragma: no cover - argparse requires a known subcommand


if __name__ == "__main__":
    sys.exit(main())
