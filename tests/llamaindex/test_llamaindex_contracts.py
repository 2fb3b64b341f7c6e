"""Issue 17, LlamaIndex cases: token_limit over the whole list (9), ReActAgent delivery (10),
no repetition of the window (11), and the contracts LlamaIndex's own memory tests check (12)."""

from __future__ import annotations

import json
import logging
import pickle
import random

import pytest
from li_fakes import SpyRecorder
from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent, ReActAgent
from llama_index.core.base.llms.types import ToolCallBlock
from llama_index.core.llms import ChatMessage
from llama_index.core.llms.mock import MockFunctionCallingLLMWithChatMemoryOfLastCall
from llama_index.core.memory import ChatMemoryBuffer, Memory
from llama_index.core.tools import FunctionTool
from llama_index.core.utils import get_tokenizer

from helamem.core import HelaMemory, InvalidInputError
from helamem.llamaindex import HelaMemChatMemory, HelaMemMemoryBlock
from helamem.llamaindex._shared import reply_text

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:inspect"),
    pytest.mark.filterwarnings("ignore:is_running called:DeprecationWarning"),  # ReActAgent
]

ALICE = ("users", "alice")
CAT = ("My cat is called Miso", "Miso is a lovely name for a cat!")


def _tokens(message: ChatMessage) -> int:
    """An independent count: the text, and every tool call's arguments."""
    tok = get_tokenizer()
    text = "\n".join(b.text for b in message.blocks if hasattr(b, "text") and b.text)
    args = [json.dumps(b.tool_kwargs) for b in message.blocks if hasattr(b, "tool_kwargs")]
    return len(tok(text)) + sum(len(tok(a)) for a in args)


def _system(messages: list[ChatMessage]) -> str:
    return "\n".join(m.content or "" for m in messages if m.role == "system")


def _seed(store: HelaMemory, scope: tuple[str, ...] = ALICE) -> None:
    for i in range(6):
        store.add_turn(
            scope,
            f"my cat miso chased a mouse in the garden on day {i}, it was very funny to watch",
            f"miso the cat is fast, and the mouse got away on day {i}",
        )


# -- 9: token_limit bounds the whole returned list ----------------------------------------


@pytest.mark.parametrize(("limit", "lines"), [(40, 0), (60, 1), (120, 3)])
def test_the_memory_message_and_the_window_fit_token_limit_together(
    store: HelaMemory, limit: int, lines: int
) -> None:
    _seed(store)
    memory = HelaMemChatMemory.from_defaults(memory=store, scope=ALICE, token_limit=limit)
    memory.put(ChatMessage(role="user", content="tell me about my cat miso and the mouse"))
    got = memory.get()
    assert sum(_tokens(m) for m in got) <= limit
    assert got[-1].content == "tell me about my cat miso and the mouse"  # the turn stays
    assert len(memory._shown) == lines  # and whole memory lines fill what it leaves
    assert len(_system(got).splitlines()[1:]) == lines


def test_tool_call_arguments_count_toward_token_limit(store: HelaMemory) -> None:
    _seed(store)
    memory = HelaMemChatMemory.from_defaults(memory=store, scope=ALICE, token_limit=500)
    args = {"text": "word " * 3000}
    call = ChatMessage(
        role="assistant",
        blocks=[ToolCallBlock(tool_call_id="c1", tool_name="write", tool_kwargs=args)],
    )
    memory.set(
        [
            ChatMessage(role="user", content="write a long essay about miso"),
            call,
            ChatMessage(role="tool", content="written"),
            ChatMessage(role="assistant", content="Done: the essay is written."),
            ChatMessage(role="user", content="what is my cat called?"),
        ]
    )
    got = memory.get(initial_token_count=20)
    assert sum(_tokens(m) for m in got) <= 480
    assert call not in got and got[-1].content == "what is my cat called?"


