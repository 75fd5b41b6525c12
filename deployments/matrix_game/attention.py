"""Attention plumbing shared by the DiT and its action modules.

Every attention in Matrix-Game 2.0's causal DiT reaches its keys in one of two ways:
- streaming (`KeyAccess.cache` set): the current block's keys/values are written into a rolling
  `WindowCache` and the queries attend to its last `valid_frames` frames, with no mask;
- sequence (`KeyAccess.frame_mask` set): a whole clip is processed at once and a block-causal,
  local-window mask over latent frames says which frames a query frame may see (the published
  training-time flex-attention masks). Used to check the streaming path against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from deployments.matrix_game.kv_cache import WindowCache


def block_causal_frame_mask(frames: int, block: int, window: int, device: torch.device | None = None) -> torch.Tensor:
    """[frames, frames] bool: query frame q sees key frame k iff k is in q's block or in the `window`
    frames that end with q's block (`window` counts the block itself)."""
    idx = torch.arange(frames, device=device)
    block_end = (idx // block + 1) * block
    keys = idx[None, :]
    return (keys < block_end[:, None]) & (keys >= block_end[:, None] - window)


@dataclass(frozen=True)
class KeyAccess:
    """How one forward reaches keys: a rolling cache (streaming) or a frame mask (sequence)."""

    valid_frames: int = 0
    frame_mask: torch.Tensor | None = None  # [frames, frames] bool, sequence mode only

    @property
    def streaming(self) -> bool:
        return self.frame_mask is None

    def token_mask(self, q_tokens: int, k_tokens: int) -> torch.Tensor | None:
        """The frame mask expanded to tokens (frame-major order), or None when streaming."""
        if self.frame_mask is None:
            return None
        return self.frame_mask.repeat_interleave(q_tokens, 0).repeat_interleave(k_tokens, 1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, access: KeyAccess, cache: WindowCache | None,
           q_tokens_per_frame: int, k_tokens_per_frame: int) -> torch.Tensor:
    """Scaled dot-product attention of q [B, H, Lq, D] over the block's k, v [B, H, Lk, D].

    Streaming: k, v are written to `cache` and the attention reads the cache's valid window.
    Sequence: k, v are the whole clip's and the frame mask applies.
    """
    if access.streaming:
        if cache is None:
            raise ValueError("streaming attention needs a cache")
        cache.write(k, v)
        k, v = cache.read(access.valid_frames)
        return F.scaled_dot_product_attention(q, k, v)
    mask = access.token_mask(q_tokens_per_frame, k_tokens_per_frame)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
