"""Wan 2.1 text-to-video 1.3B parts on diffusers: transformer, VAE, UMT5 text encoder + tokenizer,
samplers, the pipeline, and context parallelism.

Each part has a `tiny` preset (seeded random weights, CPU, seconds) and a `full` preset (the published
1.3B configs with random weights, for GPU benchmarks); real weights load with diffusers'
`from_pretrained` from `Wan-AI/Wan2.1-T2V-1.3B-Diffusers` or a directory with its layout. The parts
are importable on their own (other Wan-based services reuse the transformer and the VAE).

Facts carried over from the published sources: the diffusers-format configs (the conversion script's
1.3B transformer config, `google/umt5-xxl`'s encoder, `AutoencoderKLWan`'s defaults, which are Wan
2.1's VAE), Wan's default negative prompt (`sample_neg_prompt` in Wan's shared config, used by the
original code when the negative prompt is empty; diffusers' pipeline does not), 16 fps, 4k+1 frames.
"""

# ruff: noqa: RUF001  (Wan's default negative prompt is Chinese, with fullwidth commas)

from __future__ import annotations

from typing import Any, Literal

from components import context_parallel
from components.tokenizers import t5_tokenizer
from serve_app.models.source import ModelSource, build_on, build_or_load

WAN_T2V_1_3B_ID = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
SAMPLE_FPS = 16
TEXT_LEN = 512  # UMT5 tokens per prompt (padded): Wan's `text_len`
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

Preset = Literal["tiny", "full"]
Sampler = Literal["unipc", "dpm++"]

TRANSFORMER: dict[str, dict[str, Any]] = {
    # head_dim 16 (not 12): flash attention, which Ring needs on GPUs, wants a multiple of 8.
    "tiny": {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 16,
             "out_channels": 16, "text_dim": 32, "freq_dim": 32, "ffn_dim": 32, "num_layers": 2,
             "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 64},
    "full": {"patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
             "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30,
             "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6},
}
VAE: dict[str, dict[str, Any]] = {
    "tiny": {"base_dim": 3, "z_dim": 16, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1,
             "temperal_downsample": [False, True, True]},
    "full": {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
             "temperal_downsample": [False, True, True]},  # = AutoencoderKLWan's defaults (Wan 2.1 VAE)
}
TEXT_ENCODER: dict[str, dict[str, Any]] = {
    "tiny": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
             "relative_attention_num_buckets": 8, "feed_forward_proj": "gated-gelu"},
    "full": {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
             "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
             "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False},  # google/umt5-xxl's encoder
}
SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "prediction_type": "flow_prediction",
                             "use_flow_sigmas": True, "flow_shift": 3.0}

HEADS = {preset: int(cfg["num_attention_heads"]) for preset, cfg in TRANSFORMER.items()}


def build_transformer(preset: Preset, device: str, dtype: Any) -> Any:
    """A `WanTransformer3DModel` with random weights, allocated on `device`."""
    from diffusers import WanTransformer3DModel

    with build_on(device, dtype):
        model: Any = WanTransformer3DModel(**TRANSFORMER[preset])
    return model.eval()


def build_vae(preset: Preset, device: str, dtype: Any) -> Any:
    """An `AutoencoderKLWan` with random weights (keep it in float32, as diffusers recommends)."""
    from diffusers import AutoencoderKLWan

    with build_on(device, dtype):
        model: Any = AutoencoderKLWan(**VAE[preset])
    return model.eval()


def build_text_encoder(preset: Preset, device: str, dtype: Any) -> tuple[Any, Any]:
    """`(tokenizer, UMT5EncoderModel)`. Both presets use the tiny in-memory T5 tokenizer: its ids are
    valid rows of UMT5's vocabulary and prompts are padded to the same 512 tokens, so `full` costs
    what the real encoder costs."""
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = t5_tokenizer()
    config = dict(TEXT_ENCODER[preset])
    config["vocab_size"] = max(config.get("vocab_size", 0), len(tokenizer))
    with build_on(device, dtype):
        model: Any = UMT5EncoderModel(UMT5Config(**config, pad_token_id=tokenizer.pad_token_id,
                                                 eos_token_id=tokenizer.eos_token_id))
    return tokenizer, model.eval()


def build_pipeline(preset: Preset, device: str, dtype: Any, vae_dtype: Any = None) -> Any:
    """A `WanPipeline` with random weights: transformer and text encoder in `dtype`, the VAE in
    `vae_dtype` (default float32)."""
    import torch
    from diffusers import UniPCMultistepScheduler, WanPipeline

    tokenizer, text_encoder = build_text_encoder(preset, device, dtype)
    return WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, transformer=build_transformer(preset, device, dtype),
        vae=build_vae(preset, device, vae_dtype or torch.float32), scheduler=UniPCMultistepScheduler(**SCHEDULER),
    )


