"""One rank of the xFuser service: loads the pipeline its backend runs (`engine.py`), generates.

Every rank runs the same call. With xfuser, its collectives split the work and one rank (the last
of each parallel group) decodes the image; that rank sends it to rank 0, whose result the runner
returns. With `native` (diffusers' context parallelism) every rank ends with the whole latents and
rank 0's image is returned. With `diffusers`, the plain pipeline runs on every rank (the 1-GPU
baseline of the benchmarks and the CPU stand-in of dev and CI, where xfuser cannot run) and the
last rank's image is returned, as with xfuser. For the service, rank 0 also encodes the image (nvJPEG
on a GPU), so the replica gets the file's bytes, not the pixels.

`op: probe` generates once with the block recorder on (`probe.py`) and gathers every rank's block
outputs on rank 0, for the per-block divergence probe of the GPU parity test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from deployments.xfuser.engine import EngineSpec, WarmupSpec, build_pipeline, prepare
from deployments.xfuser.families import FAMILIES, SINGLE, Layout, heads_of, resolve_layout
from serve_app.distributed import DistributedWorker
from serve_app.errors import RequestCancelled
from serve_app.models.source import resolve_dtype

__all__ = ["EngineSpec", "WarmupSpec", "XFuserWorker", "build_pipeline"]


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


def forget_xfuser_groups() -> None:
    """Drop xfuser's module-level group coordinators (world, CFG, sequence, pipeline, ...) so that its
    next `init_distributed_environment` builds them from the current default group."""
    from xfuser.core.distributed import parallel_state
    from xfuser.core.distributed.group_coordinator import GroupCoordinator

    for name, value in list(vars(parallel_state).items()):
        if isinstance(value, GroupCoordinator):
            setattr(parallel_state, name, None)


class XFuserWorker(DistributedWorker):
    """A rank of the xDiT service (see the module docstring)."""

    bind_device_at_init = False  # xfuser's new_group calls fail on a device-bound NCCL init

    pipe: Any = None
    spec: EngineSpec
    layout: Layout
    output_rank: int = 0
    recorder: Any = None  # the probe's BlockRecorder when loaded with probe: true

    def setup(self, **spec: Any) -> None:  # type: ignore[override]
        self.load(**spec)

    # --- loading ------------------------------------------------------------------------------
    def load(self, **raw: Any) -> dict[str, Any]:
        """Build (or rebuild) the pipeline for `raw` (an `EngineSpec`), prepare its backend, warm it up."""
        from deployments.xfuser import speed

        self.unload()
        spec = EngineSpec.model_validate(raw)
        family = FAMILIES[spec.family]
        self.spec = spec
        speed.use_compile_cache(spec.compile.cache_dir if spec.use_torch_compile else None)
        heads = heads_of(spec.family, spec.model.preset)
        self.layout = (SINGLE if spec.backend == "diffusers" else
                       resolve_layout(family, spec.layout, self.world_size, heads, native=spec.backend == "native"))
        device = str(self.device)
        self.dtype = resolve_dtype(spec.dtype, device)
        pipe = build_pipeline(spec, device, self.dtype)
        if spec.model.preset is not None and self.world_size > 1:
            self._share_weights(pipe)  # every rank must hold rank 0's random weights
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        self.recorder = None
        if spec.probe:  # before any wrapping: every block keeps its index in the whole model
            from deployments.xfuser.probe import BlockRecorder, whole, xfuser_where

            where = xfuser_where if spec.backend == "xfuser" else whole
            self.recorder = BlockRecorder(pipe.transformer, where=where)
        self.pipe = prepare(pipe, spec, self.layout, self.rank, self.world_size, self.device, self.dtype)
        self.output_rank = {"xfuser": -1, "native": 0, "diffusers": self.world_size - 1}[spec.backend]
        if self.output_rank < 0:
            self.output_rank = self._find_output_rank()
        self._reporter: Any = None
        pipe.progress_bar = self._progress_bar
        if spec.warmup.enabled:
            w = spec.warmup
            warm = self.generate(prompt="a photo of a cat", height=w.height, width=w.width,
                                 num_inference_steps=w.num_inference_steps, seed=0)
            if warm is not None:  # rank 0: the encoder's first call (nvJPEG's set-up) is not a request's
                from serve_app.imaging import encode_images

                encode_images(warm["image"][None], "jpeg")
        return {"layout": self.layout.describe(), "output_rank": self.output_rank, "backend": spec.backend}

    def _share_weights(self, pipe: Any) -> None:
        import torch
        import torch.distributed as dist

        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                for tensor in [*module.parameters(), *module.buffers()]:
                    dist.broadcast(tensor.data, src=0)

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

    def regroup(self) -> None:
        """After the runner re-formed the default process group in place: what this rank built from
        the old group (xfuser's group coordinators, or the native backend's device mesh) is dead with
        it. Forget it without destroying it (its handles are gone), then load the same spec again on
        the new group: the weights are rebuilt, so a regroup costs a load (and its warm-up)."""
        spec = getattr(self, "spec", None)
        if spec is None:
            return
        if spec.backend == "xfuser":
            forget_xfuser_groups()
        self.pipe = None  # unload() would destroy groups that no longer exist
        self.load(**spec.model_dump())

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
        """Run one image on every rank; rank 0 gets `{"image": uint8 [3, H, W] tensor on its device, ...}`."""
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
        if self.rank != 0:
            return None
        assert image is not None
        if self.device.type == "cuda":  # the clock stops when the image exists, not when it was queued
            torch.cuda.synchronize(self.device)
        return {"image": image, "inference_s": time.perf_counter() - start}

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

    def probe(self, **payload: Any) -> dict[str, Any] | None:
        """Generate once with the recorder on; rank 0 gets every rank's block records."""
        import torch.distributed as dist

        if self.recorder is None:
            raise ValueError("load with probe: true first")
        self.recorder.restart()
        self.generate(**payload)
        gathered: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
        if self.world_size > 1:
            dist.gather_object(list(self.recorder.records), gathered, dst=0)
        else:
            gathered = [list(self.recorder.records)]
        return {"records": gathered, "layout": self.layout.describe()} if self.rank == 0 else None

    def __call__(self, streaming: bool = False, op: str = "generate", **payload: Any) -> Any:
        if op == "load":
            return self.load(**payload)
        if op == "probe":
            return self.probe(**payload)
        if op != "generate":
            raise ValueError(f"unknown op {op!r}")

        # Every rank steps through the same loop, so a cancel agreed at a step stops them all there;
        # PipeFusion keeps point-to-point exchanges open across steps, so it only stops before a run.
        stop_mid_run = self.layout.pp == 1

        def report(step: int, total: int) -> None:
            if streaming:
                self.progress(step, total, "denoising")
            if stop_mid_run:
                self.raise_if_cancelled()

        if self.cancelled_everywhere():
            raise RequestCancelled()
        output_format = payload.pop("output_format", None)
        result = self.generate(report=report, **payload)
        if result is None:
            return None
        described = {"inference_s": result["inference_s"], "layout": self.layout.describe()}
        if output_format is not None:
            # The service's call: encoded here, on the GPU for JPEG (nvJPEG), so only the file's bytes
            # travel to the replica, whose event loop never encodes.
            from serve_app.imaging import encode_images

            return {"file": encode_images(result["image"][None], output_format)[0], **described}
        from PIL import Image  # the lossless image, for the parity tests and the benchmarks

        return {"image": Image.fromarray(result["image"].permute(1, 2, 0).cpu().numpy()), **described}
