"""The serializable configuration of :class:`~helamem.autogen.HelaMemMemory`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from helamem.core import (
    ChromaConfig,
    ConsolidationConfig,
    DynamicsConfig,
    EmbedderConfig,
    HelaMemConfig,
    LLMConfig,
    PostgresConfig,
    RetrievalConfig,
)

__all__ = ["HelaMemMemoryConfig"]

# ChromaDBVectorMemoryConfig's names for settings HeLa-Mem has too (accepted on input).
_ALIASES = {
    "collection_name": "collection",
    "persistence_path": "path",
    "host": "chroma_host",
    "port": "chroma_port",
    "ssl": "chroma_ssl",
}
# ChromaDBVectorMemoryConfig settings HeLa-Mem has no equivalent for, and what to do instead.
_CHROMA_ONLY = {
    "client_type": "set chroma_host for a Chroma server; leave it out for the embedded store",
    "distance_metric": "HeLa-Mem always compares vectors by cosine; remove it",
    "allow_reset": "HelaMemMemory has no reset(); clear() deletes this scope; remove it",
    "tenant": "use a scope per tenant, e.g. scope=('tenant', 'user'); remove it",
    "database": "use path (or collection) to separate stores; remove it",
    "headers": "HeLa-Mem's Chroma client sends no custom headers; remove it",
    "embedding_function_config": (
        "pass the embedding function itself as HelaMemMemory(config, embedder=fn), or set "
        "embedder='minilm' | 'litellm' | 'hashing'"
    ),
}


def _has_password(dsn: str) -> bool:
    """Whether a libpq DSN (URL or ``key=value`` form) carries a password.

    Examples:
        >>> _has_password("postgresql://app:secret@db/agents"), _has_password("postgresql://app@db/x")
        (True, False)
        >>> _has_password("host=db user=app password=secret")
        True
    """
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError as exc:
        raise ValueError(
            "postgres_dsn needs PostgreSQL support: pip install 'helamem-core[postgres]'"
        ) from exc
    try:
        return bool(conninfo_to_dict(dsn).get("password"))
    except psycopg.Error as exc:
        raise ValueError(f"postgres_dsn is not a PostgreSQL connection string: {exc}") from exc


class HelaMemMemoryConfig(BaseModel):
    """Everything needed to rebuild a :class:`~helamem.autogen.HelaMemMemory`.

    Plain JSON values only, so ``AssistantAgent.dump_component()`` and
    ``load_component`` round-trip. Secrets are not part of it: LiteLLM reads
    API keys from its providers' usual environment variables.

    Attributes:
        scope: This memory's namespace, e.g. ``("users", "alice")``. Queries
            cover the scope and the scopes under it; ``clear()`` deletes them.
        name: Identifier of this memory (default ``"helamem:<scope>"``).
        path: Data directory (SQLite file and embedded Chroma; a ``Path`` is taken as its text);
            ``persistence_path`` is accepted on input.
        chroma_host: A Chroma server to use instead of the embedded one
            (``host`` accepted on input).
        chroma_port: Its port (``port`` accepted on input).
        chroma_ssl: Whether to reach it over HTTPS (``ssl`` accepted on input).
        postgres_dsn: Keep the graph (memories, edges, BM25 statistics) in this
            PostgreSQL database instead of ``<path>/helamem.sqlite3``, so agents on
            several machines share it (pair it with ``chroma_host``). Without a
            password: this config is serialized, and libpq reads the password
            from ``PGPASSWORD`` or ``~/.pgpass``.
        postgres_schema: The PostgreSQL schema of this memory's tables.
        collection: Chroma collection name (``collection_name``, as
            ``ChromaDBVectorMemoryConfig`` calls it, is accepted on input).
        embedder: ``"minilm"`` (offline default), ``"litellm"`` (needs
            ``embedding_model``) or ``"hashing"`` (deterministic, no model).
        embedding_model: LiteLLM embedding model for ``embedder="litellm"``.
        embedding_dimension: The embedder's vector size (``"hashing"``: any, default
            384; ``"litellm"``: the model's; ``"minilm"``: 384), as
            ``EmbedderConfig.dimension`` (``dimension`` is accepted on input); a store
            made with another size is refused when it opens.
        k: At most this many memories per query, episodes and distilled
            facts together, highest score first.
        score_threshold: Drop hits whose score is lower. The score is the
            core's relevance in [0, 1], on one absolute scale for every scope
            and query (see :attr:`helamem.core.Hit.score`), so one threshold
            means the same everywhere. ``None`` (default): ``query`` keeps every
            hit (as ``ListMemory`` returns everything it holds), while
            ``update_context`` injects only the hits with some
            relevance: a score of at least 0.01, or reached by spreading from a hit that
            has one (a matching question's reply); ``0.0`` injects every hit.
        max_tokens: Cap on the memory text injected into the model context
            (whole memories, best first, counted as
            :meth:`helamem.core.SearchResult.to_text` counts).
        learn: Reinforce retrieved memories together (Hebbian learning).
        record: Record the agent's turns in ``scope`` (``update_context``,
            ``record_last_turn``, ``close``). Every memory attached to an agent
            records its turns; ``False`` makes one that only injects and records by
            no path (a knowledge base shared by several users' agents, which must
            not hold one user's conversation where the others read).
        user_sources: The message sources (AgentChat's ``source``: ``"user"``, a
            ``UserProxyAgent``'s name) whose messages are the user's own words in a
            recorded turn; the other agents of a team are stored with their name
            (``"[planner] ..."``). ``None``: ``"user"`` and the source of the
            conversation's first message (who gave the task).
        wait_recorded_s: Before each read (``update_context``, ``query``),
            wait at most this long for the turns of this scope still being
            recorded, so a read sees every turn recorded before it; past the
            bound it reads without them and logs a WARNING. ``0``: never wait.
        llm_model: LiteLLM model string for distillation; ``None``: the
            extractive distiller (no model).
        llm_api_base: API base passed to LiteLLM.
        consolidate_every: Distil a scope once this many of its turns are
            recorded since its last consolidation (counted in the store, by
            every process).
        dynamics: Hebbian edge dynamics (learning rate, decay...).
        retrieval: Retrieval tuning (spreading, recency...).

    ``ChromaDBVectorMemoryConfig``'s names for the same settings
    (``collection_name``, ``persistence_path``, ``host``, ``port``, ``ssl``)
    are accepted on input; a dump always uses the names above. Its settings
    without a HeLa-Mem equivalent (``client_type``, ``distance_metric``,
    ``allow_reset``, ``tenant``, ``database``, ``headers``,
    ``embedding_function_config``) raise a ``ValueError`` naming what to do
    instead.

    Examples:
        >>> cfg = HelaMemMemoryConfig(scope=("users", "alice"), path="./data", k=3)
        >>> HelaMemMemoryConfig.model_validate(cfg.model_dump(mode="json")) == cfg
        True
        >>> HelaMemMemoryConfig(scope=("u",), collection_name="notes").collection
        'notes'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    scope: tuple[str, ...] = Field(min_length=1)
    name: str | None = None
    path: str = Field("./helamem-data", validation_alias=AliasChoices("path", "persistence_path"))
    chroma_host: str | None = Field(None, validation_alias=AliasChoices("chroma_host", "host"))
    chroma_port: int = Field(
        8000, ge=1, le=65535, validation_alias=AliasChoices("chroma_port", "port")
    )
    chroma_ssl: bool = Field(False, validation_alias=AliasChoices("chroma_ssl", "ssl"))
    postgres_dsn: str | None = None
    postgres_schema: str = "helamem"
    collection: str = Field(
        "helamem", validation_alias=AliasChoices("collection", "collection_name")
    )
    embedder: Literal["minilm", "litellm", "hashing"] = "minilm"
    embedding_model: str | None = None
    embedding_dimension: int = Field(
        384, ge=8, validation_alias=AliasChoices("embedding_dimension", "dimension")
    )
    k: int = Field(5, ge=1)
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    learn: bool = True
    record: bool = True
    user_sources: list[str] | None = None
    wait_recorded_s: float = Field(10.0, ge=0.0, allow_inf_nan=False)
    llm_model: str | None = None
    llm_api_base: str | None = None
    consolidate_every: int = Field(20, ge=1)
    dynamics: DynamicsConfig = DynamicsConfig()
    retrieval: RetrievalConfig = RetrievalConfig()

    @model_validator(mode="before")
    @classmethod
    def _chroma_names(cls, data: Any) -> Any:
        """Accept ChromaDBVectorMemoryConfig's names; refuse its settings HeLa-Mem lacks."""
        if not isinstance(data, dict):
            return data
        for key, fix in _CHROMA_ONLY.items():
            if key in data:
                raise ValueError(
                    f"{key!r} is a ChromaDBVectorMemoryConfig setting HelaMemMemoryConfig does "
                    f"not have: {fix}"
                )
        data = dict(data)
        for alias, name in _ALIASES.items():
            if alias in data and name in data:
                if data[alias] != data[name]:
                    raise ValueError(
                        f"both {name}={data[name]!r} and its alias {alias}={data[alias]!r} were "
                        f"given; pass only {name}"
                    )
                del data[alias]
        return data

    @field_validator("path", mode="before")
    @classmethod
    def _path_text(cls, path: Any) -> Any:
        """A ``pathlib.Path`` (any ``os.PathLike``) is taken as its text (kept a string:
        the config serializes)."""
        return os.fspath(path) if isinstance(path, os.PathLike) else path

    @field_validator("scope")
    @classmethod
    def _check_scope(cls, scope: tuple[str, ...]) -> tuple[str, ...]:
        if not all(seg.strip() for seg in scope):
            raise ValueError(f"scope {scope!r} has an empty segment; name every segment")
        return scope

    @model_validator(mode="after")
    def _check_store(self) -> HelaMemMemoryConfig:
        self.to_helamem_config()  # fail here, not on first use
        return self

    def to_helamem_config(self) -> HelaMemConfig:
        """The :class:`~helamem.core.HelaMemConfig` of the store this config describes.

        Examples:
            >>> cfg = HelaMemMemoryConfig(scope=("u",), chroma_host="chroma")
            >>> cfg.to_helamem_config().chroma.mode
            'http'
        """
        if self.chroma_host is not None:
            chroma = ChromaConfig(
                mode="http",
                host=self.chroma_host,
                port=self.chroma_port,
                ssl=self.chroma_ssl,
                collection=self.collection,
            )
        else:
            chroma = ChromaConfig(collection=self.collection)
        store = None
        if self.postgres_dsn is not None:
            if _has_password(self.postgres_dsn):
                raise ValueError(
                    "postgres_dsn holds a password, and this config is serialized with the "
                    "agent; leave it out of the DSN and set PGPASSWORD (or ~/.pgpass) instead"
                )
            store = PostgresConfig(
                dsn=self.postgres_dsn,
                schema_name=self.postgres_schema,
            )
        return HelaMemConfig(
            store=store,
            path=Path(self.path),
            dynamics=self.dynamics,
            retrieval=self.retrieval,
            embedder=EmbedderConfig(
                provider=self.embedder,
                model=self.embedding_model,
                dimension=self.embedding_dimension,
            ),
            chroma=chroma,
            llm=LLMConfig(model=self.llm_model, api_base=self.llm_api_base),
            consolidation=ConsolidationConfig(every_turns=self.consolidate_every),
        )
