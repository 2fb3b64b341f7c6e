"""The serializable configuration of :class:`~helamem.autogen.HelaMemMemory`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from helamem.core import (
    ChromaConfig,
    ConsolidationConfig,
    DynamicsConfig,
    EmbedderConfig,
    HelaMemConfig,
    LLMConfig,
    RetrievalConfig,
)

__all__ = ["HelaMemMemoryConfig"]


class HelaMemMemoryConfig(BaseModel):
    """Everything needed to rebuild a :class:`~helamem.autogen.HelaMemMemory`.

    Plain JSON values only, so ``AssistantAgent.dump_component()`` and
    ``load_component`` round-trip. Secrets are not part of it: LiteLLM reads
    API keys from its providers' usual environment variables.

    Attributes:
        scope: This memory's namespace, e.g. ``("users", "alice")``. Queries
            cover the scope and the scopes under it; ``clear()`` deletes them.
        name: Identifier of this memory (default ``"helamem:<scope>"``).
        path: Data directory (SQLite file and embedded Chroma).
        chroma_host: A Chroma server to use instead of the embedded one.
        chroma_port: Its port.
        chroma_ssl: Whether to reach it over HTTPS.
        collection: Chroma collection name.
        embedder: ``"minilm"`` (offline default), ``"litellm"`` (needs
            ``embedding_model``) or ``"hashing"`` (deterministic, no model).
        embedding_model: LiteLLM embedding model for ``embedder="litellm"``.
        k: At most this many memories per query, episodes and distilled
            facts together, highest score first.
        score_threshold: Drop hits whose score is lower. The score is the
            core's relevance in [0, 1], on one absolute scale for every scope
            and query (see :attr:`helamem.core.Hit.score`), so one threshold
            means the same everywhere; ``None`` keeps every hit.
        max_tokens: Cap on the memory text injected into the model context
            (whole memories, best first, counted as
            :meth:`helamem.core.SearchResult.to_text` counts).
        learn: Reinforce retrieved memories together (Hebbian learning).
        llm_model: LiteLLM model string for distillation; ``None``: the
            extractive distiller (no model).
        llm_api_base: API base passed to LiteLLM.
        consolidate_every: Distil a scope every this many recorded turns.
        dynamics: Hebbian edge dynamics (learning rate, decay...).
        retrieval: Retrieval tuning (spreading, recency...).

    Examples:
        >>> cfg = HelaMemMemoryConfig(scope=("users", "alice"), path="./data", k=3)
        >>> HelaMemMemoryConfig.model_validate(cfg.model_dump(mode="json")) == cfg
        True
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    scope: tuple[str, ...] = Field(min_length=1)
    name: str | None = None
    path: str = "./helamem-data"
    chroma_host: str | None = None
    chroma_port: int = Field(8000, ge=1, le=65535)
    chroma_ssl: bool = False
    collection: str = "helamem"
    embedder: Literal["minilm", "litellm", "hashing"] = "minilm"
    embedding_model: str | None = None
    k: int = Field(5, ge=1)
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    learn: bool = True
    llm_model: str | None = None
    llm_api_base: str | None = None
    consolidate_every: int = Field(20, ge=1)
    dynamics: DynamicsConfig = DynamicsConfig()
    retrieval: RetrievalConfig = RetrievalConfig()

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
        return HelaMemConfig(
            path=Path(self.path),
            dynamics=self.dynamics,
            retrieval=self.retrieval,
            embedder=EmbedderConfig(provider=self.embedder, model=self.embedding_model),
            chroma=chroma,
            llm=LLMConfig(model=self.llm_model, api_base=self.llm_api_base),
            consolidation=ConsolidationConfig(every_turns=self.consolidate_every),
        )
