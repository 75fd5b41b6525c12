"""`/any-llm` (+ `/stream`): fal's `any-llm` contract, served by one causal LM of our own.

The prompt (and the optional system prompt) become a conversation through the tokenizer's chat
template; the answer is decoded greedily (the same input gives the same output). `/stream` sends the
text as the model writes it (transformers' `TextIteratorStreamer`), then the output. Other services
(Wan's prompt safety and expansion) call it through a deployment handle.

fal's `output`, `partial` and `error` fields are kept; failures are raised as HTTP errors, never
returned in `error`, so a returned `error` is always null.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components import llm
from serve_app.endpoints import endpoint
from serve_app.errors import FieldError, RequestCancelled
from serve_app.models.source import DeviceName, DtypeName, ModelSource, resolve_device, resolve_dtype
from serve_app.service import RunContext, Service

logger = logging.getLogger("ray.serve")

MAX_TOKENS_BOUND = 8192


class AnyLLMConfig(BaseModel):
    """Configuration of the any-llm service."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSource = Field(default=ModelSource(id=llm.QWEN25_3B_INSTRUCT_ID),
                               description="Causal LM with a chat template: hub id, local dir, or a preset.")
    served_model_name: str | None = Field(default=None, description="The `model` value requests may name "
                                          "(default: the hub id, or `preset:<name>`).")
    device: DeviceName = Field(default="auto", description="cuda, cpu, or auto.")
    dtype: DtypeName = Field(default="auto", description="Weights dtype; auto = bfloat16 on CUDA, float32 on CPU.")
    default_max_tokens: int = Field(default=512, ge=1, le=MAX_TOKENS_BOUND,
                                    description="New tokens when a request gives no `max_tokens`.")
    max_tokens_limit: int = Field(default=2048, ge=1, le=MAX_TOKENS_BOUND,
                                  description="Largest `max_tokens` a request may ask for.")
    max_input_tokens: int = Field(default=8192, ge=1, description="Longest templated prompt accepted.")
    stream_timeout_s: float = Field(default=300, gt=0, description="Longest wait for the next streamed text.")
    warmup: bool = Field(default=True, description="Generate a few tokens before taking traffic.")

    @model_validator(mode="after")
    def _limits(self) -> AnyLLMConfig:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(f"default_max_tokens ({self.default_max_tokens}) exceeds max_tokens_limit "
                             f"({self.max_tokens_limit})")
        return self

    @property
    def name(self) -> str:
        return self.served_model_name or self.model.describe()


class AnyLLMInput(BaseModel):
    """Input of `POST /any-llm` (fal's any-llm fields)."""

    prompt: str = Field(description="Prompt to be used for the chat completion.",
                        examples=["What is the meaning of life?"])
    system_prompt: str | None = Field(default=None, description="System prompt to provide context or instructions "
                                      "to the model.")
    model: str | None = Field(default=None, description="Name of the model to use; it must be the served model "
                              "(omit for it).")
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_BOUND,
                                   description="Most tokens to generate (default: the service's).")


class AnyLLMOutput(BaseModel):
    """fal's any-llm output."""

    output: str = Field(description="Generated output.")
    partial: bool = Field(default=False, description="Whether the output is partial (stream frames only).")
    error: str | None = Field(default=None, description="Always null: errors are HTTP errors.")


class TokenChunk(AnyLLMOutput):
    """A stream frame (`type: token`): the new text and the output so far."""

    token: str = Field(description="The text added since the previous frame.")
    partial: bool = Field(default=True, description="True: more may follow.")


class _StopWhenCancelled:
    """A `StoppingCriteria` that ends generation once the caller has gone."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.ctx.cancelled, dtype=torch.bool, device=input_ids.device)


class AnyLLMService(Service):
    """Loads the model and its tokenizer once, warms up, then answers prompts one at a time."""

    def __init__(self, config: AnyLLMConfig) -> None:
        import torch

        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.tokenizer, self.model = llm.causal_lm(config.model, self.device, self.dtype)
        self._torch = torch
        logger.info("any-llm serving %s (%s) on %s/%s", config.name, config.model.describe(), self.device, self.dtype)
        if config.warmup:
            self.generate(AnyLLMInput(prompt="Hello", max_tokens=4), RunContext("warmup"))

    def _prepare(self, request: AnyLLMInput) -> tuple[dict[str, Any], int]:
        if request.model is not None and request.model != self.config.name:
            raise FieldError("model", f"unknown model {request.model!r}; this service serves {self.config.name!r}")
        max_tokens = request.max_tokens or self.config.default_max_tokens
        if max_tokens > self.config.max_tokens_limit:
            raise FieldError("max_tokens", f"must be at most {self.config.max_tokens_limit}")
        inputs = llm.chat_inputs(self.tokenizer, request.prompt, request.system_prompt, self.device)
        if inputs["input_ids"].shape[1] > self.config.max_input_tokens:
            raise FieldError("prompt", f"the prompt is longer than {self.config.max_input_tokens} tokens")
        return inputs, max_tokens

    @endpoint("", input=AnyLLMInput, output=AnyLLMOutput)
    def generate(self, request: AnyLLMInput, ctx: RunContext) -> AnyLLMOutput:
        """Answer a prompt with the served model (greedy decoding)."""
        inputs, max_tokens = self._prepare(request)
        options = {**inputs, "max_new_tokens": max_tokens, "do_sample": False,
                   "stopping_criteria": [_StopWhenCancelled(ctx)]}
        text = self._stream(options, ctx) if ctx.streaming else self._complete(options)
        if ctx.cancelled:
            raise RequestCancelled()
        return AnyLLMOutput(output=text)

    def _complete(self, options: dict[str, Any]) -> str:
        with self._torch.inference_mode():
            ids = self.model.generate(**options)
        return str(self.tokenizer.decode(ids[0, options["input_ids"].shape[1]:], skip_special_tokens=True))

    def _stream(self, options: dict[str, Any], ctx: RunContext) -> str:
        """Generate in a helper thread and send each piece of text as it is decoded."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                        timeout=self.config.stream_timeout_s)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with self._torch.inference_mode():
                    self.model.generate(**options, streamer=streamer)
            except BaseException as e:  # surfaced in the endpoint's thread below
                failure.append(e)
                streamer.end()

        thread = threading.Thread(target=run, name="any-llm-generate", daemon=True)
        thread.start()
        text = ""
        for piece in streamer:
            if piece:
                text += piece
                ctx.partial(TokenChunk(token=piece, output=text), kind="token")
        thread.join()
        if failure:
            raise failure[0]
        return text

    def check_health(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize()


def build(name: str, args: Any) -> Any:
    """Builder: validate the config and bind the deployment."""
    from serve_app.app import bind_service

    return bind_service(AnyLLMService, AnyLLMConfig.model_validate(args.config), name, args)
