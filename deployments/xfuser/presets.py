"""Synthetic pipelines for the xFuser service: `tiny` (CPU tests, dev) and `full` (the real architectures).

Five families, each the diffusers pipeline xFuser wraps: SD3-medium (`StableDiffusion3Pipeline`),
FLUX.1-dev (`FluxPipeline`), PixArt-Alpha and PixArt-Sigma XL-2-1024-MS (`PixArtAlphaPipeline`,
`PixArtSigmaPipeline`) and HunyuanDiT-v1.2 (`HunyuanDiTPipeline`).

`full` uses the published component configs with random weights (built on the target device: the
FLOPs and memory are the real model's, the outputs are noise). The tokenizers are always the tiny
in-memory ones: their ids are valid for the real vocabularies and are padded to the same lengths,
so the compute matches.

`tiny` keeps what xFuser's parallelism depends on: 4 attention heads (Ulysses degree 4 divides
them), 4 transformer blocks (PipeFusion gives each of up to 4 stages at least one; HunyuanDiT's
long skips pair the two halves), the 8x VAE and the real patch sizes and latent contracts (SD3's
16 channels, Flux's 2x2 packing, learned sigma for PixArt and HunyuanDiT), so a 256x256 image is
a 32x32 latent, and any multiple of 16 px up to 1024 works (512x256 included). Text encoders are
2 layers wide 32 or 64; the schedulers are the real ones.

The caller seeds the RNG (`serve_app.models.source.build_or_load` does); nothing is seeded here.
"""

from __future__ import annotations

from typing import Any

from components import flux
from components.text_encoders import (
    CLIP_G,
    CLIP_L,
    T5_XXL,
    TINY_CLIP,
    TINY_T5,
    bert_model,
    clip_text_model,
    t5_encoder,
)
from components.tokenizers import bert_tokenizer, clip_tokenizer, t5_tokenizer
from components.vaes import SD3_VAE, SD_VAE, TINY_VAE, autoencoder_kl
from serve_app.models.source import build_on

FAMILIES = ("sd3", "flux", "pixart_alpha", "pixart_sigma", "hunyuandit")
PRESETS = ("tiny", "full")

# ---------------------------------------------------------------------------------------------
# Stable Diffusion 3 (medium): MMDiT, 16-channel VAE, CLIP-L + OpenCLIP bigG + T5-XXL.

SD3_TINY: dict[str, dict[str, Any]] = {
    "transformer": {
        "sample_size": 32, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 4,
        "attention_head_dim": 8, "num_attention_heads": 4, "joint_attention_dim": 64,  # = T5 d_model >= 32 + 32
        "caption_projection_dim": 32, "pooled_projection_dim": 64,  # inner dim; 32 + 32 CLIP projections
        "pos_embed_max_size": 64,  # 64 patches: up to 1024 px
    },
    "vae": {**TINY_VAE, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False,
            "scaling_factor": 1.5305, "shift_factor": 0.0609},
    "text_encoder": TINY_CLIP,
    "text_encoder_2": TINY_CLIP,
    "text_encoder_3": {**TINY_T5, "d_model": 64, "d_kv": 16},
}

SD3_FULL: dict[str, dict[str, Any]] = {  # stabilityai/stable-diffusion-3-medium-diffusers
    "transformer": {
        "sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 24,
        "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096,
        "caption_projection_dim": 1536, "pooled_projection_dim": 2048, "pos_embed_max_size": 192,
    },
    "vae": SD3_VAE,
    "text_encoder": CLIP_L,
    "text_encoder_2": CLIP_G,
    "text_encoder_3": T5_XXL,
}

SD3_SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0}  # FlowMatchEulerDiscreteScheduler

# ---------------------------------------------------------------------------------------------
# FLUX.1-dev: `full`, the VAE and the text encoders are components.flux's; the tiny
# transformer is wider (4 heads) and deeper (2 double + 2 single-stream blocks) than that one.

FLUX_TINY_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1, "in_channels": 16,  # 4 latent channels x 2x2 packing
    "num_layers": 2, "num_single_layers": 2, "attention_head_dim": 16, "num_attention_heads": 4,
    "joint_attention_dim": 32, "pooled_projection_dim": 32,  # T5 d_model, CLIP hidden size
    "guidance_embeds": True, "axes_dims_rope": (4, 6, 6),  # sums to the head dim
}

# ---------------------------------------------------------------------------------------------
# PixArt-Alpha and PixArt-Sigma (XL-2-1024-MS): DiT with cross-attention to T5-XXL, learned sigma.