def load_pipeline(model_id: str, kwargs: dict[str, Any], device: str, dtype: Any, vae_dtype: Any = None) -> Any:
    """The published weights (hub id or a `save_pretrained` directory) through diffusers' loaders:
    the VAE in `vae_dtype` (default float32), everything else in `dtype`."""
    import torch
    from diffusers import AutoencoderKLWan, WanPipeline

    vae = AutoencoderKLWan.from_pretrained(model_id, subfolder="vae", dtype=vae_dtype or torch.float32, **kwargs)
    pipe = WanPipeline.from_pretrained(model_id, vae=vae, dtype=dtype, **kwargs)
    return pipe.to(device)


def pipeline(source: ModelSource, device: str, dtype: Any, vae_dtype: Any = None) -> Any:
    """The pipeline a `ModelSource` names: loaded (`id`) or built (`preset`, seeded)."""
    return build_or_load(
        source,
        load=lambda model_id, kwargs: load_pipeline(model_id, kwargs, device, dtype, vae_dtype),
        presets={"tiny": lambda: build_pipeline("tiny", device, dtype, vae_dtype),
                 "full": lambda: build_pipeline("full", device, dtype, vae_dtype)},
    )


def make_scheduler(base_config: Any, sampler: Sampler, shift: float) -> Any:
    """The scheduler of a sampler at a flow shift: `unipc` is UniPC, `dpm++` is DPM-Solver++ (order 2),
    both on flow-matching sigmas (Wan's `sample_solver` choices)."""
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    flow = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": shift}
    if sampler == "unipc":
        return UniPCMultistepScheduler.from_config(base_config, **flow)
    if sampler == "dpm++":
        return DPMSolverMultistepScheduler.from_config(base_config, algorithm_type="dpmsolver++", solver_order=2,
                                                       **flow)
    raise ValueError(f"unknown sampler {sampler!r}: use unipc or dpm++")


def check_context_parallel(heads: int, ulysses_degree: int, ring_degree: int) -> None:
    """Raise `ValueError` for a layout Wan cannot run: Ulysses splits the attention heads."""
    if ulysses_degree < 1 or ring_degree < 1:
        raise ValueError("ulysses_degree and ring_degree must be at least 1")
    if heads % ulysses_degree:
        divisors = [d for d in range(1, heads + 1) if heads % d == 0]
        raise ValueError(f"ulysses_degree {ulysses_degree} does not divide the model's {heads} attention heads; "
                         f"use one of {divisors}")


def enable_context_parallel(transformer: Any, ulysses_degree: int = 1, ring_degree: int = 1,
                            attention_backend: str | None = None) -> None:
    """Split the transformer's sequence over the initialised `torch.distributed` group with
    diffusers' native context parallelism (Ulysses and/or Ring; their product is the world size).

    Ring merges partial attention with the log-sum-exp, which diffusers' `native` backend does not
    return: on GPUs pass `_native_flash` or `_native_cudnn`. Every rank must call this.
    """
    check_context_parallel(int(transformer.config.num_attention_heads), ulysses_degree, ring_degree)
    context_parallel.enable(transformer, ulysses_degree, ring_degree, attention_backend)
