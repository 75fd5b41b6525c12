"""Random datasets shaped like the preprocessor's output, for the warm-up, tests and benchmarks.

The shapes follow a Flux transformer config: latents `[N, in_channels / 4, res/8, res/8]`, T5
embeddings `[N, 512, joint_attention_dim]`, CLIP pooled embeddings `[N, pooled_projection_dim]`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deployments.flux_lora.data import T5_SEQUENCE_LENGTH, VAE_DOWNSAMPLE, encode_preprocessed


def synthetic_tensors(config: Mapping[str, Any], num_images: int, resolution: int, *, dtype: Any = None,
                      device: Any = "cpu", seed: int = 0) -> dict[str, Any]:
    """`latents`, `text_embeddings` and `pooled_embeddings` of `num_images` random samples.

    Args:
        config: the transformer's config (`transformer.config`, or a preset's dict).
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    side = resolution // VAE_DOWNSAMPLE
    shapes = {"latents": (num_images, config["in_channels"] // 4, side, side),
              "text_embeddings": (num_images, T5_SEQUENCE_LENGTH, config["joint_attention_dim"]),
              "pooled_embeddings": (num_images, config["pooled_projection_dim"])}
    return {name: torch.randn(shape, generator=g).to(device=device, dtype=dtype or torch.float32)
            for name, shape in shapes.items()}


def synthetic_preprocessed(config: Mapping[str, Any], num_images: int, resolution: int, *, dtype: Any = None,
                           seed: int = 0, trigger_word: str = "ohwx") -> bytes:
    """A whole preprocessed file (`data.py` format) of random samples."""
    tensors = synthetic_tensors(config, num_images, resolution, dtype=dtype, seed=seed)
    captions = [f"{trigger_word} synthetic image {i}" for i in range(num_images)]
    return encode_preprocessed(**tensors, captions=captions, trigger_word=trigger_word, resolution=resolution)
