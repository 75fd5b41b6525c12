"""Rotary position embeddings of Matrix-Game 2.0's DiT and action modules.

Both rotate interleaved pairs (dims 2i, 2i+1) of each head by an angle per pair.
- DiT self-attention: a 3-axis RoPE over (latent frame, row, column) with theta 10000; a head of width d
  gives the frame axis d - 4*(d//6) dims and each spatial axis 2*(d//6) (44/42/42 for d = 128). Frame
  positions are absolute, so a block starting at latent frame s uses frame angles s..s+F-1.
- Action modules: the same pair rotation with theta 256 over `rope_dim_list` (8/28/28 of 64); the
  published table is built over a (frames, 1, 1) grid, so only the frame axis turns and the spatial dims
  keep angle 0 (an identity rotation).
Angles are computed in float64 and applied in float32, as the published code does.
"""

from __future__ import annotations

from typing import Any

import torch

Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each [tokens, pairs] float32


def axis_angles(dim: int, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Angles [len(positions), dim // 2] of one axis: position * theta^(-2i/dim)."""
    exponent = torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device)[: dim // 2] / dim
    return positions.to(torch.float64)[:, None] * torch.pow(theta, -exponent)[None, :]


def dit_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """(frame, row, column) dims of the DiT's 3-axis RoPE for one head."""
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def dit_rope(head_dim: int, start_frame: int, frames: int, height: int, width: int,
             device: Any, theta: float = 10000.0) -> Rope:
    """RoPE for `frames` latent frames of `height x width` tokens starting at `start_frame` (token order f, h, w)."""
    df, dh, dw = dit_axis_dims(head_dim)
    f = axis_angles(df, torch.arange(start_frame, start_frame + frames, device=device), theta)
    h = axis_angles(dh, torch.arange(height, device=device), theta)
    w = axis_angles(dw, torch.arange(width, device=device), theta)
    angles = torch.cat([
        f[:, None, None, :].expand(frames, height, width, -1),
        h[None, :, None, :].expand(frames, height, width, -1),
        w[None, None, :, :].expand(frames, height, width, -1),
    ], dim=-1).reshape(frames * height * width, -1)
    return angles.cos().float(), angles.sin().float()


def action_rope(dims: tuple[int, int, int], start_frame: int, frames: int, device: Any, theta: float) -> Rope:
    """RoPE for `frames` latent frames of an action module (the spatial axes sit at position 0)."""
    positions = torch.arange(start_frame, start_frame + frames, device=device)
    zeros = torch.zeros_like(positions)
    angles = torch.cat([axis_angles(dims[0], positions, theta), axis_angles(dims[1], zeros, theta),
                        axis_angles(dims[2], zeros, theta)], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate `x` [..., tokens, heads, head_dim] by `rope` ([tokens, head_dim // 2] each)."""
    cos, sin = (r[:, None, :] for r in rope)
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    out = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return out.flatten(-2).type_as(x)
