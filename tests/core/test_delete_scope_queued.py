"""``delete_scope`` waits (bounded by the recorders' ``search_wait_timeout``) for the
turns recorded before it; past that bound (a lane busy with a slow consolidation) the
turns still queued were stored after the delete: "my secret: tea pin 4711" came back
(helper 161). They are never stored now; a turn recorded after the delete is."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import litellm
import pytest

from helamem.core import (
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    LLMClient,
    LLMConfig,
    StorageError,
    TurnRecorder,
    _engine_upkeep,
)

S = ("users", "alice")
ANSWER = json.dumps({"facts": []})


def _slow_llm(cfg: HelaMemConfig, seconds: float) -> LLMClient:
    def slow(**kw: Any) -> Any:
        time.sleep(seconds)
        return litellm.completion(mock_response=ANSWER, **kw)

    async def aslow(**kw: Any) -> Any:
        await asyncio.sleep(seconds)
        return await litellm.acompletion(mock_response=ANSWER, **kw)

    return LLMClient(cfg.llm, completion=slow, acompletion=aslow)


def test_turns_queued_past_the_wait_are_not_stored_after_delete_scope(tmp_path: Path) -> None:
    cfg = HelaMemConfig(path=tmp_path, llm=LLMConfig(model="gpt-4o-mini"))
    mem = HelaMemory(cfg, embedder=HashingEmbedder(64), llm=_slow_llm(cfg, 1.5))
    with mem, TurnRecorder(mem, consolidate_every=1, search_wait_timeout=0.3) as rec:
        for i in range(4):
            mem.add_turn(S, f"about tea {i}", "tea")  # clusters to distill
        rec.record_turn_nowait(S, "tea again first", "ok")
        time.sleep(0.3)  # stored; its consolidation (the slow LLM) holds the lane
        rec.record_turn_nowait(S, "my secret: tea pin 4711", "noted")
        deleted = mem.delete_scope(S)  # its wait ends before the lane is free
        assert deleted == 10  # the 4 turns and the first queued one (stored)
        rec.record_turn_nowait(S, "a new start", "hello again")  # after: stored
        rec.flush_sync()
        left = [m.content for m in mem.search("secret pin tea start", S, k=10, learn=False)]
        assert not any("4711" in c or "tea again" in c for c in left), left
        assert "a new start" in left
        assert mem.stats(S).memories == 2


def test_a_scope_only_queued_turns_name_is_deleted_not_refused(tmp_path: Path) -> None:
    """Its turns not stored past the wait: the scope is not unknown, it is forgotten."""
    cfg = HelaMemConfig(path=tmp_path, llm=LLMConfig(model="gpt-4o-mini"))
    mem = HelaMemory(cfg, embedder=HashingEmbedder(64), llm=_slow_llm(cfg, 1.5))
    other = ("users", "bob")
    with mem, TurnRecorder(mem, consolidate_every=1, search_wait_timeout=0.3, concurrency=1) as rec:
        for i in range(4):
            mem.add_turn(S, f"about tea {i}", "tea")
        rec.record_turn_nowait(S, "tea again first", "ok")
        time.sleep(0.3)  # the lanes' one slot is busy distilling alice's scope
        rec.record_turn_nowait(other, "bob's secret", "noted")
        assert mem.delete_scope(other) == 0
        rec.flush_sync()
        assert mem.stats(other).memories == 0


def test_a_failed_delete_forgets_no_queued_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing was deleted, so the turns recorded before it are stored as usual (and
    no failure is reported for them)."""
    cfg = HelaMemConfig(path=tmp_path, llm=LLMConfig(model="gpt-4o-mini"))
    mem = HelaMemory(cfg, embedder=HashingEmbedder(64), llm=_slow_llm(cfg, 1.5))

    def broken(*args: Any, **kwargs: Any) -> int:
        raise StorageError("disk I/O error")

    with mem, TurnRecorder(mem, consolidate_every=1, search_wait_timeout=0.3) as rec:
        for i in range(4):
            mem.add_turn(S, f"about tea {i}", "tea")
        rec.record_turn_nowait(S, "tea again first", "ok")
        time.sleep(0.3)
        rec.record_turn_nowait(S, "my flight is LH 454", "noted")
        monkeypatch.setattr(_engine_upkeep, "delete_scope", broken)
        with pytest.raises(StorageError):
            mem.delete_scope(S)
        rec.flush_sync()  # raises nothing: no turn failed
        assert mem.stats(S).memories == 12
        assert "LH 454" in mem.search("flight", S, k=1, learn=False)[0].content


def test_adelete_scope_forgets_queued_turns_too(tmp_path: Path) -> None:
    cfg = HelaMemConfig(path=tmp_path, llm=LLMConfig(model="gpt-4o-mini"))
    mem = HelaMemory(cfg, embedder=HashingEmbedder(64), llm=_slow_llm(cfg, 1.5))

    async def run(rec: TurnRecorder) -> int:
        await rec.record_turn(S, "tea again first", "ok")
        await asyncio.sleep(0.3)
        await rec.record_turn(S, "my secret: tea pin 4711", "noted")
        return await mem.adelete_scope(S)

    with mem, TurnRecorder(mem, consolidate_every=1, search_wait_timeout=0.3) as rec:
        for i in range(4):
            mem.add_turn(S, f"about tea {i}", "tea")
        assert asyncio.run(run(rec)) == 10  # 4 turns and the first queued one
        rec.flush_sync()
        assert mem.stats(S).memories == 0
