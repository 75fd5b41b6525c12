"""Matrix-Game 2.0's causal Wan DiT (CausalWanModel), key-compatible with the published checkpoints.

A Wan 2.1 1.3B image-to-video transformer without a text branch: the patchified latent (noise, mask and
image-condition channels) goes through 30 blocks of AdaLN-modulated self-attention (3-axis RoPE,
q/k RMS norm across heads), cross-attention to CLIP image tokens (`img_emb`), an action module in the
configured blocks, and a tanh-GELU FFN; the head predicts the flow. Parameter names are the published
ones (`patch_embedding`, `time_embedding.{0,2}`, `time_projection.1`, `blocks.N.{norm3,self_attn,
cross_attn,ffn.{0,2},modulation,action_model}`, `head.{head,modulation}`, `img_emb.proj.{0,1,3,4}`).

Two ways to run it:
- `forward_block`: one block of latent frames at a stream position, through a `StreamCache` (the
  published KV-cached inference);
- `forward_sequence`: a whole clip with block-causal local-window masks (the published training path),
  against which the streaming path is checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from deployments.matrix_game.action_module import ActionModule
from deployments.matrix_game.attention import KeyAccess, attend, block_causal_frame_mask
from deployments.matrix_game.configs import DiTConfig
from deployments.matrix_game.kv_cache import LayerCache, StreamCache, WindowCache
from deployments.matrix_game.rope import Rope, action_rope, apply_rope, dit_rope


@dataclass(frozen=True)
class ActionInputs:
    """Per-latent-frame action windows reaching the model (see `actions.py`)."""

    keyboard: torch.Tensor  # [B, frames, window, keys]
    mouse: torch.Tensor | None  # [B, frames, window, 2], None without a mouse path


class RMSNorm(nn.Module):
    """Wan's RMS norm (float32 statistics, learned scale)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class Attention(nn.Module):
    """q/k/v/o projections with q/k RMS norm across heads (self- and cross-attention share the names)."""

    def __init__(self, dim: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def heads_of(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1))  # [B, L, H, D]

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys/values of the image context, [B, H, L, D]."""
        return (self.heads_of(self.norm_k(self.k(context))).transpose(1, 2),
                self.heads_of(self.v(context)).transpose(1, 2))


class Block(nn.Module):
    """One causal Wan block; `action_model` only in the blocks the action config names."""

    def __init__(self, cfg: DiTConfig, index: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = Attention(cfg.dim, cfg.num_heads, cfg.eps)
        self.norm3 = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = Attention(cfg.dim, cfg.num_heads, cfg.eps)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)
        self.action_model = ActionModule(cfg.action) if index in cfg.action.blocks else None

    def forward(self, x: torch.Tensor, e: torch.Tensor, frames: int, tokens: int, rope: Rope, action_rope_: Rope,
                context: tuple[torch.Tensor, torch.Tensor], actions: ActionInputs, access: KeyAccess,
                cache: LayerCache | None) -> torch.Tensor:
        """x [B, F*S, dim]; e [B, F, 6, dim] (per-frame time modulation); context: cross-attention k, v."""
        b = x.shape[0]
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation[:, None] + e).unbind(2)  # [B, F, dim]

        def modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return (h.view(b, frames, tokens, -1) * (1 + scale[:, :, None]) + shift[:, :, None]).flatten(1, 2)

        def gated(h: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
            return (h.view(b, frames, tokens, -1) * gate[:, :, None]).flatten(1, 2)

        h = modulate(self.norm1(x), shift1, scale1)
        sa = self.self_attn
        q = apply_rope(sa.heads_of(sa.norm_q(sa.q(h))), rope).transpose(1, 2)
        k = apply_rope(sa.heads_of(sa.norm_k(sa.k(h))), rope).transpose(1, 2)
        v = sa.heads_of(sa.v(h)).transpose(1, 2)
        y = attend(q, k, v, access, cache.self_attn if cache else None, tokens, tokens)
        x = x + gated(sa.o(y.transpose(1, 2).flatten(2)), gate1)

        ca = self.cross_attn
        q = ca.heads_of(ca.norm_q(ca.q(self.norm3(x)))).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, *context)
        x = x + ca.o(y.transpose(1, 2).flatten(2))
        if self.action_model is not None:
            x = self.action_model(x, frames, tokens, action_rope_, actions.mouse, actions.keyboard, access, cache)
        return x + gated(self.ffn(modulate(self.norm2(x), shift2, scale2)), gate2)


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2])
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor, frames: int, tokens: int) -> torch.Tensor:
        """x [B, F*S, dim]; e [B, F, dim] (the time embedding before the projection)."""
        shift, scale = (self.modulation[:, None] + e[:, :, None]).unbind(2)
        h = self.norm(x).view(x.shape[0], frames, tokens, -1) * (1 + scale[:, :, None]) + shift[:, :, None]
        return self.head(h.flatten(1, 2))


class ImageProjection(nn.Module):
    """`img_emb`: CLIP tokens -> DiT width (LayerNorm, Linear, GELU, Linear, LayerNorm)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, in_dim), nn.GELU(),
                                  nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class CausalWanDiT(nn.Module):
    """The causal, action-conditioned Wan DiT of Matrix-Game 2.0."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        if cfg.local_attn_size < cfg.num_frame_per_block:
            raise ValueError("local_attn_size must cover at least one block")
        self.cfg = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.head = Head(cfg)
        self.img_emb = ImageProjection(cfg.image_dim, cfg.dim)

    # --- shared pieces --------------------------------------------------------------------------
    def _blocks(self) -> list[Block]:
        return [cast(Block, block) for block in self.blocks]

    def _embed(self, latents: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        x = self.patch_embedding(torch.cat([latents, cond], dim=1).to(self.patch_embedding.weight.dtype))
        grid = (x.shape[2], x.shape[3], x.shape[4])
        return x.flatten(2).transpose(1, 2), grid

    def _time(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """timesteps [B, F] -> (e [B, F, dim], e0 [B, F, 6, dim])."""
        b, f = timesteps.shape
        sinusoid = get_timestep_embedding(timesteps.flatten().float(), self.cfg.freq_dim, flip_sin_to_cos=True,
                                          downscale_freq_shift=0)
        e = self.time_embedding(sinusoid.to(self.patch_embedding.weight.dtype))
        e0 = self.time_projection(e).unflatten(1, (6, self.cfg.dim))
        return e.view(b, f, -1), e0.view(b, f, 6, -1)

    def _unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        f, h, w = grid
        pt, ph, pw = self.cfg.patch_size
        x = x.view(x.shape[0], f, h, w, pt, ph, pw, self.cfg.out_dim)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(x.shape[0], self.cfg.out_dim, f * pt, h * ph, w * pw)

    def _run(self, latents: torch.Tensor, cond: torch.Tensor, timesteps: torch.Tensor,
             contexts: list[tuple[torch.Tensor, torch.Tensor]], actions: ActionInputs, start_frame: int,
             access: KeyAccess, caches: list[LayerCache] | None) -> torch.Tensor:
        x, grid = self._embed(latents, cond)
        frames, tokens = grid[0], grid[1] * grid[2]
        e, e0 = self._time(timesteps)
        rope = dit_rope(self.cfg.head_dim, start_frame, frames, grid[1], grid[2], x.device)
        a = self.cfg.action
        a_rope = action_rope(a.rope_dim_list, start_frame, frames, x.device, a.rope_theta)
        for i, block in enumerate(self.blocks):
            x = block(x, e0, frames, tokens, rope, a_rope, contexts[i], actions, access,
                      caches[i] if caches is not None else None)
        return self._unpatchify(self.head(x, e, frames, tokens), grid)

    # --- streaming --------------------------------------------------------------------------------
    def new_stream(self, clip_tokens: torch.Tensor, frame_tokens: int) -> StreamCache:
        """Empty caches for one stream, with the image context's cross-attention keys/values.

        Args:
            clip_tokens: CLIP features of the seed image [B, tokens, image_dim].
            frame_tokens: DiT tokens per latent frame (880 at 352x640).
        """
        cfg, a = self.cfg, self.cfg.action
        b, device, dtype = clip_tokens.shape[0], clip_tokens.device, self.patch_embedding.weight.dtype
        window = cfg.local_attn_size
        context = self.img_emb(clip_tokens.to(dtype))
        layers = []
        for block in self._blocks():
            layer = LayerCache(WindowCache.empty(b, cfg.num_heads, window, frame_tokens, cfg.head_dim, device, dtype))
            layer.cross_keys, layer.cross_values = block.cross_attn.context_kv(context)
            if block.action_model is not None:
                if a.enable_mouse:
                    layer.mouse = WindowCache.empty(b * frame_tokens, a.heads_num, window, 1,
                                                    a.mouse_hidden_dim // a.heads_num, device, dtype)
                if a.enable_keyboard:
                    layer.keyboard = WindowCache.empty(b, a.heads_num, window, 1,
                                                       a.keyboard_hidden_dim // a.heads_num, device, dtype)
            layers.append(layer)
        return StreamCache(layers=layers, window=window, block=cfg.num_frame_per_block)

    def forward_block(self, latents: torch.Tensor, cond: torch.Tensor, timestep: torch.Tensor,
                      actions: ActionInputs, stream: StreamCache) -> torch.Tensor:
        """Flow prediction for the current block of `stream` (call `stream.begin_block()` first).

        Args:
            latents: noisy (or, for the context pass, clean) latents [B, 16, F, h, w].
            cond: mask + image-condition latents of these frames [B, 20, F, h, w].
            timestep: [B] or [B, F] flow-matching timesteps (0..1000).
            actions: the frames' action windows.
        Returns:
            the flow prediction [B, 16, F, h, w].
        """
        if stream.blocks == 0:
            raise RuntimeError("call stream.begin_block() before forward_block")
        b, frames = latents.shape[0], latents.shape[2]
        if frames != stream.block:
            raise ValueError(f"a block has {stream.block} latent frames, got {frames}")
        t = timestep.reshape(b, -1).expand(b, frames)
        contexts = [layer.context() for layer in stream.layers]
        access = KeyAccess(valid_frames=stream.valid_frames)
        return self._run(latents, cond, t, contexts, actions, stream.start_frame, access, stream.layers)

    # --- whole clip (reference) -------------------------------------------------------------------
    def forward_sequence(self, latents: torch.Tensor, cond: torch.Tensor, timesteps: torch.Tensor,
                         clip_tokens: torch.Tensor, actions: ActionInputs) -> torch.Tensor:
        """Flow prediction for a whole clip [B, 16, T, h, w] with block-causal local-window masks.

        `timesteps` is [B, T]: per-frame timesteps, so a clip can hold clean earlier blocks (t = 0)
        next to a noisy current block, which is what the streaming path computes.
        """
        frames = latents.shape[2]
        mask = block_causal_frame_mask(frames, self.cfg.num_frame_per_block, self.cfg.local_attn_size,
                                       latents.device)
        context = self.img_emb(clip_tokens.to(self.patch_embedding.weight.dtype))
        contexts = [block.cross_attn.context_kv(context) for block in self._blocks()]
        return self._run(latents, cond, timesteps, contexts, actions, 0, KeyAccess(frame_mask=mask), None)
