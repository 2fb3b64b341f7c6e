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
from chromadb.errors import ChromaError, NotFoundError
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


class ChromaIndex:
    """Embeddings in Chroma: one collection per (scope node, kind).

    Per-scope collections keep every query an unfiltered HNSW search (Chroma's
    metadata-filtered queries scan, and were measured 10-20x slower); a
    prefix search queries the collections of the scopes under the prefix and
    merges by distance. The constructor does no I/O; :meth:`open` connects.
    """

    def __init__(self, config: ChromaConfig, path: Path, attach_minilm: bool) -> None:
        self._config = config
        self._path = path
        self._attach_minilm = attach_minilm
        self._client: Any = None
        self._dimension = 0
        self._cols: dict[str, Any] = {}

    def _name(self, scope_id: int, kind: str) -> str:
        return f"{self._config.collection}-s{int(scope_id)}-{kind[0]}"

    def open(self, dimension: int) -> None:
        settings = Settings(anonymized_telemetry=False, allow_reset=True)
        cfg = self._config
        self._dimension = dimension
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
            self._client.heartbeat()
        except (ChromaError, ValueError, OSError) as exc:
            raise StorageError(
                f"could not connect to Chroma ({cfg.mode}): {exc}; check ChromaConfig "
                f"(host/port for mode='http', a writable path otherwise)"
            ) from exc

    def close(self) -> None:
        self._cols.clear()
        self._client = None

    def _client_or_fail(self) -> Any:
        if self._client is None:
            raise StorageError("the vector index is not open")
        return self._client

    def _collection(self, scope_id: int, kind: str, create: bool) -> Any:
        name = self._name(scope_id, kind)
        col = self._cols.get(name)
        if col is not None:
            return col
        client = self._client_or_fail()
        try:
            if create:
                ef = HelaMemMiniLMEmbeddingFunction() if self._attach_minilm else None
                col = client.get_or_create_collection(
                    name,
                    configuration={"hnsw": {"space": "cosine"}},
                    embedding_function=cast(Any, ef),
                    metadata={"helamem:dimension": self._dimension},
                )
            else:
                col = client.get_collection(name, embedding_function=None)
        except NotFoundError:
            return None
        except (ChromaError, ValueError) as exc:
            if not create and "does not exist" in str(exc):
                return None
            raise StorageError(f"could not open Chroma collection {name!r}: {exc}") from exc
        self._cols[name] = col
        return col

    def upsert(
        self,
        ids: Sequence[str],
        vectors: npt.NDArray[np.float32],
        scope_ids: Sequence[int],
        kinds: Sequence[str],
    ) -> None:
        groups: dict[tuple[int, str], list[int]] = {}
        for i, key in enumerate(zip(scope_ids, kinds, strict=True)):
            groups.setdefault(key, []).append(i)
        try:
            for (scope_id, kind), rows in groups.items():
                col = self._collection(scope_id, kind, create=True)
                for start in range(0, len(rows), 4096):
                    part = rows[start : start + 4096]
                    col.upsert(ids=[ids[i] for i in part], embeddings=vectors[part])
        except (ChromaError, ValueError) as exc:
            raise StorageError(f"Chroma upsert failed: {exc}") from exc

    def delete(self, items: Sequence[tuple[str, int, str]]) -> None:
        groups: dict[tuple[int, str], list[str]] = {}
        for id_, scope_id, kind in items:
            groups.setdefault((scope_id, kind), []).append(id_)
        try:
            for (scope_id, kind), ids in groups.items():
                col = self._collection(scope_id, kind, create=False)
                if col is not None:
                    col.delete(ids=ids)
        except (ChromaError, ValueError) as exc:
            raise StorageError(f"Chroma delete failed: {exc}") from exc

    def query(
        self,
        vector: npt.NDArray[np.float32],
        n: int,
        scope_ids: Sequence[int],
        kind: str,
    ) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        emb = vector.reshape(1, -1)
        try:
            for scope_id in scope_ids:
                col = self._collection(scope_id, kind, create=False)
                if col is None:
                    continue
                res = col.query(query_embeddings=emb, n_results=n, include=["distances"])
                out.extend(
                    (str(i), float(d))
                    for i, d in zip(res["ids"][0], res["distances"][0], strict=True)
                )
        except (ChromaError, ValueError) as exc:
            raise StorageError(f"Chroma query failed: {exc}") from exc
        out.sort(key=lambda p: p[1])
        return out[:n]

    def _ours(self) -> list[Any]:
        prefix = f"{self._config.collection}-s"
        client = self._client_or_fail()
        return [
            client.get_collection(c.name if hasattr(c, "name") else str(c), embedding_function=None)
            for c in client.list_collections()
            if (c.name if hasattr(c, "name") else str(c)).startswith(prefix)
        ]

    def count(self) -> int:
        return sum(int(c.count()) for c in self._ours())

    def all_ids(self) -> list[str]:
        """Every id in the index (for integrity checks)."""
        return [str(i) for c in self._ours() for i in c.get(include=[])["ids"]]

    def reset(self) -> None:
        """Drop every collection of this index (before a full reindex)."""
        client = self._client_or_fail()
        try:
            for c in self._ours():
                client.delete_collection(c.name)
        except (ChromaError, ValueError) as exc:
            raise StorageError(f"Chroma reset failed: {exc}") from exc
        self._cols.clear()


def make_index(config: ChromaConfig, data_dir: Path, embedder: Embedder) -> ChromaIndex:
    """The vector index for ``config`` (Chroma files under ``data_dir/chroma``)."""
    return ChromaIndex(config, data_dir / "chroma", isinstance(embedder, MiniLMEmbedder))
