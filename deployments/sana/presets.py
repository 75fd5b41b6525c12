"""Synthetic Sana and Sana Sprint pipelines: `tiny` (CPU tests, dev) and `full` (GPU benchmarks).

Both keep the real component classes. `tiny` shrinks every width and depth but keeps Sana's 32x
DC-AE compression and 1024-px resolution buckets, so requests of any size behave as in prod (the
pipeline bins the size, generates, and resizes back). `full` uses the published configs
(`full_configs.py`) with random weights; its tokenizer is the tiny in-memory one, whose ids are a
subset of Gemma's vocabulary, padded to the same sequence length, so the compute matches.
"""

from __future__ import annotations

from typing import Any

from components.tokenizers import gemma_tokenizer
from serve_app.models.source import build_on

TINY_VAE: dict[str, Any] = {
    "in_channels": 3,
    "latent_channels": 4,
    "attention_head_dim": 2,
    "encoder_block_types": "ResBlock",
    "decoder_block_types": "ResBlock",
    "encoder_block_out_channels": (4, 4, 8, 8, 8, 8),
    "decoder_block_out_channels": (4, 4, 8, 8, 8, 8),
    "encoder_layers_per_block": (1, 1, 1, 1, 1, 1),
    "decoder_layers_per_block": (1, 1, 1, 1, 1, 1),
    "encoder_qkv_multiscales": ((), (), (), (), (), ()),
    "decoder_qkv_multiscales": ((), (), (), (), (), ()),
    "upsample_block_type": "interpolate",
    "downsample_block_type": "conv",
    "decoder_norm_types": "rms_norm",
    "decoder_act_fns": "silu",
    "scaling_factor": 0.41407,
}

TINY_TRANSFORMER: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "num_attention_heads": 2,
    "attention_head_dim": 4,
    "num_layers": 1,
    "num_cross_attention_heads": 2,
    "cross_attention_head_dim": 4,
    "cross_attention_dim": 8,
    "caption_channels": 8,
    "sample_size": 32,
    "patch_size": 1,
}

TINY_SPRINT_TRANSFORMER: dict[str, Any] = {
    **TINY_TRANSFORMER,
    "guidance_embeds": True,
    "qk_norm": "rms_norm_across_heads",
}

TINY_TEXT_ENCODER: dict[str, Any] = {
    "hidden_size": 8,
    "head_dim": 16,
    "intermediate_size": 16,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "num_hidden_layers": 1,
    "attn_implementation": "eager",
}

# The base model's flow-matching DPM-Solver++ settings (as in Sana's diffusers repos).
BASE_SCHEDULER: dict[str, Any] = {
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
}


def _text_encoder(config: dict[str, Any], tokenizer: Any) -> Any:
    from transformers import Gemma2Config, Gemma2Model

    cfg = Gemma2Config(**{
        **config,
        "vocab_size": max(config.get("vocab_size", 0), len(tokenizer)),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    })
    return Gemma2Model(cfg).eval()


def _configs(preset: str) -> dict[str, Any]:
    if preset == "tiny":
        return {
            "vae": TINY_VAE, "transformer": TINY_TRANSFORMER, "sprint_transformer": TINY_SPRINT_TRANSFORMER,
            "text_encoder": TINY_TEXT_ENCODER, "scheduler": BASE_SCHEDULER, "sprint_scheduler": {},
        }
    from deployments.sana import full_configs as full

    return {
        "vae": full.SANA_DCAE_VAE, "transformer": full.SANA_1600M_TRANSFORMER,
        "sprint_transformer": full.SANA_SPRINT_1600M_TRANSFORMER, "text_encoder": full.GEMMA2_2B_TEXT_ENCODER,
        "scheduler": full.SANA_SCHEDULER, "sprint_scheduler": full.SANA_SPRINT_SCHEDULER,
    }


def build_text_encoder(preset: str, device: str, dtype: Any) -> tuple[Any, Any]:
    """The shared (tokenizer, text encoder) pair of a preset."""
    tokenizer = gemma_tokenizer()
    with build_on(device, dtype):
        return tokenizer, _text_encoder(_configs(preset)["text_encoder"], tokenizer)


def build_base(preset: str, device: str, dtype: Any, tokenizer: Any, text_encoder: Any) -> Any:
    """A SanaPipeline with random weights."""
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    cfg = _configs(preset)
    with build_on(device, dtype):
        transformer: Any = SanaTransformer2DModel(**cfg["transformer"])
        vae: Any = AutoencoderDC(**cfg["vae"])
    return SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae.eval(), transformer=transformer.eval(),
        scheduler=DPMSolverMultistepScheduler(**cfg["scheduler"]),
    )


def build_sprint(preset: str, device: str, dtype: Any, tokenizer: Any, text_encoder: Any) -> Any:
    """A SanaSprintPipeline with random weights, on the given (shared) text encoder."""
    from diffusers import AutoencoderDC, SanaSprintPipeline, SanaTransformer2DModel, SCMScheduler

    cfg = _configs(preset)
    with build_on(device, dtype):
        transformer: Any = SanaTransformer2DModel(**cfg["sprint_transformer"])
        vae: Any = AutoencoderDC(**cfg["vae"])
    return SanaSprintPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae.eval(), transformer=transformer.eval(),
        scheduler=SCMScheduler(**cfg["sprint_scheduler"]),
    )
