"""DiffRhythm's VAE: the published TorchScript file, its presets, and a chunked, overlapping decode.

The published `vae_model.pt` (ASLP-lab/DiffRhythm-vae) is a TorchScript module with
`decode_export(latents [b, 64, n]) -> audio [b, 2, n * 2048]` and `encode_export(audio) -> [b, 128, n]`
(mean and scale) at 44.1 kHz stereo: it loads with `torch.jit.load`, no model code needed. The
presets are diffusers' `AutoencoderOobleck` (the Stable Audio VAE family: 2048x down-sampling,
64 latent channels) with random weights, traced into the same format: `full` is Oobleck's
default (published) configuration, `tiny` narrows its channels to 4 (Oobleck's encoder width is
also its output width, so the tiny encoder's 4 channels are widened to the published 128 by a 1x1
convolution; the service never encodes).

A 285 s song is 6136 latent frames; decoding it in one call needs tens of GB of activations, so it
is decoded in windows of 128 frames overlapping by 32, keeping each window's middle.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

HOP = 2048
CHANNELS = 2
LATENT_CHANNELS = 64
OOBLECK_CONFIGS: dict[str, dict[str, Any]] = {
    "full": {},  # AutoencoderOobleck's defaults: hidden 128, ratios [2, 4, 4, 8, 8], multiples [1, 2, 4, 8, 16]
    "tiny": {"encoder_hidden_size": 4, "decoder_channels": 4, "channel_multiples": [1, 1, 1, 1, 1]},
}


class OobleckExport(nn.Module):
    """The export interface of the published file, around an `AutoencoderOobleck`."""

    def __init__(self, vae: Any, encoded_channels: int = 2 * LATENT_CHANNELS) -> None:
        super().__init__()
        self.vae = vae
        width = vae.config.encoder_hidden_size
        self.widen = nn.Conv1d(width, encoded_channels, 1) if width != encoded_channels else nn.Identity()

    def decode_export(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decoder(latents)  # type: ignore[no-any-return]

    def encode_export(self, audio: torch.Tensor) -> torch.Tensor:
        return self.widen(self.vae.encoder(audio))  # type: ignore[no-any-return]


def build_preset(preset: str, path: str) -> None:
    """Trace a random-weight `AutoencoderOobleck` preset into a TorchScript file at `path` (CPU, float32).

    Call under a seeded RNG for reproducible weights.
    """
    from diffusers import AutoencoderOobleck

    example_latents = torch.randn(1, LATENT_CHANNELS, 2)
    example_audio = torch.randn(1, CHANNELS, 2 * HOP)
    # Oobleck's residual units compare lengths that are always equal here (a constant in the trace);
    # torch also flags weight_norm and TorchScript as deprecated. None of it changes the file.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        vae: Any = AutoencoderOobleck(**OOBLECK_CONFIGS[preset])
        vae.eval()
        traced = torch.jit.trace_module(OobleckExport(vae), {"decode_export": example_latents,
                                                              "encode_export": example_audio}, check_trace=False)
        torch.jit.save(traced, path)


def load(path: str, device: str, dtype: torch.dtype = torch.float32) -> Any:
    """The TorchScript VAE on `device` in `dtype`, in eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": the published format
        module = torch.jit.load(path, map_location="cpu")
    return module.to(device=device, dtype=dtype).eval()


def windows(total: int, chunk: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """`(start, stop, keep_from, keep_to)` in latent frames covering `[0, total)`.

    Window `i` decodes `[start, stop)` and keeps `[keep_from, keep_to)`: half the overlap is cut
    from every inner edge, so neighbouring windows meet in the middle of their shared frames.
    """
    if total <= chunk:
        return [(0, total, 0, total)]
    hop = chunk - overlap
    starts = list(range(0, total - chunk + 1, hop))
    if starts[-1] + chunk < total:
        starts.append(total - chunk)
    out, kept = [], 0
    for i, start in enumerate(starts):
        stop = start + chunk
        keep_to = total if i == len(starts) - 1 else stop - overlap // 2
        out.append((start, stop, kept, keep_to))
        kept = keep_to
    return out


@torch.inference_mode()
def decode(vae: Any, latents: torch.Tensor, chunk: int = 128, overlap: int = 32) -> torch.Tensor:
    """`[1, 64, n]` latents -> `[1, 2, n * 2048]` float32 audio, window by window."""
    param = next(vae.parameters())
    latents = latents.to(device=param.device, dtype=param.dtype)
    total = latents.shape[-1]
    out = torch.empty(latents.shape[0], CHANNELS, total * HOP, dtype=torch.float32, device=param.device)
    for start, stop, keep_from, keep_to in windows(total, chunk, overlap):
        audio = vae.decode_export(latents[..., start:stop]).float()
        out[..., keep_from * HOP:keep_to * HOP] = audio[..., (keep_from - start) * HOP:(keep_to - start) * HOP]
    return out
