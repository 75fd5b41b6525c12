"""Prompt safety and prompt expansion through the `any-llm` service, with fal's Wan demo rules.

- Safety fails closed: the prompt is unsafe when the LLM's answer contains "yes", and also when the
  call fails or takes longer than its timeout.
- Expansion fails open: any error, an empty answer or the timeout (10 s, as in the demo) keeps the
  original prompt.
The system prompts are the demo's. The LLM is reached through a Serve deployment handle; tests pass
any `Ask` function instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from serve_app.context import RequestInfo, cancel_call

logger = logging.getLogger("ray.serve")

SAFETY_SYSTEM_PROMPT = (
    'With just a single word of "yes" or "no" tell me the given user prompt contains any not safe for work '
    "material. Don't say anything other than yes or no. If the prompt contains unsafe material, say yes, "
    "otherwise say no."
)
EXPANSION_SYSTEM_PROMPT = (
    "Take the user's input prompt and enhance it by focusing on a single, central subject to create a coherent "
    "and impactful result. Structure the description from coarse to fine details, starting with broad elements "
    "and zooming into specific textures, colors, and finer characteristics. If relevant, include close-up and "
    "medium shots to describe both intimate details and the surrounding context, ensuring clarity in depth and "
    'framing. Append "high resolution 4k" at the end to reduce warping and ensure the highest level of detail. '
    "Specify vivid colors, rich textures, and appropriate moods to enhance the overall visual quality and cohesion "
    "of the output. Maximum output 200 tokens."
)
NSFW_MESSAGE = "NSFW content detected in the prompt."

# ask(prompt, system_prompt, max_tokens) -> the LLM's output text
Ask = Callable[[str, str, int], Awaitable[str]]


class LLMSettings(BaseModel):
    """Where the LLM is and how long Wan waits for it."""

    model_config = ConfigDict(extra="forbid")

    service: str = Field(default="any-llm", description="Deployment name of the any-llm service.")
    app: str | None = Field(default=None, description="Serve application holding it (default: Wan's own).")
    model: str | None = Field(default=None, description="`model` sent with each call (default: the model the "
                              "service serves).")
    safety_timeout_s: float = Field(default=30, gt=0, description="Longest safety check; slower counts as unsafe.")
    expansion_timeout_s: float = Field(default=10, gt=0, description="Longest expansion; slower keeps the prompt.")
    safety_max_tokens: int = Field(default=8, ge=1, description="Tokens the yes/no answer may use.")
    expansion_max_tokens: int = Field(default=256, ge=1, description="Tokens the expanded prompt may use.")


async def is_unsafe(ask: Ask, prompt: str, settings: LLMSettings) -> bool:
    """True when the LLM says the prompt is NSFW, or when asking it fails or times out."""
    try:
        async with asyncio.timeout(settings.safety_timeout_s):
            answer = await ask(prompt, SAFETY_SYSTEM_PROMPT, settings.safety_max_tokens)
    except Exception as e:  # fail closed (CancelledError is not an Exception: it propagates)
        logger.warning("prompt safety check failed, treating the prompt as unsafe: %s: %s", type(e).__name__, e)
        return True
    return "yes" in answer.lower()


async def expand(ask: Ask, prompt: str, settings: LLMSettings) -> str:
    """The LLM's expansion of `prompt`; the prompt itself on an error, an empty answer or a timeout."""
    try:
        async with asyncio.timeout(settings.expansion_timeout_s):
            answer = await ask(prompt, EXPANSION_SYSTEM_PROMPT, settings.expansion_max_tokens)
    except Exception as e:  # fail open
        logger.warning("prompt expansion failed, keeping the prompt: %s: %s", type(e).__name__, e)
        return prompt
    return answer.strip() or prompt


class AnyLLMClient:
    """An `Ask` that calls the any-llm deployment's endpoint through a Serve handle."""

    def __init__(self, settings: LLMSettings, endpoint_method: str = "generate") -> None:
        self.settings = settings
        self.method = endpoint_method
        self._handle: Any = None

    async def _get_handle(self) -> Any:
        if self._handle is None:
            from ray import serve

            app = self.settings.app or serve.get_replica_context().app_name
            # The existence check asks the controller: off the event loop.
            self._handle = await asyncio.to_thread(serve.get_deployment_handle, self.settings.service, app_name=app)
        return self._handle

    async def __call__(self, prompt: str, system_prompt: str, max_tokens: int) -> str:
        handle = await self._get_handle()
        payload = {"prompt": prompt, "system_prompt": system_prompt, "model": self.settings.model,
                   "max_tokens": max_tokens}
        info = RequestInfo("", f"/{self.settings.service}")
        response = handle.call_endpoint.remote(self.method, payload, info)
        try:
            output = await response
        except asyncio.CancelledError:
            cancel_call(response, info)  # a timeout or a gone caller: stop the generation too
            raise
        return str(output.output)
