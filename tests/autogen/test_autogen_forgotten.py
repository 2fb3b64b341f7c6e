"""HelaMemMemory: a turn forgotten with ``clear()`` stays forgotten when another process
loads an agent state saved before the forget (its history ends in that turn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autogen_agentchat.agents import AssistantAgent
from autogen_replay_client import ReplayChatCompletionClient
from test_autogen_memory import config
from test_autogen_reload import _episodes, _second_process

from helamem.autogen import HelaMemMemory


async def test_a_cleared_turn_is_not_recorded_again_by_a_loaded_state(
    tmp_path: Path, own_store: str, store_db: Any
) -> None:
    """Helper 164: the turn's identity went with its memories, so a process loading a
    state saved before ``clear()`` recorded the history's last turn again: the cleared
    text was back."""
    path = tmp_path / "data"
    memory = HelaMemMemory(config(path))
    client = ReplayChatCompletionClient(["Noted."])
    agent = AssistantAgent("a", model_client=client, memory=[memory])
    await agent.run(task="my bank PIN is 4711")
    state = await agent.save_state()
    await memory.close()  # records the turn
    assert _episodes(store_db, path) == ["my bank PIN is 4711", "Noted."]
    cleared = HelaMemMemory(config(path))
    await cleared.clear()
    await cleared.close()
    await _second_process(path, state, ["and now?"], ["Now what?"])
    assert _episodes(store_db, path) == ["and now?", "Now what?"]


async def test_after_clear_the_same_words_said_again_live_are_recorded(
    tmp_path: Path, own_store: str, store_db: Any
) -> None:
    """A turn's identity is the conversation's text up to it, so after ``clear()`` a new
    conversation repeating the forgotten one word for word has its key: the store must
    still record it (the user said it again, live), while a loaded state's old turn of
    that key stays forgotten (above)."""
    path = tmp_path / "data"
    memory = HelaMemMemory(config(path))
    agent = AssistantAgent(
        "a", model_client=ReplayChatCompletionClient(["Hi Bob.", "Noted."]), memory=[memory]
    )
    await agent.run(task="my name is Bob")
    await agent.run(task="my bank PIN is 4711")
    await memory.clear()  # forgets both turns
    assert _episodes(store_db, path) == []
    await agent.on_reset(None)  # type: ignore[arg-type]  # a new conversation
    agent._model_client = ReplayChatCompletionClient(["Hi Bob.", "Noted."])  # type: ignore[attr-defined]
    await agent.run(task="my name is Bob")
    await agent.run(task="my bank PIN is 4711")
    await memory.close()  # records the last turn
    assert _episodes(store_db, path) == [
        "my name is Bob",
        "Hi Bob.",
        "my bank PIN is 4711",
        "Noted.",
    ]


async def test_a_turn_cleared_before_it_was_recorded_stays_forgotten_in_a_loaded_state(
    tmp_path: Path, own_store: str, store_db: Any
) -> None:
    """Review 169: a state saved right after a run (its last turn not yet recorded: that
    happens at the next model call) and loaded after ``clear()`` recorded the cleared
    turn, since clear() had only marked it recorded in memory: "my bank PIN is 4711" came
    back. clear() now stores and deletes it, so its identity is kept forgotten."""
    path = tmp_path / "data"
    memory = HelaMemMemory(config(path))
    agent = AssistantAgent(
        "a", model_client=ReplayChatCompletionClient(["Noted, 4711."]), memory=[memory]
    )
    await agent.run(task="my bank PIN is 4711")
    state = await agent.save_state()  # the usual persist-after-run: the turn is pending
    await memory.clear()
    await memory.close()
    assert _episodes(store_db, path) == []
    await _second_process(path, state, ["and now?"], ["Now what?"])
    assert _episodes(store_db, path) == ["and now?", "Now what?"]
