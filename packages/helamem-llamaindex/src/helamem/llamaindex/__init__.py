"""HeLa-Mem for LlamaIndex: a memory block and a ``ChatMemoryBuffer`` drop-in.

* :class:`HelaMemMemoryBlock`: a ``BaseMemoryBlock`` for
  ``Memory.from_defaults(memory_blocks=[...])``; turns flushed from the
  short-term queue are recorded, recent messages query the long-term memory.
* :class:`HelaMemChatMemory`: a ``BaseMemory`` for chat engines and agents
  (``SimpleChatEngine``, ``FunctionAgent.run(memory=...)``); it keeps the
  recent window, records every completed turn and injects one system message
  built from retrieval.

Examples:
    >>> from helamem.llamaindex import HelaMemChatMemory, HelaMemMemoryBlock
    >>> memory = HelaMemChatMemory.from_defaults(path="./helamem-data", session_id="s1")
    >>> block = HelaMemMemoryBlock.from_path("./helamem-data", scope=("users", "alice"))
"""

from ._shared import register_memory
from .block import HelaMemMemoryBlock
from .chat_memory import HelaMemChatMemory

__all__ = ["HelaMemChatMemory", "HelaMemMemoryBlock", "register_memory"]
