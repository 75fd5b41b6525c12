"""Text encoders the image services share: CLIP ViT-L/14, OpenCLIP bigG, T5-v1.1-XXL, BERT.

Full configs are the published ones (random weights for benchmarks); tiny ones are 2 layers wide
32. A builder sizes the vocabulary to fit the tokenizer it is paired with (the tiny in-memory
tokenizers' ids are valid for the real vocabularies, so `full` keeps the real embedding sizes).
Build inside `serve_app.models.source.build_on(device, dtype)`.
"""

from __future__ import annotations

from typing import Any

CLIP_L: dict[str, Any] = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,  # ViT-L/14
                          "num_hidden_layers": 12, "projection_dim": 768, "hidden_act": "quick_gelu",
                          "max_position_embeddings": 77, "vocab_size": 49408}
CLIP_G: dict[str, Any] = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,  # OpenCLIP bigG
                          "num_hidden_layers": 32, "projection_dim": 1280, "hidden_act": "gelu",
                          "max_position_embeddings": 77, "vocab_size": 49408}
T5_XXL: dict[str, Any] = {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_layers": 24, "num_heads": 64,  # v1.1
                          "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
                          "feed_forward_proj": "gated-gelu", "vocab_size": 32128, "dense_act_fn": "gelu_new",
                          "is_gated_act": True}

TINY_CLIP: dict[str, Any] = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                             "num_hidden_layers": 2, "projection_dim": 32, "hidden_act": "gelu",
                             "max_position_embeddings": 77}
TINY_T5: dict[str, Any] = {"d_model": 32, "d_ff": 37, "d_kv": 8, "num_layers": 2, "num_heads": 4,
                           "relative_attention_num_buckets": 8, "feed_forward_proj": "gated-gelu"}


def clip_text_model(config: dict[str, Any], tokenizer: Any, with_projection: bool = True) -> Any:
    """`CLIPTextModelWithProjection` (or the plain `CLIPTextModel`) for `tokenizer`."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(**{
        **config, "vocab_size": max(config.get("vocab_size", 0), len(tokenizer)),
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id or 0,
    })
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


def t5_encoder(config: dict[str, Any], tokenizer: Any) -> Any:
    """`T5EncoderModel` for `tokenizer`."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**{
        **config, "vocab_size": max(config.get("vocab_size", 0), len(tokenizer)),
        "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
        "decoder_start_token_id": tokenizer.pad_token_id,
    }))


def bert_model(config: dict[str, Any], tokenizer: Any) -> Any:
    """`BertModel` for `tokenizer`."""
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(**{
        **config, "vocab_size": max(config.get("vocab_size", 0), len(tokenizer)),
        "pad_token_id": tokenizer.pad_token_id,
    }))
