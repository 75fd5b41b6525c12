"""Synthetic Flux components: `tiny` (CPU tests, dev) and `full` (FLUX.1-dev's architecture).

`full` uses FLUX.1-dev's published component configs with random weights: the 12B
FluxTransformer2DModel (19 double-stream + 38 single-stream blocks), the 16-channel VAE with its
shift and scaling factors, CLIP ViT-L/14's text model and T5-v1.1-XXL's encoder. The tokenizers are
the tiny in-memory ones: their ids are valid for the real vocabularies and are padded to the same
lengths (77 and 512 tokens), so the compute matches. `tiny` keeps the 8x VAE downsampling and
the 2x2 latent packing, so image sizes behave as in prod.
"""

from __future__ import annotations

from typing import Any

from serve_app.models.source import build_on
from components.tokenizers import clip_tokenizer, t5_tokenizer

TINY: dict[str, dict[str, Any]] = {
    "transformer": {
        "patch_size": 1, "in_channels": 16, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
        "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32,
        "guidance_embeds": True, "axes_dims_rope": (4, 4, 8),
    },
    "vae": {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (4, 4, 4, 4),
        "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 1, "norm_num_groups": 1, "sample_size": 64, "use_quant_conv": False,
        "use_post_quant_conv": False, "shift_factor": 0.0609, "scaling_factor": 1.5035,
    },
    "clip": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
             "projection_dim": 32, "hidden_act": "gelu", "max_position_embeddings": 77},
    "t5": {"d_model": 32, "d_ff": 37, "d_kv": 8, "num_layers": 2, "num_heads": 4,
           "relative_attention_num_buckets": 8, "feed_forward_proj": "gated-gelu"},
}

FULL: dict[str, dict[str, Any]] = {  # black-forest-labs/FLUX.1-dev
    "transformer": {
        "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
        "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
        "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
    },
    "vae": {
        "in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 1024, "use_quant_conv": False,
        "use_post_quant_conv": False, "shift_factor": 0.1159, "scaling_factor": 0.3611, "force_upcast": True,
    },
    "clip": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
             "projection_dim": 768, "hidden_act": "quick_gelu", "max_position_embeddings": 77, "vocab_size": 49408},
    "t5": {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_layers": 24, "num_heads": 64,
           "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
           "feed_forward_proj": "gated-gelu", "vocab_size": 32128, "dense_act_fn": "gelu_new",
           "is_gated_act": True},
}

SCHEDULER: dict[str, Any] = {  # FLUX.1-dev's FlowMatchEulerDiscreteScheduler
    "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
    "base_image_seq_len": 256, "max_image_seq_len": 4096,
}


def _configs(preset: str) -> dict[str, dict[str, Any]]:
    if preset not in ("tiny", "full"):
        raise ValueError(f"unknown preset {preset!r}")
    return TINY if preset == "tiny" else FULL


def build_transformer(preset: str, device: str, dtype: Any) -> Any:
    """FluxTransformer2DModel with random weights, built on `device`."""
    from diffusers import FluxTransformer2DModel

    with build_on(device, dtype):
        return FluxTransformer2DModel(**_configs(preset)["transformer"])


def build_vae(preset: str, device: str, dtype: Any) -> Any:
    """Flux's AutoencoderKL (16 latent channels for `full`) with random weights."""
    from diffusers import AutoencoderKL

    with build_on(device, dtype):
        vae: Any = AutoencoderKL(**_configs(preset)["vae"])
    return vae.eval()


def build_text_encoders(preset: str, device: str, dtype: Any) -> dict[str, Any]:
    """`tokenizer`/`text_encoder` (CLIP) and `tokenizer_2`/`text_encoder_2` (T5), as FluxPipeline names them."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    cfg = _configs(preset)
    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    clip = CLIPTextConfig(**{**cfg["clip"], "vocab_size": max(cfg["clip"].get("vocab_size", 0), len(tokenizer)),
                             "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                             "pad_token_id": tokenizer.pad_token_id or 0})
    t5 = T5Config(**{**cfg["t5"], "vocab_size": max(cfg["t5"].get("vocab_size", 0), len(tokenizer_2)),
                     "pad_token_id": tokenizer_2.pad_token_id, "eos_token_id": tokenizer_2.eos_token_id,
                     "decoder_start_token_id": tokenizer_2.pad_token_id})
    with build_on(device, dtype):
        text_encoder: Any = CLIPTextModel(clip)
        text_encoder_2: Any = T5EncoderModel(t5)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder.eval(),
            "tokenizer_2": tokenizer_2, "text_encoder_2": text_encoder_2.eval()}


def build_pipeline(preset: str, device: str, dtype: Any) -> Any:
    """A whole FluxPipeline with random weights (for tests that load a trained LoRA into it)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    return FluxPipeline(
        transformer=build_transformer(preset, device, dtype), vae=build_vae(preset, device, dtype),
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), **build_text_encoders(preset, device, dtype),
    )
