"""Everything that talks to LiteLLM (the only module that imports it).

LiteLLM is imported lazily, on first use, after setting
``LITELLM_LOCAL_MODEL_COST_MAP=True`` so the import never reaches the network.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from .embeddings import Vectors, check_vectors
from .errors import ConfigError, EmbeddingError

__all__ = ["LiteLLMEmbedder", "import_litellm"]

logger = logging.getLogger(__name__)


def import_litellm() -> ModuleType:
    """Import litellm offline-safe (local model cost map)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError as exc:
        raise ConfigError(
            "LiteLLM is not installed; install it with: pip install 'helamem-core[litellm]'"
        ) from exc
    mod: ModuleType = litellm
    return mod


def _api_errors() -> tuple[type[BaseException], ...]:
    """The base class of every LiteLLM API error (they subclass openai's)."""
    import openai

    return (openai.OpenAIError,)


class LiteLLMEmbedder:
    """Any LiteLLM embedding model (``text-embedding-3-small``, ``ollama/...``).

    Args:
        model: LiteLLM model string.
        dimension: Expected vector size (checked on every call).
        api_base: Passed through to LiteLLM.
        **kwargs: Further ``litellm.embedding`` arguments (``api_key``,
            ``timeout``...).
    """

    def __init__(
        self, model: str, dimension: int, api_base: str | None = None, **kwargs: Any
    ) -> None:
        self._model = model
        self._dim = dimension
        self._kwargs = dict(kwargs)
        if api_base:
            self._kwargs["api_base"] = api_base

    @property
    def name(self) -> str:
        return f"litellm:{self._model}"

    @property
    def dimension(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        litellm = import_litellm()
        try:
            resp = litellm.embedding(model=self._model, input=list(texts), **self._kwargs)
        except _api_errors() as exc:
            raise EmbeddingError(f"LiteLLM embedding with {self._model!r} failed: {exc}") from exc
        rows = sorted(resp.data, key=lambda d: d["index"])
        return check_vectors([r["embedding"] for r in rows], len(texts), self._dim, self.name)
