"""HeLa-Mem for AutoGen AgentChat: a ``Memory`` component.

Examples:
    >>> from helamem.autogen import HelaMemMemory, HelaMemMemoryConfig
    >>> memory = HelaMemMemory(HelaMemMemoryConfig(scope=("users", "alice"), path="./data"))
    >>> memory.dump_component().provider
    'helamem.autogen.HelaMemMemory'
"""

from .config import HelaMemMemoryConfig
from .memory import HelaMemMemory

__all__ = ["HelaMemMemory", "HelaMemMemoryConfig"]
