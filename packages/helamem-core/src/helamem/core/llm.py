"""Everything that talks to LiteLLM (the only module that imports it).

LiteLLM is imported lazily, on first use, after setting
``LITELLM_LOCAL_MODEL_COST_MAP=True`` so the import never reaches the network.

The retry/fallback/repair logic of :class:`LLMClient` is written once, as a
generator that yields the I/O it needs (a completion call or a sleep); a
sync and an async driver execute it (the sans-I/O pattern of h11/httpcore).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .config import LLMConfig
from .errors import ConfigError, EmbeddingError, LLMResponseError, LLMUnavailableError
from .prompts import REPAIR_JSON, Prompt
from .vectors import Vectors, check_vectors

__all__ = ["LLMClient", "LLMUsage", "LiteLLMEmbedder", "import_litellm", "parse_json"]

logger = logging.getLogger(__name__)

S = TypeVar("S", bound=BaseModel)


def import_litellm() -> ModuleType:
    """Import litellm offline-safe (local model cost map)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError as exc:
        raise ConfigError(
            "LiteLLM is not installed; install it with: pip install 'helamem-core[litellm]'"
        ) from exc
    mod: ModuleType = litellm
    return mod


def _api_errors() -> tuple[type[BaseException], ...]:
    """What a failed call raises: every LiteLLM API error (they subclass openai's), and
    the transport's own errors a provider's client or a custom ``completion`` may let
    through (httpx's, a timeout, a refused or reset connection)."""
    import httpx
    import openai

    return (openai.OpenAIError, httpx.HTTPError, TimeoutError, ConnectionError)


def _retryable(exc: BaseException) -> bool:
    """Rate limits, timeouts, connection errors and 5xx are worth retrying."""
    import httpx
    import openai

    if isinstance(exc, openai.RateLimitError | openai.APIConnectionError):
        return True
    if isinstance(exc, httpx.TransportError | TimeoutError | ConnectionError):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status == 429 or status >= 500)


def parse_json(text: str, schema: type[S]) -> S:
    """Parse the first JSON object in ``text`` (code fences tolerated) into ``schema``.

    Raises:
        ValueError: If there is no valid JSON object for the schema.

    Examples:
        >>> from helamem.core.prompts import FactsResponse
        >>> parse_json('```json\\n{"facts": []}\\n```', FactsResponse).facts
        []
    """
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object in the answer")
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from exc
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"JSON does not match the schema: {exc}") from exc


@dataclass
class LLMUsage:
    """Token and cost accounting, per client (in process)."""

    calls: int = 0
    failed_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    by_model: dict[str, dict[str, float]] = field(default_factory=dict)

    def snapshot(self) -> LLMUsage:
        return LLMUsage(
            self.calls,
            self.failed_calls,
            self.prompt_tokens,
            self.completion_tokens,
            self.cost_usd,
            {m: dict(v) for m, v in self.by_model.items()},
        )


@dataclass(frozen=True)
class _Call:
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class _Sleep:
    seconds: float


_Step = _Call | _Sleep