def test_nothing_fits_returns_the_newest_message_as_chat_memory_buffer(store: HelaMemory) -> None:
    """Trial: an empty list (the README's rule before) made LlamaIndex's ReActAgent and
    AgentWorkflow fail with IndexError, and a FunctionAgent answer a question it never saw
    (that answer then recorded as the question's)."""
    _seed(store)
    memory = HelaMemChatMemory.from_defaults(memory=store, scope=ALICE, token_limit=5)
    question = ChatMessage(role="user", content="tell me everything about my cat miso please")
    memory.put(question)
    buffer = ChatMemoryBuffer.from_defaults(chat_history=[question], token_limit=5)
    assert memory.get() == buffer.get() == [question]  # over the limit even alone
    assert memory.pending_used_ids == []  # no memory shown
    # review: a short message after the question fits alone: no memory for the question
    # the model does not see (before: the memory message, its lines counted as used)
    long = ChatMessage(role="user", content="about my cat miso " + "please " * 60)
    note = ChatMessage(role="system", content="be brief")
    after = HelaMemChatMemory.from_defaults(
        memory=store, scope=ALICE, token_limit=40, chat_history=[long, note]
    )
    reference = ChatMemoryBuffer.from_defaults(token_limit=40, chat_history=[long, note])
    assert after.get() == reference.get() == [note]
    assert after.pending_used_ids == []
    with pytest.raises(ValueError, match=r"^Initial token count exceeds token limit .*token_limit"):
        memory.get(initial_token_count=6)
    with pytest.raises(InvalidInputError):
        memory.get(initial_token_count=6)


def test_without_memories_the_window_is_chat_memory_buffers(store: HelaMemory) -> None:
    """Differential: an empty long-term memory returns what ChatMemoryBuffer returns, whenever
    that fits (with a word tokenizer the two counts agree)."""

    def words(text: str) -> list[str]:
        return text.split()

    rng = random.Random(17)
    roles = ["user", "assistant", "tool", "user", "assistant"]
    for trial in range(200):
        history = [
            ChatMessage(role=rng.choice(roles), content=" ".join(["w"] * rng.randint(1, 9)))
            for _ in range(rng.randint(1, 9))
        ]
        limit, initial = rng.randint(1, 40), rng.randint(0, 10)
        initial = min(initial, limit)
        buffer = ChatMemoryBuffer.from_defaults(
            chat_history=history, token_limit=limit, tokenizer_fn=words
        )
        ours = HelaMemChatMemory.from_defaults(
            memory=store,
            scope=("empty", str(trial)),
            chat_history=history,
            token_limit=limit,
            tokenizer_fn=words,
        )
        want = buffer.get(initial_token_count=initial)
        got = ours.get(initial_token_count=initial)

        def fits(messages: list[ChatMessage], limit: int = limit, initial: int = initial) -> bool:
            return sum(len(words(m.content or "")) for m in messages) <= limit - initial

        # within the limit, or (nothing fits) the newest message alone, as ChatMemoryBuffer
        assert fits(got) or got == history[-1:]
        if not fits(want):
            assert got == want == history[-1:]
        elif want and (want[0].role == "user" or want == history):
            assert got == want


async def test_seeded_histories_stay_within_the_limit_and_keep_the_turn(
    store: HelaMemory,
) -> None:
    _seed(store)
    rng = random.Random(9)
    texts = ["my cat miso", "the mouse ran", "garden day", "fast cat", "what about miso?"]
    for _ in range(60):
        history = [
            ChatMessage(role=r, content=rng.choice(texts))
            for r in rng.choices(["user", "assistant", "tool"], k=rng.randint(1, 8))
        ]
        limit = rng.randint(5, 200)
        memory = HelaMemChatMemory.from_defaults(
            memory=store, scope=ALICE, token_limit=limit, chat_history=history, k=3
        )
        initial = rng.randint(0, limit)
        got = await memory.aget(initial_token_count=initial)
        # within the limit, or (nothing fits) the newest message alone, as ChatMemoryBuffer
        assert sum(_tokens(m) for m in got) <= limit - initial or got == history[-1:]
        window = [m for m in got if m.role != "system"]
        assert window == history[len(history) - len(window) :]  # a suffix, in order
        users = [i for i, m in enumerate(history) if m.role == "user"]
        turn = history[users[-1] :] if users else history[-1:]
        if sum(_tokens(m) for m in turn) <= limit - initial:
            assert window[-len(turn) :] == turn  # memories never displace the current turn
        held = [m.content for m in window]
        assert not any(line.content in held for line in memory._shown)  # no repetition
        assert len(memory._shown) <= 3


