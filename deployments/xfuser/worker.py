"""One xDiT rank: builds the pipeline, wraps it in xfuser's parallel pipeline, generates.

Every rank runs the same call; xfuser's collectives split the work and one rank (the last of each
parallel group) decodes the image. That rank sends it to rank 0, whose result the runner returns.

Backends:
- `xfuser`: the model-parallel pipelines (GPUs, bfloat16/float16).
- `diffusers`: the plain pipeline on every rank, the last rank's image returned as with xfuser.
  It is the single-GPU baseline of the benchmarks and the CPU stand-in (dev config, CI), where
  xfuser cannot be imported.

Two fixes on our side for xfuser 0.7 + diffusers 0.42:
- PipeFusion allocates its receive buffers in `engine_config.runtime_config.dtype`, which
  `xFuserArgs.create_config()` never sets (it stays float16). A bfloat16 model then received
  float16 activations and failed with "mat1 and mat2 must have the same dtype" in `prepare_run`.
  We set it to the weights' dtype before wrapping.
- xfuser wants the process group initialised without `device_id` (a device-bound NCCL init breaks
  its `new_group` calls) and its world group told each rank's local device index.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from deployments.xfuser.families import FAMILIES, SINGLE, Layout, heads_of, resolve_layout
from serve_app.distributed import DistributedWorker
from serve_app.models.source import DtypeName, ModelSource, build_or_load, resolve_dtype


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
    backend: str = "xfuser"
    dtype: DtypeName = "auto"
    use_torch_compile: bool = False
    warmup_steps: int = Field(default=1, ge=0, description="PipeFusion's exact (synchronous) steps.")
    attention_backend: str | None = None
    warmup: WarmupSpec = Field(default_factory=lambda: WarmupSpec(enabled=False))


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
            from deployments.parallel_sdxl import presets as sdxl_presets

            return sdxl_presets.build_pipeline(name, device, dtype)
        return presets.build_pipeline(spec.family, name, device, dtype)

    return build_or_load(spec.model, load=load,
                         presets={"tiny": lambda: preset("tiny"), "full": lambda: preset("full")})


class _StepReporter:
    """Stands in for a pipeline's tqdm `progress_bar`: counts denoising steps for the stream."""

    def __init__(self, report: Any, total: int | None) -> None:
        self.report, self.total, self.n = report, total or 0, 0

    def __enter__(self) -> _StepReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        self.n += n
        self.report(self.n, self.total)


