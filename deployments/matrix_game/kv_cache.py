"""Rolling key/value caches for block-wise causal generation with a local attention window.

A `WindowCache` holds the keys/values of the last `window` latent frames, newest at the end of a
fixed-size buffer [batch, heads, window * tokens_per_frame, head_dim]. Generating one block of
`block` frames goes:
  1. `StreamCache.begin_block()`: every buffer shifts left by one block (the oldest frames fall out) and
     the count of valid frames grows, up to the window;
  2. each denoising step, and the final clean "context" pass, write the block's keys/values into the
     last `block` frames (a rewrite of the same slots, so only the clean pass survives);
  3. attention reads the last `valid` frames: the block itself plus the frames before it in the window.
This is the published rolling cache's behaviour (evict the oldest tokens once the window is full, then
append), with static shapes: the only varying quantity is `valid` during the first blocks, so a compiled
model sees at most a few distinct shapes.

One `LayerCache` per transformer layer holds the self-attention cache, the action module's mouse cache
(one sequence per spatial token) and keyboard cache (one sequence, shared by every token), and the
cross-attention keys/values of the image context (computed once per session).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class WindowCache:
    """Keys and values of the last `window` frames, newest last."""

    keys: torch.Tensor  # [batch, heads, window * tokens_per_frame, head_dim]
    values: torch.Tensor
    tokens_per_frame: int

    @classmethod
    def empty(cls, batch: int, heads: int, window: int, tokens_per_frame: int, head_dim: int,
              device: torch.device, dtype: torch.dtype) -> WindowCache:
        shape = (batch, heads, window * tokens_per_frame, head_dim)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype),
                   tokens_per_frame)

    def shift(self, frames: int) -> None:
        """Drop the oldest `frames` frames (the newest slots then hold stale data until written)."""
        n = frames * self.tokens_per_frame
        for buf in (self.keys, self.values):
            buf[:, :, :-n] = buf[:, :, n:].clone()

    def write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store the current block's keys/values [batch, heads, block tokens, head_dim] in the newest slots."""
        n = keys.shape[2]
        self.keys[:, :, -n:] = keys
        self.values[:, :, -n:] = values

    def read(self, valid_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the last `valid_frames` frames."""
        n = valid_frames * self.tokens_per_frame
        return self.keys[:, :, -n:], self.values[:, :, -n:]


@dataclass
class LayerCache:
    """One transformer layer's caches."""

    self_attn: WindowCache
    mouse: WindowCache | None = None
    keyboard: WindowCache | None = None
    cross_keys: torch.Tensor | None = None  # [batch, heads, context tokens, head_dim]
    cross_values: torch.Tensor | None = None

    def context(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-attention keys and values."""
        if self.cross_keys is None or self.cross_values is None:
            raise RuntimeError("the stream has no image context")
        return self.cross_keys, self.cross_values

    def windows(self) -> list[WindowCache]:
        return [c for c in (self.self_attn, self.mouse, self.keyboard) if c is not None]


@dataclass
class StreamCache:
    """Every layer's caches plus the stream position (latent frames)."""

    layers: list[LayerCache]
    window: int  # latent frames in the attention window (`local_attn_size`)
    block: int  # latent frames per block
    start_frame: int = -1  # first latent frame of the current block (-1: no block begun)
    valid_frames: int = 0  # frames attention may read, the current block included
    blocks: int = 0  # blocks begun

    def begin_block(self) -> None:
        """Start the next block: shift every window left by one block once a block is stored.

        The buffers are right-aligned, so the shift both frees the newest slots and drops what falls
        out of the window (nothing while the window is still filling up).
        """
        if self.blocks > 0:
            for layer in self.layers:
                for cache in layer.windows():
                    cache.shift(self.block)
        self.start_frame = 0 if self.blocks == 0 else self.start_frame + self.block
        self.valid_frames = min(self.window, self.valid_frames + self.block)
        self.blocks += 1