class LLMClient:
    """LiteLLM chat completions with retries, fallbacks, JSON validation and accounting.

    Args:
        config: Model, fallbacks, timeouts, retries.
        completion: Replaces ``litellm.completion`` (tests pass a wrapper that
            adds ``mock_response``).
        acompletion: Replaces ``litellm.acompletion``.
        sleep: Replaces ``time.sleep`` for backoff (tests pass a no-op).
        **litellm_kwargs: Extra arguments for every call.

    Examples:
        >>> client = LLMClient(LLMConfig(model="gpt-4o-mini"))  # no I/O, no import yet
    """

    def __init__(
        self,
        config: LLMConfig,
        *,
        completion: Callable[..., Any] | None = None,
        acompletion: Callable[..., Any] | None = None,
        sleep: Callable[[float], None] | None = None,
        **litellm_kwargs: Any,
    ) -> None:
        if not config.model:
            raise ConfigError("LLMConfig.model is not set; give a LiteLLM model string")
        self.config = config
        self._completion = completion
        self._acompletion = acompletion
        self._sleep = sleep or time.sleep
        self._extra = litellm_kwargs
        self._usage = LLMUsage()
        self._lock = threading.Lock()

    @property
    def usage(self) -> LLMUsage:
        with self._lock:
            return self._usage.snapshot()

    # -- the protocol, written once -------------------------------------

    def _kwargs(
        self, model: str, messages: list[dict[str, str]], schema: type[BaseModel]
    ) -> dict[str, Any]:
        cfg = self.config
        kw: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "timeout": cfg.timeout_s,
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
            "num_retries": 0,  # retries are ours, counted and backed off
        }
        if cfg.json_mode == "object":
            kw["response_format"] = {"type": "json_object"}
        elif cfg.json_mode == "schema":
            kw["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema()},
            }
        if cfg.api_base:
            kw["api_base"] = cfg.api_base
        if cfg.api_key is not None:
            kw["api_key"] = cfg.api_key.get_secret_value()
        kw.update(self._extra)
        return kw

    def _account(self, model: str, resp: Any) -> None:
        usage = getattr(resp, "usage", None)
        pt = int(getattr(usage, "prompt_tokens", 0) or 0)
        ct = int(getattr(usage, "completion_tokens", 0) or 0)
        litellm = import_litellm()
        info = litellm.model_cost.get(model) or litellm.model_cost.get(model.split("/", 1)[-1])
        cost = 0.0
        if isinstance(info, dict):
            cost = pt * float(info.get("input_cost_per_token") or 0.0) + ct * float(
                info.get("output_cost_per_token") or 0.0
            )
        with self._lock:
            u = self._usage
            u.calls += 1
            u.prompt_tokens += pt
            u.completion_tokens += ct
            u.cost_usd += cost
            m = u.by_model.setdefault(
                model, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
            )
            m["calls"] += 1
            m["prompt_tokens"] += pt
            m["completion_tokens"] += ct
            m["cost_usd"] += cost

    def _failed(self) -> None:
        with self._lock:
            self._usage.failed_calls += 1

    def _chat(
        self, messages: list[dict[str, str]], schema: type[BaseModel]
    ) -> Generator[_Step, Any, str]:
        """Retries with backoff per model, then the fallbacks; returns the text."""
        cfg = self.config
        assert cfg.model is not None
        errors: list[str] = []
        for model in (cfg.model, *cfg.fallbacks):
            for attempt in range(cfg.max_retries + 1):
                if attempt:
                    yield _Sleep(cfg.backoff_s * 2 ** (attempt - 1))
                try:
                    resp = yield _Call(self._kwargs(model, messages, schema))
                except _api_errors() as exc:
                    self._failed()
                    errors.append(f"{model}: {type(exc).__name__}: {exc}")
                    if _retryable(exc):
                        logger.warning("LLM call to %s failed (%s); retrying", model, exc)
                        continue
                    logger.warning("LLM call to %s failed (%s); next model", model, exc)
                    break
                self._account(model, resp)
                try:
                    content = resp.choices[0].message.content
                except (AttributeError, IndexError, TypeError):  # no choice: no answer
                    logger.warning("LLM call to %s returned no choices; treated as empty", model)
                    content = None
                return "" if content is None else str(content)
            logger.warning("giving up on model %s", model)
        raise LLMUnavailableError(
            "every model failed (" + "; ".join(errors[-4:]) + "); retry later, raise "
            "LLMConfig.max_retries/timeout_s, or add LLMConfig.fallbacks"
        )

    def _json(self, prompt: Prompt[S], variables: dict[str, str]) -> Generator[_Step, Any, S]:
        answer = yield from self._chat(prompt.messages(**variables), prompt.schema)
        try:
            return parse_json(answer, prompt.schema)
        except ValueError as first:
            salvaged = prompt.salvage(answer) if prompt.salvage is not None else None
            if salvaged is not None:
                logger.info("LLM answer for %s malformed (%s); salvaged it", prompt.name, first)
                return salvaged
            logger.info("LLM answer for %s invalid (%s); asking for a repair", prompt.name, first)
            repair = REPAIR_JSON.messages(
                error=str(first)[:500], schema=prompt.schema_hint(), answer=answer[:4000]
            )
            fixed = yield from self._chat(repair, prompt.schema)
            try:
                return parse_json(fixed, prompt.schema)
            except ValueError as second:
                raise LLMResponseError(
                    f"the model's answer to {prompt.name!r} v{prompt.version} is not valid "
                    f"JSON for its schema, even after one repair ({second}); try a stronger "
                    f"model or LLMConfig(json_mode='schema')"
                ) from second

    # -- drivers -----------------------------------------------------------

    def _run(self, gen: Generator[_Step, Any, S]) -> S:
        litellm = import_litellm()
        completion = self._completion or litellm.completion
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = gen.throw(error) if error is not None else gen.send(value)
            except StopIteration as stop:
                result: S = stop.value
                return result
            value, error = None, None
            if isinstance(step, _Sleep):
                if step.seconds:
                    self._sleep(step.seconds)
                continue
            try:
                value = completion(**step.kwargs)
            except _api_errors() as exc:
                error = exc

    async def _arun(self, gen: Generator[_Step, Any, S]) -> S:
        litellm = import_litellm()
        acompletion = self._acompletion or litellm.acompletion
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = gen.throw(error) if error is not None else gen.send(value)
            except StopIteration as stop:
                result: S = stop.value
                return result
            value, error = None, None
            if isinstance(step, _Sleep):
                if step.seconds:
                    await asyncio.sleep(step.seconds)
                continue
            try:
                value = await acompletion(**step.kwargs)
            except _api_errors() as exc:
                error = exc

    def complete_json(self, prompt: Prompt[S], **variables: str) -> S:
        """Ask ``prompt`` and return its validated answer.

        Raises:
            LLMUnavailableError: Every model failed after retries.
            LLMResponseError: The answer stayed invalid after one repair.
        """
        return self._run(self._json(prompt, variables))

    async def acomplete_json(self, prompt: Prompt[S], **variables: str) -> S:
        """Async :meth:`complete_json`."""
        return await self._arun(self._json(prompt, variables))


class LiteLLMEmbedder:
    """Any LiteLLM embedding model (``text-embedding-3-small``, ``ollama/...``).

    Args:
        model: LiteLLM model string.
        dimension: Expected vector size (checked on every call).
        api_base: Passed through to LiteLLM.
        **kwargs: Further ``litellm.embedding`` arguments (``api_key``,
            ``timeout``...).
    """

    def __init__(
        self, model: str, dimension: int, api_base: str | None = None, **kwargs: Any
    ) -> None:
        self._model = model
        self._dim = dimension
        self._kwargs = dict(kwargs)
        if api_base:
            self._kwargs["api_base"] = api_base

    @property
    def name(self) -> str:
        return f"litellm:{self._model}"

    @property
    def dimension(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        litellm = import_litellm()
        try:
            resp = litellm.embedding(model=self._model, input=list(texts), **self._kwargs)
        except _api_errors() as exc:
            raise EmbeddingError(f"LiteLLM embedding with {self._model!r} failed: {exc}") from exc
        rows = sorted(resp.data, key=lambda d: d["index"])
        return check_vectors([r["embedding"] for r in rows], len(texts), self._dim, self.name)