# -- 10: ReActAgent without a system_prompt -----------------------------------------------


def _react_llm(seen: list[list[ChatMessage]]) -> MockFunctionCallingLLMWithChatMemoryOfLastCall:
    def answer(messages: list[ChatMessage], **kwargs: object) -> ChatMessage:
        seen.append(list(messages))
        return ChatMessage(role="assistant", content="Thought: I can answer.\nAnswer: Miso.")

    return MockFunctionCallingLLMWithChatMemoryOfLastCall(response_generator=answer)


@pytest.mark.parametrize("system_prompt", [None, "You are helpful."])
async def test_react_agent_receives_the_memories_it_counts_as_used(
    store: HelaMemory, spy: SpyRecorder, system_prompt: str | None
) -> None:
    seeded = await store.aadd_turn(("llamaindex", "react"), *CAT)
    seen: list[list[ChatMessage]] = []
    agent = ReActAgent(llm=_react_llm(seen), tools=[], system_prompt=system_prompt)
    memory = HelaMemChatMemory.from_defaults(memory=store, session_id="react", recorder=spy)
    await agent.run(user_msg="What is my cat called?", memory=memory)
    delivered = "\n".join(m.content or "" for m in seen[-1])
    assert "My cat is called Miso" in delivered  # the LLM got the memory
    assert [ids for *_, ids in spy.turns] == [[m.id for m in seeded]]  # and it counts as used
    assert all(m.content for m in seen[-1])  # the placeholder never reaches the LLM


async def test_a_react_agents_tool_trace_is_not_recorded_as_its_answer(
    store: HelaMemory, spy: SpyRecorder
) -> None:
    """Trial: ``ReActAgent`` puts its whole reasoning (thoughts, tool calls, the tools'
    output) in memory as one assistant message, recorded as the answer: a back-office
    tool's "flagged for fraud review" then came back to the user as a memory."""

    def lookup_account() -> str:
        """Internal account lookup."""
        return "INTERNAL: account 7731, flagged for fraud review"

    replies = iter(
        [
            "Thought: look the account up.\nAction: lookup_account\nAction Input: {}",
            "Thought: I can answer.\nAnswer: Your refund of 42 EUR was issued.",
        ]
    )
    llm = MockFunctionCallingLLMWithChatMemoryOfLastCall(
        response_generator=lambda messages, **kw: ChatMessage(
            role="assistant", content=next(replies)
        )
    )
    agent = ReActAgent(llm=llm, tools=[FunctionTool.from_defaults(lookup_account)])
    memory = HelaMemChatMemory.from_defaults(memory=store, session_id="react", recorder=spy)
    await agent.run(user_msg="Where is my refund?", memory=memory)
    await memory.aflush()
    assert [(u, a) for _, u, a, _ in spy.turns] == [
        ("Where is my refund?", "Your refund of 42 EUR was issued.")
    ]
    assert any("fraud" in (m.content or "") for m in memory.get_all())  # the window keeps it
    # review: an answer holding "Answer:" lines is whole, as the agent returns it; a reply
    # starting with "Thought:" with no Answer step is no trace
    quiz = "Quiz:\nQ1: France?\nAnswer: Paris\nQ2: Italy?\nAnswer: Rome"
    for trace, want in [
        (f"Thought: a\nAction: f\nObservation: x\nThought: b\nAnswer: {quiz}", quiz),
        (f"Thought: make a quiz.\nAnswer: {quiz}", quiz),
        ("Thought: a sheet.\nQ1: France?", "Thought: a sheet.\nQ1: France?"),
        ("Thought: a\nAction: f\nObservation: x", "Thought: a\nAction: f\nObservation: x"),
    ]:
        assert reply_text(ChatMessage(role="assistant", content=trace)) == want


