"""DiffRhythm's DiT: a bidirectional Llama-block transformer over 44.1 kHz VAE latents.

Written from the published architecture (ASLP-lab/DiffRhythm `model/dit.py`, config
`diffrhythm-1b.json`); module and parameter names follow the published `cfm_model.pt` state dict
(under its `transformer.` prefix), so the checkpoint loads without renaming.

Per call: `c = time(t) + start_time(s) + duration(d)` (sinusoid 256 -> MLP -> 512; the duration
embedding exists only in the 6144-frame model); lyrics tokens -> embedding + sinusoidal positions +
ConvNeXt-V2 blocks; `proj(cat(x, cond, text, style, c))` + a grouped convolutional position
embedding; 16 Llama decoder layers with RoPE, the first 8 each followed by a text-fusion residual;
AdaLN-zero final norm on `c` and a projection back to the 64 latent channels.

Transformers 5 changed `LlamaDecoderLayer`: it returns a tensor, and SDPA attention becomes causal
when no mask is given. The published blocks attend both ways (an all-zero additive mask), so every
block here has `is_causal = False` and is also called with `is_causal=False`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

COND_DIM = 512  # time/style conditioning width, fixed in the published code (MuQ-MuLan's latent size)
FREQ_DIM = 256  # sinusoidal features fed to each timestep MLP


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of the DiT; `full()` is the published `diffrhythm-1b.json`."""

    dim: int = 2048
    depth: int = 16
    heads: int = 32  # the published code leaves Llama's default (32): 64-d heads
    ff_mult: int = 4
    text_dim: int = 512
    conv_layers: int = 4
    mel_dim: int = 64
    text_num_embeds: int = 363
    max_frames: int = 6144  # 6144: the "full" model (285 s) with a duration embedding; 2048: 95 s only

    @property
    def has_duration_embed(self) -> bool:
        return self.max_frames == 6144


def sinusoid(t: torch.Tensor, dim: int = FREQ_DIM, scale: float = 1000.0) -> torch.Tensor:
    """`[b] -> [b, dim]`: sin/cos features of `scale * t` (F5-TTS style, as published)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    args = scale * t.float()[:, None] * freqs[None, :]
    return torch.cat((args.sin(), args.cos()), dim=-1)


class TimestepEmbedding(nn.Module):
    """A scalar in [0, 1] -> `[b, COND_DIM]` (sinusoid -> Linear -> SiLU -> Linear)."""

    def __init__(self, dim: int = COND_DIM) -> None:
        super().__init__()
        self.time_mlp = nn.Sequential(nn.Linear(FREQ_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_mlp(sinusoid(t).to(next(self.parameters()).dtype))  # type: ignore[no-any-return]


class GRN(nn.Module):
    """Global response normalisation (ConvNeXt-V2) over the time axis."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.norm(x, p=2, dim=1, keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    """Depthwise conv (k7) -> LayerNorm -> pointwise MLP with GELU and GRN, residual."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.grn = GRN(hidden)
        self.pwconv2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x.transpose(1, 2)).transpose(1, 2)
        return x + self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(h)))))  # type: ignore[no-any-return]


