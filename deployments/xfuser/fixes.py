"""Our fixes for xfuser 0.7 on diffusers 0.42 (the SD3 and HunyuanDiT layouts xDiT lists).

1. SD3 + PipeFusion: xfuser's joint-attention processor (`xFuserJointAttnProcessor2_0`) updates the
   PipeFusion KV cache itself (image tokens, `[B, S, H*D]`), then hands `attn_layer` to `USP`, which
   updates the same cache entry again after the text tokens are joined (`[B, S+T, H, D]`). The second
   write replaces the cache with the wrong layout, and the next patch fails in `_update_kv_in_dim`
   ("expanded size ... must match ... [B, S, H, 2D] vs [B, S, 2HD]"). xfuser's Flux processor does
   the same thing right: it passes `attn_layer=None` to USP when it already updated the cache. We
   make SD3's do that too: while that processor runs on the path where it updates the cache itself,
   USP's `_has_kv_cache` answers False. Nothing else changes (`install_sd3_kv_cache_fix`).
2. HunyuanDiT + Ulysses / Ring / PipeFusion: its scheduler (DDPM) adds fresh noise at every step.
   xfuser's DDPM wrapper calls the plain `step` on each rank's shard of the latents, so each rank
   draws noise of its shard's shape from the same seeded generator: the noise differs from the
   single-GPU draw (and repeats across shards), and after 50 steps the image is as far from the
   1-GPU image as another seed's. The transformer itself is exact (per block, to 1e-6 in float32).
   We draw the noise at the full latent size, as one GPU does, and keep this rank's rows
   (`shard_scheduler_noise`); PipeFusion patches reuse their step's one draw.

The noise sharding is plain torch/diffusers (tested on CPU); the row layout and the SD3 patch read
xfuser and are imported on the GPU ranks only.
"""

from __future__ import annotations

import contextvars
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Row ranges of the full latent (dim -2) that this rank's shard is made of, in order.
Rows = list[tuple[int, int]]


@dataclass(frozen=True)
class NoiseShard:
    """Where a rank's latents sit in the full latent image, for the current scheduler step."""

    full_height: int  # latent rows of the whole image
    rows: Rows  # this shard's row ranges, concatenated in this order
    new_draw: bool = True  # False: reuse this step's full draw (the 2nd..nth PipeFusion patch)


_SHARD: contextvars.ContextVar[tuple[NoiseShard, dict[str, Any]] | None] = contextvars.ContextVar(
    "xfuser_noise_shard", default=None)


def _sharded_randn(original: Callable[..., Any]) -> Callable[..., Any]:
    """`randn_tensor` that, inside a sharded step, draws the full image's noise and cuts this shard."""

    @functools.wraps(original)
    def randn_tensor(shape: Any, *args: Any, **kwargs: Any) -> Any:
        current = _SHARD.get()
        shape = tuple(shape)
        if current is None or len(shape) != 4 or shape[-2] != sum(end - start for start, end in current[0].rows):
            return original(shape, *args, **kwargs)
        import torch

        shard, last = current
        full = last.get("noise")
        if shard.new_draw or full is None or tuple(full.shape) != (*shape[:-2], shard.full_height, shape[-1]):
            full = last["noise"] = original((*shape[:-2], shard.full_height, shape[-1]), *args, **kwargs)
        return torch.cat([full[..., start:end, :] for start, end in shard.rows], dim=-2)

    return randn_tensor


def shard_scheduler_noise(scheduler: Any, where: Callable[[], NoiseShard | None]) -> Any:
    """Make `scheduler.step` draw its noise for the whole latent image and keep this rank's rows.

    `where()` is called at each step and says which rows this rank holds (None: the whole image).
    Deterministic schedulers draw nothing, so this changes nothing for them. Returns the scheduler.
    """
    module = sys.modules[type(scheduler).__module__]
    original = getattr(module, "randn_tensor", None)
    if original is None:  # the scheduler draws no noise of its own
        return scheduler
    if not getattr(original, "_xfuser_sharded", False):
        patched = _sharded_randn(original)
        patched._xfuser_sharded = True  # type: ignore[attr-defined]
        module.randn_tensor = patched  # type: ignore[attr-defined]
    step = type(scheduler).step
    last: dict[str, Any] = {}  # this scheduler's full draw of the current step (PipeFusion patches share it)

    @functools.wraps(step)
    def sharded_step(*args: Any, **kwargs: Any) -> Any:
        shard = where()
        token = _SHARD.set((shard, last) if shard is not None else None)
        try:
            return step(scheduler, *args, **kwargs)
        finally:
            _SHARD.reset(token)

    scheduler.step = sharded_step  # the instance attribute shadows the class's step
    return scheduler


def xfuser_noise_shard() -> NoiseShard | None:
    """This rank's rows of the latent image, from xfuser's runtime state (None when unsplit)."""
    from xfuser.core.distributed import get_runtime_state

    state = get_runtime_state()
    ranges = [(int(start), int(end)) for start, end in state.pp_patches_start_end_idx_global]
    full = int(state.input_config.height) // int(state.vae_scale_factor)
    if state.patch_mode:  # one PipeFusion patch per step call, patches in order from 0
        index = int(state.pipeline_patch_idx)
        return NoiseShard(full, [ranges[index]], new_draw=index == 0)
    if ranges == [(0, full)]:
        return None
    return NoiseShard(full, ranges)


_CACHE_UPDATED: contextvars.ContextVar[bool] = contextvars.ContextVar("xfuser_kv_cache_updated", default=False)


def install_sd3_kv_cache_fix() -> None:
    """Stop USP from writing SD3's PipeFusion KV cache a second time (module docstring, 1). Idempotent."""
    from xfuser.model_executor.layers import attention_processor, usp

    processor = attention_processor.xFuserJointAttnProcessor2_0
    if getattr(processor.__call__, "_ours", False):
        return
    original_call = processor.__call__
    original_has_cache = usp._has_kv_cache

    @functools.wraps(original_call)  # xfuser reads the signature to filter keyword arguments
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        # the processor writes the cache itself exactly when it does not use long-context attention
        token = _CACHE_UPDATED.set(not self.use_long_ctx_attn_kvcache)
        try:
            return original_call(self, *args, **kwargs)
        finally:
            _CACHE_UPDATED.reset(token)

    def _has_kv_cache(attn_layer: Any) -> bool:
        return False if _CACHE_UPDATED.get() else bool(original_has_cache(attn_layer))

    __call__._ours = True  # type: ignore[attr-defined]
    processor.__call__ = __call__
    usp._has_kv_cache = _has_kv_cache


def apply(pipe: Any, family: str) -> None:
    """Apply the fixes a wrapped xfuser pipeline of `family` needs (before its first call)."""
    if family == "sd3":
        install_sd3_kv_cache_fix()
    scheduler = getattr(pipe, "scheduler", None)
    inner = getattr(scheduler, "module", scheduler)  # xfuser wraps the scheduler; patch the diffusers one
    if inner is not None and family in ("hunyuandit", "sd3", "pixart_alpha", "pixart_sigma"):  # [B, C, H, W] latents
        shard_scheduler_noise(inner, xfuser_noise_shard)
