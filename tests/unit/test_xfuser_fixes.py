"""Our fixes for xfuser 0.7 that need no GPU: HunyuanDiT's DDPM noise drawn for the whole latent
image and cut to a rank's rows makes sharded steps add up to the 1-GPU step, exactly; and the SD3
KV-cache patch keeps USP from writing the cache a second time (against stand-in xfuser modules)."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
import torch

from deployments.xfuser.fixes import NoiseShard, install_sd3_kv_cache_fix, shard_scheduler_noise
from deployments.xfuser.presets import HUNYUANDIT_SCHEDULER

SHAPE = (1, 4, 8, 6)  # [B, C, latent rows, latent cols]
STEPS = 4


def ddpm() -> Any:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(**HUNYUANDIT_SCHEDULER)
    scheduler.set_timesteps(STEPS)
    return scheduler


def inputs() -> tuple[torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(SHAPE, generator=gen), [torch.randn(SHAPE, generator=gen) for _ in range(STEPS)]


def run_full() -> torch.Tensor:
    scheduler, gen = ddpm(), torch.Generator().manual_seed(7)
    sample, outputs = inputs()
    for t, out in zip(scheduler.timesteps, outputs, strict=True):
        sample = scheduler.step(out, t, sample, generator=gen).prev_sample
    return sample


def run_shard(rows: list[tuple[int, int]], fixed: bool) -> torch.Tensor:
    """One sequence-parallel rank: its own scheduler and seeded generator, its rows of everything."""
    scheduler, gen = ddpm(), torch.Generator().manual_seed(7)
    if fixed:
        shard_scheduler_noise(scheduler, lambda: NoiseShard(SHAPE[2], rows))
    sample, outputs = inputs()

    def cut(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[..., a:b, :] for a, b in rows], dim=-2)

    sample = cut(sample)
    for t, out in zip(scheduler.timesteps, outputs, strict=True):
        sample = scheduler.step(cut(out), t, sample, generator=gen).prev_sample
    return sample


def test_sequence_shards_add_up_to_the_one_gpu_steps() -> None:
    full = run_full()
    halves = [(0, 4)], [(4, 8)]
    assert torch.equal(torch.cat([run_shard(rows, fixed=True) for rows in halves], dim=-2), full)
    # without the fix each rank draws noise of its own shape: the bug the GPU parity test saw
    unfixed = torch.cat([run_shard(rows, fixed=False) for rows in halves], dim=-2)
    assert (unfixed - full).abs().mean() > 0.1
    # a rank holding several row ranges (sequence shards of PipeFusion patches) gets them in its order
    mixed = run_shard([(0, 2), (4, 6)], fixed=True)
    assert torch.equal(mixed, torch.cat([full[..., 0:2, :], full[..., 4:6, :]], dim=-2))


def test_pipefusion_patches_share_their_steps_one_draw() -> None:
    scheduler, gen = ddpm(), torch.Generator().manual_seed(7)
    patches = [(0, 3), (3, 8)]
    state = {"patch": 0}
    shard_scheduler_noise(scheduler, lambda: NoiseShard(SHAPE[2], [patches[state["patch"]]],
                                                         new_draw=state["patch"] == 0))
    sample, outputs = inputs()
    parts = [sample[..., a:b, :] for a, b in patches]
    for t, out in zip(scheduler.timesteps, outputs, strict=True):
        for i, (a, b) in enumerate(patches):  # as xfuser's last stage steps patch by patch
            state["patch"] = i
            parts[i] = scheduler.step(out[..., a:b, :], t, parts[i], generator=gen).prev_sample
    assert torch.equal(torch.cat(parts, dim=-2), run_full())


def test_whole_image_and_deterministic_schedulers_are_unchanged() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = ddpm()
    shard_scheduler_noise(scheduler, lambda: None)  # an unsplit layout (CFG parallel)
    gen = torch.Generator().manual_seed(7)
    sample, outputs = inputs()
    for t, out in zip(scheduler.timesteps, outputs, strict=True):
        sample = scheduler.step(out, t, sample, generator=gen).prev_sample
    assert torch.equal(sample, run_full())
    flow = FlowMatchEulerDiscreteScheduler(shift=3.0)
    assert shard_scheduler_noise(flow, lambda: NoiseShard(SHAPE[2], [(0, 4)])) is flow  # draws no noise
    flow.set_timesteps(STEPS)
    x, outs = inputs()
    for t, out in zip(flow.timesteps, outs, strict=True):
        x = flow.step(out, t, x).prev_sample
    assert torch.isfinite(x).all()


@pytest.fixture
def fake_xfuser(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Stand-ins for the two xfuser modules the SD3 fix patches, recording USP's cache writes."""
    writes: list[str] = []
    usp = types.ModuleType("usp")
    usp._has_kv_cache = lambda layer: layer is not None  # type: ignore[attr-defined]

    class Processor:  # the shape of xFuserJointAttnProcessor2_0: cache write, then USP(attn_layer=...)
        def __init__(self, long_ctx: bool) -> None:
            self.use_long_ctx_attn_kvcache = long_ctx

        def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, *args: Any,
                     **kwargs: Any) -> Any:
            if not self.use_long_ctx_attn_kvcache:
                writes.append("processor")
            if usp._has_kv_cache(attn):  # type: ignore[attr-defined]
                writes.append("usp")
            return hidden_states

    processors = types.ModuleType("attention_processor")
    processors.xFuserJointAttnProcessor2_0 = Processor  # type: ignore[attr-defined]
    layers = types.ModuleType("layers")
    layers.attention_processor, layers.usp = processors, usp  # type: ignore[attr-defined]
    for name, module in (("xfuser", types.ModuleType("xfuser")),
                         ("xfuser.model_executor", types.ModuleType("xfuser.model_executor")),
                         ("xfuser.model_executor.layers", layers),
                         ("xfuser.model_executor.layers.attention_processor", processors),
                         ("xfuser.model_executor.layers.usp", usp)):
        monkeypatch.setitem(sys.modules, name, module)
    return {"writes": writes, "Processor": Processor}


def test_sd3_kv_cache_is_written_once(fake_xfuser: dict[str, Any]) -> None:
    import inspect

    processor_cls, writes = fake_xfuser["Processor"], fake_xfuser["writes"]
    processor_cls(long_ctx=False)("attn", "h")
    assert writes == ["processor", "usp"]  # xfuser 0.7 as shipped: the double write
    install_sd3_kv_cache_fix()
    install_sd3_kv_cache_fix()  # idempotent
    writes.clear()
    processor_cls(long_ctx=False)("attn", "h")  # PipeFusion without sequence parallelism
    assert writes == ["processor"]
    writes.clear()
    processor_cls(long_ctx=True)("attn", "h")  # with Ulysses/Ring USP owns the cache, as before
    assert writes == ["usp"]
    # xfuser filters keyword arguments by the processor's signature: it must be the original's
    assert "encoder_hidden_states" in inspect.signature(processor_cls.__call__).parameters
