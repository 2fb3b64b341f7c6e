"""The memory's upkeep: consolidation, forgetting, scope deletion, export and import, reindex."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from ._args import metadata_fields
from ._core import Core, Stats
from ._maintenance import (
    ConsolidationReport,
    ForgetReport,
    apply_consolidation,
    delete_scope,
    forget,
    plan_consolidation,
)
from ._owner import KeepsPending, OwnedCore, _Recorder
from ._portable import ExportReport, ImportReport, export_scope, import_scope
from ._turn_count import Claim, claim, settle
from .distill import Distiller, ExtractiveDistiller, LLMDistiller
from .llm import LLMClient
from .storage.unique import keep_forgotten, unique_key
from .types import (
    normalize_scope,
)

__all__ = ["UpkeepMethods"]


def _keep_forgotten(core: Core, scope: Sequence[str], keys: Sequence[str]) -> int:
    with core.store.tx() as db:
        node = core.store.ensure_scope(db, normalize_scope(scope))
        keep_forgotten(db, [(node, k) for k in keys])
    return len(keys)


def _flush(core: Core) -> int:
    n = core.flush_index()
    return n + core.reconcile()  # a failed write's rows, another process's


class UpkeepMethods(OwnedCore):
    """Upkeep operations of :class:`~helamem.core.HelaMemory` (sync and async twins)."""

    def _with_usage(self, st: Stats) -> Stats:
        if self._llm is None:
            return st
        u = self._llm.usage
        return replace(
            st,
            llm_calls=u.calls,
            llm_failed_calls=u.failed_calls,
            llm_prompt_tokens=u.prompt_tokens,
            llm_completion_tokens=u.completion_tokens,
            llm_cost_usd=u.cost_usd,
        )

    def _get_distiller(self) -> Distiller:
        if self._distiller is None:
            if self._llm is None and self.config.llm.model:
                self._llm = LLMClient(self.config.llm)
            self._distiller = (
                LLMDistiller(self._llm)
                if self._llm is not None
                else ExtractiveDistiller(self.config.consolidation.extractive_facts)
            )
        return self._distiller

    def consolidate(self, scope: Sequence[str]) -> ConsolidationReport:
        """Hebbian distillation of ``scope`` (and scopes under it) into semantic facts.

        Adds similarity edges for new episodes, finds densely connected hubs,
        distils each undistilled cluster (one LLM call per scope, or extractive
        without an LLM), de-duplicates against existing facts and stores the
        rest with provenance. The store is not held during the LLM call.

        A scope whose LLM call fails (after retries) is left for the next
        consolidation and named in ``failed_scopes``; the other scopes' facts are
        stored (a WARNING is logged per failed scope).

        The turns stored before it began of the scopes it finished (its call
        succeeded, and ``max_clusters`` took all the clusters it planned for the
        scope) count as consolidated: a :class:`~helamem.core.TurnRecorder` (of
        any process) next consolidates such a scope once ``consolidate_every``
        more of its turns are stored; the other scopes' turns stay due.

        Raises:
            LLMUnavailableError, LLMResponseError: The LLM failed for every scope;
                no fact was written.

        Examples:
            >>> report = mem.consolidate(("users", "alice"))   # doctest: +SKIP
            >>> report.facts_added                              # doctest: +SKIP
            3
        """
        normalize_scope(scope)
        plan = self._call(lambda c: plan_consolidation(c, scope), (scope,), "consolidate")
        drafts = self._get_distiller().distill(plan.clusters) if plan.clusters else []
        return self._call(lambda c: apply_consolidation(c, plan, drafts), None)

    def forget(
        self,
        scope: Sequence[str],
        *,
        dry_run: bool = True,
        older_than_s: float | None = None,
        below: float | None = None,
        limit: int = 1000,
    ) -> ForgetReport:
        """Adaptive forgetting: weak, old, never-used episodes that no fact rests on
        (cites, or was written from: see ``delete``).

        Dry run by default: returns the candidates; ``dry_run=False`` deletes
        them. Age is relative to each scope's own newest event (under a prefix, every
        tenant by its own clock).
        """
        normalize_scope(scope)
        return self._call(
            lambda c: forget(
                c, scope, dry_run=dry_run, older_than_s=older_than_s, below=below, limit=limit
            ),
            (scope,),
            "forget",
        )

    def stats(self, scope: Sequence[str] | None = None) -> Stats:
        """Counts of memories, edges, scopes and index state, and LLM usage (of ``scope``
        and the scopes under it; ``None`` or ``()``: the whole store).

        A scope the store never held, nor any scope under it, counts zeros (it holds no
        memory) with ``Stats.known`` false: a misspelt scope reads so.
        """
        return self._with_usage(self._call(lambda c: c.stats(scope), (scope or (),), "stats"))

    def delete_scope(self, scope: Sequence[str], *, missing_ok: bool = False) -> int:
        """Delete everything of ``scope`` and the scopes under it; returns memories deleted
        (0 for a scope whose memories are gone already).

        As every call does, it first waits (bounded) for the turns a
        :class:`~helamem.core.hooks.TurnRecorder` of this memory accepted
        before the call in these scopes: they are deleted too, not stored after;
        those still unstored past the wait (a lane busy with a slow consolidation)
        are never stored (one whose store had begun is deleted once stored). A scope
        that only such turns name counts as held (it returns 0).

        Raises:
            UnknownScopeError: The store never held ``scope`` nor any scope under it (a
                misspelt scope, whose delete would read as done): nothing was deleted.
                Pass ``missing_ok=True`` where the scope may not exist yet (it returns 0).
        """
        normalize_scope(scope)
        marks = self._recorder_marks()
        return self._call(
            lambda c: self._delete_forgetting(c, scope, missing_ok, marks),
            (scope,),
            "delete_scope",
        )

    def forget_turns(self, scope: Sequence[str], turns: Iterable[Mapping[str, str]]) -> int:
        """Keep turns never stored as forgotten in ``scope`` (not a sub-scope), as a deleted
        turn's key is kept: no process stores them (``add_turn``; ``revive=True`` does).
        For an adapter whose ``delete_scope`` forgets turns it had not recorded yet.

        Args:
            scope: The turns' scope.
            turns: Each turn's ``unique_on`` pairs (metadata key: str value).

        Returns:
            The turns kept forgotten.

        Raises:
            InvalidInputError: A bad scope, or pairs that are not a non-empty dict of str.
        """
        normalize_scope(scope)
        keys = [unique_key(metadata_fields(t, "forget_turns")) for t in turns]
        return self._call(lambda c: _keep_forgotten(c, scope, keys), (scope,), "forget_turns")

    async def aforget_turns(self, scope: Sequence[str], turns: Iterable[Mapping[str, str]]) -> int:
        """Async :meth:`forget_turns`."""
        normalize_scope(scope)
        keys = [unique_key(metadata_fields(t, "forget_turns")) for t in turns]
        plan = lambda c: _keep_forgotten(c, scope, keys)  # noqa: E731
        return await self._acall(plan, (scope,), "aforget_turns")

    async def aconsolidate(self, scope: Sequence[str]) -> ConsolidationReport:
        """Async :meth:`consolidate` (the LLM call is awaited on the event loop)."""
        normalize_scope(scope)
        plan = await self._acall(lambda c: plan_consolidation(c, scope), (scope,), "aconsolidate")
        drafts = await self._get_distiller().adistill(plan.clusters) if plan.clusters else []
        return await self._acall(lambda c: apply_consolidation(c, plan, drafts), None)

    async def _aclaim_consolidation(self, scope: Sequence[str], every: int) -> Claim | None:
        """For a turn recorder: claim ``scope``'s consolidation when ``every`` of its
        turns stored (by any process) are due since its last one (:mod:`._turn_count`)."""
        return await self._acall(lambda c: claim(c.store, scope, every, time.time()), None)

    async def _asettle_consolidation(self, done: Claim) -> None:
        """For a turn recorder: its claimed consolidation ended (done or failed)."""
        await self._acall(lambda c: settle(c.store, done), None)

    async def aforget(
        self,
        scope: Sequence[str],
        *,
        dry_run: bool = True,
        older_than_s: float | None = None,
        below: float | None = None,
        limit: int = 1000,
    ) -> ForgetReport:
        """Async :meth:`forget`."""
        normalize_scope(scope)
        return await self._acall(
            lambda c: forget(
                c, scope, dry_run=dry_run, older_than_s=older_than_s, below=below, limit=limit
            ),
            (scope,),
            "aforget",
        )

    async def astats(self, scope: Sequence[str] | None = None) -> Stats:
        """Async :meth:`stats`."""
        return self._with_usage(
            await self._acall(lambda c: c.stats(scope), (scope or (),), "astats")
        )

    async def adelete_scope(self, scope: Sequence[str], *, missing_ok: bool = False) -> int:
        """Async :meth:`delete_scope` (waits for recorded turns without blocking the loop)."""
        normalize_scope(scope)
        marks = self._recorder_marks()
        return await self._acall(
            lambda c: self._delete_forgetting(c, scope, missing_ok, marks),
            (scope,),
            "adelete_scope",
        )

    def _delete_forgetting(
        self, core: Core, scope: Sequence[str], missing_ok: bool, marks: list[tuple[_Recorder, int]]
    ) -> int:
        """On the owner thread: delete ``scope``, then forget the recorders' turns
        accepted before the call (``marks``) that are still not stored (one job: no
        lane runs between). A scope only such turns name counts as held; a delete that
        fails forgets nothing (the turns are stored, as the scope is not deleted)."""
        pending = self._forget_recorded(scope, marks, mark=False)
        deleted = delete_scope(core, scope, pending or missing_ok)
        self._forget_recorded(scope, marks)
        return deleted

    def export_scope(self, scope: Sequence[str], path: str | os.PathLike[str]) -> ExportReport:
        """Write ``scope`` and the scopes under it to a JSON-lines file (a backup).

        One consistent snapshot, streamed row by row: a header (format,
        schema version, embedder, scope), then memories (ids, exact content,
        times, access counts, metadata, provenance, float32 vectors), edges,
        per-scope state and distilled clusters, then an ``end`` line. Scopes
        in the file are relative to ``scope``. The file appears atomically.
        See :mod:`helamem.core._portable` for the format.

        Args:
            scope: The scope (prefix) to export.
            path: The file to write (replaced if it exists; never a file of this
                store's directory but an earlier export, nor a SQLite database).

        Returns:
            What was written (counts of memories, edges, scopes, clusters).

        Raises:
            InvalidInputError: The scope is malformed, not in the store (a typo:
                nothing is written), the path not writable, or a file of the store
                (its database, an index, an adapter's file) or a SQLite database
                anywhere (another store's) that the export would replace.
            DiskFullError: The disk filled up while writing (nothing is left behind).
            ConfigError: Another process switched the store's embedder since this memory
                opened it (the file would name this one for the other's vectors).

        Examples:
            >>> mem.export_scope(("users", "alice"), "alice.jsonl")  # doctest: +SKIP
            ExportReport(path=PosixPath('alice.jsonl'), scope=('users', 'alice'), memories=42, ...)
        """
        normalize_scope(scope)
        return self._call(lambda c: export_scope(c, scope, path), (scope,), "export_scope")

    async def aexport_scope(
        self, scope: Sequence[str], path: str | os.PathLike[str]
    ) -> ExportReport:
        """Async :meth:`export_scope` (waits for recorded turns without blocking the loop)."""
        normalize_scope(scope)
        return await self._acall(lambda c: export_scope(c, scope, path), (scope,), "aexport_scope")

    def import_scope(
        self, path: str | os.PathLike[str], *, scope: Sequence[str] | None = None
    ) -> ImportReport:
        """Load a file written by :meth:`export_scope`, in one transaction.

        Ids, times, access counts, edges, scope ticks and distilled clusters
        are kept, so export, :meth:`delete_scope` and import give back the
        same memory. Vectors are reused when the file's embedder (name and
        dimension) is this store's, else recomputed; then they are indexed.

        Args:
            path: A file written by :meth:`export_scope`.
            scope: Where to put the exported scope; default: where it came from.

        Returns:
            What was written (counts, and how many vectors were recomputed).

        Raises:
            ImportConflictError: The target scope holds memories, or an id of
                the file exists already; nothing was written.
            ExportFormatError: The file is not a complete export this version
                reads; nothing was written.
            InvalidInputError: The path cannot be read or the scope is malformed.

        Examples:
            >>> mem.delete_scope(("users", "alice"))                 # doctest: +SKIP
            >>> mem.import_scope("alice.jsonl").memories             # doctest: +SKIP
            42
        """
        if scope is not None:
            normalize_scope(scope)
        return self._call(lambda c: import_scope(c, path, scope), what="import_scope")

    async def aimport_scope(
        self, path: str | os.PathLike[str], *, scope: Sequence[str] | None = None
    ) -> ImportReport:
        """Async :meth:`import_scope`."""
        if scope is not None:
            normalize_scope(scope)
        return await self._acall(lambda c: import_scope(c, path, scope), what="aimport_scope")

    def reindex(self, *, reembed: bool = False) -> int:
        """Rebuild the vector index from SQLite; ``reembed`` recomputes every vector.

        Both use this store's own embedder; to switch to another embedder open
        the store with it and ``reembed=True`` (see the constructor).

        Returns:
            The memories indexed.
        """
        return self._call(lambda c: c.reindex(reembed), what="reindex")

    def flush(self) -> int:
        """Write the vectors that adds left for a batched index write now.

        Adds to large scopes return once SQLite holds them; their vectors reach
        Chroma in batches (``ChromaConfig.upsert_batch``, ``upsert_delay_s``),
        and every call other than an add, a search, ``get``, ``reinforce`` or
        ``list_scopes`` writes them first, as :meth:`close` does. Searches find
        them meanwhile. Call this to hand a fully indexed store to another
        process or tool at once.

        Rows a failed write left unindexed, and another process's rows this
        process's index can take, are re-indexed too. With embedded Chroma only
        the process holding the index writes to it: elsewhere this writes
        nothing (0) and the holder indexes the rows.

        Returns:
            The vectors written.
        """
        return self._call(KeepsPending(_flush), what="flush")

    async def aflush(self) -> int:
        """Async :meth:`flush`."""
        return await self._acall(KeepsPending(_flush), what="aflush")

    @property
    def reembedded(self) -> int | None:
        """Memories re-embedded when this store opened with ``reembed=True`` and
        switched embedders; ``None`` when nothing was switched (or not open yet)."""
        core = self._core
        return None if core is None else core.reembedded