_PIXART_TINY_TRANSFORMER: dict[str, Any] = {
    "num_attention_heads": 4, "attention_head_dim": 8, "in_channels": 4, "out_channels": 8, "num_layers": 4,
    "cross_attention_dim": 32, "caption_channels": 32,  # inner dim, T5 d_model
    "sample_size": 32, "patch_size": 2, "attention_bias": True, "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000, "norm_type": "ada_norm_single", "norm_elementwise_affine": False,
    "norm_eps": 1e-6, "use_additional_conditions": False,
}
_PIXART_FULL_TRANSFORMER: dict[str, Any] = {
    "num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": 8, "num_layers": 28,
    "cross_attention_dim": 1152, "caption_channels": 4096, "sample_size": 128, "patch_size": 2,
    "attention_bias": True, "activation_fn": "gelu-approximate", "num_embeds_ada_norm": 1000,
    "norm_type": "ada_norm_single", "norm_elementwise_affine": False, "norm_eps": 1e-6, "interpolation_scale": 2,
}

PIXART_ALPHA_TINY: dict[str, dict[str, Any]] = {
    "transformer": _PIXART_TINY_TRANSFORMER,
    "vae": {**TINY_VAE, "latent_channels": 4, "scaling_factor": 0.18215},
    "text_encoder": TINY_T5,
}
PIXART_ALPHA_FULL: dict[str, dict[str, Any]] = {  # PixArt-alpha/PixArt-XL-2-1024-MS
    # sample_size 128: resolution and aspect-ratio micro-conditions on (as the pipeline passes them)
    "transformer": {**_PIXART_FULL_TRANSFORMER, "use_additional_conditions": True},
    "vae": {**SD_VAE, "sample_size": 256, "scaling_factor": 0.18215},  # sd-vae-ft-ema
    "text_encoder": T5_XXL,
}
PIXART_SIGMA_TINY: dict[str, dict[str, Any]] = {
    "transformer": _PIXART_TINY_TRANSFORMER,
    "vae": {**TINY_VAE, "latent_channels": 4, "scaling_factor": 0.13025},
    "text_encoder": TINY_T5,
}
PIXART_SIGMA_FULL: dict[str, dict[str, Any]] = {  # PixArt-alpha/PixArt-Sigma-XL-2-1024-MS
    "transformer": {**_PIXART_FULL_TRANSFORMER, "use_additional_conditions": False},
    "vae": {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},  # SDXL's VAE
    "text_encoder": T5_XXL,
}

# Both ship diffusers' DPMSolverMultistepScheduler defaults (the conversion scripts build it bare).
PIXART_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "prediction_type": "epsilon", "algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
    "lower_order_final": True, "timestep_spacing": "linspace", "steps_offset": 0,
}

# ---------------------------------------------------------------------------------------------
# HunyuanDiT v1.2: DiT with long skips, RoPE, cross-attention to a Chinese CLIP text tower (a
# BertModel, 77 tokens) and mT5-XL (256 tokens), learned sigma, no style/size conditions.

HUNYUANDIT_TINY: dict[str, dict[str, Any]] = {
    "transformer": {
        "num_attention_heads": 4, "attention_head_dim": 8, "hidden_size": 32,  # hidden = heads x head dim
        "in_channels": 4, "patch_size": 2, "sample_size": 32, "num_layers": 4, "mlp_ratio": 4.0,
        "learn_sigma": True, "activation_fn": "gelu-approximate", "norm_type": "layer_norm",
        "cross_attention_dim": 32, "cross_attention_dim_t5": 32,  # BERT hidden; T5 d_model (8 pooling heads)
        "pooled_projection_dim": 32, "text_len": 77, "text_len_t5": 256,  # the pipeline's tokenizer lengths
        "use_style_cond_and_image_meta_size": False,
    },
    "vae": {**TINY_VAE, "latent_channels": 4, "scaling_factor": 0.13025},
    "text_encoder": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37,
                     "max_position_embeddings": 512, "type_vocab_size": 2},
    "text_encoder_2": TINY_T5,
}

HUNYUANDIT_FULL: dict[str, dict[str, Any]] = {  # Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers
    "transformer": {
        "num_attention_heads": 16, "attention_head_dim": 88, "hidden_size": 1408, "in_channels": 4,
        "patch_size": 2, "sample_size": 128, "num_layers": 40, "mlp_ratio": 4.3637, "learn_sigma": True,
        "activation_fn": "gelu-approximate", "norm_type": "layer_norm", "cross_attention_dim": 1024,
        "cross_attention_dim_t5": 2048, "pooled_projection_dim": 1024, "text_len": 77, "text_len_t5": 256,
        "use_style_cond_and_image_meta_size": False,
    },
    "vae": {**SD_VAE, "sample_size": 512, "scaling_factor": 0.13025},  # SDXL's VAE (fp16 fix)
    "text_encoder": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,  # Chinese CLIP text
                     "intermediate_size": 4096, "hidden_act": "gelu", "max_position_embeddings": 512,
                     "type_vocab_size": 2, "vocab_size": 47020},
    "text_encoder_2": {"d_model": 2048, "d_ff": 5120, "d_kv": 64, "num_layers": 24, "num_heads": 32,  # mT5-XL
                       "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
                       "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": True,
                       "vocab_size": 250112, "tie_word_embeddings": False},
}

