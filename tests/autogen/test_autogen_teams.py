"""Teams (new-user trial): what each agent's memory stores of a multi-agent run.

A team hands each agent the others' messages as user messages (``source`` = the
sender's name; a ``Swarm`` handoff also carries the sender's assistant message).
Before: they were stored as the user's own words (a teammate's "you should eat
steak" ranked first for "what does the user eat?"), a handoff's thought was stored
as the receiving agent's reply, and an agent's second reply in a row (a repeated
speaker) was never stored.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.teams import RoundRobinGroupChat, Swarm
from autogen_core import FunctionCall
from autogen_core.models import AssistantMessage, CreateResult, ModelInfo, RequestUsage, UserMessage
from autogen_ext.models.replay import ReplayChatCompletionClient
from test_autogen_memory import SpyMemory, config

from helamem.autogen import HelaMemMemory
from helamem.autogen._convert import last_turn
from helamem.core import HashingEmbedder, HelaMemory

INFO = ModelInfo(
    vision=False,
    function_calling=True,
    json_output=False,
    family="unknown",
    structured_output=False,
)


@pytest.fixture
async def store(tmp_path: Path, hela_config: Any) -> AsyncIterator[SpyMemory]:
    mem = SpyMemory(hela_config(tmp_path / "store"), embedder=HashingEmbedder(256))
    yield mem
    await mem.aclose()


def _agent(name: str, replies: list[Any], memory: HelaMemMemory, **kw: Any) -> AssistantAgent:
    client = ReplayChatCompletionClient(replies, model_info=INFO)
    return AssistantAgent(name, model_client=client, memory=[memory], **kw)


def _turns(store: SpyMemory) -> list[tuple[str, str]]:
    return [(u, a) for u, a, _ in store.turns]


async def test_teammates_are_stored_with_their_names_and_every_reply_is_kept(
    store: SpyMemory, tmp_path: Path
) -> None:
    planner_mem = HelaMemMemory(config(tmp_path, scope=("u", "a", "planner")), memory=store)
    critic_mem = HelaMemMemory(config(tmp_path, scope=("u", "a", "critic")), memory=store)
    for scope in (("u", "a", "planner"), ("u", "a", "critic")):  # something to inject
        await store.aadd("notes: Lisbon flights train steak vegetarian critique plan", scope)
    planner = _agent("planner", ["PLAN: flights", "PLAN v2: train"], planner_mem)
    critic = _agent("critic", ["CRITIQUE: you should eat steak", "CRITIQUE: fine"], critic_mem)
    team = RoundRobinGroupChat([planner, critic], termination_condition=MaxMessageTermination(5))
    await team.run(task="Lisbon in May; I am vegetarian")
    await planner_mem.close()
    await critic_mem.close()
    # what was injected for a teammate's message co-activates with the turn answering it
    # (review: the prefixed question never equalled the query, so none did)
    assert all(used for _, _, used in store.turns), store.turns
    assert sorted(_turns(store)) == sorted(
        [
            ("Lisbon in May; I am vegetarian", "PLAN: flights"),
            (
                "Lisbon in May; I am vegetarian\n[planner] PLAN: flights",
                "CRITIQUE: you should eat steak",
            ),
            ("[critic] CRITIQUE: you should eat steak", "PLAN v2: train"),
            ("[planner] PLAN v2: train", "CRITIQUE: fine"),
        ]
    )


async def test_a_repeated_speaker_and_a_swarm_handoff(store: SpyMemory, tmp_path: Path) -> None:
    solo_mem = HelaMemMemory(config(tmp_path, scope=("u", "solo")), memory=store)
    solo = _agent("writer", ["Draft 1: Monday", "Draft 2: Friday 3pm, room 42"], solo_mem)
    team = RoundRobinGroupChat([solo], termination_condition=MaxMessageTermination(3))
    await team.run(task="Write the meeting notice")
    await solo_mem.close()
    assert _turns(store) == [
        ("Write the meeting notice", "Draft 1: Monday"),
        ("Write the meeting notice", "Draft 2: Friday 3pm, room 42"),  # was never stored
    ]
    store.turns.clear()

    triage_mem = HelaMemMemory(config(tmp_path, scope=("u", "triage")), memory=store)
    travel_mem = HelaMemMemory(config(tmp_path, scope=("u", "travel")), memory=store)
    usage = RequestUsage(prompt_tokens=0, completion_tokens=0)
    call = FunctionCall(id="c1", name="transfer_to_travel", arguments="{}")
    handoff = CreateResult(
        finish_reason="function_calls",
        usage=usage,
        cached=False,
        content=[call],
        thought="The travel agent should take over.",
    )
    triage = _agent("triage", [handoff], triage_mem, handoffs=["travel"])
    travel = _agent("travel", ["Booked a vegetarian hotel."], travel_mem)
    swarm = Swarm([triage, travel], termination_condition=MaxMessageTermination(3))
    await swarm.run(task="Book me a hotel, I am vegetarian")
    await triage_mem.close()
    await travel_mem.close()
    # before: ("Book me...", <triage's thought>) as travel's own turn, then the handoff
    # notice as the user's question
    assert _turns(store) == [
        (
            "Book me a hotel, I am vegetarian\n[triage] The travel agent should take over.\n"
            "[triage] Transferred to travel, adopting the role of travel immediately.",
            "Booked a vegetarian hotel.",
        )
    ]


@pytest.mark.parametrize(
    ("sources", "question"),
    [
        (None, "Write a poem\n[user_proxy] shorter please"),
        (["user", "user_proxy"], "Write a poem\nshorter please"),
    ],
)
def test_user_sources_name_the_users_own_words(sources: list[str] | None, question: str) -> None:
    messages = [
        UserMessage(content="Write a poem", source="user"),
        UserMessage(content="shorter please", source="user_proxy"),
        AssistantMessage(content="Roses.", source="poet"),
    ]
    assert last_turn(messages, sources) == (2, question, "Roses.")
    # the first message's source is the user's: one agent spoken to as "alice"
    alone = [UserMessage(content="hi", source="alice"), AssistantMessage(content="hey", source="a")]
    assert last_turn(alone) == (1, "hi", "hey")
    # nothing said between two replies: the second is another turn of the question
    assert last_turn([*alone, AssistantMessage(content="still there?", source="a")]) == (
        2,
        "hi",
        "still there?",
    )


async def test_a_dump_of_a_memory_on_another_store_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Trial: ``memory=`` a store the config does not describe dumped silently; the loaded
    memory opened the config's (default) store and saw none of the data."""
    elsewhere = HelaMemory(config(tmp_path / "other").to_helamem_config())
    memory = HelaMemMemory(config(tmp_path / "mine", scope=("u",)), memory=elsewhere)
    same = HelaMemMemory(config(tmp_path / "other", scope=("u",)), memory=elsewhere)
    with caplog.at_level(logging.WARNING, logger="helamem.autogen.memory"):
        same.dump_component()
        assert not caplog.records
        memory.dump_component()
    assert "not the one its config describes" in caplog.text
    elsewhere.close()


async def test_a_team_message_is_never_its_senders_reply_in_another_context() -> None:
    """The handoff's assistant message is the sender's: a turn only ends in this agent's
    reply (before: the receiver recorded the sender's thought as its own reply)."""
    messages = [
        UserMessage(content="Book a hotel", source="user"),
        AssistantMessage(content="travel should take this", source="triage"),
        UserMessage(content="Transferred to travel", source="triage"),
    ]
    assert last_turn(messages) is None
