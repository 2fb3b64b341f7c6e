"""HeLa-Mem as an AutoGen AgentChat ``Memory`` component.

Translation only: AutoGen's memory calls become :class:`~helamem.core.HelaMemory`
searches and writes, and completed turns go through a
:class:`~helamem.core.TurnRecorder`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Self, TypeVar

from autogen_core import CancellationToken, Component
from autogen_core.memory import (
    Memory,
    MemoryContent,
    MemoryQueryResult,
    UpdateContextResult,
)
from autogen_core.model_context import ChatCompletionContext
from autogen_core.models import LLMMessage, SystemMessage

from helamem.core import (
    Embedder,
    HelaMemory,
    Hit,
    InvalidInputError,
    Scope,
    SearchResult,
    StoreClosedError,
    TurnRecorder,
    TurnRecordingError,
    is_blank,
    query_tail,
)

from ._convert import (
    MIME_KEY,
    TURN_KEY,
    Turn,
    content_of,
    encode,
    history,
    is_memory_message,
    last_text,
    last_turn,
    last_user,
    memory_header,
    own_metadata,
    scope_label,
    turn_key,
)
from ._hits import best as _best
from ._hits import check_k as _check_k
from ._hits import check_threshold as _check_threshold
from ._hits import fitting as _fitting
from ._hits import related as _related
from ._injected import OWN_LOAD, forget_injected, note_injected, remove_injected
from ._peers import join as _join_peers
from ._peers import peers as _peers
from ._served import Served as _Served
from .config import HelaMemMemoryConfig

__all__ = ["HelaMemMemory"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


async def _linked(aw: Awaitable[T], token: CancellationToken | None) -> T:
    """Await ``aw``; cancelling ``token`` cancels the wait (not work already running)."""
    if token is None:
        return await aw
    fut = asyncio.ensure_future(aw)
    token.link_future(fut)
    return await fut


def _combined(errors: Sequence[TurnRecordingError]) -> TurnRecordingError:
    """One error for several ``TurnRecordingError``s (their failures in order)."""
    failures = [f for err in errors for f in err.failures]
    return TurnRecordingError(failures, sum(err.total for err in errors))


class HelaMemMemory(Memory, Component[HelaMemMemoryConfig]):
    """Hebbian long-term memory for AutoGen agents.

    Before each model call, :meth:`update_context` records the last
    completed user/assistant turn of the context (with the ids of the
    memories injected for it, so they co-activate with it), waits (at most
    ``config.wait_recorded_s``) until every turn of this scope recorded
    before it is stored, searches with the latest user message and injects
    the hits as one system message (replacing the one it injected on the
    previous turn). The final turn of a conversation is recorded by the next
    call, by :meth:`record_last_turn`, or by :meth:`close`.

    The constructor does no I/O; the store opens on first use. Use one
    instance per agent (it remembers what it injected into that agent's
    context). Call :meth:`close` when done: it records the final turn of
    every model context it served and stores every queued turn.

    Args:
        config: Store, scope and retrieval settings (serializable).
        memory: An open or unopened :class:`~helamem.core.HelaMemory` to use
            instead of building one from ``config`` (e.g. to share one store
            between several agents); ``config``'s store fields are then not
            used, and :meth:`close` leaves that memory open.
        embedder: For the store built from ``config``: a
            :class:`~helamem.core.embeddings.Embedder` or any Chroma
            embedding function (one without ``name()`` gets a name derived
            from its class), instead of ``config.embedder``. It is not part of
            the serialized config: pass it again to a memory loaded from a
            dump, since the store refuses another embedder.

    Raises:
        InvalidInputError: When both ``memory`` and ``embedder`` are given.

    Examples:
        >>> from autogen_agentchat.agents import AssistantAgent   # doctest: +SKIP
        >>> memory = HelaMemMemory(HelaMemMemoryConfig(scope=("users", "alice")))
        >>> agent = AssistantAgent("assistant", model_client, memory=[memory])  # doctest: +SKIP
        >>> await agent.run(task="I adopted a cat named Miso")               # doctest: +SKIP
        >>> await memory.close()                                              # doctest: +SKIP
    """

    component_type = "memory"
    component_provider_override = "helamem.autogen.HelaMemMemory"
    component_config_schema = HelaMemMemoryConfig

    def __init__(
        self,
        config: HelaMemMemoryConfig,
        *,
        memory: HelaMemory | None = None,
        embedder: Embedder | Any | None = None,
    ) -> None:
        if memory is not None and embedder is not None:
            raise InvalidInputError(
                "pass embedder= or memory=, not both: a shared store keeps the embedder it was "
                "built with; build it as HelaMemory(config, embedder=...)"
            )
        self._config = config
        self._memory = memory
        self._embedder = embedder
        self._owns_memory = memory is None
        self._recorder: TurnRecorder | None = None
        self._header = memory_header(config.scope)
        self._served: weakref.WeakKeyDictionary[ChatCompletionContext, _Served] = (
            weakref.WeakKeyDictionary()
        )
        self._failures: list[TurnRecordingError] = []  # raised at flush() / close()
        self._closed = False

    @property
    def config(self) -> HelaMemMemoryConfig:
        """The configuration this memory was built from."""
        return self._config

    @property
    def name(self) -> str:
        """The configured name, else ``"helamem:<scope>"``."""
        return self._config.name or f"helamem:{scope_label(self._config.scope)}"

    @property
    def scope(self) -> tuple[str, ...]:
        """The scope this memory reads and writes."""
        return self._config.scope

    @property
    def collection_name(self) -> str:
        """The Chroma collection name (``config.collection``), as ChromaDBVectorMemory names it."""
        return self._config.collection

    @property
    def helamem(self) -> HelaMemory:
        """The underlying :class:`~helamem.core.HelaMemory` (created on first access, no I/O)."""
        self._check_open()
        if self._memory is None:
            self._memory = HelaMemory(self._config.to_helamem_config(), embedder=self._embedder)
        return self._memory

    @property
    def recorder(self) -> TurnRecorder:
        """The :class:`~helamem.core.TurnRecorder` completed turns go through."""
        self._check_open()  # a closed memory records nothing: StoreClosedError, as every call
        if self._recorder is None:
            store = self.helamem
            # searches of the store wait for its turns as long as reads here do
            self._recorder = TurnRecorder(store, search_wait_timeout=self._config.wait_recorded_s)
            _join_peers(self, store)
        return self._recorder

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(
                f"HelaMemMemory {self.name!r} is closed; create a new one to keep using the store"
            )

    # -- the Memory interface ----------------------------------------------

    async def update_context(self, model_context: ChatCompletionContext) -> UpdateContextResult:
        """Record the last completed turn (unless ``config.record`` is false), then inject
        the memories relevant to the context.

        The query is the latest user message; without one, the newest
        message with text of any kind (a system prompt, an assistant reply,
        a tool result), memory messages left out. A context without any text
        gets nothing: there is nothing to rank memories by.

        Args:
            model_context: The agent's model context; gains at most one system
                message from this memory, which replaces the previous one.

        Returns:
            The memories injected: at most ``config.k``, highest score first,
            only those at or above ``config.score_threshold`` (``None``: only
            those with some relevance, a score above 0 or reached by spreading
            from a hit that has one) and only those whose text fits in
            ``config.max_tokens`` (empty when there is no text to search with or
            no hit). With ``config.learn``, the search learns as any search does
            (from what it returned, which a threshold or the budget may leave out).
        """
        messages, whole = await history(model_context)
        served = self._served_for(model_context)
        await self._record(served, messages, whole)
        await remove_injected(model_context, self, self._header)
        note_injected(model_context, self, None)
        query = last_user(messages) or last_text(messages)
        if query is None:
            served.query, served.ids = "", ()
            return UpdateContextResult(memories=MemoryQueryResult(results=[]))
        found = await self._search(query, self._config.k, self._config.score_threshold, True)
        hits = _fitting(query, found, self._config.max_tokens)
        served.query, served.ids = query, tuple(h.id for h in hits)
        if hits:
            text = f"{self._header}\n{SearchResult(query, tuple(hits)).to_text()}"
            await model_context.add_message(SystemMessage(content=text))
            note_injected(model_context, self, text)  # no peer of this header removes it
        return UpdateContextResult(
            memories=MemoryQueryResult(results=[content_of(h) for h in hits])
        )

    async def query(
        self,
        query: str | MemoryContent,
        cancellation_token: CancellationToken | None = None,
        **kwargs: Any,
    ) -> MemoryQueryResult:
        """Search this memory's scope (after the turns recorded before this call are stored).

        Args:
            query: Text, or a ``MemoryContent`` with text or JSON content.
            cancellation_token: Cancels the wait.
            **kwargs: ``k`` (int >= 1) and ``score_threshold`` (a relevance
                in [0, 1], or ``None``) override the config.

        Returns:
            At most ``k`` results (episodes and distilled facts together),
            highest ``score`` first, none below ``score_threshold``; none for
            a blank query (only whitespace, control or zero-width characters:
            nothing to rank by, as ``update_context`` of a blank context). Each
            one's metadata holds ``id``, ``score`` (the core's relevance in
            [0, 1], one absolute scale: see :attr:`helamem.core.Hit.score`),
            ``activation`` (what ranked it among the candidates), ``base``,
            ``boost``, ``provenance``, ``scope``, ``role``, ``event_time``
            beside the metadata it was added with.

        Raises:
            TypeError: On another keyword argument.
            InvalidInputError: (a ``ValueError``) on a bad ``k`` or
                ``score_threshold``.
            ValueError: On content that is not text or a JSON object.
        """
        unknown = set(kwargs) - {"k", "score_threshold"}
        if unknown:
            raise TypeError(
                f"unexpected keyword argument(s) {sorted(unknown)}; use k=, score_threshold="
            )
        text = encode(query)[0] if isinstance(query, MemoryContent) else query
        k = _check_k(kwargs.get("k", self._config.k))
        threshold = _check_threshold(kwargs.get("score_threshold", self._config.score_threshold))
        if isinstance(text, str) and is_blank(text):
            return MemoryQueryResult(results=[])
        hits = await _linked(self._search(text, k, threshold), cancellation_token)
        return MemoryQueryResult(results=[content_of(h) for h in hits])

    async def add(
        self, content: MemoryContent, cancellation_token: CancellationToken | None = None
    ) -> None:
        """Store one memory in this memory's scope (stored when this returns).

        Args:
            content: TEXT or MARKDOWN (a string) or JSON (a dict, or a string
                holding a JSON object); its metadata is kept with the memory.
            cancellation_token: Cancels the wait.

        Raises:
            TypeError: ``content`` is not a ``MemoryContent`` (a bare string).
            ValueError: On another MIME type ("Unsupported content type") or
                JSON that is not an object ("JSON content must be a dict").
        """
        text, mime = encode(content)
        metadata = {**own_metadata(content.metadata), MIME_KEY: mime.value}
        await _linked(self.helamem.aadd(text, self.scope, metadata=metadata), cancellation_token)

    async def clear(self) -> None:
        """Delete every memory of this scope (and of the scopes under it), after pending turns.

        Everything said before the call is forgotten, the turns the agents' contexts
        completed but no memory had recorded yet included (a memory records a turn
        at the next model call; the store keeps their identity forgotten, never their
        text: ``HelaMemory.forget_turns``): those are never recorded afterwards,
        also not from an agent state saved before the call and loaded after it, nor is a
        question said before the call in a turn its reply completes after it. That holds
        for every context served by a live ``HelaMemMemory`` of this process on the same
        store whose scope is this one or under it (another agent's memory of the scope,
        on this store object or another), and their queued turns are deleted too. A turn
        whose recording failed is forgotten with the rest (logged; not raised).
        """
        store = self.helamem
        cut = [self, *(p for p in _peers(store, self.scope, HelaMemMemory) if p is not self)]
        cut = [p for p in cut if not p._closed]
        pending: dict[Scope, list[dict[str, str]]] = {}
        for memory in cut:
            for context, served in list(memory._served.items()):
                key = await memory._record(served, *await history(context), forget=True)
                if key is not None:  # its last turn, never recorded: kept forgotten, so a
                    # state saved before this call and loaded after it does not record it
                    pending.setdefault(memory.scope, []).append({TURN_KEY: key})
        for scope, turns in pending.items():
            await store.aforget_turns(scope, turns)
        for memory in cut:
            await memory._settle()
            for err in memory._failures:  # their turns would be deleted now: nothing is lost
                logger.warning(
                    "clear(): %d turn(s) whose recording failed are forgotten", err.total
                )
            memory._failures.clear()
        await store.adelete_scope(self.scope, missing_ok=True)  # never recorded
        for memory in cut:
            for served in list(memory._served.values()):
                served.query, served.ids = "", ()

    async def close(self) -> None:
        """Record the final turns, store every queued turn, then close the store if it is ours.

        The final turn of every model context this memory served (and that
        is still alive) is recorded first, unless already recorded; then the
        recorder is drained and closed. A shared store (``memory=``) stays
        open; if it was closed already, nothing more is recorded.

        Raises:
            TurnRecordingError: If storing some turns failed (since the last
                :meth:`flush`).
        """
        if self._closed:
            return
        try:
            if self._memory is not None and not self._memory.closed:
                for context, served in list(self._served.items()):
                    await self._record(served, *await history(context))
        finally:
            self._closed = True
            forget_injected(self, list(self._served))
            try:
                if self._recorder is not None:
                    try:
                        await self._recorder.close()
                    except TurnRecordingError as err:
                        self._failures.append(err)
            finally:
                if self._owns_memory and self._memory is not None:
                    await self._memory.aclose()
        self._raise_failures()

    # -- beyond the interface ----------------------------------------------

    async def record_last_turn(self, model_context: ChatCompletionContext) -> None:
        """Record the last completed turn of ``model_context`` now (e.g. after the final turn).

        A turn already recorded (by :meth:`update_context` or an earlier
        call) is not recorded twice. :meth:`close` does this too.
        """
        await self._record(self._served_for(model_context), *await history(model_context))

    async def flush(self) -> None:
        """Wait until the recorded turns are stored.

        Raises:
            TurnRecordingError: If storing some turns failed (each failure is
                raised once, here or at :meth:`close`).
        """
        await self._settle()
        self._raise_failures()

    # -- component -----------------------------------------------------------

    def _to_config(self) -> HelaMemMemoryConfig:
        if self._embedder is not None:
            logger.warning(
                "HelaMemMemory %r: the embedder passed to the constructor is not part of the "
                "dumped config; pass it again (HelaMemMemory(config, embedder=...)) when loading",
                self.name,
            )
        if not self._owns_memory and self._memory is not None:
            have, said = self._memory.config, self._config.to_helamem_config()
            fields = ("store", "embedder", "chroma")
            if have.path.resolve() != said.path.resolve() or any(
                getattr(have, f) != getattr(said, f) for f in fields
            ):
                logger.warning(
                    "HelaMemMemory %r: the store passed as memory= (%s) is not the one its "
                    "config describes (%s), and only the config is dumped: a memory loaded "
                    "from it opens the config's store; build the config with the store's "
                    "path and embedder",
                    self.name,
                    have.path,
                    said.path,
                )
        # absolute: loaded in another working directory, it opens this store, not a new one
        return self._config.model_copy(update={"path": os.path.abspath(self._config.path)})

    @classmethod
    def _from_config(cls, config: HelaMemMemoryConfig) -> Self:
        return cls(config)

    # -- helpers ---------------------------------------------------------------

    def _served_for(self, model_context: ChatCompletionContext) -> _Served:
        served = self._served.get(model_context)
        if served is None:
            served = self._served[model_context] = _Served()
            self._record_before_clear(model_context)
            if not self._closed:  # a clear() of its scope on this store cuts this context
                _join_peers(self, self.helamem)
        return served

    def _record_before_clear(self, model_context: ChatCompletionContext) -> None:
        """Make the context's ``clear()`` (``agent.on_reset()``, a team's ``reset()``) and
        ``load_state()`` (``agent.load_state``) record its last completed turn first: its
        history gone, that turn could never be recorded by a later call or by :meth:`close`.
        A loaded history's last turn may be stored already (recorded before its state was
        saved): recording it again is skipped by the store (its identity, ``unique_on``)."""
        memory = weakref.ref(self)

        def recording(method: Callable[..., Awaitable[None]]) -> Any:
            async def run(*args: Any, **kwargs: Any) -> None:
                me = memory()
                ours = me is not None and not me._closed and not OWN_LOAD.get()
                served = me._served.get(model_context) if me is not None and ours else None
                if me is not None and served is not None:
                    await me._record(served, *await history(model_context))
                await method(*args, **kwargs)
                if served is not None:  # another conversation (or none): as never read
                    served.restart()

            return run

        try:
            model_context.clear = recording(model_context.clear)  # type: ignore[method-assign]
            model_context.load_state = recording(model_context.load_state)  # type: ignore[method-assign]
        except (AttributeError, TypeError):  # a context that takes no attribute
            logger.debug("cannot record the final turn before %r clears", model_context)

    async def _search(
        self, text: str, k: int, threshold: float | None, inject: bool = False
    ) -> list[Hit]:
        """At most ``k`` hits, episodes and facts together, highest relevance first
        (``inject``: for the context, with no threshold only those
        :func:`~helamem.autogen._hits.related` to the query)."""
        mem = self.helamem
        await self._await_recorded()
        facts = min(mem.config.retrieval.semantic_k, k)
        query, scope = query_tail(text), self.scope  # any text
        if not query:
            return []
        learn = self._config.learn  # a search's learning: deferred, and it counts accesses
        found = list(await mem.asearch(query, scope, k=k, semantic_k=facts, learn=learn))
        return _best(_related(found) if inject and threshold is None else found, k, threshold)

    async def _await_recorded(self) -> None:
        """Wait, bounded, until the turns queued so far in this scope (or under it) are stored.

        Covers every live HelaMemMemory on the same store (sharing this one's
        ``HelaMemory`` or built from a config naming that store), so a memory also
        sees the turns another agent's memory recorded in its scope.
        """
        bound = self._config.wait_recorded_s
        store = self._memory
        if bound <= 0 or store is None:
            return
        peers = [
            p
            for p in _peers(store, self.scope, HelaMemMemory)
            if p._recorder is not None and not p._closed
        ]
        if not peers:
            return
        try:
            async with asyncio.timeout(bound):
                for peer in peers:
                    await peer._settle()
        except TimeoutError:
            logger.warning(
                "HelaMemMemory %r: turns still being recorded after wait_recorded_s=%g s; "
                "reading without them (raise wait_recorded_s to wait longer)",
                self.name,
                bound,
            )

    async def _settle(self) -> None:
        """Wait for this memory's recorder; keep its failures for flush()/close()."""
        if self._recorder is None:
            return
        try:
            await self._recorder.flush()
        except TurnRecordingError as err:
            self._failures.append(err)

    def _raise_failures(self) -> None:
        errors, self._failures = self._failures, []
        if errors:
            raise _combined(errors)

    async def _record(
        self,
        served: _Served,
        messages: Sequence[LLMMessage],
        whole: bool = True,
        *,
        forget: bool = False,
    ) -> str | None:
        """Queue the last completed turn of ``messages`` unless it was recorded already
        (``forget``: mark it as recorded without storing it, as :meth:`clear` does, and
        return its identity, ``None`` without one: a window, or no such turn).

        A turn is told from the one recorded before by its position in the
        whole history, so a repeated "yes" / "Done." is a new turn; a history
        that does not begin with the messages read last time was cleared or
        replaced (:meth:`_Served.follow`), so its turns are new and none of its
        messages was said before ``clear()``. A view that may be a window
        (``whole`` false) shifts positions: there a turn is told apart by its text only.

        A turn of a whole history is stored with its identity (:func:`turn_key`,
        under ``TURN_KEY``) as its ``unique_on`` key: a history loaded from a
        saved state (``agent.load_state``) may end in a turn that another process
        or memory recorded (before or after this one reads it); the store skips
        it, in its write transaction, when this scope holds that identity.
        """
        if not self._config.record:  # one that only injects: no path records a turn
            return None
        conversation = [m for m in messages if not is_memory_message(m)]
        spoken = len(conversation)
        read = served.follow(conversation) if whole else None
        turn = last_turn(messages, self._config.user_sources, served.forgotten if whole else 0)
        if turn is not None and not whole:
            turn = turn._replace(at=-1)
        fresh = turn is not None and turn != served.recorded
        key = turn_key(self.scope, messages, turn) if fresh and whole and turn else None
        if forget:  # clear(): what was said so far is in no later turn either
            if whole:
                served.forgotten = spoken
            return key  # the turn not recorded yet, kept forgotten by the caller
        if turn is None or not fresh:
            return None
        # the turn may be stored already (a loaded history's last turn, recorded by the
        # process that saved the state, before or after this read): the store skips it
        # in its write transaction when this scope holds its identity (an index lookup),
        # or held it and it was forgotten; one completed live since the last read is
        # stored then too (``revive``: the same words as a forgotten conversation)
        await self._queue(served, turn, key, read is not None and turn.at >= read)
        return None

    async def _queue(self, served: _Served, turn: Turn, key: str | None, live: bool) -> None:
        q = served.query  # injected for the newest message: the question's last line
        asked = q and (turn.user == q or turn.user.endswith((f"\n{q}", f"] {q}")))
        used = served.ids if asked else ()
        meta = None if key is None else {TURN_KEY: key}
        await self.recorder.record_turn(
            self.scope,
            turn.user,
            turn.assistant,
            used_ids=used,
            metadata=meta,
            unique_on=() if key is None else (TURN_KEY,),
            revive=live,
        )
        served.recorded = turn
        logger.debug("queued turn for scope %r with %d used memories", self.scope, len(used))