class XFuserWorker(DistributedWorker):
    """A rank of the xDiT service (see the module docstring)."""

    bind_device_at_init = False  # xfuser's new_group calls fail on a device-bound NCCL init

    pipe: Any = None
    spec: EngineSpec
    layout: Layout
    output_rank: int = 0

    def setup(self, **spec: Any) -> None:  # type: ignore[override]
        self.load(**spec)

    # --- loading ------------------------------------------------------------------------------
    def load(self, **raw: Any) -> dict[str, Any]:
        """Build (or rebuild) the pipeline for `raw` (an `EngineSpec`), wrap it, warm it up."""
        import torch


        self.unload()
        spec = EngineSpec.model_validate(raw)
        family = FAMILIES[spec.family]
        self.spec = spec
        self.layout = (resolve_layout(family, spec.layout, self.world_size, heads_of(spec.family, spec.model.preset))
                       if spec.backend == "xfuser" else SINGLE)
        device = str(self.device)
        self.dtype = resolve_dtype(spec.dtype, device)
        pipe = build_pipeline(spec, device, self.dtype)
        if spec.model.preset is not None and self.world_size > 1:
            self._share_weights(pipe)  # every rank must hold rank 0's random weights
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        if spec.backend == "xfuser":
            self.pipe = self._wrap(pipe, spec)
            self.output_rank = self._find_output_rank()
        else:
            self.pipe = pipe
            self.output_rank = self.world_size - 1
        if spec.use_torch_compile and spec.backend == "diffusers":  # as xfuser does with its flag
            backbone = getattr(pipe, "transformer", None) or pipe.unet
            backbone.forward = torch.compile(backbone.forward)
        self._reporter: Any = None
        pipe.progress_bar = self._progress_bar
        if spec.warmup.enabled:
            w = spec.warmup
            self.generate(prompt="a photo of a cat", height=w.height, width=w.width,
                          num_inference_steps=w.num_inference_steps, seed=0)
        return {"layout": self.layout.describe(), "output_rank": self.output_rank}

    def _share_weights(self, pipe: Any) -> None:
        import torch
        import torch.distributed as dist

        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                for tensor in [*module.parameters(), *module.buffers()]:
                    dist.broadcast(tensor.data, src=0)

    def _wrap(self, pipe: Any, spec: EngineSpec) -> Any:
        import xfuser
        from xfuser.core.distributed import init_distributed_environment

        family, layout = FAMILIES[spec.family], self.layout
        index = getattr(self.device, "index", None) or 0
        os.environ["LOCAL_RANK"] = str(index)
        init_distributed_environment(rank=self.rank, world_size=self.world_size, local_rank=index)
        args = xfuser.xFuserArgs(
            model=spec.model.describe(), pipefusion_parallel_degree=layout.pp, ulysses_degree=layout.ulysses,
            ring_degree=layout.ring, use_cfg_parallel=bool(layout.use_cfg_parallel),
            num_pipeline_patch=layout.num_pipeline_patch, warmup_steps=spec.warmup_steps,
            use_torch_compile=spec.use_torch_compile, attention_backend=spec.attention_backend,
        )
        engine_config, _ = args.create_config()
        engine_config.runtime_config.dtype = self.dtype  # the PipeFusion fix (module docstring)
        return getattr(xfuser, family.xfuser_pipeline)(pipe, engine_config)

    def _find_output_rank(self) -> int:
        """The rank whose call returns the image (`is_dp_last_group`), agreed by all ranks."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([self.rank if self.pipe.is_dp_last_group() else -1], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def unload(self) -> None:
        """Drop the pipeline and xfuser's parallel groups (so another layout can be loaded)."""
        if self.pipe is None:
            return
        backend = self.spec.backend
        self.pipe = None
        if backend == "xfuser":
            from xfuser.core.distributed.parallel_state import destroy_model_parallel

            destroy_model_parallel()
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def teardown(self) -> None:
        self.unload()

    # --- requests -----------------------------------------------------------------------------
    def _progress_bar(self, iterable: Any = None, total: int | None = None) -> Any:
        reporter = _StepReporter(self._reporter or (lambda n, t: None), total)
        if iterable is None:
            return reporter

        def counting() -> Iterator[Any]:
            reporter.total = len(iterable)
            for item in iterable:
                yield item
                reporter.update()

        return counting()

    def pipeline_kwargs(self, prompt: str, negative_prompt: str, num_inference_steps: int, guidance_scale: float,
                        height: int, width: int, seed: int) -> dict[str, Any]:
        """The pipeline call for this family (also what a single-GPU reference runs)."""
        import torch

        family = FAMILIES[self.spec.family]
        kwargs: dict[str, Any] = {
            "prompt": prompt, "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
            "height": height, "width": width, "output_type": "pt",
            "generator": torch.Generator(device=self.device).manual_seed(seed),
        }
        if family.uses_cfg:
            kwargs["negative_prompt"] = negative_prompt
        if family.name in ("pixart_alpha", "pixart_sigma", "hunyuandit"):
            kwargs["use_resolution_binning"] = False  # the service validates sizes itself
        if family.name in ("pixart_alpha", "pixart_sigma"):
            kwargs["clean_caption"] = False  # needs bs4 + ftfy; prompts are used as given
        if family.max_sequence_length and self.spec.model.preset != "tiny":
            kwargs["max_sequence_length"] = family.max_sequence_length
        return kwargs

    def generate(self, prompt: str, height: int, width: int, num_inference_steps: int, seed: int,
                 negative_prompt: str = "", guidance_scale: float | None = None,
                 report: Any = None) -> dict[str, Any] | None:
        """Run one image on every rank; rank 0 gets `{"image": uint8 [3, H, W] CPU tensor, ...}`."""
        import torch

        family = FAMILIES[self.spec.family]
        guidance = family.default_guidance if guidance_scale is None else guidance_scale
        kwargs = self.pipeline_kwargs(prompt, negative_prompt, num_inference_steps, guidance, height, width, seed)
        self._reporter = report
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                out = self.pipe(**kwargs)
        finally:
            self._reporter = None
        image = None
        if self.rank == self.output_rank:
            images = out.images if out is not None else None
            if images is None:
                raise RuntimeError(f"rank {self.rank} should hold the image but the pipeline returned none")
            image = (images[0].float().clamp(0, 1) * 255).round().to(torch.uint8)
        image = self._to_rank0(image, height, width)
        elapsed = time.perf_counter() - start
        if self.rank != 0:
            return None
        assert image is not None
        return {"image": image.cpu(), "inference_s": elapsed}

    def _to_rank0(self, image: Any, height: int, width: int) -> Any:
        import torch
        import torch.distributed as dist

        if self.output_rank == 0 or self.world_size == 1:
            return image
        if image is None:
            image = torch.empty((3, height, width), dtype=torch.uint8, device=self.device)
        buf = image.contiguous()
        dist.broadcast(buf, src=self.output_rank)
        return buf

    def __call__(self, streaming: bool = False, op: str = "generate", **payload: Any) -> Any:
        if op == "load":
            return self.load(**payload)
        if op != "generate":
            raise ValueError(f"unknown op {op!r}")

        def report(step: int, total: int) -> None:
            if streaming:
                self.add_streaming_result({"step": step, "total": total})

        if self.cancelled_everywhere():
            return {"cancelled": True}
        result = self.generate(report=report, **payload)
        if result is None:
            return None
        from PIL import Image

        array = result["image"].permute(1, 2, 0).numpy()
        return {"image": Image.fromarray(array), "inference_s": result["inference_s"],
                "layout": self.layout.describe()}
