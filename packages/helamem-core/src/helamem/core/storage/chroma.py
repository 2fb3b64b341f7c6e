"""The Chroma vector index (the only module that imports chromadb).

Chroma is a derived index: SQLite holds every memory and its embedding, and
this index can always be rebuilt from it (``helamem reindex``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import chromadb
import numpy as np
import numpy.typing as npt
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.config import Settings
from chromadb.errors import ChromaError
from chromadb.utils.embedding_functions import register_embedding_function

from ..config import ChromaConfig
from ..embeddings import Embedder, MiniLMEmbedder, Vectors, check_vectors
from ..errors import StorageError

__all__ = ["ChromaEmbedder", "ChromaIndex", "HelaMemMiniLMEmbeddingFunction"]

logger = logging.getLogger(__name__)


@register_embedding_function
class HelaMemMiniLMEmbeddingFunction(EmbeddingFunction[Documents]):
    """HeLa-Mem's offline all-MiniLM-L6-v2 as a registered Chroma embedding function.

    Examples:
        >>> ef = HelaMemMiniLMEmbeddingFunction()
        >>> len(ef(["hello"])[0])
        384
    """

    def __init__(self, batch_size: int = 32, max_length: int = 256) -> None:
        self._batch_size = batch_size
        self._max_length = max_length
        self._embedder = MiniLMEmbedder(batch_size, max_length)

    def __call__(self, input: Documents) -> Embeddings:
        return [row for row in self._embedder.embed(list(input))]

    @staticmethod
    def name() -> str:
        return "helamem-minilm-onnx"

    def default_space(self) -> Any:
        return "cosine"

    def supported_spaces(self) -> list[Any]:
        return ["cosine", "l2", "ip"]

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> HelaMemMiniLMEmbeddingFunction:
        return HelaMemMiniLMEmbeddingFunction(
            int(config.get("batch_size", 32)), int(config.get("max_length", 256))
        )

    def get_config(self) -> dict[str, Any]:
        return {"batch_size": self._batch_size, "max_length": self._max_length}


class ChromaEmbedder:
    """Any Chroma embedding function used as a HeLa-Mem :class:`Embedder`.

    Args:
        function: A Chroma ``EmbeddingFunction``.
        dimension: Its vector size (probed with one call when not given).
    """

    def __init__(
        self, function: EmbeddingFunction[Documents], dimension: int | None = None
    ) -> None:
        self._fn = function
        self._dim = dimension

    @property
    def name(self) -> str:
        try:
            return f"chroma:{self._fn.name()}"
        except NotImplementedError:
            return f"chroma:{type(self._fn).__name__}"

    @property
    def dimension(self) -> int:
        if self._dim is None:  # probe once, on first use (not in the constructor)
            self._dim = len(self._fn(["dimension probe"])[0])
        return self._dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        return check_vectors(self._fn(list(texts)), len(texts), self.dimension, self.name)


def _where(scope_ids: Sequence[int], kind: str) -> dict[str, Any]:
    scope: dict[str, Any] = (
        {"scope": int(scope_ids[0])}
        if len(scope_ids) == 1
        else {"scope": {"$in": [int(s) for s in scope_ids]}}
    )
    return {"$and": [scope, {"kind": kind}]}


class ChromaIndex:
    """Embeddings in one Chroma collection, metadata ``{scope, kind}``.

    The constructor does no I/O; :meth:`open` connects.
    """

    def __init__(self, config: ChromaConfig, path: Path, attach_minilm: bool) -> None:
        self._config = config
        self._path = path
        self._attach_minilm = attach_minilm
        self._client: Any = None
        self._col: Any = None

    def open(self, dimension: int) -> None:
        settings = Settings(anonymized_telemetry=False, allow_reset=True)
        cfg = self._config
        try:
            if cfg.mode == "persistent":
                self._client = chromadb.PersistentClient(path=str(self._path), settings=settings)
            elif cfg.mode == "http":
                self._client = chromadb.HttpClient(
                    host=cfg.host,
                    port=cfg.port,
                    ssl=cfg.ssl,
                    headers=dict(cfg.headers or {}),
                    settings=settings,
                )
            else:
                self._client = chromadb.EphemeralClient(settings=settings)
            ef = HelaMemMiniLMEmbeddingFunction() if self._attach_minilm else None
            self._col = self._client.get_or_create_collection(
                cfg.collection,
                configuration={"hnsw": {"space": "cosine"}},
                embedding_function=cast(Any, ef),
                metadata={"helamem:dimension": dimension},
            )
        except (ChromaError, ValueError, OSError) as exc:
            raise StorageError(
                f"could not open the Chroma collection {cfg.collection!r} ({cfg.mode}): {exc}; "
                f"check ChromaConfig (host/port for mode='http', a writable path otherwise)"
            ) from exc

    def close(self) -> None:
        self._col = None
        self._client = None

    def _coll(self) -> Any:
        if self._col is None:
            raise StorageError("the vector index is not open")
        return self._col

    def upsert(
        self,
        ids: Sequence[str],
        vectors: npt.NDArray[np.float32],
        scope_ids: Sequence[int],
        kinds: Sequence[str],
    ) -> None:
        if not ids:
            return
        metas = [{"scope": int(s), "kind": k} for s, k in zip(scope_ids, kinds, strict=True)]
        col = self._coll()
        step = 4096
        try:
            for i in range(0, len(ids), step):
                col.upsert(
                    ids=list(ids[i : i + step]),
                    embeddings=vectors[i : i + step],
                    metadatas=metas[i : i + step],
                )
        except (ChromaError, ValueError) as exc:
            raise StorageError(f"Chroma upsert failed: {exc}") from exc

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            try:
                self._coll().delete(ids=list(ids))
            except (ChromaError, ValueError) as exc:
                raise StorageError(f"Chroma delete failed: {exc}") from exc

    def query(
        self,
        vector: npt.NDArray[np.float32],
        n: int,
        scope_ids: Sequence[int],
        kind: str,
    ) -> list[tuple[str, float]]:
        if not scope_ids or n <= 0:
            return []
        try:
            res = self._coll().query(
                query_embeddings=vector.reshape(1, -1),
                n_results=n,
                where=_where(scope_ids, kind),
                include=["distances"],
            )
        except (ChromaError, ValueError) as exc:
            raise StorageError(f"Chroma query failed: {exc}") from exc
        ids = res["ids"][0] if res["ids"] else []
        dists = res["distances"][0] if res.get("distances") else []
        return [(str(i), float(d)) for i, d in zip(ids, dists, strict=True)]

    def count(self) -> int:
        return int(self._coll().count())

    def all_ids(self) -> list[str]:
        """Every id in the collection (for integrity checks)."""
        return [str(i) for i in self._coll().get(include=[])["ids"]]

    def reset(self) -> None:
        """Drop and recreate the collection (before a full reindex)."""
        name = self._config.collection
        dim = int((self._coll().metadata or {}).get("helamem:dimension", 384))
        try:
            self._client.delete_collection(name)
        except (ChromaError, ValueError) as exc:
            raise StorageError(f"Chroma reset failed: {exc}") from exc
        self.open(dim)


def make_index(config: ChromaConfig, data_dir: Path, embedder: Embedder) -> ChromaIndex:
    """The vector index for ``config`` (Chroma files under ``data_dir/chroma``)."""
    return ChromaIndex(config, data_dir / "chroma", isinstance(embedder, MiniLMEmbedder))
