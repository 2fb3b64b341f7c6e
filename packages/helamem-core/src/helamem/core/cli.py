"""The ``helamem`` command line.

Examples:
    Run the LoCoMo retrieval benchmark on a local copy of the data::

        helamem bench locomo --data ../shared/data/locomo/locomo-dev.json
        helamem bench locomo --data locomo.json --conversations 1 --questions 20 \\
            --methods fusion helamem --embedder hashing --out /tmp/smoke
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
        A parser with the ``bench locomo`` subcommand.
    """
    from .bench.locomo import DEFAULT_KS, METHODS

    parser = argparse.ArgumentParser(
        prog="helamem", description="HeLa-Mem: Hebbian associative memory for LLM agents."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench = commands.add_parser("bench", help="run a benchmark")
    benches = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    loc = benches.add_parser(
        "locomo",
        help="LoCoMo retrieval: HeLa-Mem beside dense, BM25 and fusion baselines",
        description=(
            "Ingest every LoCoMo conversation into its own scope (one memory per turn), "
            "ask each question against its own conversation, and report R@k, evidence "
            "recall@k and context tokens per method and category. Progress goes to stderr."
        ),
    )
    loc.add_argument("--data", type=Path, required=True, help="LoCoMo JSON file (locomo10 schema)")
    loc.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results/locomo"),
        help="output directory (default: bench-results/locomo)",
    )
    loc.add_argument("--conversations", type=_positive, help="use the first N conversations")
    loc.add_argument(
        "--questions", type=_positive, help="ask at most N questions per conversation (seeded)"
    )
    loc.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=list(METHODS),
        metavar="METHOD",
        help=f"methods to run (default: all of {', '.join(METHODS)})",
    )
    loc.add_argument("--seed", type=int, default=0, help="seed of the question sample")
    loc.add_argument(
        "--k",
        nargs="+",
        type=_positive,
        default=list(DEFAULT_KS),
        help="cut-offs k (default: 5 10 20)",
    )
    loc.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_override,
        default=[],
        metavar="KEY=VALUE",
        help="RetrievalConfig override for every method, e.g. --set activation_alpha=0.3;"
        " dynamics.KEY=VALUE overrides DynamicsConfig (e.g. dynamics.decay_rate=0.9995)",
    )
    loc.add_argument(
        "--embedder",
        choices=["minilm", "hashing"],
        default="minilm",
        help="minilm (default, offline) or hashing (no model: smoke runs only)",
    )
    loc.add_argument(
        "--tokenizer-file",
        type=Path,
        help="local cl100k_base.tiktoken file (or tiktoken cache dir) for token counts",
    )
    loc.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def _bench_locomo(args: argparse.Namespace) -> int:
    from .bench.locomo import LocomoFormatError, render_markdown, run_locomo
    from .embeddings import Embedder, HashingEmbedder, MiniLMEmbedder

    if not args.data.is_file():
        print(f"helamem: error: no such file: {args.data}", file=sys.stderr)
        return 2
    embedder: Embedder = HashingEmbedder(384) if args.embedder == "hashing" else MiniLMEmbedder()
    try:
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
        )
    except (LocomoFormatError, ValueError) as exc:
        print(f"helamem: error: {exc}", file=sys.stderr)
        return 2
    print(render_markdown(results))
    print(f"results written to {args.out}/ (results.json, results.md)", file=sys.stderr)
    if not results["plot"]["written"]:
        print(f"plot skipped: {results['plot']['reason']}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``helamem`` console script.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 on bad input.
    """
    args = build_parser().parse_args(argv)
    if args.command == "bench" and args.benchmark == "locomo":
        return _bench_locomo(args)
    return 2  # pragma: no cover - argparse requires a known subcommand


if __name__ == "__main__":
    sys.exit(main())
