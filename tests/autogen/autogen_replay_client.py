"""A tiny replay model client (the interface of autogen-ext's ``ReplayChatCompletionClient``).

autogen-ext is not a dependency; this fake answers with canned replies in
order, keeps the prompts it was sent, and is a loadable component.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Literal, Self

from autogen_core import CancellationToken, Component
from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    LLMMessage,
    ModelCapabilities,
    ModelFamily,
    ModelInfo,
    RequestUsage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel


class ReplayConfig(BaseModel):
    chat_completions: list[str]


class ReplayChatCompletionClient(ChatCompletionClient, Component[ReplayConfig]):
    component_type = "model"
    component_provider_override = "autogen_replay_client.ReplayChatCompletionClient"
    component_config_schema = ReplayConfig

    def __init__(self, chat_completions: Sequence[str]) -> None:
        self.chat_completions = list(chat_completions)
        self.calls: list[list[LLMMessage]] = []

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = (),
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] | None = None,
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        if len(self.calls) >= len(self.chat_completions):
            raise ValueError("No more mock responses available")
        reply = self.chat_completions[len(self.calls)]
        self.calls.append(list(messages))
        return CreateResult(
            finish_reason="stop", content=reply, usage=RequestUsage(0, 0), cached=False
        )

    async def create_stream(
        self, messages: Sequence[LLMMessage], **kwargs: Any
    ) -> AsyncGenerator[str | CreateResult, None]:
        yield await self.create(messages)

    async def close(self) -> None:
        return None

    def actual_usage(self) -> RequestUsage:
        return RequestUsage(0, 0)

    def total_usage(self) -> RequestUsage:
        return RequestUsage(0, 0)

    def count_tokens(self, messages: Sequence[LLMMessage], **kwargs: Any) -> int:
        return 0

    def remaining_tokens(self, messages: Sequence[LLMMessage], **kwargs: Any) -> int:
        return 100_000

    @property
    def capabilities(self) -> ModelCapabilities:
        return self.model_info

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            vision=False,
            function_calling=False,
            json_output=False,
            family=ModelFamily.UNKNOWN,
            structured_output=False,
        )

    def _to_config(self) -> ReplayConfig:
        return ReplayConfig(chat_completions=self.chat_completions)

    @classmethod
    def _from_config(cls, config: ReplayConfig) -> Self:
        return cls(config.chat_completions)