def _faq() -> str:
    """Look up the FAQ."""
    return "Q: refunds?\nAnswer: within 30 days"


_TOOL_STEP = "Thought: use the FAQ.\nAction: _faq\nAction Input: {}"
_TUTOR = (
    "Thought: explain it.\nAnswer: Step by step:\nObservation: the legs are 3 and 4.\n"
    "Thought: use Pythagoras.\nAnswer: the hypotenuse is 5 cm."
)


@pytest.mark.parametrize(
    ("outputs", "tool"),
    [
        (["Thought: I can answer.\nThe user likes soup.\nAnswer: Miso soup."], None),
        (["Thought: easy.\n\nAnswer: Miso soup."], None),
        ([_TUTOR], None),
        ([_TOOL_STEP, _TUTOR], False),
        ([_TOOL_STEP, "Thought: got it.\nAnswer: 30 days.\nObservation: keep the receipt."], False),
        ([_TOOL_STEP, "Thought: I have it.\nline two\nAnswer: 30 days."], False),
        (["The answer is plainly 4."], None),
        ([_TOOL_STEP], True),  # return_direct: the tool's output is the answer
        (["Thought: nothing to say.\nAnswer:"], None),  # an empty answer: no reply
        ([_TOOL_STEP, "Thought: nothing.\nAnswer: "], False),
    ],
)
async def test_a_react_agents_stored_answer_is_the_answer_it_returned(
    store: HelaMemory, spy: SpyRecorder, outputs: list[str], tool: bool | None
) -> None:
    """Review: an answer holding its own ``Observation:`` line was cut to the text after
    it, and a multi-line ``Thought:`` kept the whole trace (thought included) as the answer;
    the tool's output holds an ``Answer:`` line. Review 115: a ``return_direct`` tool's
    output holding an ``Answer:`` line, and an empty answer, stored the whole trace.
    What is stored is what the agent returns (an empty reply: no turn)."""
    replies = iter(outputs)
    llm = MockFunctionCallingLLMWithChatMemoryOfLastCall(
        response_generator=lambda messages, **kw: ChatMessage(
            role="assistant", content=next(replies)
        )
    )
    tools = [] if tool is None else [FunctionTool.from_defaults(_faq, return_direct=tool)]
    agent = ReActAgent(llm=llm, tools=tools)
    memory = HelaMemChatMemory.from_defaults(memory=store, session_id="react", recorder=spy)
    returned = str(await agent.run(user_msg="Question?", memory=memory)).strip()
    await memory.aflush()
    assert [(u, a) for _, u, a, _ in spy.turns] == ([("Question?", returned)] if returned else [])
    if tool:
        assert returned == "within 30 days"


async def test_other_callers_get_no_placeholder(store: HelaMemory) -> None:
    await store.aadd_turn(ALICE, *CAT)
    memory = HelaMemChatMemory.from_defaults(memory=store, scope=ALICE)
    got = await memory.aget("what is my cat called?")
    assert got[0].role == "system" and "Miso" in (got[0].content or "")


async def test_agent_workflow_of_bare_react_agents_receives_the_memories(
    store: HelaMemory, spy: SpyRecorder
) -> None:
    seeded = await store.aadd_turn(("llamaindex", "wf1"), *CAT)
    seen: list[list[ChatMessage]] = []
    agent = ReActAgent(name="helper", description="answers", llm=_react_llm(seen), tools=[])
    workflow = AgentWorkflow(agents=[agent], root_agent="helper")
    memory = HelaMemChatMemory.from_defaults(memory=store, session_id="wf1", recorder=spy)
    await workflow.run(user_msg="What is my cat called?", memory=memory)
    assert "My cat is called Miso" in "\n".join(m.content or "" for m in seen[-1])
    assert [ids for *_, ids in spy.turns] == [[m.id for m in seeded]]


