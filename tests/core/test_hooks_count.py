"""The turns counted toward a scope's next consolidation live in the store.

Before, each :class:`~helamem.core.TurnRecorder` counted the turns it stored in
memory: a process that recorded fewer than ``consolidate_every`` turns and
exited (a CLI, a serverless handler) never consolidated, however many such
processes ran. Now the count is the store's (``helamem.core._turn_count``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from helamem.core import (
    ConsolidationConfig,
    ConsolidationReport,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    LLMClient,
    LLMConfig,
    PostgresConfig,
    TurnRecorder,
)

if TYPE_CHECKING:
    from helamem.core._turn_count import Claim

litellm = pytest.importorskip("litellm")

S = ("users", "alice")
StoreConfig = Callable[[Path], PostgresConfig | None]


def _facts(messages: list[dict[str, str]]) -> str:
    """A well-behaved model: one fact per cluster citing its first two episodes."""
    facts = []
    for block in messages[-1]["content"].split("Cluster ")[1:]:
        labels = re.findall(r"\[(E\d+)\]", block)
        facts.append({"text": f"Alice keeps a cat named Miso ({labels[0]})", "sources": labels[:2]})
    return json.dumps({"facts": facts})


async def _acompletion(**kwargs: Any) -> Any:
    return await litellm.acompletion(mock_response=_facts(kwargs["messages"]), **kwargs)


def _completion(**kwargs: Any) -> Any:
    return litellm.completion(mock_response=_facts(kwargs["messages"]), **kwargs)


class Counting(HelaMemory):
    """A HelaMemory that notes each ``aconsolidate`` (the recorder's) and its report,
    across memory objects (the processes of a test)."""

    reports: ClassVar[list[ConsolidationReport]] = []

    async def aconsolidate(self, scope: Sequence[str]) -> ConsolidationReport:
        report = await super().aconsolidate(scope)
        Counting.reports.append(report)
        return report


def _mem(path: Path, store: StoreConfig) -> Counting:
    cfg = HelaMemConfig(
        path=path,
        store=store(path),
        llm=LLMConfig(model="gpt-4o-mini", backoff_s=0.0),
        consolidation=ConsolidationConfig(max_clusters=2),  # every_turns: 20 (default)
    )
    llm = LLMClient(cfg.llm, completion=_completion, acompletion=_acompletion)
    return Counting(cfg, embedder=HashingEmbedder(64), llm=llm)


def _record(rec: TurnRecorder, turns: range) -> None:
    for i in turns:
        rec.record_turn_sync(S, f"my cat miso chased a mouse {i}", f"miso the cat is fast {i}")
    rec.flush_sync(timeout=60)


def test_short_lived_processes_recording_4_turns_each_consolidate_once_per_20(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    """Five "processes" (a memory and a recorder each, closed after 4 turns) record
    20 turns of one scope: one consolidation, with facts (before: none at all)."""
    Counting.reports = []
    path = tmp_path / "store"
    for run in range(5):
        with _mem(path, store_config) as mem, TurnRecorder(mem) as rec:
            assert rec.consolidate_every == 20
            _record(rec, range(4 * run, 4 * run + 4))
            assert len(Counting.reports) == (1 if run == 4 else 0)
    (report,) = Counting.reports
    assert report.facts_added >= 1
    with _mem(path, store_config) as mem:
        assert mem.stats(S).episodic == 40
        assert mem.stats(S).semantic == report.facts_added
        with TurnRecorder(mem) as rec:  # the count started again at the consolidation
            _record(rec, range(20, 39))
        assert len(Counting.reports) == 1
        with TurnRecorder(mem) as rec:
            _record(rec, range(39, 40))
        assert len(Counting.reports) == 2


def test_an_explicit_consolidate_resets_the_count(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    Counting.reports = []
    with _mem(tmp_path / "store", store_config) as mem, TurnRecorder(mem) as rec:
        _record(rec, range(15))
        assert mem.consolidate(S).facts_added >= 1  # not the recorder's: not counted
        _record(rec, range(15, 25))  # 25 recorded by this recorder, 10 since consolidated
        assert Counting.reports == []
        _record(rec, range(25, 35))
        assert len(Counting.reports) == 1


def _due(mem: HelaMemory, scope: tuple[str, ...] = S) -> int:
    from helamem.core import _turn_count as turn_count

    def run(c: Any) -> int:
        node = c.store.find_scope(scope)
        return 0 if node is None else turn_count.due(c.store, node)[1]

    return int(mem._call(run, None))


def _claim(mem: HelaMemory, now: float) -> Claim | None:
    from helamem.core import _turn_count as turn_count

    claim: Claim | None = mem._call(lambda c: turn_count.claim(c.store, S, 20, now), None)
    return claim


def test_racing_claims_consolidate_once_and_a_killed_claimer_only_delays(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    """Counted in the turn's transaction (a retry skipped as stored counts nothing);
    of two claims on the same due turns one wins; a claim whose recorder was killed
    lapses after the lease, the turns still due."""
    from helamem.core import _turn_count as turn_count

    with _mem(tmp_path / "store", store_config) as mem:
        for i in range(19):
            mem.add_turn(S, f"q{i}", f"a{i}", metadata={"k": str(i)}, unique_on=["k"])
        mem.add_turn(S, "q0", "a0", metadata={"k": "0"}, unique_on=["k"])  # stored already
        assert _due(mem) == 19
        assert _claim(mem, 1000.0) is None  # not due yet
        mem.add_turn(S, "q19", "a19")
        first = _claim(mem, 1000.0)
        assert first is not None and first.total == 20
        assert _claim(mem, 1001.0) is None  # another process: the claim holds it
        lapsed = 1000.0 + turn_count.CLAIM_LEASE_S + 1  # the first claimer was killed
        second = _claim(mem, lapsed)
        assert second is not None and second.total == 20
        assert _due(mem) == 20  # claimed, not yet consolidated
        mem.add_turn(S, "q20", "a20")
        mem._call(lambda c: turn_count.settle(c.store, first), None)  # late, out of order
        assert _due(mem) == 1  # the turn stored after the claim stays due
        assert _claim(mem, lapsed + 1) is None  # the second's claim still holds
        mem._call(lambda c: turn_count.settle(c.store, second), None)
        assert _due(mem) == 1
        mem.delete_scope(S)
        assert _due(mem) == 0


@pytest.mark.parametrize("case", ["a tenant's call failed", "max_clusters left a tenant"])
def test_a_prefix_consolidation_keeps_due_the_turns_of_tenants_it_did_not_finish(
    tmp_path: Path, store_config: StoreConfig, case: str
) -> None:
    """A consolidation of ``("users",)`` marks consolidated only the tenants it finished:
    a tenant whose LLM call failed (``failed_scopes``), or some of whose clusters
    ``max_clusters`` left for later, keeps its turns due (review 139: every tenant's
    count was reset, so their recorders waited ``every_turns`` more turns)."""
    failing = case == "a tenant's call failed"

    def completion(**kwargs: Any) -> Any:
        if failing and "bob" in kwargs["messages"][-1]["content"]:
            raise litellm.exceptions.APIConnectionError(
                "down", llm_provider="openai", model="gpt-4o-mini"
            )
        return litellm.completion(mock_response=_facts(kwargs["messages"]), **kwargs)

    path = tmp_path / "store"
    cfg = HelaMemConfig(
        path=path,
        store=store_config(path),
        llm=LLMConfig(model="gpt-4o-mini", backoff_s=0.0, max_retries=0),
        consolidation=ConsolidationConfig(max_clusters=100 if failing else 1),
    )
    llm = LLMClient(cfg.llm, completion=completion, acompletion=_acompletion)
    users = {name: ("users", name) for name in ("alice", "bob")}
    with HelaMemory(cfg, embedder=HashingEmbedder(64), llm=llm) as mem:
        for name, scope in users.items():
            for i in range(19):
                mem.add_turn(scope, f"{name}: my cat miso chased a mouse {i}", f"{name}: fast {i}")
        report = mem.consolidate(("users",))
        due = {name: _due(mem, scope) for name, scope in users.items()}
    if failing:
        assert report.failed_scopes == (users["bob"],)
        assert due == {"alice": 0, "bob": 19}  # alice's clusters all distilled: done
    else:  # one cluster in all: one tenant's share (as consolidating it alone), the
        # other tenant's left for the next consolidation
        assert report.clusters == 1 and report.scopes == 1
        assert sorted(due.values()) == [0, 19]
