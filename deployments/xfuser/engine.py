"""What every xFuser rank loads (`EngineSpec`) and how a backend turns the plain pipeline into the
one it runs: xDiT's parallel pipeline (`xfuser`), diffusers' own context parallelism (`native`), or
the plain pipeline (`diffusers`); then the speed levers (fused QKV, torch.compile).

Two fixes on our side for xfuser 0.7 + diffusers 0.42 live here, the others in `fixes.py`:
- PipeFusion allocates its receive buffers in `engine_config.runtime_config.dtype`, which
  `xFuserArgs.create_config()` never sets (it stays float16). A bfloat16 model then received
  float16 activations and failed with "mat1 and mat2 must have the same dtype" in `prepare_run`.
  We set it to the weights' dtype before wrapping.
- xfuser wants the process group initialised without `device_id` (a device-bound NCCL init breaks
  its `new_group` calls) and its world group told each rank's local device index.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from deployments.xfuser import speed
from deployments.xfuser.families import FAMILIES, Layout
from serve_app.models.source import DtypeName, ModelSource, build_or_load

Backend = Literal["xfuser", "native", "diffusers"]


class WarmupSpec(BaseModel):
    """Generate once at this size before taking traffic (compiles when torch.compile is on)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Run the warm-up at start.")
    height: int = Field(default=1024, ge=64, description="Warm-up height (use the size you serve).")
    width: int = Field(default=1024, ge=64, description="Warm-up width.")
    num_inference_steps: int = Field(default=4, ge=1, description="Warm-up steps.")


class EngineSpec(BaseModel):
    """What every rank loads: sent to `setup` (and `load`) as a dict."""

    model_config = ConfigDict(extra="forbid")

    family: str
    model: ModelSource
    layout: Layout = Field(default_factory=Layout)
    backend: Backend = "xfuser"
    dtype: DtypeName = "auto"
    use_torch_compile: bool = False
    compile: speed.CompileSpec = Field(default_factory=speed.CompileSpec)
    fuse_qkv: bool = False
    warmup_steps: int = Field(default=1, ge=0, description="PipeFusion's exact (synchronous) steps.")
    attention_backend: str | None = None
    warmup: WarmupSpec = Field(default_factory=lambda: WarmupSpec(enabled=False))
    probe: bool = Field(default=False, description="Record block outputs for the divergence probe.")


def build_pipeline(spec: EngineSpec, device: str, dtype: Any) -> Any:
    """The plain diffusers pipeline of `spec` on `device`: hub id / local dir, or a preset."""
    import diffusers

    from deployments.xfuser import presets

    family = FAMILIES[spec.family]
    cls = getattr(diffusers, family.pipeline)

    def load(model_id: str, kwargs: dict[str, Any]) -> Any:
        return cls.from_pretrained(model_id, torch_dtype=dtype, **kwargs).to(device)

    def preset(name: str) -> Any:
        if spec.family == "sdxl":
            from components import sdxl

            return sdxl.build_pipeline(name, device, dtype)
        return presets.build_pipeline(spec.family, name, device, dtype)

    return build_or_load(spec.model, load=load,
                         presets={"tiny": lambda: preset("tiny"), "full": lambda: preset("full")})


def wrap_xfuser(pipe: Any, spec: EngineSpec, layout: Layout, rank: int, world_size: int, device: Any,
                dtype: Any) -> Any:
    """xDiT's parallel pipeline around `pipe` for `layout`, with our fixes applied."""
    import xfuser
    from xfuser.core.distributed import init_distributed_environment

    from deployments.xfuser import fixes

    index = getattr(device, "index", None) or 0
    os.environ["LOCAL_RANK"] = str(index)
    init_distributed_environment(rank=rank, world_size=world_size, local_rank=index)
    args = xfuser.xFuserArgs(
        model=spec.model.describe(), pipefusion_parallel_degree=layout.pp, ulysses_degree=layout.ulysses,
        ring_degree=layout.ring, use_cfg_parallel=bool(layout.use_cfg_parallel),
        num_pipeline_patch=layout.num_pipeline_patch, warmup_steps=spec.warmup_steps,
        use_torch_compile=False,  # compiled by `prepare` after wrapping, in the configured mode
        attention_backend=spec.attention_backend,
    )
    engine_config, _ = args.create_config()
    engine_config.runtime_config.dtype = dtype  # the PipeFusion fix (module docstring)
    wrapped = getattr(xfuser, FAMILIES[spec.family].xfuser_pipeline)(pipe, engine_config)
    fixes.apply(wrapped, spec.family)
    return wrapped


def prepare(pipe: Any, spec: EngineSpec, layout: Layout, rank: int, world_size: int, device: Any,
            dtype: Any) -> Any:
    """The pipeline `spec.backend` runs, built from the plain `pipe` (loaded on every rank).

    Order matters: QKV fusion changes the modules the parallel wrappers see; compiling comes last,
    so it traces the parallel attention (and, for xfuser, its wrapped transformer).
    """
    backbone = getattr(pipe, "transformer", None)
    if spec.fuse_qkv:
        speed.fuse_qkv(backbone)
    if spec.backend == "xfuser":
        runner = wrap_xfuser(pipe, spec, layout, rank, world_size, device, dtype)
        backbone = getattr(pipe, "transformer", None)  # xfuser's wrapper (SDXL has none: not compiled)
    else:
        runner = pipe
        if spec.backend == "native":
            from deployments.xfuser.native import GPU_DEFAULT_ATTENTION, enable_context_parallel

            attention = spec.attention_backend or (GPU_DEFAULT_ATTENTION if str(device).startswith("cuda") else None)
            enable_context_parallel(backbone, layout.ulysses, layout.ring, attention)
        elif spec.attention_backend and backbone is not None:
            backbone.set_attention_backend(spec.attention_backend)
        backbone = backbone if backbone is not None else pipe.unet
    if spec.use_torch_compile and backbone is not None:
        speed.compile_transformer(backbone, spec.compile)
    return runner
