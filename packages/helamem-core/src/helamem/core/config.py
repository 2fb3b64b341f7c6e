"""Every default of HeLa-Mem, in one frozen configuration object.

The library reads no environment variables except in
:meth:`HelaMemConfig.from_env`, which a caller invokes explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from . import _config_env
from .association import ASSOCIATION_MODEL, FEATURES

__all__ = [
    "ChromaConfig",
    "ConsolidationConfig",
    "LLMConfig",
    "PostgresConfig",
    "DynamicsConfig",
    "EmbedderConfig",
    "HelaMemConfig",
    "RetrievalConfig",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DynamicsConfig(_Frozen):
    """Hebbian edge dynamics.

    ``temporal_weight`` and ``prune_below`` are the reference
    implementation's; η and δ were chosen with ``helamem bench sweep`` on the
    LoCoMo dev split (the reference δ = 0.995 per turn prunes a temporal edge
    within about 600 turns, before most questions about it are asked; δ =
    0.9999 halves an unused edge in about 7,000 turns; a bigger η on fewer
    pairs, see ``RetrievalConfig.learn_top``, keeps learning from drowning
    the conversation's own structure).

    Attributes:
        temporal_weight: Weight of the edge between an episode and the
            previous one in its scope.
        learning_rate: η, added to the edge of every pair of co-activated
            memories, capped at 1.0.
        decay_rate: δ, multiplicative decay per tick.
        prune_below: Edges whose decayed weight falls under this are dropped.
        clock: ``"turns"``: a tick is one recorded turn (``add``/``add_turn``/
            one ``add_many`` item) in the scope; ``"wall"``: a tick is
            ``tick_seconds`` of wall-clock time.
        tick_seconds: Length of a tick when ``clock="wall"``.
        used_pairs: What a recorded turn (``add_turn(..., used_ids=)``)
            co-activates: ``"all"``, every pair among its new messages and
            the used memories (the reference clique); ``"new"``, each new
            message with each used memory only (a star; memories retrieved
            together are not linked to each other, so generic ones do not
            become hubs). See :func:`helamem.core.dynamics.recorded_pairs`.
        attribution_margin: μ: of the used memories, only those whose cosine
            to the turn's reply is within μ of the closest one co-activate
            (2 keeps them all). See :func:`helamem.core.dynamics.attributed`.
        attribution_floor: θ: ... and only those at this cosine or more
            (-1 keeps them all).
        unused_weakening: κ: the edges between a used memory the reply did
            not draw on and the ones it did are multiplied by ``1 - κ``
            (anti-Hebbian; 0: off).
        strength_budget: B: after a recorded turn, edges of the memories it
            touched are scaled so that none has a total edge weight above B
            (synaptic scaling; 0: off).

    ``used_pairs`` "new", ``attribution_margin`` 0.1 (and
    ``RetrievalConfig.fan_power`` 0.5) were chosen by leave-one-conversation-out
    in the agent loop on the LoCoMo dev split (``helamem bench locomo --ingest
    agent-loop``; README "What learning buys"): the reference clique of every
    used memory lowered R@10 from 0.744 (learning off) to 0.729 and made
    hubs (max node strength 14.6); the weakening, gating and budget rules
    measured no better and stay off.
    """

    temporal_weight: float = Field(0.5, gt=0.0, le=1.0)
    learning_rate: float = Field(0.05, ge=0.0, le=1.0)
    decay_rate: float = Field(0.9999, gt=0.0, le=1.0)
    prune_below: float = Field(0.01, ge=0.0, lt=1.0)
    clock: Literal["turns", "wall"] = "turns"
    tick_seconds: float = Field(3600.0, gt=0.0)
    used_pairs: Literal["all", "new"] = "new"
    attribution_margin: float = Field(0.1, ge=0.0, le=2.0)
    attribution_floor: float = Field(-1.0, ge=-1.0, le=1.0)
    unused_weakening: float = Field(0.0, ge=0.0, le=1.0)
    strength_budget: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _learning_outlives_pruning(self) -> DynamicsConfig:
        """A learning rate under the pruning floor never builds an edge by search:
        each search prunes the edge it met and writes it again at η."""
        if 0 < self.learning_rate < self.prune_below:
            raise ValueError(
                f"learning_rate={self.learning_rate} is below prune_below={self.prune_below}: "
                f"every edge a search learns is pruned before it can grow; raise "
                f"learning_rate or lower prune_below (learning_rate=0 turns learning off)"
            )
        return self


class RetrievalConfig(_Frozen):
    """The dual-path retrieval pipeline.

    The spreading defaults (α, θ, seeds, hops, ``max_flipped``,
    ``learn_top``) were chosen by leave-one-conversation-out on the LoCoMo
    dev split (``helamem bench sweep``; see the README's Benchmarks section):
    the reference α = 0.1 leaves the top-k equal to plain fusion.

    Attributes:
        candidates: M, candidates taken from each of the dense and lexical
            paths.
        keyword_weight: Weight of the lexical (BM25) z-score in the fused base
            score; the semantic z-score gets ``1 - keyword_weight``. 0.3 was
            chosen with ``late_weight`` = 1 by leave-one-conversation-out on
            the LoCoMo dev split (5 of 7 folds; R@10 0.784 at 10 hits). An
            embedder without token vectors (pooled cosine only) ranked best
            there at 0.7 (R@10 0.742 against 0.676 at 0.3): set it so then.
        late_weight: λ, the share of the semantic z-score taken from late
            interaction (MaxSim over token vectors, see
            :func:`helamem.core.retrieval.maxsim`) instead of the pooled
            cosine, when the embedder gives token vectors (MiniLM does; see
            :class:`helamem.core.embeddings.TokenEmbedder`); 0 turns it off
            (no token vectors are stored or read then). Costs about 400 bytes
            of SQLite per token of each memory (int8) and one extra read per
            search. Chosen with ``keyword_weight`` by leave-one-conversation-out.
        recency_tau: τ in seconds; recency is ``exp(-(t_ref - t) / τ)`` where
            ``t_ref`` is the query's reference time (default: the newest
            event among the candidates, never the wall clock).
        recency_weight: Share of the base activation that recency governs:
            ``a = σ(z) · (1 - ρ + ρ · recency)``.
        activation_alpha: α, spreading strength.
        spreading_threshold: θ, only seeds with activation above it spread.
        spread_seeds: At most this many top candidates act as seeds (keeps
            spreading query-dependent).
        neighbors_per_seed: Strongest edges followed from each seed (and,
            with two hops, from each first-hop neighbour).
        spread_hops: 1 or 2. With 2, activation also reaches the neighbours'
            neighbours through the path weight :math:`w_{ij} w_{jk}`.
        max_boost: Cap on what one memory can receive from spreading (bounds
            what a hub collects).
        max_flipped: At most this many association hits (memories that
            spreading lifted into the top-k) per search.
        selection: Where association hits go. ``"learned"`` (default): as
            ``"final"``, but the ranking that association hits climb is
            ``association_model``'s score of every candidate instead of the
            spread activation (see :mod:`helamem.core.association`); for
            facts, and without edges to spread over, it is ``"final"``.
            ``"final"``: within
            the k slots, each displacing the base hit with the lowest final
            score, so a search returns at most k episodic hits; ``"base"``:
            within the k slots, displacing the lowest base hits; ``"append"``:
            the reference implementation's top-k plus the association hits
            (up to ``k + max_flipped``). See :func:`helamem.core.dynamics.select`.
        association_model: ``(feature, weight)`` pairs (and ``"bias"``) of
            the linear model (a logit) that ``selection="learned"`` scores
            candidates with; the default was fitted pairwise on the LoCoMo dev split (see the
            README's Benchmarks section for its leave-one-conversation-out
            figures).
        association_share: Within k (``selection`` "learned", "final" or "base"),
            association hits take at most this share of the k slots, so the
            best base hits always stay.
        association_gate: Within k, an association hit displaces a base hit
            only if its relevance is at least the base hit's minus this margin
            (0: never a more relevant memory; 1: no gate). 0.5 and
            ``association_share`` 0.5 were chosen with ``selection="learned"``
            by leave-one-conversation-out on the LoCoMo dev split (held-out
            R@10 0.835 with the pairwise weights, the same as no gate;
            README, "The learned selection"); ``selection="final"`` was
            chosen at share 0.2 and gate 0.2.
        association_keep: A base hit whose relevance is this or more (an
            exact match: on LoCoMo a stored turn's own text scores 1.0) is
            never displaced by an association hit, whatever the model or
            the gate say. Costs nothing measurable on LoCoMo (held-out R@10
            unchanged).
        association_min_relevance: An association hit needs at least this
            relevance (its seed's, times the path weight: 0.5 a step over
            the temporal chain); below it, its slot goes to the next
            candidate. 0.2 keeps weak associations of small stores out (a
            turn reached two steps from a barely relevant seed) and changes
            nothing on LoCoMo (held-out R@10 0.827 at 0, 0.1 and 0.2).
        association_min_path: With ``selection="learned"``, only paths of at
            least this weight give a memory its association features (the
            temporal chain: 0.5 a step, 0.25 two steps); a weaker one is an
            edge learned from co-retrieval (``learning_rate`` per
            co-activation), which the model, fitted on the chain, would read
            as a step along it. On LoCoMo with learning from the question
            stream this took R@10 from 0.816 to 0.820 (0.821 without
            learning); read-only it changes nothing.
        fan_power: p of hub-resistant spreading: every edge followed is
            scaled by ``min(1, R/S_i)^p · min(1, R/S_j)^p`` for its two ends'
            total edge weights S (0: off). See
            :func:`helamem.core.dynamics.fan_scaled`.
        fan_reference: R: memories with a total edge weight up to R (a plain
            episode with its two temporal edges has 1.0) spread unscaled.
        learn_top: With ``learn=True``, only the best this many returned
            memories co-activate (0: every returned memory).
        default_k: ``k`` when the caller gives none.
        semantic_k: At most this many distilled facts returned beside the
            episodic hits.
        semantic_min_relevance: Facts come back only at this relevance or
            more (``hit.score``, in [0, 1]; on LoCoMo the best hit of a
            nonsense query scores at most 0.40, of a real question 0.41-1.0,
            median 0.78), so a search never pads its context with facts that
            do not match.
        lexical_max_df: Query words found in more than this share of the stored
            memories are left out of the BM25 query when a rarer word remains
            (1.0 keeps every word). On LoCoMo-dev, 0.03 keeps fusion R@10 of
            0.1 and raises HeLa-Mem's; 0.02 lowers both.
        lexical_max_terms: At most this many query words (the rarest, by
            document frequency) go into the BM25 query; 0 keeps them all.
        lexical_max_postings: The rarest query words go into the BM25 query
            while their document frequencies sum to at most this (the rarest
            always goes), so one query's FTS5 work is bounded whatever the
            store's size; 0: no bound. See :func:`helamem.core.text.drop_common`.
            20,000 never binds on LoCoMo (its questions' BM25 terms hold at
            most 733 postings, so its rankings are unchanged); at 100k
            memories in one scope it trimmed 8 of 200 queries, cut the
            lexical leg's p95 from 17 to 13 ms and kept 0.98 of the
            unbudgeted top-10 hits (``benchmarks/lexical_budget.py``). Words
            left out still count in :func:`helamem.core.retrieval.relevance`'s
            lexical mass (as with ``lexical_max_df``), so where the budget
            binds a hit's relevance can only be lower, never higher.
        lexical_index: ``"auto"``: from ``lexical_index_min`` memories the
            BM25 leg asks a tantivy index (block-max WAND: it skips postings
            that cannot reach the top, so its cost grows far slower than the
            store's) kept beside FTS5 in the data directory's ``lexical/``,
            derived from SQLite and rebuilt from it when lost (see
            :mod:`helamem.core.storage.lexical`); ``"fts5"``: FTS5 always.
        lexical_index_min: Memories in the whole store (FTS5 rows: every
            scope, facts too) from which ``"auto"`` builds and uses the
            tantivy index (the add or search that crosses it builds it, about
            a second per 50,000 memories). Below it FTS5 is fast (a few ms at
            50,000) and its BM25 is exact; LoCoMo's stores (4,000 turns) stay
            below it.
        lexical_index_tail: Newest memories searched in FTS5 before the
            tantivy index takes them (a tantivy commit syncs to disk, about
            16 ms, so it is paid once per this many new memories).
        lexical_index_fold_s: Once no memory was added for this many seconds
            (and ``lexical_index_fold_searches`` searches queried them), the
            store's thread folds those newest memories into the tantivy
            index between calls (one commit), and searches skip FTS5's query
            of them (about 0.14 ms of a 5 ms search at 100k memories) until
            the next add (or delete of the newest memory). 0:
            never (the newest memories wait until more than
            ``lexical_index_tail`` of them are there). Folded memories are
            scored by tantivy's BM25 instead of FTS5's, which differ by a few
            per cent (see :mod:`helamem.core.storage.lexical`), so a hit's
            ``lexical`` and, rarely, the order of close hits can change.
        lexical_index_fold_searches: Searches of those newest memories since
            the last add before a fold: a commit (about 16 ms) pays for itself
            only over about a hundred searches (0.14 ms each), so a chat that
            searches once or twice per turn never folds; a store searched
            far more often than written does.
        query_cache: The embeddings (pooled and token vectors) of this many
            recent query texts are kept, so repeating a query, and the three
            to four searches of one ``max_tokens`` budget, embed it once (a
            MiniLM query costs about 12 ms on 2 cores); 0 turns it off. Set 0
            for an embedder whose output for the same text changes.
    """

    candidates: int = Field(50, ge=1, le=10_000)
    keyword_weight: float = Field(0.3, ge=0.0, le=1.0)
    late_weight: float = Field(1.0, ge=0.0, le=1.0)
    recency_tau: float = Field(1e7, gt=0.0)
    recency_weight: float = Field(0.2, ge=0.0, le=1.0)
    activation_alpha: float = Field(1.0, ge=0.0)
    spreading_threshold: float = Field(0.4, ge=0.0, le=1.0)
    spread_seeds: int = Field(8, ge=0)
    neighbors_per_seed: int = Field(16, ge=1)
    spread_hops: int = Field(2, ge=1, le=2)
    max_boost: float = Field(1.0, ge=0.0)
    max_flipped: int = Field(5, ge=0)
    selection: Literal["learned", "final", "base", "append"] = "learned"
    association_model: tuple[tuple[str, float], ...] = ASSOCIATION_MODEL
    association_share: float = Field(0.5, ge=0.0, le=1.0)
    association_gate: float = Field(0.5, ge=0.0, le=1.0)
    association_keep: float = Field(0.9, ge=0.0, le=1.0)
    association_min_relevance: float = Field(0.2, ge=0.0, le=1.0)
    association_min_path: float = Field(0.2, ge=0.0, le=1.0)
    fan_power: float = Field(0.5, ge=0.0, le=2.0)
    fan_reference: float = Field(1.0, gt=0.0)
    learn_top: int = Field(2, ge=0)
    default_k: int = Field(10, ge=1)
    semantic_k: int = Field(3, ge=0)
    semantic_min_relevance: float = Field(0.5, ge=0.0, le=1.0)
    lexical_max_df: float = Field(0.03, gt=0.0, le=1.0)
    lexical_max_terms: int = Field(0, ge=0)
    lexical_max_postings: int = Field(20_000, ge=0)
    query_cache: int = Field(64, ge=0)
    lexical_index: Literal["auto", "fts5"] = "auto"
    lexical_index_min: int = Field(50_000, ge=1)
    lexical_index_tail: int = Field(1_000, ge=0, le=100_000)
    lexical_index_fold_s: float = Field(2.0, ge=0.0, allow_inf_nan=False)
    lexical_index_fold_searches: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _check_model(self) -> RetrievalConfig:
        unknown = [f for f, _ in self.association_model if f != "bias" and f not in FEATURES]
        if unknown:
            raise ValueError(
                f"association_model names unknown features {unknown}; use 'bias' or one of "
                f"helamem.core.association.FEATURES: {', '.join(FEATURES)}"
            )
        return self


class EmbedderConfig(_Frozen):
    """Which embedder to use.

    Attributes:
        provider: ``"minilm"``: offline all-MiniLM-L6-v2 (ONNX, int8);
            ``"litellm"``: any LiteLLM embedding model (``model``), needs the
            ``litellm`` extra; ``"hashing"``: a deterministic bag-of-words
            embedder for tests and demos (no model).
        model: Model name for ``"litellm"``.
        dimension: Vector size for ``"hashing"`` (and a check for others).
        batch_size: Texts per ONNX run.
        max_length: Word pieces per text (longer texts are truncated).
        threads: ONNX intra-op threads (0 = onnxruntime's default).
        api_base: Passed through to LiteLLM.
        api_key: Passed through to LiteLLM (otherwise its provider's usual
            environment variable applies).
        timeout_s: Per-request timeout for ``"litellm"``.
        num_retries: LiteLLM retries for ``"litellm"``.
    """

    provider: Literal["minilm", "litellm", "hashing"] = "minilm"
    model: str | None = None
    dimension: int = Field(384, ge=8)
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(256, ge=8, le=512)
    threads: int = Field(0, ge=0)
    api_base: str | None = None
    api_key: SecretStr | None = None
    timeout_s: float = Field(30.0, gt=0.0)
    num_retries: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _check(self) -> EmbedderConfig:
        if self.provider == "litellm" and not self.model:
            raise ValueError(
                "EmbedderConfig(provider='litellm') needs model=, e.g. 'text-embedding-3-small'"
            )
        return self


class LLMConfig(_Frozen):
    """The LLM used for distillation (any LiteLLM model string).

    Attributes:
        model: ``gpt-4o-mini``, ``anthropic/...``, ``ollama/...``,
            ``openai/<name>`` with ``api_base``... ``None``: no LLM; the
            extractive distiller is used.
        fallbacks: Models tried in order when ``model`` keeps failing.
        api_base, api_key: Passed through to LiteLLM.
        timeout_s: Per-request timeout.
        max_retries: Retries per model on rate limits, timeouts, connection
            errors and 5xx, with exponential backoff.
        backoff_s: First backoff; doubles on every retry.
        temperature, max_tokens: Generation settings.
        json_mode: ``"object"``: ask for ``response_format={"type": "json_object"}``;
            ``"schema"``: send the prompt's JSON schema (``json_schema``
            response format, for providers and local servers that constrain
            output to it); ``"off"``: plain text (the answer is still parsed).
    """

    model: str | None = None
    fallbacks: tuple[str, ...] = ()
    api_base: str | None = None
    api_key: SecretStr | None = None
    timeout_s: float = Field(60.0, gt=0.0)
    max_retries: int = Field(2, ge=0)
    backoff_s: float = Field(1.0, ge=0.0)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(1024, ge=16)
    json_mode: Literal["off", "object", "schema"] = "object"


class ConsolidationConfig(_Frozen):
    """Hebbian distillation and forgetting.

    Attributes:
        every_turns: Turn hooks consolidate a scope once this many of its turns
            are stored since its last consolidation (counted in the store,
            across processes and recorders).
        similarity_neighbors: Similarity edges per new episode (top-n).
        similarity_min_cos: ... above this cosine ...
        similarity_weight: ... with weight ``similarity_weight · cos``.
        hub_min_degree: A hub has at least this many edges.
        cluster_size: A cluster is a hub and its strongest neighbours, at most this many.
        max_clusters: Clusters distilled per consolidation (one LLM call per scope).
        dedup_cos: A new fact this close to an existing one updates it instead.
        extractive_facts: Facts per cluster from the extractive distiller.
        forget_after_s: Forgetting considers episodes older than this,
            relative to the newest event of the scope.
        forget_below: ... whose strongest edge is weaker than this ...
    """

    every_turns: int = Field(20, ge=1)
    similarity_neighbors: int = Field(5, ge=0)
    similarity_min_cos: float = Field(0.5, ge=-1.0, le=1.0)
    similarity_weight: float = Field(0.3, ge=0.0, le=1.0)
    hub_min_degree: int = Field(3, ge=1)
    cluster_size: int = Field(8, ge=2)
    max_clusters: int = Field(3, ge=1)
    dedup_cos: float = Field(0.92, ge=0.0, le=1.0)
    extractive_facts: int = Field(2, ge=1)
    forget_after_s: float = Field(30 * 86400.0, ge=0.0)
    forget_below: float = Field(0.05, ge=0.0, le=1.0)


class ChromaConfig(_Frozen):
    """Where the vector index lives.

    Attributes:
        mode: ``"persistent"``: an embedded ``chromadb.PersistentClient`` in
            ``<path>/chroma``; ``"http"``: a Chroma server through
            ``chromadb.HttpClient``; ``"ephemeral"``: in memory (tests).
        host, port, ssl, headers: For ``mode="http"``.
        collection: Collection name prefix (3-512 of ``[a-zA-Z0-9._-]``). With a
            :class:`PostgresConfig` store, ``.<schema_name>`` is appended: memories
            of several schemas can share one Chroma server.
        exact_below: A (scope node, kind) with fewer vectors than this is
            searched by an exact cosine scan of the embeddings SQLite stores
            (correct across processes, no Chroma files); at this size it moves
            to its own HNSW collection in Chroma. ``0``: every scope in Chroma.
        exact_cache_mb: Memory (MiB) for the cached exact-scan matrices (LRU).
        max_open_indexes: HNSW indexes Chroma keeps loaded at once (each holds
            5 open files); also capped at a sixteenth of the open-file limit.
        upsert_batch: Vectors of adds to large scopes (those with their own
            HNSW collection) that may wait for one batched Chroma write (a
            :class:`~helamem.core.HelaMemory` only). Such an add commits to
            SQLite and returns; its vectors reach Chroma with the batch: when
            ``upsert_batch`` wait, ``upsert_delay_s`` after the add, or before
            any call other than an add, a search, ``get``, ``reinforce`` or
            ``list_scopes`` (``flush`` and ``close`` too). Meanwhile
            searches scan them exactly (as rows not yet indexed), and a kill
            leaves them to the re-index on the next open. Chroma's write costs
            about as much for 2 vectors as for 64 (about 13 ms per call on 2
            cores), so ``add_turn`` no longer pays it per turn. ``1``: every
            add writes its vectors before it returns.
        upsert_delay_s: Seconds an add's vectors wait at most (see ``upsert_batch``).
        timeout_s: Seconds one request to a Chroma server (``"http"``) may take
            once the store is open; one past it fails as an unreachable server
            does (a search scans exactly, an add's vector waits for the
            re-index) instead of blocking the memory (chromadb's own client
            never times out: a server that stops answering hung every call).
    """

    mode: Literal["persistent", "http", "ephemeral"] = "persistent"
    host: str = "localhost"
    port: int = Field(8000, ge=1, le=65535)
    ssl: bool = False
    headers: Mapping[str, str] | None = None
    collection: str = Field("helamem", pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")
    exact_below: int = Field(2000, ge=0)
    exact_cache_mb: int = Field(256, ge=0)
    max_open_indexes: int = Field(32, ge=1)
    upsert_batch: int = Field(64, ge=1, le=4096)
    upsert_delay_s: float = Field(0.5, gt=0.0, le=60.0)
    timeout_s: float = Field(60.0, gt=0.0)


class PostgresConfig(_Frozen):
    """A graph store in PostgreSQL instead of ``<path>/helamem.sqlite3``.

    Memories, edges, scope clocks, the BM25 statistics and distilled facts live
    in the tables of ``schema`` (created on first open; append-only
    migrations), so processes on several machines can share one memory. Pair
    it with a Chroma server (``ChromaConfig(mode="http")``) for vectors; the
    local ``path`` then only holds lock files.

    Attributes:
        dsn: A libpq connection string or ``postgresql://`` URL
            (``postgresql://user:secret@db.internal:5432/agents``).
        schema_name: The PostgreSQL schema holding this memory's tables (one memory
            per schema; several may share a database). Lower-case letters,
            digits and ``_``.
        pool_size: Most connections one memory's pool holds open: the store uses
            one at a time and takes a fresh one when the server dropped it (the
            exact vector scan holds one more of its own).
        connect_timeout_s: Seconds to wait for a connection.
        lock_timeout_s: Seconds a write waits for this memory's write lock
            (another process's write transaction) before it fails with
            :class:`~helamem.core.errors.StorageError` (SQLite's ``busy_timeout_s``).
        timeout_s: Each this many seconds a statement waits for its answer, a new
            connection asks whether its backend still works on it (libpq alone waits
            forever on a stopped or cut-off server): while it does, the wait goes
            on; once it does not, the connection closes and the call raises
            ``StorageError`` (a ``COMMIT``: ``CommitUnknownError``).
    """

    dsn: SecretStr
    schema_name: str = Field("helamem", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    pool_size: int = Field(4, ge=1, le=64)
    connect_timeout_s: float = Field(10.0, gt=0.0)
    lock_timeout_s: float = Field(30.0, gt=0.0)
    timeout_s: float = Field(60.0, gt=0.0)


EMPTY_PATH = (
    "path is empty, which would put the store's files in the working directory; pass a "
    "directory, e.g. path='./helamem-data' (or '.' for the working directory on purpose)"
)


class HelaMemConfig(_Frozen):
    """Configuration of a :class:`~helamem.core.HelaMemory`.

    Examples:
        >>> cfg = HelaMemConfig(path="./helamem-data")
        >>> cfg.dynamics.learning_rate
        0.05
        >>> HelaMemConfig(retrieval=RetrievalConfig(activation_alpha=0.3)).retrieval.max_flipped
        5
    """

    path: Path = Path("./helamem-data")
    dynamics: DynamicsConfig = DynamicsConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    chroma: ChromaConfig = ChromaConfig()
    llm: LLMConfig = LLMConfig()
    consolidation: ConsolidationConfig = ConsolidationConfig()
    busy_timeout_s: float = Field(30.0, gt=0.0)
    # PRAGMA mmap_size of the SQLite store's connection, in MiB (SQLite caps it near
    # 2 GiB): reads map the file instead of a read() per page (a search's row and
    # token-vector lookups take about 40 % less at 100k memories; a whole search
    # about 4 % less relative to Chroma, within noise; README, Scale).
    # Writes are unchanged. With the map on, a read error of the disk stops the
    # process (SIGBUS) instead of raising StorageError: set 0 on removable disks
    # (from the environment: HELAMEM_SQLITE_MMAP_MB=0 with from_env()).
    sqlite_mmap_mb: int = Field(1024, ge=0, le=_config_env.SQLITE_MMAP_MAX_MB)
    # None: the graph store is the SQLite file <path>/helamem.sqlite3 (the default);
    # a PostgresConfig: PostgreSQL tables, shared by processes on several machines
    store: PostgresConfig | None = None

    @field_validator("path", mode="before")
    @classmethod
    def _named_directory(cls, value: Any) -> Any:
        """An empty path is refused: ``Path("")`` is the working directory, where the
        store's files would land unasked (``"."`` says so on purpose)."""
        if isinstance(value, str) and not value.strip():
            raise ValueError(EMPTY_PATH)
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> HelaMemConfig:
        """Build a config from ``HELAMEM_*`` environment variables.

        Recognised: ``HELAMEM_PATH``, ``HELAMEM_EMBEDDER`` (provider),
        ``HELAMEM_EMBEDDING_MODEL``, ``HELAMEM_CHROMA_HOST`` (switches to
        ``mode="http"``), ``HELAMEM_CHROMA_PORT``, ``HELAMEM_CHROMA_SSL``,
        ``HELAMEM_COLLECTION``, ``HELAMEM_LLM_MODEL``, ``HELAMEM_LLM_API_BASE``,
        ``HELAMEM_POSTGRES_DSN`` (a :class:`PostgresConfig` store),
        ``HELAMEM_POSTGRES_SCHEMA`` and ``HELAMEM_SQLITE_MMAP_MB``.

        Args:
            environ: Mapping to read instead of ``os.environ``.
            **overrides: Fields that win over the environment.

        Raises:
            ConfigError: A variable is set but empty or holds a value its field
                refuses (the message names the variable): ``HELAMEM_CHROMA_PORT``
                not a port (1-65535), ``HELAMEM_CHROMA_SSL`` not a boolean
                (``1``/``true``/``yes``/``on``, ``0``/``false``/``no``/``off``),
                ``HELAMEM_EMBEDDER`` not a provider, and so on; or
                ``HELAMEM_POSTGRES_SCHEMA`` is set without ``HELAMEM_POSTGRES_DSN``.
        """
        env = os.environ if environ is None else environ
        data = _config_env.read(
            env,
            {
                "embedder": EmbedderConfig,
                "chroma": ChromaConfig,
                "llm": LLMConfig,
                "postgres": PostgresConfig,
            },
        )
        data.update(overrides)
        return cls(**data)
