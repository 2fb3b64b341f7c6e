"""Token counting for context budgets (``search(max_tokens=)``, ``to_text(max_tokens=)``).

The default counter is OpenAI's ``cl100k_base`` byte-pair encoding, offline:
the ``bpe-openai`` package (a Rust implementation whose wheel carries the
encoding, token-for-token equal to tiktoken's) is a dependency of
helamem-core. A caller may pass any ``Callable[[str], int]`` instead (their
model's tokenizer). Nothing here downloads.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["TokenCount", "TokenCounter", "default_counter", "estimate_tokens"]

logger = logging.getLogger(__name__)

TokenCount = Callable[[str], int]
"""A function from text to its number of tokens."""


@dataclass(frozen=True, slots=True)
class TokenCounter:
    """Counts tokens of a text, exactly (a real tokenizer) or by estimate.

    Attributes:
        name: What counts, e.g. ``"cl100k_base (bpe-openai)"`` or
            ``"estimate: 4 characters per token"``.
        exact: ``True`` for a real tokenizer.
        detail: Where the tokenizer came from, or why it is unavailable.
        count: The counting function.
    """

    name: str
    exact: bool
    detail: str
    count: TokenCount


def estimate_tokens(text: str) -> int:
    """About 4 characters a token (the usual English rule of thumb).

    Examples:
        >>> estimate_tokens("twelve chars")
        3
    """
    return (len(text) + 3) // 4


@functools.cache
def default_counter() -> TokenCounter:
    """``cl100k_base`` from the ``bpe-openai`` wheel; a labelled estimate if it is missing.

    Examples:
        >>> c = default_counter()
        >>> c.count("Hello world"), c.exact
        (2, True)
    """
    try:
        import bpe_openai  # type: ignore[import-untyped]
    except ImportError as exc:  # a broken install: say so once, and still count
        logger.warning(
            "bpe-openai is not importable (%s); token budgets use an estimate of 4 "
            "characters per token: reinstall helamem-core",
            exc,
        )
        return TokenCounter(
            "estimate: 4 characters per token", False, f"bpe-openai: {exc}", estimate_tokens
        )
    with warnings.catch_warnings():  # its resource loading uses a deprecated importlib API
        warnings.simplefilter("ignore", DeprecationWarning)
        enc = bpe_openai.get_encoding("cl100k_base")

    def count(text: str) -> int:
        return len(enc.encode_ordinary(text))

    return TokenCounter("cl100k_base (bpe-openai)", True, "bpe-openai wheel", count)
