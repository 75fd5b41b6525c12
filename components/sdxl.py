"""Synthetic SDXL pipelines: `tiny` (CPU tests, dev) and `full` (benchmarks).

`full` uses SDXL base 1.0's published component configs (UNet 2.6B, CLIP ViT-L/14 and OpenCLIP
bigG text encoders, the VAE) with random weights; the tokenizers are tiny in-memory ones (their ids
are valid for CLIP's 49408-token vocabulary and padded to the same 77 tokens, so the compute matches).
"""

from __future__ import annotations

from typing import Any

from components.text_encoders import CLIP_G, CLIP_L, TINY_CLIP, clip_text_model
from components.tokenizers import clip_tokenizer
from components.vaes import SDXL_VAE, TINY_VAE, autoencoder_kl
from serve_app.models.source import build_on

SDXL_BASE_ID = "stabilityai/stable-diffusion-xl-base-1.0"
TAESDXL_ID = "madebyollin/taesdxl"

SCHEDULER: dict[str, Any] = {  # SDXL base 1.0's EulerDiscreteScheduler
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "steps_offset": 1, "timestep_spacing": "leading", "prediction_type": "epsilon",
}

TINY = {
    "unet": {
        "block_out_channels": (8, 16), "layers_per_block": 1, "sample_size": 32, "in_channels": 4,
        "out_channels": 4, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "attention_head_dim": (2, 4),
        "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
        "transformer_layers_per_block": (1, 1), "projection_class_embeddings_input_dim": 80,
        "cross_attention_dim": 64, "norm_num_groups": 1,
    },
    "vae": {**TINY_VAE, "latent_channels": 4, "sample_size": 64, "scaling_factor": 0.13025},
    "text_encoder": TINY_CLIP,
    "text_encoder_2": TINY_CLIP,
}

FULL = {  # stabilityai/stable-diffusion-xl-base-1.0 component configs
    "unet": {
        "sample_size": 128, "in_channels": 4, "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "block_out_channels": (320, 640, 1280), "layers_per_block": 2, "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20), "cross_attention_dim": 2048, "use_linear_projection": True,
        "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
    },
    "vae": SDXL_VAE,
    "text_encoder": CLIP_L,
    "text_encoder_2": CLIP_G,
}


def build_pipeline(preset: str, device: str, dtype: Any) -> Any:
    """A StableDiffusionXLPipeline with random weights, built on `device`."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    cfg = TINY if preset == "tiny" else FULL
    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()
    with build_on(device, dtype):
        unet: Any = UNet2DConditionModel(**cfg["unet"])
        vae: Any = autoencoder_kl(cfg["vae"])
        text_encoder: Any = clip_text_model(cfg["text_encoder"], tokenizer, with_projection=False)
        text_encoder_2: Any = clip_text_model(cfg["text_encoder_2"], tokenizer_2, with_projection=True)
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder.eval(), text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet.eval(),
        scheduler=EulerDiscreteScheduler(**SCHEDULER),
    )
