"""autogen-ext's ``ReplayChatCompletionClient``, keeping the prompts it was sent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autogen_core.models import CreateResult, LLMMessage
from autogen_ext.models.replay import ReplayChatCompletionClient as _Replay

__all__ = ["ReplayChatCompletionClient"]


class ReplayChatCompletionClient(_Replay):
    """The real replay client; ``calls`` holds the messages of every ``create``."""

    component_provider_override = "autogen_replay_client.ReplayChatCompletionClient"

    def __init__(self, chat_completions: Sequence[str], **kwargs: Any) -> None:
        super().__init__(list(chat_completions), **kwargs)
        self.calls: list[list[LLMMessage]] = []

    async def create(self, messages: Sequence[LLMMessage], **kwargs: Any) -> CreateResult:
        self.calls.append(list(messages))
        return await super().create(messages, **kwargs)
