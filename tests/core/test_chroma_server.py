"""The vector index on a Chroma server (``chromadb.HttpClient``) through the same config."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from chroma_server import CHROMA, chroma_server
from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory, StorageError


@pytest.fixture(scope="module")
def chroma_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if not Path(CHROMA).exists():
        pytest.skip("the chroma CLI is not installed")
    try:
        with chroma_server(tmp_path_factory.mktemp("chroma-server")) as port:
            yield port
    except RuntimeError as exc:  # it exited or never answered
        pytest.fail(str(exc))


@contextmanager
def _own_server(tmp_path: Path) -> Iterator[tuple[ChromaConfig, Any]]:
    """A Chroma server of the test's own (it may be frozen: ``proc``) and a config on it:
    requests bounded at 2 s, a scope promoted to its own collection past 5 memories."""
    from chroma_server import chroma_process

    if not Path(CHROMA).exists():
        pytest.skip("the chroma CLI is not installed")
    with chroma_process(tmp_path / "server") as (port, proc):
        yield (
            ChromaConfig(mode="http", host="127.0.0.1", port=port, exact_below=5, timeout_s=2.0),
            proc,
        )


def _apple_and_fillers(mem: HelaMemory, scope: tuple[str, ...], fillers: int) -> str:
    """A scope past ``exact_below`` (its own collection): the memory "kitty" finds only
    through the vector leg (``_Alias``), then ``fillers`` others; returns its id."""
    apple = mem.add("grandma grows apples", scope).id
    for i in range(fillers):
        mem.add(f"filler w{i}x note{i}", scope)
    return apple


def test_http_chroma_is_a_drop_in_vector_index(tmp_path: Path, chroma_port: int) -> None:
    cfg = HelaMemConfig(
        path=tmp_path / "s",
        chroma=ChromaConfig(mode="http", host="127.0.0.1", port=chroma_port, collection="t-http"),
    )
    scope = ("tenants", "acme")
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as mem:
        a = mem.add("the invoice is due on friday", scope).id
        mem.add("lunch with the design team", scope)
        assert mem.search("when is the invoice due", scope, k=1).ids == [a]
        assert mem.stats().vectors == 2
        mem.delete(a)
        assert mem.stats().vectors == 1
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as again:  # persisted on the server
        assert again.stats().vectors == 1


class _Alias(HashingEmbedder):
    """The hashing embedder with "kitty" embedded as "apples": a match only the vector
    index can find (no shared word for BM25)."""

    def embed(self, texts):  # type: ignore[no-untyped-def]
        return super().embed([t.replace("kitty", "apples") for t in texts])


def test_two_stores_on_one_server_never_share_a_collection(
    tmp_path: Path, chroma_port: int
) -> None:
    """Every SQLite file numbers its scopes from 1: on one server, two stores' large
    scopes (HNSW collections) must stay apart (one used to overwrite the other's)."""

    def config(name: str) -> HelaMemConfig:
        chroma = ChromaConfig(mode="http", host="127.0.0.1", port=chroma_port, exact_below=5)
        return HelaMemConfig(path=tmp_path / name, chroma=chroma)

    scope = ("u",)
    with HelaMemory(config("a"), embedder=_Alias(64)) as a:
        mine = [a.add(f"apples from grandma {i}", scope).id for i in range(6)]
        before = a.search("kitty", scope, k=3, learn=False, spread=False).ids
        assert set(before) <= set(mine) and len(before) == 3
        with HelaMemory(config("b"), embedder=_Alias(64)) as b:
            for i in range(40):
                b.add(f"bravo note {i}", scope)
            assert b.stats().vectors == 40
        assert a.search("kitty", scope, k=3, learn=False, spread=False).ids == before
        assert a.stats().vectors == 6
    with HelaMemory(config("a"), embedder=_Alias(64)) as again:
        assert again.stats().vectors == 6
        assert again.search("kitty", scope, k=3, learn=False, spread=False).ids == before


def test_a_collection_lost_on_the_server_is_refilled_not_restarted_empty(
    tmp_path: Path, chroma_port: int
) -> None:
    """The server loses a large scope's collection (restarted empty, deleted by hand)
    under an open store: the next write recreates it with every vector of the scope,
    not only its own (the older memories dropped out of the dense leg until reopened)."""
    import chromadb
    from chromadb.config import Settings

    chroma = ChromaConfig(mode="http", host="127.0.0.1", port=chroma_port, exact_below=5)
    scope = ("u",)
    with HelaMemory(HelaMemConfig(path=tmp_path / "s", chroma=chroma), embedder=_Alias(64)) as m:
        apple = _apple_and_fillers(m, scope, 10)
        assert m.search("kitty", scope, k=1, learn=False, spread=False).ids == [apple]
        m.flush()  # no batched write left to recreate the collection
        server = chromadb.HttpClient(
            host="127.0.0.1", port=chroma_port, settings=Settings(anonymized_telemetry=False)
        )
        for c in server.list_collections():
            name = c.name if hasattr(c, "name") else str(c)
            if name.startswith("helamem.") and name.endswith("-e"):
                server.delete_collection(name)
        for _ in range(2):  # the scope's memories are in no collection: unindexed
            st = m.stats()
            assert (st.memories, st.vectors, st.unindexed) == (11, 0, 11)
            assert m.search("kitty", scope, k=1, learn=False, spread=False).ids == [apple]
        m.add("filler new note", scope)  # recreates the collection
        assert m.search("kitty", scope, k=1, learn=False, spread=False).ids == [apple]
        assert (m.stats().vectors, m.stats().unindexed) == (12, 0)


def test_a_refill_cut_short_is_finished_by_the_next_write_not_trusted_half_full(
    tmp_path: Path, chroma_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server lost a large scope's collection; the write that recreates it fails
    after the create, before its refill copied the scope's vectors (the server went
    away again, a timeout). The collection now exists, nearly empty: the next write
    must not take it as whole, or the older memories drop out of the dense leg."""
    import chromadb
    import httpx
    from chromadb.config import Settings

    from helamem.core.storage import chroma_connect

    chroma = ChromaConfig(mode="http", host="127.0.0.1", port=chroma_port, exact_below=5)
    scope = ("u",)
    with HelaMemory(HelaMemConfig(path=tmp_path / "s", chroma=chroma), embedder=_Alias(64)) as m:
        apple = _apple_and_fillers(m, scope, 10)
        m.flush()
        server = chromadb.HttpClient(
            host="127.0.0.1", port=chroma_port, settings=Settings(anonymized_telemetry=False)
        )
        for c in server.list_collections():  # the server restarted empty
            name = c.name if hasattr(c, "name") else str(c)
            if name.startswith("helamem.") and name.endswith("-e"):
                server.delete_collection(name)

        def cut(*_: Any) -> None:
            raise httpx.ConnectError("the server went away during the refill")

        monkeypatch.setattr(chroma_connect, "write_over", cut)
        m.add("filler new note", scope)  # stored; its index write fails
        m.flush()
        monkeypatch.undo()
        m.add("filler newer note", scope)
        m.flush()
        assert m.search("kitty", scope, k=1, learn=False, spread=False).ids == [apple]
        st = m.stats()
        assert (st.memories, st.vectors, st.unindexed) == (13, 13, 0)


def test_a_server_gone_mid_session_loses_no_write_and_raises_nothing_untyped(
    tmp_path: Path,
) -> None:
    """The server stops under an open store: an add is stored (its vector waits for the
    re-index), a search falls back to an exact scan; no raw HTTP error escapes."""
    from contextlib import ExitStack

    if not Path(CHROMA).exists():
        pytest.skip("the chroma CLI is not installed")
    scope = ("u",)
    with ExitStack() as server:
        port = server.enter_context(chroma_server(tmp_path / "server"))
        chroma = ChromaConfig(mode="http", host="127.0.0.1", port=port, exact_below=5)
        mem = HelaMemory(HelaMemConfig(path=tmp_path / "s", chroma=chroma), embedder=_Alias(64))
        mem.open()
        apple = _apple_and_fillers(mem, scope, 8)
    try:  # the server is gone
        late = mem.add("kitty late note", scope).id  # stored, not raised
        found = mem.search("kitty", scope, k=3, learn=False, spread=False).ids
        assert apple in found and late in found  # exactly scanned meanwhile
        with pytest.raises(StorageError, match="Connection refused"):  # typed: counting
            mem.stats()  # vectors needs the server
    finally:
        mem.close()


def test_a_server_that_stops_answering_costs_a_bounded_wait_not_a_hang(
    tmp_path: Path,
) -> None:
    """The server stops answering (frozen, a partition: no refusal, no reply) under an
    open store: chromadb's client waited forever, holding the memory's every call.
    A search must fall back to the exact scan once ``timeout_s`` has passed."""
    import signal
    import threading

    scope = ("u",)
    with _own_server(tmp_path) as (chroma, proc):
        mem = HelaMemory(HelaMemConfig(path=tmp_path / "s", chroma=chroma), embedder=_Alias(64))
        mem.open()
        got: list[Any] = []
        try:
            apple = _apple_and_fillers(mem, scope, 8)
            mem.flush()
            assert mem.search("kitty", scope, k=1, learn=False, spread=False).ids == [apple]
            proc.send_signal(signal.SIGSTOP)

            def calls() -> None:
                got.append(mem.search("kitty", scope, k=1, learn=False, spread=False).ids)
                got.append(mem.add("kitty late note", scope).id)

            worker = threading.Thread(target=calls, daemon=True)
            worker.start()
            worker.join(30)
            assert not worker.is_alive(), "a call hung on the server that stopped answering"
            assert got[0] == [apple]  # scanned exactly
        finally:
            proc.send_signal(signal.SIGCONT)
            mem.close()
        with HelaMemory(
            HelaMemConfig(path=tmp_path / "s", chroma=chroma), embedder=_Alias(64)
        ) as m:
            assert m.get(got[1]).content == "kitty late note"  # the add was stored
            assert (m.stats().memories, m.stats().unindexed) == (10, 0)


def test_a_server_frozen_before_the_first_request_costs_a_bounded_wait_not_a_hang(
    tmp_path: Path,
) -> None:
    """The server stops answering before this process's first request to it (it froze
    between two runs): chromadb's client makes requests while it is constructed, on a
    session that never times out, so ``open()`` hung. It must fail as with an
    unreachable server (``StorageError``) within about ``timeout_s``, and open once the
    server answers again, nothing lost."""
    import signal
    import threading
    import time

    scope = ("u",)
    with _own_server(tmp_path) as (chroma, proc):
        cfg = HelaMemConfig(path=tmp_path / "s", chroma=chroma)
        with HelaMemory(cfg, embedder=_Alias(64)) as first:  # a promoted scope
            apple = _apple_and_fillers(first, scope, 8)
        proc.send_signal(signal.SIGSTOP)
        got: list[Any] = []
        try:

            def opens() -> None:
                try:
                    HelaMemory(cfg, embedder=_Alias(64)).open().close()
                    got.append("opened")
                except StorageError as exc:
                    got.append(exc)

            worker = threading.Thread(target=opens, daemon=True)
            t0 = time.monotonic()
            worker.start()
            worker.join(40)
            assert not worker.is_alive(), "open() hung on the server frozen before it"
            took = time.monotonic() - t0
        finally:
            proc.send_signal(signal.SIGCONT)
        assert len(got) == 1 and isinstance(got[0], StorageError), got
        assert "could not connect to Chroma" in str(got[0])
        assert took < 20, took
        with HelaMemory(cfg, embedder=_Alias(64)) as m:  # the server answers again
            assert m.search("kitty", scope, k=1, learn=False, spread=False).ids == [apple]
            assert (m.stats().memories, m.stats().unindexed) == (9, 0)


def test_an_id_deleted_and_added_again_meanwhile_keeps_its_own_vector(
    tmp_path: Path, chroma_port: int
) -> None:
    """A deletes caller-chosen id X; B adds X again while A's vector delete is still on
    its way (a slow network): A's delete must not leave the new X without a vector."""
    import threading
    import time

    from helamem.core import NewMemory

    chroma = ChromaConfig(mode="http", host="127.0.0.1", port=chroma_port, exact_below=5)
    cfg = HelaMemConfig(path=tmp_path / "s", chroma=chroma)
    scope = ("u",)
    a = HelaMemory(cfg, embedder=_Alias(64)).open()
    b = HelaMemory(cfg, embedder=_Alias(64)).open()
    try:
        for i in range(8):
            a.add(f"filler w{i}x note{i}", scope)
        a.add_many([NewMemory("old text about pears", scope, id="X")])
        index = a._call(lambda c: c.index)
        real = index.delete

        def slow_delete(items: Any) -> Any:
            time.sleep(1.0)  # the delete lands after B's new vector
            return real(items)

        index.delete = slow_delete
        worker = threading.Thread(target=lambda: a.delete(["X"]))
        worker.start()
        time.sleep(0.3)  # A's row delete has committed; its vector delete is in flight
        b.add_many([NewMemory("grandma grows apples", scope, id="X")])
        worker.join(timeout=30)
        assert b.get("X").content == "grandma grows apples"
        for mem in (a, b):  # found by its vector alone (no word shared with the query)
            assert "X" in mem.search("kitty", scope, k=3, learn=False, spread=False).ids
    finally:
        a.close()
        b.close()
    with HelaMemory(cfg, embedder=_Alias(64)) as again:
        assert "X" in again.search("kitty", scope, k=3, learn=False, spread=False).ids


def test_collections_of_the_earlier_shared_naming_are_named_in_a_warning(
    tmp_path: Path, chroma_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import chromadb
    from chromadb.config import Settings

    server = chromadb.HttpClient(
        host="127.0.0.1", port=chroma_port, settings=Settings(anonymized_telemetry=False)
    )
    server.get_or_create_collection("old-stem-h1-e")  # what an earlier version wrote
    chroma = ChromaConfig(
        mode="http", host="127.0.0.1", port=chroma_port, exact_below=5, collection="old-stem"
    )
    with (
        caplog.at_level(logging.WARNING),
        HelaMemory(HelaMemConfig(path=tmp_path / "s", chroma=chroma), embedder=_Alias(64)) as m,
    ):
        ids = [m.add(f"apples {i}", ("u",)).id for i in range(6)]
        assert set(m.search("kitty", ("u",), k=6, learn=False, spread=False).ids) == set(ids)
    assert "earlier naming (old-stem-h1-e" in caplog.text
