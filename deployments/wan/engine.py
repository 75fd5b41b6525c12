"""The Wan engine: one WanPipeline on one device, denoising with a per-request sampler and decoding
to uint8 frames. The single-GPU service runs it in-process; with several GPUs every rank runs one,
its transformer split by context parallelism, and only rank 0 decodes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components import context_parallel, wan
from components.cfg_parallel import CfgSplit
from serve_app.models.source import DtypeName, ModelSource, resolve_dtype

# on_step(step, total) -> True to stop the run after this step
StepHook = Callable[[int, int], None]  # (step, total); raises (RequestCancelled) to stop the run


class EngineSpec(BaseModel):
    """What an engine builds: sent to every rank as a dict."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSource
    dtype: DtypeName = "auto"
    vae_dtype: DtypeName = "float32"
    ulysses_degree: int = Field(default=1, ge=1)
    ring_degree: int = Field(default=1, ge=1)
    cfg_parallel: bool = False  # 2 ranks, one CFG branch each (`components.cfg_parallel`); no sequence split
    attention_backend: str | None = None
    torch_compile: bool = False
    fuse_qkv: bool = False  # one projection GEMM for self-attention's Q/K/V (and cross-attention's K/V)
    # torch.compile's backend; tests use "eager" (dynamo traces the blocks, nothing is generated)
    compile_backend: str = "inductor"

    @property
    def parallel(self) -> bool:
        """The sequence is split (Ulysses and/or Ring)."""
        return self.ulysses_degree * self.ring_degree > 1

    @property
    def world_size(self) -> int:
        return (2 if self.cfg_parallel else 1) * self.ulysses_degree * self.ring_degree

    @model_validator(mode="after")
    def _one_split(self) -> EngineSpec:
        if self.cfg_parallel and self.parallel:
            raise ValueError("cfg_parallel runs on 2 ranks without a sequence split: ulysses and ring degrees 1")
        return self


class WanJob(BaseModel):
    """One video's settings, resolved by the service (sizes, steps, seed, negative prompt)."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    shift: float
    sampler: wan.Sampler
    seed: int


class WanEngine:
    """A WanPipeline on `device` (see the module docstring)."""

    def __init__(self, spec: EngineSpec, device: str) -> None:
        import torch

        self.spec = spec
        self.device = device
        self.dtype = resolve_dtype(spec.dtype, device)
        self.pipe = wan.pipeline(spec.model, device, self.dtype, resolve_dtype(spec.vae_dtype, device))
        self.pipe.set_progress_bar_config(disable=True)
        self.base_scheduler = dict(self.pipe.scheduler.config)
        transformer = self.pipe.transformer
        if spec.fuse_qkv:  # before compiling: the compiled blocks read the fused weights
            transformer.fuse_qkv_projections()
        if spec.torch_compile:  # first: the parallel hooks must wrap the compiled blocks (see the helper)
            context_parallel.compile_repeated_blocks(transformer, fullgraph=True, backend=spec.compile_backend)
        if spec.parallel:
            wan.enable_context_parallel(transformer, spec.ulysses_degree, spec.ring_degree, spec.attention_backend)
        elif spec.attention_backend:
            transformer.set_attention_backend(spec.attention_backend)
        self.cfg: CfgSplit | None = None
        if spec.cfg_parallel:
            import torch.distributed as dist

            self.cfg = CfgSplit(transformer, dist.get_rank(), dist.get_world_size())
        self._torch = torch

    @property
    def heads(self) -> int:
        return int(self.pipe.transformer.config.num_attention_heads)

    def denoise(self, job: WanJob, on_step: StepHook | None = None) -> Any:
        """The final latents `[1, 16, F', H/8, W/8]`. `on_step(step, total)` runs after every step; what
        it raises (a cancellation) leaves the pipeline at once, with nothing decoded."""
        torch = self._torch
        pipe = self.pipe
        pipe.scheduler = wan.make_scheduler(self.base_scheduler, job.sampler, job.shift)
        steps = job.num_inference_steps

        def callback(p: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None:
                on_step(step + 1, steps)
            return {}

        prompts: dict[str, Any] = {"prompt": job.prompt, "negative_prompt": job.negative_prompt}
        split: Any = contextlib.nullcontext()
        if self.cfg is not None and job.guidance_scale > 1:  # CFG is on: each rank computes one branch
            cond, negative = pipe.encode_prompt(
                prompt=job.prompt, negative_prompt=job.negative_prompt, do_classifier_free_guidance=True,
                max_sequence_length=wan.TEXT_LEN, device=pipe._execution_device, dtype=pipe.transformer.dtype)
            prompts = {"prompt_embeds": cond, "negative_prompt_embeds": negative}
            split = self.cfg.active(negative)
        with split:
            result = pipe(
                **prompts, width=job.width, height=job.height, num_frames=job.num_frames, num_inference_steps=steps,
                guidance_scale=job.guidance_scale, generator=torch.Generator(device=self.device).manual_seed(job.seed),
                output_type="latent", callback_on_step_end=callback, max_sequence_length=wan.TEXT_LEN,
            )
        return result.frames

    def decode(self, latents: Any) -> Any:
        """uint8 frames `[F, H, W, 3]` (numpy), exactly as WanPipeline's `np` output scaled to 0-255."""
        with self._torch.inference_mode():
            video = self.pipe.vae.decode(self._unnormalize(latents), return_dict=False)[0]  # [1, 3, F, H, W]
            return self._to_uint8(video)

    def decode_chunks(self, latents: Any) -> Iterator[Any]:
        """`decode` one latent frame at a time (its first frame, then 4 per latent frame): the same
        uint8 frames, in parts a consumer (the MP4 encoder) can take while the next part decodes.

        Wan's VAE decodes causally, frame by frame, with a cache of its convolutions' inputs; this
        is diffusers' `AutoencoderKLWan._decode` loop (0.42), yielding each part instead of joining
        them. A VAE that tiles or patchifies decodes whole, as one part."""
        torch = self._torch
        vae = self.pipe.vae
        if vae.use_tiling or vae.use_slicing or vae.config.patch_size is not None:
            yield self.decode(latents)
            return
        with torch.inference_mode():
            z = self._unnormalize(latents)
            vae.clear_cache()
            try:
                x = vae.post_quant_conv(z)
                for i in range(x.shape[2]):
                    vae._conv_idx = [0]
                    out = vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                      first_chunk=i == 0)
                    yield self._to_uint8(out.clamp(-1.0, 1.0))
            finally:
                vae.clear_cache()

    def _unnormalize(self, latents: Any) -> Any:
        torch = self._torch
        vae = self.pipe.vae
        latents = latents.to(vae.device, vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        return latents / inv_std + mean

    def _to_uint8(self, video: Any) -> Any:
        """`[1, 3, F, H, W]` in [-1, 1] → uint8 `[F, H, W, 3]` (numpy), as WanPipeline's `np` x 255."""
        torch = self._torch
        frames = (video[0].permute(1, 2, 3, 0).float() / 2 + 0.5).clamp(0, 1)
        return (frames * 255).round().to(torch.uint8).cpu().numpy()

    def generate(self, job: WanJob, on_step: StepHook | None = None) -> Any:
        """Denoise and decode: uint8 frames."""
        return self.decode(self.denoise(job, on_step))

    def synchronize(self) -> None:
        """Wait for the device (raises when a CUDA context is broken)."""
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize()
