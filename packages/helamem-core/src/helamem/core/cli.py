"""The ``helamem`` command line: the store commands, and the subcommands other packages add.

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

Other installed packages add commands through the ``helamem.commands`` entry
point group: each entry point names a callable ``register(commands)`` that
adds its parser to the ``argparse`` subparsers and sets ``run`` (a function
``Namespace -> int``) as a parser default. ``helamem-bench`` adds ``helamem
bench locomo|scale|sweep`` this way; without it, ``helamem bench`` exits 2
with a message naming ``pip install helamem-bench``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._check_report import DB_NAME, no_store
from .errors import ConfigError, CorruptStoreError

if TYPE_CHECKING:
    from .config import EmbedderConfig
    from .engine import HelaMemory

__all__ = ["COMMANDS_GROUP", "build_parser", "main"]

#: Entry point group of the commands other packages add to ``helamem``.
COMMANDS_GROUP = "helamem.commands"


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
        ``export``, ``import``, ``delete-scope``) and the commands of the installed
        ``helamem.commands`` entry points (``bench`` from ``helamem-bench``;
        a stub that explains how to install it when it is missing).
    """
    parser = argparse.ArgumentParser(
        prog="helamem", description="HeLa-Mem: Hebbian associative memory for LLM agents."
    )
    try:
        core_version = version("helamem-core")
    except PackageNotFoundError:  # run from a source tree without installing
        core_version = "unknown (not installed)"
    parser.add_argument("--version", action="version", version=f"helamem-core {core_version}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_store_parsers(commands)
    names = set()
    for ep in entry_points(group=COMMANDS_GROUP):
        ep.load()(commands)
        names.add(ep.name)
    if "bench" not in names:
        stub = commands.add_parser(
            "bench", help="run a benchmark (needs helamem-bench: pip install helamem-bench)"
        )
        stub.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        stub.set_defaults(run=_no_bench)
    return parser


def _no_bench(args: argparse.Namespace) -> int:
    """``helamem bench`` without ``helamem-bench`` installed: exit 2 with the fix."""
    print(
        "helamem: error: the bench commands live in the helamem-bench package: "
        "pip install helamem-bench",
        file=sys.stderr,
    )
    return 2


# -- store commands: check, reindex, stats, export, import, delete-scope -------

_STORE_COMMANDS = ("check", "reindex", "stats", "export", "import", "delete-scope")


class _UsageError(Exception):
    """Bad command-line input (exit status 2)."""


def _store_path(p: argparse.ArgumentParser, mmap: bool = True) -> None:
    p.add_argument("path", type=Path, metavar="PATH", help="the store directory")
    g = p.add_argument_group(
        "vector index", "default: the embedded Chroma under PATH/chroma; a server with these"
    )
    g.add_argument(
        "--chroma-host", metavar="HOST", help="a Chroma server (`chroma run`) holding the vectors"
    )
    g.add_argument("--chroma-port", type=_positive, default=8000, help="its port (default 8000)")
    if not mmap:  # the command reads SQLite without a map
        return
    from .config import HelaMemConfig

    default = HelaMemConfig.model_fields["sqlite_mmap_mb"].default
    p.add_argument(
        "--sqlite-mmap-mb",
        type=_mmap_mb,
        default=None,
        metavar="MB",
        help="map at most MB MiB of the SQLite file into memory for reads, 0-2047 (0: off, "
        "for a removable disk, where a read error under the map stops the process with "
        f"SIGBUS; default {default})",
    )


def _mmap_mb(text: str) -> int:
    from ._config_env import SQLITE_MMAP_MAX_MB, mmap_mb

    if (value := mmap_mb(text)) is None:  # the rule of HELAMEM_SQLITE_MMAP_MB
        raise argparse.ArgumentTypeError(
            f"expected an integer 0-{SQLITE_MMAP_MAX_MB} (MiB; 0 turns the map off), got {text!r}"
        )
    return value


def _store_options(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the store options set: the vector index, the memory map."""
    fields: dict[str, Any] = {"path": args.path, "chroma": _chroma_config(args)}
    if getattr(args, "sqlite_mmap_mb", None) is not None:
        fields["sqlite_mmap_mb"] = args.sqlite_mmap_mb
    return fields


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
    _store_path(ck, mmap=False)  # reads with read(): a disk error is a defect
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

    ds = commands.add_parser(
        "delete-scope",
        help="delete a scope and the scopes under it (memories, edges, facts)",
        description=(
            "Delete a scope and every scope under it: memories, their vectors, edges, "
            "distilled facts and clocks (HelaMemory.delete_scope). Pass --yes; without it "
            "nothing is deleted and the count that would be is printed."
        ),
    )
    _store_path(ds)
    _scope_option(ds, True, "the scope to delete")
    ds.add_argument("--yes", action="store_true", help="delete (without it: a dry run)")
    _embedder_options(ds)

    im = commands.add_parser(
        "import",
        help="load a file written by export into a store",
        description=(
            "Load a file written by `helamem export` in one transaction (into a new store "
            "too: it takes the file's embedder unless --embedder says otherwise); the target "
            "scope must hold no memories, and the file's memory ids must not be in the store "
            "(ids are kept: import into another store, or into the same one once the exported "
            "scope is deleted). Vectors are reused when the file's embedder is the store's, "
            "else recomputed."
        ),
    )
    _store_path(im)
    im.add_argument("file", type=Path, metavar="FILE", help="a file written by export")
    _scope_option(im, False, "where to put the exported scope (default: where it came from)")
    _embedder_options(im)


def _embedder_config(args: argparse.Namespace, reembed: bool = False) -> EmbedderConfig:
    """The embedder the options name, or the one the store records."""
    from pydantic import ValidationError

    from ._reembed import embedder_config, stored_embedder
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
            if info is None:  # a new store: an import takes the file's embedder when it can
                made = getattr(args, "file_embedder", None)
                return (made or EmbedderConfig()).model_copy(update={"api_base": api_base})
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
    if not (path / DB_NAME).is_file():
        raise _UsageError(no_store(path))


def _open_store(args: argparse.Namespace, reembed: bool = False) -> HelaMemory:
    from .config import HelaMemConfig
    from .engine import HelaMemory

    cfg = HelaMemConfig(embedder=_embedder_config(args, reembed), **_store_options(args))
    return HelaMemory(cfg, reembed=reembed).open()


def _scope_arg(args: argparse.Namespace) -> tuple[str, ...] | None:
    from .errors import InvalidScopeError
    from .types import normalize_scope

    if not args.scope:
        return None
    try:
        return normalize_scope(list(args.scope))
    except InvalidScopeError as exc:  # the command line's: bad usage (exit 2)
        raise _UsageError(str(exc)) from exc


def _cmd_check(args: argparse.Namespace) -> int:
    from ._check import check_store
    from .config import HelaMemConfig

    _need_store(args.path)
    report = check_store(args.path, HelaMemConfig(**_store_options(args)))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    return 0 if report.ok else 1


def _cmd_reindex(args: argparse.Namespace) -> int:
    from ._repair import repair_derived

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
        + (
            f", {report.metadata_mended} memories' too-deep metadata mended"
            * bool(report.metadata_mended)
        )
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


def _known(mem: HelaMemory, scope: tuple[str, ...], outcome: str) -> None:
    """Refuse a scope the store never held (a typo read as "no memories")."""
    from ._core import known_scope

    mem._call(lambda c: known_scope(c, scope, outcome, "one --scope per segment"), None)


def _cmd_stats(args: argparse.Namespace) -> int:
    import dataclasses

    _need_store(args.path)
    scope = _scope_arg(args)
    with _open_store(args) as mem:
        if scope is not None:
            _known(mem, scope, "nothing to count")
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


def _cmd_delete_scope(args: argparse.Namespace) -> int:
    _need_store(args.path)
    scope = _scope_arg(args)
    assert scope is not None  # --scope is required
    with _open_store(args) as mem:
        _known(mem, scope, "nothing was deleted")
        if not args.yes:
            n = mem.stats(scope).memories
            print(f"would delete {json.dumps(list(scope))}: {n} memories (pass --yes)")
            return 0
        n = mem.delete_scope(scope)
    print(f"deleted {json.dumps(list(scope))}: {n} memories")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from ._portable import export_embedder
    from ._reembed import embedder_config

    if not args.file.is_file():
        raise _UsageError(f"no such file: {args.file}")
    scope = _scope_arg(args)
    # into a new store without --embedder: the file's own embedder, so its vectors are
    # reused rather than recomputed with the default one
    args.file_embedder = embedder_config(*export_embedder(args.file))
    with _open_store(args) as mem:
        r = mem.import_scope(args.file, scope=scope)
    print(
        f"imported {json.dumps(list(r.scope))}: {r.memories} memories, {r.edges} edges, "
        f"{r.scopes} scopes, {r.clusters} clusters ({r.reembedded} vectors recomputed) "
        f"from {r.path}"
        + (
            f"; left out {r.facts_dropped} facts citing memories that no longer exist"
            if r.facts_dropped
            else ""
        )
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
    from .errors import HelaMemError

    handlers = {
        "check": _cmd_check,
        "reindex": _cmd_reindex,
        "stats": _cmd_stats,
        "export": _cmd_export,
        "import": _cmd_import,
        "delete-scope": _cmd_delete_scope,
    }
    try:
        with _progress_to_stderr(getattr(args, "quiet", False)):
            return handlers[args.command](args)
    except _UsageError as exc:  # a bad scope in a file is the store's error: exit 1
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
    try:
        if args.command in _STORE_COMMANDS:
            status = _run_store_command(args)
        else:
            run = getattr(args, "run", None)
            if run is None:  # pragma: no cover - argparse requires a known subcommand
                return 2
            status = run(args)
        sys.stdout.flush()  # a closed pipe fails here, not at interpreter exit
        return status
    except BrokenPipeError:
        # the reader went away (``helamem stats PATH | head``): no traceback, and
        # nothing more written to the closed pipe at exit (Python's signal docs)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
