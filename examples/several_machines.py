"""Two processes (or machines) share one memory: PostgreSQL for the graph, a Chroma server.

Run ``write`` in one process and ``read`` in another (on another machine, with
the same ``--dsn`` and ``--chroma-host``): the second sees the first's
memories and the edge its turns learned. See the README's "Several machines".

    python examples/several_machines.py write --dsn postgresql://postgres@127.0.0.1:5433/postgres
    python examples/several_machines.py read  --dsn postgresql://postgres@127.0.0.1:5433/postgres
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from helamem.core import ChromaConfig, HelaMemConfig, HelaMemory

SCOPE = ("team", "alice")


def open_memory(args: argparse.Namespace) -> HelaMemory:
    chroma = ChromaConfig(mode="http", host=args.chroma_host, port=args.chroma_port)
    # the local path only holds lock files: the graph is in PostgreSQL, vectors on the server
    local = HelaMemConfig(path=tempfile.mkdtemp(prefix="helamem-"), chroma=chroma)
    embedder = {"embedder": args.embedder} if args.embedder else {}
    return HelaMemory.from_url(args.dsn, local, schema=args.schema, **embedder)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("role", choices=["write", "read"])
    p.add_argument("--dsn", required=True, help="postgresql://user@host:port/database")
    p.add_argument("--schema", default="helamem_demo")
    p.add_argument("--chroma-host", default="127.0.0.1")
    p.add_argument("--chroma-port", type=int, default=8001)
    p.add_argument("--embedder", default=None, help=argparse.SUPPRESS)  # tests: a fast one
    args = p.parse_args(argv)
    if args.embedder == "hashing":
        from helamem.core import HashingEmbedder

        args.embedder = HashingEmbedder(256)
    with open_memory(args) as mem:
        if args.role == "write":
            user, _ = mem.add_turn(SCOPE, "I adopted a cat named Miso", "Lovely name!")
            # the second turn used the first memory: the two co-activate (Hebbian learning)
            mem.add_turn(SCOPE, "Miso sleeps on the piano", "Miso is a cat", used_ids=[user.id])
            stats = mem.stats(SCOPE)
            print(f"wrote {stats.memories} memories, {stats.edges} edges")
            return 0
        hits = mem.search("what is my cat called?", SCOPE, k=2, learn=False)
        for hit in hits.hits:
            print(f"{hit.score:.3f}  {hit.memory.content}")
        stats = mem.stats(SCOPE)
        print(f"read {stats.memories} memories, {stats.edges} edges")
        return 0 if stats.memories and stats.edges else 1


if __name__ == "__main__":
    sys.exit(main())
