"""HeLa-Mem core: Hebbian associative memory for LLM agents.

Examples:
    >>> from helamem.core import HelaMemory
    >>> mem = HelaMemory.from_path("./helamem-data")  # opens on first use
"""

from ._check import CheckReport, Defect, check_store
from ._inputs import MAX_CONTENT_CHARS, query_tail
from ._maintenance import ConsolidationReport, ForgetReport
from ._portable import ExportFormatError, ExportReport, ImportConflictError, ImportReport
from .config import (
    ChromaConfig,
    ConsolidationConfig,
    DynamicsConfig,
    EmbedderConfig,
    HelaMemConfig,
    LLMConfig,
    PostgresConfig,
    RetrievalConfig,
)
from .context import UsedMemories, collect_used, note_used
from .distill import ExtractiveDistiller, FactDraft, LLMDistiller
from .embeddings import Embedder, HashingEmbedder, MiniLMEmbedder
from .engine import HelaMemory, Stats
from .errors import (
    CommitUnknownError,
    ConfigError,
    CorruptStoreError,
    DiskFullError,
    EmbeddingError,
    ForkedStoreError,
    HelaMemError,
    IndexLockedError,
    InvalidInputError,
    InvalidScopeError,
    LLMError,
    LLMResponseError,
    LLMUnavailableError,
    MemoryNotFoundError,
    StorageError,
    StoreClosedError,
    UnknownScopeError,
)
from .hooks import (
    RecorderClosedError,
    RecorderFullError,
    TurnContext,
    TurnFailure,
    TurnRecorder,
    TurnRecordingError,
)
from .llm import LLMClient, LLMUsage
from .text import is_blank
from .types import Hit, Kind, Memory, NewMemory, NewTurn, Provenance, Scope, SearchResult

__all__ = [
    "CheckReport",
    "ChromaConfig",
    "PostgresConfig",
    "ConsolidationConfig",
    "ConsolidationReport",
    "ExportFormatError",
    "ExportReport",
    "ExtractiveDistiller",
    "FactDraft",
    "ForgetReport",
    "LLMClient",
    "LLMConfig",
    "LLMDistiller",
    "LLMError",
    "LLMResponseError",
    "LLMUnavailableError",
    "LLMUsage",
    "MAX_CONTENT_CHARS",
    "ConfigError",
    "CorruptStoreError",
    "Defect",
    "DiskFullError",
    "DynamicsConfig",
    "Embedder",
    "EmbedderConfig",
    "EmbeddingError",
    "ForkedStoreError",
    "HashingEmbedder",
    "HelaMemConfig",
    "HelaMemError",
    "IndexLockedError",
    "HelaMemory",
    "Hit",
    "ImportConflictError",
    "ImportReport",
    "InvalidInputError",
    "InvalidScopeError",
    "Kind",
    "Memory",
    "MemoryNotFoundError",
    "UnknownScopeError",
    "MiniLMEmbedder",
    "NewMemory",
    "NewTurn",
    "Provenance",
    "RecorderClosedError",
    "RecorderFullError",
    "RetrievalConfig",
    "Scope",
    "SearchResult",
    "Stats",
    "StorageError",
    "CommitUnknownError",
    "check_store",
    "StoreClosedError",
    "TurnContext",
    "TurnFailure",
    "TurnRecorder",
    "TurnRecordingError",
    "UsedMemories",
    "collect_used",
    "is_blank",
    "query_tail",
    "note_used",
]

__version__ = "0.1.0"
