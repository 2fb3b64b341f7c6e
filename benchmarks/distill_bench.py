"""Distillation cost: LLM calls and tokens per 100 ingested turns.

Ingests LoCoMo turns (pairs of messages) into one scope, consolidates every
``--every`` turns, and counts LLM calls and tokens; it also checks that the
``add``/``search`` hot path makes no LLM call at all.

    ./dev bench-distill --data ../shared/data/locomo/locomo-dev.json
    # default LLM: SmolLM2-135M served by llama.cpp on 127.0.0.1 (offline);
    # --llm gpt-4o-mini (any LiteLLM model) for a hosted one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from helamem.core import HelaMemConfig, HelaMemory, LLMConfig, LLMError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))


def locomo_turns(path: Path, conv: int) -> Iterator[tuple[str, str, datetime]]:
    """(user text, assistant text, session time) pairs of one conversation."""
    sample = json.loads(path.read_text())[conv]["conversation"]
    s = 1
    while f"session_{s}" in sample:
        when = datetime.strptime(sample[f"session_{s}_date_time"], "%I:%M %p on %d %B, %Y")
        msgs = [f"{t['speaker']}: {t['text']}" for t in sample[f"session_{s}"]]
        for i in range(0, len(msgs) - 1, 2):
            yield msgs[i], msgs[i + 1], when
        s += 1


@contextlib.contextmanager
def llm_config(model: str | None) -> Iterator[LLMConfig]:
    if model:
        yield LLMConfig(model=model)
        return
    from smollm_server import serve_smollm

    with serve_smollm(n_ctx=4096) as srv:
        yield LLMConfig(
            model=srv.model,
            api_base=srv.api_base,
            api_key=srv.api_key,
            json_mode="schema",
            max_tokens=512,
            timeout_s=120,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--conversation", type=int, default=0)
    ap.add_argument("--turns", type=int, default=100)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--llm", default=None, help="LiteLLM model; default: local SmolLM2")
    ap.add_argument("--out", type=Path, default=Path("bench-results/distill.json"))
    args = ap.parse_args()
    scope = ("locomo", f"conv{args.conversation}")
    hot_calls = 0
    reports: list[dict[str, Any]] = []
    with llm_config(args.llm) as llm, tempfile.TemporaryDirectory() as d:
        cfg = HelaMemConfig(path=Path(d), llm=llm)
        with HelaMemory(cfg) as mem:
            t0 = time.perf_counter()
            for i, (user, assistant, when) in enumerate(locomo_turns(args.data, args.conversation)):
                if i >= args.turns:
                    break
                before = mem.stats().llm_calls
                used = mem.search(user, scope, k=5, reference_time=when)
                mem.add_turn(scope, user, assistant, event_time=when, used_ids=used.ids)
                hot_calls += mem.stats().llm_calls - before
                if (i + 1) % args.every == 0:
                    try:
                        r = mem.consolidate(scope)
                    except LLMError as exc:  # counted, not fatal: the hook would retry later
                        reports.append({"turn": i + 1, "error": str(exc)[:300]})
                        print(f"turn {i + 1}: consolidation failed: {exc}", flush=True)
                        continue
                    reports.append({"turn": i + 1, **dataclasses.asdict(r)})
                    print(
                        f"turn {i + 1}: clusters {r.clusters}, facts +{r.facts_added} "
                        f"~{r.facts_updated}, llm calls so far {mem.stats().llm_calls}",
                        flush=True,
                    )
            st = mem.stats(scope)
            elapsed = time.perf_counter() - t0
            facts = [
                h.content
                for h in mem.search("What do we know?", scope, k=1, semantic_k=5, learn=False)
                if h.provenance == "semantic"
            ]
    per100 = 100.0 / args.turns
    result = {
        "model": llm.model,
        "turns": args.turns,
        "every": args.every,
        "llm_calls": st.llm_calls,
        "llm_calls_per_100_turns": st.llm_calls * per100,
        "prompt_tokens_per_100_turns": st.llm_prompt_tokens * per100,
        "completion_tokens_per_100_turns": st.llm_completion_tokens * per100,
        "llm_failed_calls": st.llm_failed_calls,
        "facts": st.semantic,
        "llm_calls_on_hot_path": hot_calls,
        "elapsed_s": elapsed,
        "consolidations": reports,
        "sample_facts": facts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(
        json.dumps(
            {k: v for k, v in result.items() if k != "consolidations"}, indent=2, default=str
        )
    )


if __name__ == "__main__":
    main()
