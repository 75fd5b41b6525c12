"""The causal LM parts (components/llm.py) and the any-llm service on CPU with the tiny preset, no
Ray: the ChatML template, Qwen2.5-3B's size on the meta device, the prod loader on a saved tiny
model, fal's fields, streaming, and the errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from components import llm
from deployments.any_llm import AnyLLMConfig, AnyLLMInput, AnyLLMService, TokenChunk
from serve_app.errors import FieldError, RequestCancelled
from serve_app.events import Partial
from serve_app.models.source import ModelSource
from serve_app.service import RunContext

TINY = {"model": {"preset": "tiny"}, "device": "cpu", "warmup": False, "default_max_tokens": 32,
        "max_tokens_limit": 64, "max_input_tokens": 400}


@pytest.fixture(scope="module")
def service() -> AnyLLMService:
    return AnyLLMService(AnyLLMConfig.model_validate(TINY))


def test_chatml_template_with_and_without_a_system_prompt() -> None:
    tokenizer = llm.byte_tokenizer()
    with_system = tokenizer.decode(llm.chat_inputs(tokenizer, "hi", "Be brief.", "cpu")["input_ids"][0])
    assert with_system == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                           "<|im_start|>assistant\n")
    default = tokenizer.decode(llm.chat_inputs(tokenizer, "hi", None, "cpu")["input_ids"][0])
    assert default.startswith(f"<|im_start|>system\n{llm.DEFAULT_SYSTEM_PROMPT}<|im_end|>\n")
    text = "héllo 猫 ok"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text.encode()) and tokenizer.decode(ids) == text  # one token per UTF-8 byte
    assert tokenizer.convert_tokens_to_ids(llm.IM_END) == tokenizer.eos_token_id


def test_full_preset_is_qwen25_3b_sized() -> None:
    _, model = llm.build_causal_lm("full", "meta", torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == 3_085_938_688  # Qwen2.5-3B: 3.09 B, tied embeddings
    assert model.config.num_key_value_heads == 2 and model.config.vocab_size == 151936


def test_save_then_load_through_the_auto_classes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer, model = llm.causal_lm(ModelSource(preset="tiny"), "cpu", torch.float32)
    tokenizer.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").exists()
    config = AnyLLMConfig.model_validate({**TINY, "model": {"id": str(tmp_path)}, "served_model_name": "local-qwen"})
    loaded = AnyLLMService(config)
    built = AnyLLMService(AnyLLMConfig.model_validate(TINY))
    request = AnyLLMInput(prompt="a photo of a cat", system_prompt="Describe it.", max_tokens=12)
    assert loaded.generate(request).output == built.generate(request).output
    assert loaded.generate(request.model_copy(update={"model": "local-qwen"})).output
    (tmp_path / "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match="no chat template"):
        llm.load_causal_lm(str(tmp_path), {"local_files_only": True}, "cpu", torch.float32)


def test_greedy_answers_are_deterministic_and_bounded(service: AnyLLMService) -> None:
    request = AnyLLMInput(prompt="a photo of a cat", system_prompt="Say yes or no.", max_tokens=10)
    a, b = service.generate(request), service.generate(request)
    assert a.output == b.output and a.partial is False and a.error is None
    assert 0 < len(a.output) <= 10  # one byte per token: at most one character each
    other = service.generate(request.model_copy(update={"system_prompt": "Write a poem."}))
    assert other.output != a.output  # the system prompt reaches the model


def test_stream_sends_text_as_it_comes_and_ends_with_the_same_output(service: AnyLLMService) -> None:
    request = AnyLLMInput(prompt="a dog in the park", max_tokens=40)
    events: list[Any] = []
    streamed = service.generate(request, RunContext("r", emit=events.append))
    chunks = [e.data for e in events if isinstance(e, Partial) and e.kind == "token"]
    assert chunks and all(isinstance(c, TokenChunk) and c.partial for c in chunks)
    assert "".join(c.token for c in chunks) == chunks[-1].output == streamed.output
    assert streamed.output == service.generate(request).output and streamed.partial is False


def test_model_names_the_served_model_or_is_a_422(service: AnyLLMService) -> None:
    assert service.config.name == "preset:tiny"
    service.generate(AnyLLMInput(prompt="hi", model="preset:tiny", max_tokens=2))
    with pytest.raises(FieldError) as e:
        service.generate(AnyLLMInput(prompt="hi", model="google/gemini-flash-1.5"))
    assert e.value.field == "model" and "preset:tiny" in e.value.message


def test_limits_are_field_errors(service: AnyLLMService) -> None:
    with pytest.raises(FieldError) as e:
        service.generate(AnyLLMInput(prompt="hi", max_tokens=65))
    assert e.value.field == "max_tokens"
    with pytest.raises(FieldError) as e:
        service.generate(AnyLLMInput(prompt="x" * 500))
    assert e.value.field == "prompt"
    with pytest.raises(ValueError, match="max_tokens"):
        AnyLLMInput(prompt="hi", max_tokens=0)
    with pytest.raises(ValueError, match="default_max_tokens"):
        AnyLLMConfig.model_validate({**TINY, "default_max_tokens": 65})


def test_a_cancelled_request_stops_generating(service: AnyLLMService) -> None:
    ctx = RunContext("r")
    ctx._cancel.set()
    with pytest.raises(RequestCancelled):
        service.generate(AnyLLMInput(prompt="hi", max_tokens=64), ctx)
    seen: list[Any] = []

    def cancel_on_first(event: Any) -> None:
        seen.append(event)
        ctx2._cancel.set()

    ctx2 = RunContext("r2", emit=cancel_on_first)
    with pytest.raises(RequestCancelled):
        service.generate(AnyLLMInput(prompt="a photo of a cat", max_tokens=64), ctx2)
