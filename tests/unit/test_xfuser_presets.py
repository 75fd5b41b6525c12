"""The xFuser service's synthetic pipelines: every tiny one generates on CPU (square and 512x256),
reproducibly per seed; the tiny shapes suit xFuser's splits; every full one builds on the meta device."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from deployments.xfuser.presets import FAMILIES, build_pipeline, configs

PIPELINES = {
    "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline", "pixart_alpha": "PixArtAlphaPipeline",
    "pixart_sigma": "PixArtSigmaPipeline", "hunyuandit": "HunyuanDiTPipeline",
}
CALL_KWARGS: dict[str, dict[str, Any]] = {  # each model's default guidance, so CFG runs where it does in prod
    "sd3": {"guidance_scale": 7.0},
    "flux": {"guidance_scale": 3.5, "max_sequence_length": 32},
    "pixart_alpha": {"guidance_scale": 4.5, "use_resolution_binning": False, "clean_caption": False},
    "pixart_sigma": {"guidance_scale": 4.5, "use_resolution_binning": False, "clean_caption": False},
    "hunyuandit": {"guidance_scale": 5.0, "use_resolution_binning": False},
}
FULL_TRANSFORMER_PARAMS = {  # the published models' sizes
    "sd3": 2_028_328_000, "flux": 11_901_408_320, "pixart_alpha": 611_349_152, "pixart_sigma": 610_856_096,
    "hunyuandit": 1_499_952_032,
}


@pytest.fixture(scope="module")
def pipes() -> dict[str, Any]:
    built = {}
    for family in FAMILIES:
        torch.manual_seed(0)
        built[family] = build_pipeline(family, "tiny", "cpu", torch.float32)
    return built


def generate(pipe: Any, family: str, seed: int, width: int = 256, height: int = 256) -> torch.Tensor:
    out = pipe("a photo of a cat", width=width, height=height, num_inference_steps=2, output_type="pt",
               generator=torch.Generator().manual_seed(seed), **CALL_KWARGS[family])
    return out.images


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_generates_and_seeds_reproduce(pipes: dict[str, Any], family: str) -> None:
    pipe = pipes[family]
    assert type(pipe).__name__ == PIPELINES[family]
    a, b, c = generate(pipe, family, 0), generate(pipe, family, 0), generate(pipe, family, 1)
    assert a.shape == (1, 3, 256, 256) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_non_square(pipes: dict[str, Any], family: str) -> None:
    image = generate(pipes[family], family, 0, width=512, height=256)
    assert image.shape == (1, 3, 256, 512) and torch.isfinite(image).all()


def blocks(family: str, transformer: Any) -> list[Any]:
    if family == "flux":
        return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    return list(transformer.blocks if family == "hunyuandit" else transformer.transformer_blocks)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_shapes_suit_xfuser(pipes: dict[str, Any], family: str) -> None:
    pipe, cfg = pipes[family], configs(family, "tiny")
    t, vae = pipe.transformer.config, pipe.vae.config
    layers = blocks(family, pipe.transformer)
    heads = {(block.attn if hasattr(block, "attn") else block.attn1).heads for block in layers}
    assert heads == {t.num_attention_heads} and t.num_attention_heads % 4 == 0  # Ulysses degree 2 and 4
    assert t.attention_head_dim in (8, 16)
    assert len(layers) >= 4 and len(layers) % 4 == 0  # PipeFusion: 2 or 4 stages, none empty
    assert len(vae.block_out_channels) == 4 and pipe.vae_scale_factor == 8  # 256 px -> 32x32 latents
    if family == "flux":  # 2x2 packing in the pipeline, patch size 1 in the model
        assert t.patch_size == 1 and t.in_channels == 4 * vae.latent_channels
        assert sum(t.axes_dims_rope) == t.attention_head_dim
        assert t.joint_attention_dim == pipe.text_encoder_2.config.d_model
        assert t.pooled_projection_dim == pipe.text_encoder.config.hidden_size
        return
    assert t.patch_size == 2 and t.in_channels == vae.latent_channels
    if family == "sd3":
        assert t.out_channels == vae.latent_channels and t.pos_embed_max_size * 2 * 8 >= 512
        assert t.caption_projection_dim == t.num_attention_heads * t.attention_head_dim
        clips = (pipe.text_encoder.config, pipe.text_encoder_2.config)
        assert t.pooled_projection_dim == sum(c.projection_dim for c in clips)
        assert t.joint_attention_dim == pipe.text_encoder_3.config.d_model >= sum(c.hidden_size for c in clips)
    elif family.startswith("pixart"):
        assert t.out_channels == 2 * vae.latent_channels  # learned sigma
        assert t.caption_channels == pipe.text_encoder.config.d_model
        assert t.cross_attention_dim == t.num_attention_heads * t.attention_head_dim
    else:
        assert t.learn_sigma and pipe.transformer.out_channels == 2 * vae.latent_channels
        assert t.num_layers % 2 == 0 and t.hidden_size == t.num_attention_heads * t.attention_head_dim
        assert t.cross_attention_dim == pipe.text_encoder.config.hidden_size
        assert t.cross_attention_dim_t5 == pipe.text_encoder_2.config.d_model
        assert (t.text_len, t.text_len_t5) == (77, 256)  # the lengths the pipeline pads its prompts to
    assert cfg["transformer"] == {k: t[k] for k in cfg["transformer"]}


@pytest.mark.parametrize("family", FAMILIES)
def test_full_pipelines_build_on_meta(family: str) -> None:
    pipe = build_pipeline(family, "full", "meta", torch.bfloat16)  # the real architectures, no memory
    assert type(pipe).__name__ == PIPELINES[family]
    params = list(pipe.transformer.parameters())
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in params)
    assert sum(p.numel() for p in params) == FULL_TRANSFORMER_PARAMS[family]
    assert pipe.transformer.config.num_attention_heads % 4 == 0 and len(blocks(family, pipe.transformer)) >= 4
    assert pipe.vae_scale_factor == 8


def test_weights_come_from_the_callers_rng() -> None:
    def weights(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return next(build_pipeline("pixart_sigma", "tiny", "cpu", torch.float32).transformer.parameters())

    assert torch.equal(weights(0), weights(0)) and not torch.equal(weights(0), weights(1))


def test_unknown_family_or_preset() -> None:
    with pytest.raises(ValueError, match="preset"):
        build_pipeline("sd3", "small", "cpu", torch.float32)
    with pytest.raises(ValueError, match="family"):
        build_pipeline("sdxl", "tiny", "cpu", torch.float32)
