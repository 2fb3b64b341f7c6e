"""Bad input raises a typed error and changes nothing; any text round-trips."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helamem.core import (
    HelaMemory,
    InvalidInputError,
    InvalidScopeError,
    MemoryNotFoundError,
    NewMemory,
    StoreClosedError,
)
from helamem.core.embeddings import HashingEmbedder
from helamem.core.text import is_blank

S = ("users", "alice")

BAD_CONTENT = ["", "   ", "\n\t ", None, 42, b"bytes", ["list"]]
BAD_SCOPES: list[Any] = [
    *[(), [], ("",), ("users", ""), ("users", 1), "users", None, ("a", None)],
    *[("a\x00b",), ("users", "\x00")],  # NUL: PostgreSQL's text cannot hold it, so neither store
]


@pytest.fixture
def seeded(mem: HelaMemory) -> HelaMemory:
    mem.add("a first memory", S)
    return mem


def _unchanged(mem: HelaMemory, before: Any) -> None:
    assert mem.stats() == before


@pytest.mark.parametrize("content", BAD_CONTENT)
def test_bad_content_is_rejected(seeded: HelaMemory, content: Any) -> None:
    before = seeded.stats()
    with pytest.raises(InvalidInputError):
        seeded.add(content, S)
    with pytest.raises(InvalidInputError):
        seeded.add_turn(S, "fine", content)
    with pytest.raises(InvalidInputError):
        seeded.add_many([NewMemory("fine", S), NewMemory(content, S)])
    with pytest.raises(InvalidInputError):
        seeded.search(content, S)
    _unchanged(seeded, before)


@pytest.mark.parametrize("scope", BAD_SCOPES)
def test_bad_scopes_are_rejected(seeded: HelaMemory, scope: Any) -> None:
    before = seeded.stats()
    with pytest.raises(InvalidScopeError):
        seeded.add("hello", scope)
    if scope in ((), []):  # the empty prefix searches every scope
        assert seeded.search("hello", scope).ids
    else:
        with pytest.raises(InvalidScopeError):
            seeded.search("hello", scope)
    with pytest.raises(InvalidScopeError):
        seeded.add_turn(scope, "hi", "hello")
    _unchanged(seeded, before)


def test_nul_in_a_scope_or_role_is_refused_alike_on_both_stores(seeded: HelaMemory) -> None:
    before = seeded.stats()
    with pytest.raises(InvalidScopeError, match=r"NUL .*replace\('\\x00', ''\)"):
        seeded.add("hello", ("users", "a\x00b"))
    for role in ["us\x00er", "\x00"]:
        with pytest.raises(InvalidInputError, match=r"role .* contains NUL"):
            seeded.add("hello", S, role=role)
        with pytest.raises(InvalidInputError, match="NUL"):
            seeded.add_many([NewMemory("fine", S), NewMemory("hello", S, role=role)])
    with pytest.raises(InvalidInputError, match="lone surrogate"):  # was UnicodeEncodeError
        seeded.add("hello", S, role="us\ud800er")
    _unchanged(seeded, before)
    assert seeded.add("hello", S, role="us er").role == "us er"  # anything else is kept


def test_string_scope_error_names_the_fix(mem: HelaMemory) -> None:
    with pytest.raises(InvalidScopeError, match=r"\('users',\)"):
        mem.add("hello", "users")  # type: ignore[arg-type]


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "3", None])
def test_bad_k_is_rejected(seeded: HelaMemory, k: Any) -> None:
    if k is None:  # None means the configured default
        assert seeded.search("first", S, k=k).ids
        return
    with pytest.raises(InvalidInputError, match="k must be"):
        seeded.search("first", S, k=k)


@pytest.mark.parametrize(
    "when",
    [math.nan, math.inf, -math.inf, 1e20, -1e20, "2023-01-01", True]
    + [pytest.param(n * 10**400, id=f"int{n:+}e400") for n in (1, -1)],
)
def test_bad_event_times_are_rejected(seeded: HelaMemory, when: Any) -> None:
    before = seeded.stats()
    with pytest.raises(InvalidInputError):
        seeded.add("hello", S, event_time=when)
    _unchanged(seeded, before)


@pytest.mark.parametrize(
    "meta",
    [
        {"x": math.nan},
        {"x": object()},
        "not a dict",
        # trial 117: distillation's bookkeeping key, silently dropped from get() and hits
        {"_helamem_clusters": ["mine"], "y": 1},
    ],
)
def test_bad_metadata_is_rejected(seeded: HelaMemory, meta: Any) -> None:
    before = seeded.stats()
    with pytest.raises(InvalidInputError):
        seeded.add("hello", S, metadata=meta)
    _unchanged(seeded, before)


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize("depth", [101, 979])
def test_metadata_nested_too_deep_is_refused_and_the_scope_stays_searchable(
    seeded: HelaMemory, depth: int
) -> None:
    """Helper 149: metadata nested 979 levels deep was encoded and stored, then ``add``
    raised ``RecursionError`` decoding it, and so did every later search of the scope
    (the memory was there). Deeper than 100 levels is refused, nothing stored."""
    before = seeded.stats()
    with pytest.raises(InvalidInputError, match="levels deep"):
        seeded.add("a deep one", S, metadata=_nested(depth))
    with pytest.raises(InvalidInputError, match="levels deep"):
        seeded.add_turn(S, "hi", "hello", metadata={"list": [_nested(depth)]})
    _unchanged(seeded, before)
    assert [h.memory.content for h in seeded.search("memory", S, k=5)] == ["a first memory"]
    deep = seeded.add("as deep as allowed", S, metadata=_nested(100))
    assert seeded.get(deep.id).metadata == _nested(100)
    assert "as deep as allowed" in [h.memory.content for h in seeded.search("allowed", S, k=5)]


def test_unknown_ids(seeded: HelaMemory) -> None:
    before = seeded.stats()
    with pytest.raises(MemoryNotFoundError, match="no memory"):
        seeded.get("nope")
    good = seeded.add("second", S).id
    before = seeded.stats()
    with pytest.raises(MemoryNotFoundError):
        seeded.delete([good, "nope"])  # all or nothing
    _unchanged(seeded, before)
    with pytest.raises(MemoryNotFoundError):
        seeded.reinforce([good, "nope"])
    _unchanged(seeded, before)
    with pytest.raises(InvalidInputError):
        seeded.get(123)  # type: ignore[arg-type]


def test_closed_store(seeded: HelaMemory) -> None:
    seeded.close()
    seeded.close()  # idempotent
    for call in (
        lambda: seeded.add("x", S),
        lambda: seeded.search("x", S),
        lambda: seeded.stats(),
        lambda: seeded.get("x"),
    ):
        with pytest.raises(StoreClosedError, match=r"HelaMemory\(old\.config, embedder="):
            call()


def test_the_closed_store_message_names_a_way_back_that_works(mem: HelaMemory) -> None:
    """The message's fix exists for a memory made with ``HelaMemory(config, embedder=...)``
    (not only ``from_path``): a new one made that way finds the same memories."""
    kept = mem.add("the violin recital is on Saturday", S)
    mem.close()
    with pytest.raises(StoreClosedError) as err:
        mem.search("violin", S)
    assert "HelaMemory(old.config, embedder=..., ...)" in str(err.value)
    assert "from_path(path, embedder=..., ...)" in str(err.value)
    with HelaMemory(mem.config, embedder=HashingEmbedder(256)) as again:
        assert again.get(kept.id).content == kept.content
        assert again.search("violin recital", S, k=1).ids == [kept.id]


async def test_closed_store_async(seeded: HelaMemory) -> None:
    await seeded.aclose()
    with pytest.raises(StoreClosedError):
        await seeded.aadd("x", S)


def test_one_megabyte_content_roundtrips(mem: HelaMemory) -> None:
    big = ("lorem ipsum dolor sit amet 🌍 " * 40_000)[:1_000_000]
    m = mem.add(big, S)
    assert mem.get(m.id).content == big
    assert mem.search("lorem ipsum", S, k=1).ids == [m.id]


UNICODE = [
    "emoji 😀👩‍👩‍👧‍👦 and flags 🇯🇵",
    "RTL: שלום עולם مرحبا بالعالم",
    "combining: é vs é, zalgo Z̴̧a̷l̸g̶o",
    "lone surrogates \ud800 and \udfff survive",
    "surrogate pair written as two escapes \ud83d\ude00",
    "NUL inside \x00 the text",
    'FTS syntax: "unbalanced NEAR(a b) OR * AND title:x',
]


@pytest.mark.parametrize("text", UNICODE)
def test_unicode_roundtrips_exactly(mem: HelaMemory, text: str) -> None:
    m = mem.add(text, S, metadata={"echo": text})
    got = mem.get(m.id)
    assert got.content == text
    # metadata follows JSON semantics: an escaped surrogate pair decodes to its character
    assert got.metadata == json.loads(json.dumps({"echo": text}))
    assert mem.search(text, S, k=1).ids == [m.id]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(min_size=1, max_size=200).filter(lambda t: not is_blank(t)))
def test_any_text_roundtrips_and_is_searchable(mem: HelaMemory, text: str) -> None:
    m = mem.add(text, S)
    assert mem.get(m.id).content == text
    mem.search(text, S, k=3, learn=False)  # never raises on any query text


INVISIBLE = st.sampled_from(
    [
        " ",
        "\t",
        "\n",
        "\u200b",
        "\u200c",
        "\u200d",
        "\u2060",
        "\ufeff",
        "\u200e",
        "\u202e",
        "\x00",
        "\x1b",
        "\u3000",
        "\u2028",
        "\xa0",
    ]
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(INVISIBLE, min_size=1, max_size=12).map("".join))
def test_invisible_only_text_is_refused_and_writes_nothing(mem: HelaMemory, text: str) -> None:
    before = mem.stats().memories
    with pytest.raises(InvalidInputError, match="zero-width"):
        mem.add(text, S)
    with pytest.raises(InvalidInputError, match="zero-width"):
        mem.search(text, S, k=3)
    assert mem.stats().memories == before


def test_zero_width_space_alone_is_refused(mem: HelaMemory) -> None:
    with pytest.raises(InvalidInputError):
        mem.add("\u200b", S)
    assert mem.add("\u200bx", S).content == "\u200bx"  # visible text around it is kept


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=20),
        min_size=1,
        max_size=4,
    )
)
def test_any_segments_make_a_valid_isolated_scope(mem: HelaMemory, segs: list[str]) -> None:
    scope = ("t", *segs)
    m = mem.add("scoped note", scope)
    assert mem.get(m.id).scope == scope
    assert m.id in mem.search("scoped note", scope, k=50).ids


def test_a_recorded_turn_with_the_reserved_metadata_key_is_refused_at_the_call(
    seeded: HelaMemory,
) -> None:
    """Review 118: ``record_turn_sync`` accepted it and the turn failed in the background
    (a ``TurnRecordingError`` at flush; the turn not stored)."""
    from helamem.core.hooks import TurnRecorder

    rec = TurnRecorder(seeded)
    with pytest.raises(InvalidInputError, match="_helamem_clusters"):
        rec.record_turn_sync(S, "hi", "hello", metadata={"_helamem_clusters": []})
    with pytest.raises(InvalidInputError, match="_helamem_clusters"):
        seeded.add_turn(S, "hi", "hello", metadata={"_helamem_clusters": []})
    rec.flush()
