"""Image autoencoders the services share: the SD/SDXL VAE (4 latent channels), the 16-channel
SD3/Flux VAE, a tiny 8x VAE for tests, and TAESD/TAESDXL for previews.

Full configs are the published architectures (random weights); `tiny` keeps the 8x downsampling so
image sizes behave as in prod. Build inside `serve_app.models.source.build_on(device, dtype)`.
"""

from __future__ import annotations

from typing import Any

SD_VAE: dict[str, Any] = {  # Stable Diffusion / SDXL's AutoencoderKL: 4 latent channels, 8x
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2, "norm_num_groups": 32,
}
SDXL_VAE: dict[str, Any] = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
FLUX_VAE: dict[str, Any] = {  # FLUX.1's 16-channel VAE with its shift and scale
    **SD_VAE, "latent_channels": 16, "sample_size": 1024, "use_quant_conv": False, "use_post_quant_conv": False,
    "shift_factor": 0.1159, "scaling_factor": 0.3611, "force_upcast": True,
}
SD3_VAE: dict[str, Any] = {**FLUX_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609}

TINY_VAE: dict[str, Any] = {  # 4 levels, 8x, 4 channels wide
    "in_channels": 3, "out_channels": 3, "block_out_channels": (4, 4, 4, 4),
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1, "norm_num_groups": 1, "sample_size": 256,
}

TINY_AUTOENCODER: dict[str, Any] = {"encoder_block_out_channels": (4, 4, 4, 4),
                                    "decoder_block_out_channels": (4, 4, 4, 4), "num_encoder_blocks": (1, 1, 1, 1),
                                    "num_decoder_blocks": (1, 1, 1, 1), "latent_channels": 4}


def autoencoder_kl(config: dict[str, Any]) -> Any:
    """An `AutoencoderKL` in eval mode."""
    from diffusers import AutoencoderKL

    vae: Any = AutoencoderKL(**config)
    return vae.eval()


def tiny_autoencoder(preset: str, device: str, dtype: Any) -> Any:
    """An `AutoencoderTiny` (TAESD/TAESDXL's architecture for `full`, its defaults) with random weights."""
    from diffusers import AutoencoderTiny

    from serve_app.models.source import build_on

    with build_on(device, dtype):
        model: Any = AutoencoderTiny(**(TINY_AUTOENCODER if preset == "tiny" else {}))
    return model.eval()
