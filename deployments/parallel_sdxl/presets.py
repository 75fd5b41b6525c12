"""Synthetic SDXL pipelines and tiny autoencoders: `tiny` (CPU tests, dev) and `full` (benchmarks).

`full` uses SDXL base 1.0's published component configs (UNet 2.6B, two CLIP text encoders,
the VAE) and TAESDXL's, with random weights; the tokenizers are tiny in-memory ones (their ids are
valid for CLIP's 49408-token vocabulary and padded to the same 77 tokens, so the compute matches).
"""

from __future__ import annotations

from typing import Any

from serve_app.models.source import build_on
from components.tokenizers import clip_tokenizer

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
    "vae": {
        "block_out_channels": (4, 4, 4, 4), "in_channels": 3, "out_channels": 3, "latent_channels": 4,
        "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
        "norm_num_groups": 1, "layers_per_block": 1, "sample_size": 64, "scaling_factor": 0.13025,
    },
    "text_encoder": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                     "projection_dim": 32, "hidden_act": "gelu", "max_position_embeddings": 77},
    "text_encoder_2": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                       "projection_dim": 32, "hidden_act": "gelu", "max_position_embeddings": 77},
    "tiny_vae": {"encoder_block_out_channels": (4, 4, 4, 4), "decoder_block_out_channels": (4, 4, 4, 4),
                 "num_encoder_blocks": (1, 1, 1, 1), "num_decoder_blocks": (1, 1, 1, 1), "latent_channels": 4},
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
    "vae": {
        "block_out_channels": (128, 256, 512, 512), "in_channels": 3, "out_channels": 3, "latent_channels": 4,
        "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 2, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True,
    },
    "text_encoder": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,  # CLIP ViT-L/14
                     "num_hidden_layers": 12, "projection_dim": 768, "hidden_act": "quick_gelu",
                     "max_position_embeddings": 77, "vocab_size": 49408},
    "text_encoder_2": {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,  # OpenCLIP bigG
                       "num_hidden_layers": 32, "projection_dim": 1280, "hidden_act": "gelu",
                       "max_position_embeddings": 77, "vocab_size": 49408},
    "tiny_vae": {},  # AutoencoderTiny's defaults are TAESD/TAESDXL's architecture
}


def _clip(config: dict[str, Any], tokenizer: Any, with_projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(**{
        **config, "vocab_size": max(config.get("vocab_size", 0), len(tokenizer)),
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id or 0,
    })
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


def build_pipeline(preset: str, device: str, dtype: Any) -> Any:
    """A StableDiffusionXLPipeline with random weights, built on `device`."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    cfg = TINY if preset == "tiny" else FULL
    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()
    with build_on(device, dtype):
        unet: Any = UNet2DConditionModel(**cfg["unet"])
        vae: Any = AutoencoderKL(**cfg["vae"])
        text_encoder: Any = _clip(cfg["text_encoder"], tokenizer, with_projection=False)
        text_encoder_2: Any = _clip(cfg["text_encoder_2"], tokenizer_2, with_projection=True)
    return StableDiffusionXLPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet.eval(),
        scheduler=EulerDiscreteScheduler(**SCHEDULER),
    )


def build_tiny_autoencoder(preset: str, device: str, dtype: Any) -> Any:
    """An AutoencoderTiny (TAESDXL architecture for `full`) with random weights."""
    from diffusers import AutoencoderTiny

    with build_on(device, dtype):
        model: Any = AutoencoderTiny(**(TINY if preset == "tiny" else FULL)["tiny_vae"])
    return model.eval()