async def test_agent_workflow_mixing_a_bare_react_agent_warns_once_and_counts_nothing(
    store: HelaMemory, spy: SpyRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    await store.aadd_turn(("llamaindex", "wf"), *CAT)
    seen: list[list[ChatMessage]] = []
    agent = ReActAgent(name="helper", description="answers", llm=_react_llm(seen), tools=[])
    other = FunctionAgent(
        name="other", description="unused", llm=_react_llm([]), tools=[], system_prompt="Hi."
    )
    workflow = AgentWorkflow(agents=[agent, other], root_agent="helper")
    memory = HelaMemChatMemory.from_defaults(memory=store, session_id="wf", recorder=spy)
    with caplog.at_level(logging.WARNING, logger="helamem.llamaindex.chat_memory"):
        await workflow.run(user_msg="What is my cat called?", memory=memory)
        await workflow.run(user_msg="And what is my cat called again?", memory=memory)
    warnings = [r for r in caplog.records if "system_prompt" in r.getMessage()]
    assert len(warnings) == 1
    assert [ids for *_, ids in spy.turns] == [[], []]  # undelivered: never used, never learned


# -- 11: the memory message leaves out what the window holds ------------------------------


async def test_memory_message_leaves_out_the_window_and_refills_its_slots(
    store: HelaMemory,
) -> None:
    older = await store.aadd_turn(ALICE, "my cat Miso hates the vet", "poor Miso!")
    memory = HelaMemChatMemory.from_defaults(memory=store, scope=ALICE, k=2)
    await memory.aput_messages(
        [
            ChatMessage(role="user", content="my cat Miso loves tuna"),
            ChatMessage(role="assistant", content="Miso has good taste"),
        ]
    )
    await memory.aput(ChatMessage(role="user", content="what does my cat Miso love?"))
    got = await memory.aget()
    system = _system(got)
    assert "loves tuna" not in system and "good taste" not in system  # in the window
    assert {line.id for line in memory._shown} == {m.id for m in older}  # slots refilled
    assert [m.content for m in got[1:]] == [m.content for m in memory.get_all()]


async def test_memories_of_messages_trimmed_from_the_window_come_back(store: HelaMemory) -> None:
    memory = HelaMemChatMemory.from_defaults(memory=store, scope=ALICE, token_limit=40, k=3)
    await memory.aput_messages(
        [
            ChatMessage(role="user", content="my cat Miso loves tuna"),
            ChatMessage(role="assistant", content="Miso has good taste, " + "indeed " * 40),
        ]
    )
    await memory.aput(ChatMessage(role="user", content="what does Miso love? tuna?"))
    got = await memory.aget()
    assert [m.content for m in got if m.role != "system"] == ["what does Miso love? tuna?"]
    assert "my cat Miso loves tuna" in _system(got)  # trimmed from the window: remembered


async def test_block_leaves_out_what_the_messages_hold(store: HelaMemory) -> None:
    await store.aadd_turn(ALICE, *CAT)
    block = HelaMemMemoryBlock.from_memory(store, scope=ALICE)
    text = await block.aget(
        [
            ChatMessage(role="user", content=CAT[0]),
            ChatMessage(role="user", content="what is my cat called?"),
        ]
    )
    assert CAT[0] not in text and CAT[1] in text


# -- 12: what LlamaIndex's own memory tests check ------------------------------------------


async def test_block_reads_its_own_writes(store: HelaMemory) -> None:
    block = HelaMemMemoryBlock.from_memory(store, scope=ALICE)
    question = [ChatMessage(role="user", content="What is the capital of France?")]
    assert await block.aget(question) == ""  # nothing yet
    await block.aput(
        [
            ChatMessage(role="user", content="What's the capital of France?"),
            ChatMessage(role="assistant", content="The capital of France is Paris."),
        ]
    )
    assert "capital of France is Paris" in await block.aget(question)  # no aflush needed
    await block.aflush()
    assert "capital of France is Paris" in await block.aget(question)
    await block.aclose()


@pytest.mark.parametrize("content", [[], None, ""])
async def test_atruncate_accepts_any_content(store: HelaMemory, content: object) -> None:
    block = HelaMemMemoryBlock.from_memory(store, scope=ALICE)
    assert await block.atruncate(content, 10) is None


async def test_memory_with_a_chat_history_over_the_limit_truncates_an_empty_block(
    store: HelaMemory,
) -> None:
    block = HelaMemMemoryBlock.from_memory(store, priority=1)
    memory = Memory.from_defaults(session_id="big", token_limit=30, memory_blocks=[block])
    await memory.aput(ChatMessage(role="user", content="tell me " + "more " * 60))
    got = await memory.aget()  # Memory calls block.atruncate([], n): no AttributeError
    assert got[-1].role == "user"


def test_to_string_and_from_string_round_trip(store: HelaMemory) -> None:
    memory = HelaMemChatMemory.from_defaults(
        memory=store, scope=ALICE, token_limit=77, chat_history=[ChatMessage(content="hi")]
    )
    again = HelaMemChatMemory.from_string(memory.to_string())
    assert (again.token_limit, again.scope, again.get_all()) == (77, ALICE, memory.get_all())
    assert again.memory is store


async def test_non_string_input_is_ignored_as_chat_memory_buffer_does(store: HelaMemory) -> None:
    await store.aadd_turn(ALICE, *CAT)
    memory = HelaMemChatMemory.from_defaults(memory=store, scope=ALICE)
    memory.put(ChatMessage(role="user", content="what is my cat called?"))
    plain = memory.get()
    for odd in (ChatMessage(role="user", content="ignored"), 5, ["x"]):
        assert memory.get(input=odd) == plain
        assert await memory.aget(input=odd) == plain


def test_irrelevant_memories_are_left_out(store: HelaMemory) -> None:
    store.add_turn(ALICE, "a " * 20, "b " * 20)
    memory = HelaMemChatMemory.from_defaults(memory=store, scope=ALICE)
    assert _system(memory.get("c c c d d d")) == ""  # relevance 0: not shown


async def test_chat_memory_reads_its_own_writes(store: HelaMemory) -> None:
    memory = HelaMemChatMemory.from_defaults(memory=store, scope=ALICE)
    await memory.aput_messages([ChatMessage(role="user", content=CAT[0])])
    await memory.aput_messages([ChatMessage(role="assistant", content=CAT[1])])
    await memory.areset()  # the window goes: only the long-term memory can answer
    assert "Miso" in _system(await memory.aget("what is my cat called?"))  # no aflush
    await memory.aclose()


def test_both_adapters_pickle_without_their_connection(store: HelaMemory) -> None:
    memory = HelaMemChatMemory.from_defaults(
        memory=store, scope=ALICE, tokenizer_fn=lambda text: text.split()
    )
    memory.put_messages(
        [ChatMessage(role="user", content="hi"), ChatMessage(role="assistant", content="hello")]
    )
    memory.flush()  # the recorder's thread is running: it must not travel
    again = pickle.loads(pickle.dumps(memory))
    assert again.get_all() == memory.get_all() and again.memory is store
    assert again.tokenizer_fn("a b") == get_tokenizer()("a b")  # the lambda: the default
    block = pickle.loads(pickle.dumps(HelaMemMemoryBlock.from_memory(store, scope=ALICE, k=3)))
    assert (block.k, block.memory) == (3, store)
    memory.close()
