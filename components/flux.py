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

from components.text_encoders import CLIP_L, T5_XXL, TINY_CLIP, TINY_T5, clip_text_model, t5_encoder
from components.tokenizers import clip_tokenizer, t5_tokenizer
from components.vaes import FLUX_VAE, TINY_VAE, autoencoder_kl
from serve_app.models.source import build_on

FLUX_DEV_ID = "black-forest-labs/FLUX.1-dev"

TINY: dict[str, dict[str, Any]] = {
    "transformer": {
        "patch_size": 1, "in_channels": 16, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
        "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32,
        "guidance_embeds": True, "axes_dims_rope": (4, 4, 8),
    },
    "vae": {**TINY_VAE, "latent_channels": 4, "sample_size": 64, "use_quant_conv": False,
            "use_post_quant_conv": False, "shift_factor": 0.0609, "scaling_factor": 1.5035},
    "clip": TINY_CLIP,
    "t5": TINY_T5,
}

FULL: dict[str, dict[str, Any]] = {  # black-forest-labs/FLUX.1-dev
    "transformer": {
        "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
        "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
        "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
    },
    "vae": FLUX_VAE,
    "clip": CLIP_L,
    "t5": T5_XXL,
}

SCHEDULER: dict[str, Any] = {  # FLUX.1-dev's FlowMatchEulerDiscreteScheduler
    "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
    "base_image_seq_len": 256, "max_image_seq_len": 4096,
}


def configs(preset: str) -> dict[str, dict[str, Any]]:
    if preset not in ("tiny", "full"):
        raise ValueError(f"unknown preset {preset!r}")
    return TINY if preset == "tiny" else FULL


def build_transformer(preset: str, device: str, dtype: Any, config: dict[str, Any] | None = None) -> Any:
    """FluxTransformer2DModel with random weights, built on `device` (`config` overrides the preset's)."""
    from diffusers import FluxTransformer2DModel

    with build_on(device, dtype):
        model: Any = FluxTransformer2DModel(**(config or configs(preset)["transformer"]))
    return model


def build_vae(preset: str, device: str, dtype: Any) -> Any:
    """Flux's AutoencoderKL (16 latent channels for `full`) with random weights."""
    with build_on(device, dtype):
        return autoencoder_kl(configs(preset)["vae"])


def build_text_encoders(preset: str, device: str, dtype: Any) -> dict[str, Any]:
    """`tokenizer`/`text_encoder` (CLIP) and `tokenizer_2`/`text_encoder_2` (T5), as FluxPipeline names them."""
    cfg = configs(preset)
    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    with build_on(device, dtype):
        text_encoder: Any = clip_text_model(cfg["clip"], tokenizer, with_projection=False)
        text_encoder_2: Any = t5_encoder(cfg["t5"], tokenizer_2)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder.eval(),
            "tokenizer_2": tokenizer_2, "text_encoder_2": text_encoder_2.eval()}


def build_pipeline(preset: str, device: str, dtype: Any, transformer: dict[str, Any] | None = None) -> Any:
    """A whole FluxPipeline with random weights (`transformer` overrides the preset's transformer config)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    model = build_transformer(preset, device, dtype, transformer)
    return FluxPipeline(
        transformer=model.eval(), vae=build_vae(preset, device, dtype),
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), **build_text_encoders(preset, device, dtype),
    )