HUNYUANDIT_SCHEDULER: dict[str, Any] = {  # v1.2's DDPMScheduler (v1.1 had beta_end 0.03)
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.018, "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction", "variance_type": "fixed_small", "clip_sample": False, "steps_offset": 1,
    "timestep_spacing": "leading",
}


def configs(family: str, preset: str) -> dict[str, dict[str, Any]]:
    """The component configs of a family's preset (Flux's VAE and text encoders are components.flux's)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; available: {list(FAMILIES)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; available: {list(PRESETS)}")
    tiny = preset == "tiny"
    if family == "flux":
        return {**flux.TINY, "transformer": FLUX_TINY_TRANSFORMER} if tiny else flux.FULL
    return {
        "sd3": (SD3_TINY, SD3_FULL),
        "pixart_alpha": (PIXART_ALPHA_TINY, PIXART_ALPHA_FULL),
        "pixart_sigma": (PIXART_SIGMA_TINY, PIXART_SIGMA_FULL),
        "hunyuandit": (HUNYUANDIT_TINY, HUNYUANDIT_FULL),
    }[family][0 if tiny else 1]


def _sd3(cfg: dict[str, dict[str, Any]], device: str, dtype: Any) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer, tokenizer_2, tokenizer_3 = clip_tokenizer(), clip_tokenizer(), t5_tokenizer()
    with build_on(device, dtype):
        transformer: Any = SD3Transformer2DModel(**cfg["transformer"])
        vae = autoencoder_kl(cfg["vae"])
        text_encoder = clip_text_model(cfg["text_encoder"], tokenizer)
        text_encoder_2 = clip_text_model(cfg["text_encoder_2"], tokenizer_2)
        text_encoder_3 = t5_encoder(cfg["text_encoder_3"], tokenizer_3)
    return StableDiffusion3Pipeline(
        transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER), vae=vae,
        text_encoder=text_encoder.eval(), tokenizer=tokenizer, text_encoder_2=text_encoder_2.eval(),
        tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3.eval(), tokenizer_3=tokenizer_3,
    )


def _flux(cfg: dict[str, dict[str, Any]], preset: str, device: str, dtype: Any) -> Any:
    return flux.build_pipeline(preset, device, dtype, transformer=cfg["transformer"])


def _pixart(family: str, cfg: dict[str, dict[str, Any]], device: str, dtype: Any) -> Any:
    from diffusers import (
        DPMSolverMultistepScheduler,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        PixArtTransformer2DModel,
    )

    tokenizer = t5_tokenizer()
    with build_on(device, dtype):
        transformer: Any = PixArtTransformer2DModel(**cfg["transformer"])
        vae = autoencoder_kl(cfg["vae"])
        text_encoder = t5_encoder(cfg["text_encoder"], tokenizer)
    cls = PixArtAlphaPipeline if family == "pixart_alpha" else PixArtSigmaPipeline
    return cls(
        tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae, transformer=transformer.eval(),
        scheduler=DPMSolverMultistepScheduler(**PIXART_SCHEDULER),
    )


def _hunyuandit(cfg: dict[str, dict[str, Any]], device: str, dtype: Any) -> Any:
    from diffusers import DDPMScheduler, HunyuanDiT2DModel, HunyuanDiTPipeline

    tokenizer, tokenizer_2 = bert_tokenizer(), t5_tokenizer()
    with build_on(device, dtype):
        transformer: Any = HunyuanDiT2DModel(**cfg["transformer"])
        vae = autoencoder_kl(cfg["vae"])
        text_encoder = bert_model(cfg["text_encoder"], tokenizer)
        text_encoder_2 = t5_encoder(cfg["text_encoder_2"], tokenizer_2)
    return HunyuanDiTPipeline(
        vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, transformer=transformer.eval(),
        scheduler=DDPMScheduler(**HUNYUANDIT_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, text_encoder_2=text_encoder_2.eval(), tokenizer_2=tokenizer_2,
    )


def build_pipeline(family: str, preset: str, device: str, dtype: Any) -> Any:
    """A family's diffusers pipeline with random weights, built on `device` in `dtype`.

    `family` is one of FAMILIES, `preset` `tiny` or `full`; seed the RNG first for reproducible weights.
    """
    cfg = configs(family, preset)
    if family == "sd3":
        return _sd3(cfg, device, dtype)
    if family == "flux":
        return _flux(cfg, preset, device, dtype)
    if family in ("pixart_alpha", "pixart_sigma"):
        return _pixart(family, cfg, device, dtype)
    return _hunyuandit(cfg, device, dtype)
