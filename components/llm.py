"""Causal language models for chat-style prompts (prompt expansion, yes/no classification).

Real weights load with transformers' `AutoTokenizer` / `AutoModelForCausalLM` (a hub id such as
`Qwen/Qwen2.5-3B-Instruct`, or a `save_pretrained` directory); the tokenizer's own chat template
turns messages into the prompt. Presets, with seeded random weights:
- `tiny`: a Qwen2-style model a few thousand parameters big, with a byte-level tokenizer built in
  memory (256 byte symbols, no merges) and a ChatML chat template, as Qwen's instruct models use;
- `full`: Qwen2.5-3B-Instruct's published architecture (for GPU benchmarks), with the tiny tokenizer
  (its ids are valid rows of Qwen's 151,936-token vocabulary).
Random weights write gibberish; the presets prove the loading, templating and generation paths.
"""

from __future__ import annotations

from typing import Any, Literal

from serve_app.models.source import ModelSource, build_on, build_or_load

QWEN25_3B_INSTRUCT_ID = "Qwen/Qwen2.5-3B-Instruct"

Preset = Literal["tiny", "full"]

END_OF_TEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# ChatML, as Qwen2.5's template renders plain text messages (no tools): a default system message
# when the conversation has none, then `<|im_start|>{role}\n{content}<|im_end|>\n` per message.
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "tie_word_embeddings": True, "max_position_embeddings": 2048,
             "initializer_range": 0.2},  # wide enough that greedy decoding does not repeat one token
    # Qwen/Qwen2.5-3B-Instruct's config.json
    "full": {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
             "num_attention_heads": 16, "num_key_value_heads": 2, "tie_word_embeddings": True,
             "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
             "hidden_act": "silu", "sliding_window": None, "use_sliding_window": False},
}


def byte_tokenizer() -> Any:
    """A Qwen2 byte-level BPE tokenizer with no merges (one token per UTF-8 byte), the three Qwen
    special tokens, and the ChatML chat template. Built by hand: every process gets the same ids."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for special in (END_OF_TEXT, IM_START, IM_END):
        vocab[special] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=END_OF_TEXT, eos_token=IM_END,
                               pad_token=END_OF_TEXT, model_max_length=2048)
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_causal_lm(preset: Preset, device: str, dtype: Any) -> tuple[Any, Any]:
    """`(tokenizer, Qwen2ForCausalLM)` with random weights on `device`; generation stops at `<|im_end|>`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = byte_tokenizer()
    config = dict(CONFIGS[preset])
    config["vocab_size"] = max(config.get("vocab_size", 0), len(tokenizer))
    eos = tokenizer.convert_tokens_to_ids(IM_END)
    with build_on(device, dtype):
        model: Any = Qwen2ForCausalLM(Qwen2Config(**config, eos_token_id=eos, bos_token_id=None,
                                                  pad_token_id=tokenizer.pad_token_id))
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model.eval()


def load_causal_lm(model_id: str, kwargs: dict[str, Any], device: str, dtype: Any) -> tuple[Any, Any]:
    """`(tokenizer, model)` from a hub id or a local directory, through transformers' Auto classes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_id, **kwargs)
    if tokenizer.chat_template is None:
        raise ValueError(f"{model_id} has no chat template: use an instruct/chat model")
    model: Any = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype, **kwargs)
    return tokenizer, model.to(device).eval()


def causal_lm(source: ModelSource, device: str, dtype: Any) -> tuple[Any, Any]:
    """The `(tokenizer, model)` a `ModelSource` names: loaded (`id`) or built (`preset`, seeded)."""
    return build_or_load(
        source,
        load=lambda model_id, kwargs: load_causal_lm(model_id, kwargs, device, dtype),
        presets={"tiny": lambda: build_causal_lm("tiny", device, dtype),
                 "full": lambda: build_causal_lm("full", device, dtype)},
    )


def chat_inputs(tokenizer: Any, prompt: str, system_prompt: str | None, device: str) -> dict[str, Any]:
    """Token ids (and attention mask) of a one-turn conversation, ready for `generate`."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": prompt}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
    return {k: v.to(device) for k, v in encoded.items()}
