"""What a memory did for one model context, and whether the context is still the
conversation it read last time (told by the messages themselves, not by their count)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from autogen_core.models import LLMMessage

from ._convert import Turn

__all__ = ["Served"]

_NOTHING = hashlib.sha256().digest()  # what no message at all reads as


def _fingerprint(message: LLMMessage) -> bytes:
    """One message as it is (kind, source, content, every field), length-prefixed (ASCII
    JSON: a lone surrogate in a message is escaped, not refused)."""
    text = json.dumps(message.model_dump(mode="json"), ensure_ascii=True).encode()
    return len(text).to_bytes(8, "little") + text


@dataclass(slots=True)
class Served:
    """What a memory did for one model context.

    ``forgotten`` and ``recorded`` hold for the messages read last time (``seen`` of
    them, read as ``prefix``): a history that no longer begins with exactly those
    messages was cleared or replaced (``agent.on_reset()`` and a new conversation, of
    any length, before the next read), so none of its messages was said before a
    ``clear()`` and none of its turns was recorded yet.
    """

    query: str = ""  # the query of the memories last injected
    ids: tuple[str, ...] = ()  # their ids
    recorded: Turn | None = None  # the last turn recorded from it
    seen: int = 0  # conversation messages read last time
    prefix: bytes = field(default=_NOTHING)  # their fingerprint
    forgotten: int = 0  # conversation messages said before clear(): no turn takes them

    def restart(self) -> None:
        """The context holds another conversation now (cleared, or a state loaded)."""
        self.recorded, self.seen, self.prefix, self.forgotten = None, 0, _NOTHING, 0

    def follow(self, spoken: Sequence[LLMMessage]) -> int | None:
        """Read the whole history's conversation messages (memory messages left out);
        restart first unless it begins with the messages read last time.

        Returns:
            How many of them were read last time when this reading continues that
            one (``None``: a first reading, or a restarted one): a turn whose reply
            comes at or after that position was completed live, between the two.
        """
        digest = hashlib.sha256()
        before = _NOTHING if self.seen == 0 else None
        for i, message in enumerate(spoken):
            digest.update(_fingerprint(message))
            if i + 1 == self.seen:
                before = digest.digest()
        continued = self.seen if before == self.prefix and self.seen > 0 else None
        if before != self.prefix:
            self.restart()
        self.seen, self.prefix = len(spoken), digest.digest()
        return continued