def sincos_table(dim: int, length: int, theta: float = 10000.0) -> torch.Tensor:
    """`[length, dim]`: cos of position x frequency, then sin (the text positions' table)."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TextEmbedding(nn.Module):
    """Frame-aligned lyric tokens `[b, n]` (0 = no lyric) -> `[b, n, text_dim]`."""

    def __init__(self, num_embeds: int, dim: int, max_pos: int, conv_layers: int) -> None:
        super().__init__()
        self.max_pos = max_pos
        self.text_embed = nn.Embedding(num_embeds + 1, dim)
        self.freqs_cis = nn.Buffer(sincos_table(dim, max_pos), persistent=False)
        self.text_blocks = nn.Sequential(*[ConvNeXtV2Block(dim, dim * 2) for _ in range(conv_layers)])

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        x = self.text_embed(text)
        positions = torch.arange(text.shape[1], device=text.device).clamp(max=self.max_pos - 1)
        return self.text_blocks(x + self.freqs_cis[positions].to(x.dtype))  # type: ignore[no-any-return]


class ConvPositionEmbedding(nn.Module):
    """Two grouped convolutions (kernel 31, 16 groups) with Mish, over time."""

    def __init__(self, dim: int, kernel: int = 31, groups: int = 16) -> None:
        super().__init__()
        self.conv1d = nn.Sequential(
            nn.Conv1d(dim, dim, kernel, groups=groups, padding=kernel // 2), nn.Mish(),
            nn.Conv1d(dim, dim, kernel, groups=groups, padding=kernel // 2), nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1d(x.transpose(1, 2)).transpose(1, 2)  # type: ignore[no-any-return]


class InputEmbedding(nn.Module):
    """`cat(x, cond, text, style, c)` -> model width, plus a grouped conv position embedding."""

    def __init__(self, mel_dim: int, text_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(mel_dim * 2 + text_dim + COND_DIM * 2, out_dim)
        self.conv_pos_embed = ConvPositionEmbedding(out_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, text: torch.Tensor, style: torch.Tensor,
                c: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        h = self.proj(torch.cat((x, cond, text, style[:, None].expand(-1, n, -1), c[:, None].expand(-1, n, -1)), -1))
        return self.conv_pos_embed(h) + h  # type: ignore[no-any-return]


class AdaLayerNormZeroFinal(nn.Module):
    """LayerNorm (no affine) modulated by `linear(silu(c))` -> (scale, shift)."""

    def __init__(self, dim: int, cond_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(cond_dim, dim * 2)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(nn.functional.silu(c)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale)[:, None] + shift[:, None]  # type: ignore[no-any-return]


class DiT(nn.Module):
    """The DiffRhythm transformer (`transformer.*` in `cfm_model.pt`)."""

    def __init__(self, config: DiTConfig) -> None:
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

        super().__init__()
        self.config = config
        self.dim, self.depth = config.dim, config.depth
        self.time_embed = TimestepEmbedding()
        self.start_time_embed = TimestepEmbedding()
        self.duration_time_embed = TimestepEmbedding() if config.has_duration_embed else None
        self.text_embed = TextEmbedding(config.text_num_embeds, config.text_dim, config.max_frames, config.conv_layers)
        self.input_embed = InputEmbedding(config.mel_dim, config.text_dim, config.dim)
        llama = LlamaConfig(hidden_size=config.dim, intermediate_size=config.dim * config.ff_mult, hidden_act="silu",
                            num_attention_heads=config.heads, num_key_value_heads=config.heads,
                            max_position_embeddings=config.max_frames, rms_norm_eps=1e-6)
        llama._attn_implementation = "sdpa"
        self.transformer_blocks = nn.ModuleList([LlamaDecoderLayer(llama, layer_idx=i) for i in range(config.depth)])
        for block in self.transformer_blocks:
            cast(Any, block).self_attn.is_causal = False  # bidirectional, as the published all-zero mask made it
        self.rotary_emb = LlamaRotaryEmbedding(config=llama)
        self.text_fusion_linears = nn.ModuleList(
            [nn.Sequential(nn.Linear(config.text_dim, config.dim), nn.SiLU()) for _ in range(config.depth // 2)])
        self.norm_out = AdaLayerNormZeroFinal(config.dim, COND_DIM)
        self.proj_out = nn.Linear(config.dim, config.mel_dim)

    def conditioning(self, t: torch.Tensor, start: torch.Tensor, duration: torch.Tensor) -> torch.Tensor:
        """`c = time(t) + start(start) + duration(duration)`, each `[b]` -> `[b, 512]`."""
        c = self.time_embed(t) + self.start_time_embed(start)
        if self.duration_time_embed is not None:
            c = c + self.duration_time_embed(duration)
        return c

    def forward(self, x: torch.Tensor, cond: torch.Tensor, text_embed: torch.Tensor, style: torch.Tensor,
                c: torch.Tensor) -> torch.Tensor:
        """Predict the flow.

        Args:
            x: noisy latents `[b, n, mel_dim]`.
            cond: known latents (zeros when generating from scratch) `[b, n, mel_dim]`.
            text_embed: `self.text_embed(tokens)` `[b, n, text_dim]`, computed once per song and branch.
            style: style embedding `[b, 512]`.
            c: `self.conditioning(...)` `[b, 512]`.

        Returns:
            The velocity `[b, n, mel_dim]`.
        """
        h = self.input_embed(x, cond, text_embed, style, c)
        positions = torch.arange(h.shape[1], device=h.device)[None].expand(h.shape[0], -1)
        rope = self.rotary_emb(h, positions)
        for i, block in enumerate(self.transformer_blocks):
            h = block(h, attention_mask=None, position_embeddings=rope, is_causal=False)
            if i < self.depth // 2:
                h = h + self.text_fusion_linears[i](text_embed)
        return self.proj_out(self.norm_out(h, c))  # type: ignore[no-any-return]


FULL = DiTConfig()
TINY = DiTConfig(dim=128, depth=2, heads=2, ff_mult=2, text_dim=32, conv_layers=1)
PRESETS = {"tiny": TINY, "full": FULL}
