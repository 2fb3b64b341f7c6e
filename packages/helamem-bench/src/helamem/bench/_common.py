"""Helpers shared by the benchmarks: a caching embedder, token counting, progress."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from pydantic import BaseModel, ValidationError

from helamem.core.config import DynamicsConfig, RetrievalConfig
from helamem.core.embeddings import Embedder, Vectors, token_embedder
from helamem.core.tokens import TokenCounter

__all__ = ["CachingEmbedder", "Progress", "TokenCounter", "token_counter", "versions"]


def config_overrides(overrides: Mapping[str, Any]) -> tuple[RetrievalConfig, DynamicsConfig]:
    """The configs that ``--set KEY=VALUE`` overrides give (``dynamics.KEY``: DynamicsConfig).

    Raises:
        ValueError: one clause per invalid override, naming the known keys for an unknown one.
    """
    dyn = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("dynamics.")}
    ret = {k: v for k, v in overrides.items() if not k.startswith("dynamics.")}
    problems: list[str] = []

    def build(model: type[BaseModel], values: dict[str, Any], prefix: str) -> Any:
        try:
            return model(**values)
        except ValidationError as exc:
            for e in exc.errors():
                key = prefix + ".".join(str(x) for x in e["loc"])
                if e["type"] == "extra_forbidden":
                    known = ", ".join(prefix + f for f in model.model_fields)
                    problems.append(f"unknown setting {key!r} (known: {known})")
                else:
                    problems.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
            return None

    retrieval, dynamics = build(RetrievalConfig, ret, ""), build(DynamicsConfig, dyn, "dynamics.")
    if problems:
        raise ValueError("invalid --set override: " + "; ".join(problems))
    return retrieval, dynamics


class CachingEmbedder:
    """Wraps an embedder and remembers every vector it computed, by text.

    Several stores (one per benchmarked method) share one instance, so each
    text is embedded once and every method sees the very same vectors.

    Args:
        inner: The embedder that computes vectors the cache does not hold.

    Examples:
        >>> from helamem.core import HashingEmbedder
        >>> e = CachingEmbedder(HashingEmbedder(64))
        >>> _ = e.embed(["tea with alice", "tea with alice"])
        >>> e.computed
        1
    """

    def __init__(self, inner: Embedder) -> None:
        self._inner = inner
        self._cache: dict[str, Vectors] = {}
        self._tokens: dict[str, Vectors] = {}
        self._lock = threading.Lock()
        self.computed = 0
        """Texts the inner embedder was asked to embed so far."""
        self.seconds = 0.0
        """Time spent in the inner embedder so far."""

    @property
    def name(self) -> str:
        """The inner embedder's name (vectors are the same)."""
        return self._inner.name

    @property
    def dimension(self) -> int:
        """The inner embedder's dimension."""
        return self._inner.dimension

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Vectors of ``texts``, computing only those not seen before.

        Args:
            texts: Texts to embed.

        Returns:
            One L2-normalised float32 row per text.
        """
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                start = time.perf_counter()
                vectors = self._inner.embed(missing)
                self.seconds += time.perf_counter() - start
                self.computed += len(missing)
                for text, vec in zip(missing, vectors, strict=True):
                    self._cache[text] = np.array(vec, dtype=np.float32)
            if not texts:
                return np.zeros((0, self.dimension), dtype=np.float32)
            return np.stack([self._cache[t] for t in texts]).astype(np.float32)

    @property
    def gives_tokens(self) -> bool:
        """Whether the inner embedder gives token vectors (late interaction)."""
        return token_embedder(self._inner) is not None

    def embed_with_tokens(self, texts: Sequence[str]) -> tuple[Vectors, list[Vectors]]:
        """Pooled and token vectors of ``texts``, computing only those not seen before.

        Raises:
            TypeError: the inner embedder gives no token vectors.
        """
        inner = token_embedder(self._inner)
        if inner is None:
            raise TypeError(f"{self._inner.name} gives no token vectors")
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._tokens))
            if missing:
                start = time.perf_counter()
                vectors, toks = inner.embed_with_tokens(missing)
                self.seconds += time.perf_counter() - start
                self.computed += len(missing)
                for text, vec, tok in zip(missing, vectors, toks, strict=True):
                    self._cache[text] = np.array(vec, dtype=np.float32)
                    self._tokens[text] = tok
        return self.embed(texts), [self._tokens[t] for t in texts]


# cl100k_base as tiktoken defines it (tiktoken_ext.openai_public), rebuilt here
# from a local copy of its BPE file so that nothing is downloaded.
_CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
_CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_CL100K_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}
# where a copy of the BPE file usually lies: tiktoken's own cache, and the
# copies that llama-index and litellm ship for offline use
_CL100K_PACKAGED = (
    "llama_index/core/_static/tiktoken_cache",
    "litellm/litellm_core_utils/tokenizers",
)


def _estimate(text: str) -> int:
    return (len(text) + 3) // 4


def _cl100k_candidates(extra: Path | None) -> list[Path]:
    key = hashlib.sha1(_CL100K_URL.encode()).hexdigest()
    out: list[Path] = []
    if extra is not None:
        out.append(extra / key if extra.is_dir() else extra)
    out.append(Path(tempfile.gettempdir()) / "data-gym-cache" / key)
    for entry in sys.path:
        if entry:
            out.extend(Path(entry) / sub / key for sub in _CL100K_PACKAGED)
    return out


def token_counter(bpe_file: Path | None = None) -> TokenCounter:
    """tiktoken's cl100k_base when it can be had offline, else a labelled estimate.

    Nothing is downloaded: the BPE file is looked for at ``bpe_file`` (a file
    or a tiktoken cache directory), in tiktoken's default cache, and in the
    offline copies that llama-index and litellm ship; its SHA-256 is checked.

    Args:
        bpe_file: A ``cl100k_base.tiktoken`` file, or a directory holding
            tiktoken's cache entry for it.

    Returns:
        The counter; ``exact`` says which one it is.
    """
    try:
        import tiktoken
    except ImportError:
        return TokenCounter(
            "estimate: 4 characters per token", False, "tiktoken is not installed", _estimate
        )
    for path in _cl100k_candidates(bpe_file):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() != _CL100K_SHA256:
            continue
        ranks = {
            base64.b64decode(tok): int(rank)
            for tok, rank in (line.split() for line in data.splitlines() if line)
        }
        enc = tiktoken.Encoding(
            name="cl100k_base",
            pat_str=_CL100K_PATTERN,
            mergeable_ranks=ranks,
            special_tokens=_CL100K_SPECIAL,
        )

        def count(text: str, enc: tiktoken.Encoding = enc) -> int:
            return len(enc.encode_ordinary(text))

        return TokenCounter("tiktoken cl100k_base", True, f"BPE file {path}", count)
    return TokenCounter(
        "estimate: 4 characters per token",
        False,
        "tiktoken is installed but no local cl100k_base BPE file was found (nothing is downloaded)",
        _estimate,
    )


class Progress:
    """A minimal progress indicator on a text stream (stderr by default).

    On a terminal the line is redrawn in place; otherwise a line is written
    at every 10 %.

    Args:
        label: What is being counted.
        total: Number of steps.
        stream: Where to write; ``None`` disables output.
    """

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = max(total, 0)
        self.done = 0
        self._stream = stream
        self._tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self._start = time.perf_counter()
        self._last_decile = -1

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` steps.

        Args:
            n: Steps done since the last call.
        """
        self.done += n
        if self._stream is None:
            return
        frac = self.done / self.total if self.total else 1.0
        if self._tty:
            self._write("\r" + self._line(frac))
        else:
            decile = int(frac * 10)
            if decile != self._last_decile:
                self._last_decile = decile
                self._write(self._line(frac) + "\n")

    def close(self) -> None:
        """Finish the line (on a terminal)."""
        if self._stream is not None and self._tty:
            self._write("\r" + self._line(1.0 if not self.total else self.done / self.total) + "\n")

    def _line(self, frac: float) -> str:
        width = 24
        filled = round(width * min(frac, 1.0))
        bar = "#" * filled + "-" * (width - filled)
        elapsed = time.perf_counter() - self._start
        return f"{self.label:<28} [{bar}] {self.done}/{self.total} {elapsed:6.1f}s"

    def _write(self, text: str) -> None:
        assert self._stream is not None
        self._stream.write(text)
        self._stream.flush()


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the packages a benchmark depends on."""
    from helamem.core import __version__

    out = {
        "helamem-core": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for dist in ("numpy", "chromadb", "onnxruntime", "tokenizers", "tiktoken"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out
