"""Matrix-Game 2.0's action module: keyboard and mouse conditioning inside a DiT block.

Module and parameter names follow the published checkpoints (`blocks.N.action_model.*`). Per latent
frame j the module sees the actions of video frames 4j-12 .. 4j-1 (before frame 0: frame 0's action),
a window built by `deployments.matrix_game.actions`:
- mouse (pitch/yaw deltas; universal and gta_drive): for each spatial token, the token's hidden state
  and the flattened mouse window go through `mouse_mlp`, then a self-attention over latent frames
  (`t_qkv`, RoPE on the frame axis, the rolling window) and `proj_mouse`, added to the hidden state;
- keyboard (one-hot keys): the window is embedded per frame (`keyboard_embed`), flattened, projected to
  keys/values (`keyboard_attn_kv`); every token's query (`mouse_attn_q`, a published name although the
  keyboard path uses it) attends over latent frames with RoPE; `proj_keyboard` adds the result.
The q/k RMS norms of both paths normalise without applying their stored `weight` (as published).
"""

from __future__ import annotations

import torch
from torch import nn

from deployments.matrix_game.attention import KeyAccess, attend
from deployments.matrix_game.configs import ActionConfig
from deployments.matrix_game.kv_cache import LayerCache
from deployments.matrix_game.rope import Rope, apply_rope


class UnweightedRMSNorm(nn.Module):
    """RMS normalisation over the last dim; `weight` is kept for the checkpoint but not applied."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x)


def _norm(enabled: bool, dim: int) -> nn.Module:
    return UnweightedRMSNorm(dim) if enabled else nn.Identity()


class ActionModule(nn.Module):
    """Mouse and keyboard conditioning of one DiT block."""

    def __init__(self, cfg: ActionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.heads = cfg.heads_num
        window = cfg.window_frames
        if cfg.enable_keyboard:
            self.keyboard_embed = nn.Sequential(
                nn.Linear(cfg.keyboard_dim_in, cfg.hidden_size), nn.SiLU(), nn.Linear(cfg.hidden_size, cfg.hidden_size))
        if cfg.enable_mouse:
            c = cfg.mouse_hidden_dim
            self.mouse_mlp = nn.Sequential(
                nn.Linear(cfg.mouse_dim_in * window + cfg.img_hidden_size, c), nn.GELU(approximate="tanh"),
                nn.Linear(c, c), nn.LayerNorm(c))
            self.t_qkv = nn.Linear(c, 3 * c, bias=cfg.qkv_bias)
            self.img_attn_q_norm = _norm(cfg.qk_norm, c // cfg.heads_num)
            self.img_attn_k_norm = _norm(cfg.qk_norm, c // cfg.heads_num)
            self.proj_mouse = nn.Linear(c, cfg.img_hidden_size, bias=cfg.qkv_bias)
        if cfg.enable_keyboard:
            k = cfg.keyboard_hidden_dim
            self.key_attn_q_norm = _norm(cfg.qk_norm, k // cfg.heads_num)
            self.key_attn_k_norm = _norm(cfg.qk_norm, k // cfg.heads_num)
            self.mouse_attn_q = nn.Linear(cfg.img_hidden_size, k, bias=cfg.qkv_bias)
            self.keyboard_attn_kv = nn.Linear(cfg.hidden_size * window, 2 * k, bias=cfg.qkv_bias)
            self.proj_keyboard = nn.Linear(k, cfg.img_hidden_size, bias=cfg.qkv_bias)

    def forward(self, x: torch.Tensor, frames: int, tokens: int, rope: Rope, mouse: torch.Tensor | None,
                keyboard: torch.Tensor | None, access: KeyAccess, cache: LayerCache | None) -> torch.Tensor:
        """Add action conditioning to `x`.

        Args:
            x: hidden states [B, frames * tokens, dim], frame-major.
            frames, tokens: latent frames and spatial tokens per frame in `x`.
            rope: the action RoPE of these frames ([frames, head_dim // 2] cos and sin).
            mouse: mouse windows [B, frames, window, mouse_dim] (None: no mouse path).
            keyboard: keyboard windows [B, frames, window, keys].
            access, cache: how attention reaches earlier frames (see `attention.py`).
        """
        if self.cfg.enable_mouse and mouse is not None:
            x = x + self._mouse(x, frames, tokens, rope, mouse, access, cache)
        if self.cfg.enable_keyboard and keyboard is not None:
            x = x + self._keyboard(x, frames, tokens, rope, keyboard, access, cache)
        return x

    def _mouse(self, x: torch.Tensor, frames: int, tokens: int, rope: Rope, mouse: torch.Tensor,
               access: KeyAccess, cache: LayerCache | None) -> torch.Tensor:
        b, _, dim = x.shape
        # One sequence over latent frames per spatial token: [(B S), F, dim].
        per_token = x.view(b, frames, tokens, dim).transpose(1, 2).reshape(b * tokens, frames, dim)
        window = mouse.flatten(2).to(x.dtype)  # [B, F, window * mouse_dim]
        window = window[:, None].expand(b, tokens, frames, window.shape[-1]).reshape(b * tokens, frames, -1)
        h = self.mouse_mlp(torch.cat([per_token, window], dim=-1))
        q, k, v = self.t_qkv(h).unflatten(-1, (3, self.heads, -1)).unbind(2)  # each [(B S), F, H, D]
        q = apply_rope(self.img_attn_q_norm(q), rope).transpose(1, 2)
        k = apply_rope(self.img_attn_k_norm(k), rope).transpose(1, 2)
        out = attend(q, k, v.transpose(1, 2), access, cache.mouse if cache else None, 1, 1)  # [(B S), H, F, D]
        out = out.transpose(1, 2).reshape(b, tokens, frames, -1).transpose(1, 2).reshape(b, frames * tokens, -1)
        return self.proj_mouse(out)

    def _keyboard(self, x: torch.Tensor, frames: int, tokens: int, rope: Rope, keyboard: torch.Tensor,
                  access: KeyAccess, cache: LayerCache | None) -> torch.Tensor:
        b = x.shape[0]
        embedded = self.keyboard_embed(keyboard.to(x.dtype)).flatten(2)  # [B, F, window * hidden]
        q = self.mouse_attn_q(x).unflatten(-1, (self.heads, -1))  # [B, F*S, H, D]
        k, v = self.keyboard_attn_kv(embedded).unflatten(-1, (2, self.heads, -1)).unbind(2)  # [B, F, H, D]
        q_rope = (rope[0].repeat_interleave(tokens, 0), rope[1].repeat_interleave(tokens, 0))
        q = apply_rope(self.key_attn_q_norm(q), q_rope).transpose(1, 2)
        k = apply_rope(self.key_attn_k_norm(k), rope).transpose(1, 2)
        # Keys are per latent frame and shared by every spatial token of every query frame.
        out = attend(q, k, v.transpose(1, 2), access, cache.keyboard if cache else None, tokens, 1)
        return self.proj_keyboard(out.transpose(1, 2).reshape(b, frames * tokens, -1))
