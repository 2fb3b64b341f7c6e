"""HeLa-Mem core demo: offline, persistent, and explicit about what association adds.

Run it twice (``./dev demo``): the first run writes a small life story of one
user, the second finds it on disk, and every run's searches strengthen the
edges between memories that are recalled together.

    python examples/core_demo.py [--path ./helamem-data]
"""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime
from pathlib import Path

from helamem.core import HelaMemConfig, HelaMemory, Hit, RetrievalConfig

SCOPE = ("users", "dana")

# (date, user message, assistant reply): one user's conversations over two months
STORY: list[tuple[datetime, str, str]] = [
    (
        datetime(2023, 5, 8, tzinfo=UTC),
        "My daughter Emma just started violin lessons.",
        "How exciting! How is she finding it?",
    ),
    (
        datetime(2023, 5, 8, tzinfo=UTC),
        "Her teacher, Mr. Okafor, says she has a great ear.",
        "That is lovely encouragement from Mr. Okafor.",
    ),
    (
        datetime(2023, 5, 20, tzinfo=UTC),
        "I'm training for the Berlin marathon in September.",
        "Good luck with the training plan!",
    ),
    (
        datetime(2023, 6, 2, tzinfo=UTC),
        "My left knee has been sore after long runs.",
        "Maybe ease off the long runs and see a physio.",
    ),
    (
        datetime(2023, 6, 15, tzinfo=UTC),
        "We're saving up to buy Emma a better violin.",
        "A full-size one could be a great gift.",
    ),
    (
        datetime(2023, 7, 1, tzinfo=UTC),
        "Emma played her first recital on Saturday!",
        "Congratulations to Emma!",
    ),
    (
        datetime(2023, 7, 9, tzinfo=UTC),
        "The physio gave me stretching exercises for the knee.",
        "Stretching should help before Berlin.",
    ),
    (
        datetime(2023, 7, 20, tzinfo=UTC),
        "Mr. Okafor thinks Emma could join the youth orchestra.",
        "What an opportunity!",
    ),
]

K = 5  # at most 5 hits; association hits compete for these slots (association_share 0.5: two)
QUERIES = [
    "What music is my kid learning?",
    "Any advice about running?",
]


def _explain(hit: Hit, mem: HelaMemory) -> str:
    line = (
        f"  [{hit.provenance:<11}] score={hit.score:.3f} base={hit.base:.3f} "
        f"boost={hit.boost:+.3f} cos={hit.dense:.2f} bm25={hit.lexical:.2f}  "
        f"{hit.memory.role}: {hit.content}"
    )
    for seed_id, weight in hit.via[:2]:
        seed = mem.get(seed_id)
        line += f"\n      <- spread via path w={weight:.2f} from: {seed.content!r}"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=Path("./helamem-data"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    # The defaults (α = 1, 8 seeds, two hops, association hits in half of k) were
    # chosen on LoCoMo's 600-turn conversations (README, Benchmarks). In a
    # 16-turn store nearly every memory is a seed or a neighbour of one, so
    # the demo spreads more gently: one hop, α = 0.3, boosts capped at 0.2.
    config = HelaMemConfig(
        retrieval=RetrievalConfig(
            activation_alpha=0.3, spread_seeds=5, spread_hops=1, max_boost=0.2, max_flipped=3
        )
    )
    with HelaMemory.from_path(args.path, config) as mem:
        before = mem.stats(SCOPE)
        if before.memories == 0:
            print(f"First run: writing {len(STORY)} turns to {args.path} ...")
            for when, user, assistant in STORY:
                # The agent loop: recall for the user's message, answer, then
                # record the turn with the memories it used (they co-activate).
                used = mem.search(user, SCOPE, k=3, reference_time=when)
                mem.add_turn(SCOPE, user, assistant, event_time=when, used_ids=used.ids)
        else:
            print(
                f"Found {before.memories} memories and {before.edges} learned edges "
                f"in {args.path} (persisted from an earlier run)."
            )
        st = mem.stats(SCOPE)
        print(
            f"Store: {st.memories} memories, {st.edges} edges "
            f"(mean weight {st.mean_edge_weight:.3f}), embedder {st.embedder}\n"
        )

        for query in QUERIES:
            plain = mem.search(query, SCOPE, k=K, spread=False, learn=False)
            res = mem.search(query, SCOPE, k=K)  # learns: recalled memories co-activate
            print(f"Q: {query}")
            for hit in res:
                print(_explain(hit, mem))
            added = [h for h in res if h.id not in plain.ids]
            print(
                f"  spreading activation added {len(added)} memor"
                f"{'y' if len(added) == 1 else 'ies'} that similarity alone ranked lower\n"
            )

        after = mem.stats(SCOPE)
        print(
            f"After searching: {after.edges} edges, mean weight {after.mean_edge_weight:.3f} "
            f"(was {st.mean_edge_weight:.3f}). Run again: the store persists and keeps learning."
        )


if __name__ == "__main__":
    main()
