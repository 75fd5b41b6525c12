"""Wan 2.1 text-to-video 1.3B: `/wan/v2.1/1.3b/text-to-video` (+ `/stream`), fal's Wan demo on diffusers.

81 frames at 16 fps (about 5 s) of 832x480 or 480x832 video, as an H.264 MP4. Prompt safety and
prompt expansion ask the `any-llm` service through a deployment handle, with the demo's rules (see
`prompts.py`). With `world_size` > 1 the replica owns one rank per GPU (DistributedRunner) and each
video is split over them with diffusers' context parallelism (Ulysses and/or Ring); rank 0 encodes it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components import wan
from deployments.wan import prompts
from deployments.wan.engine import EngineSpec, WanJob
from deployments.wan.video import Mp4Options
from serve_app.distributed import RankResources
from serve_app.distributed.runner import run_blocking
from serve_app.distributed.service import DistributedService
from serve_app.endpoints import endpoint
from serve_app.errors import FieldError
from serve_app.io import Video
from serve_app.models.source import DeviceName, DtypeName, ModelSource, resolve_device
from serve_app.service import RunContext

logger = logging.getLogger("ray.serve")

AspectRatio = Literal["16:9", "9:16"]
RING_BACKEND = "_native_flash"  # returns the log-sum-exp that Ring needs (diffusers' `native` does not)


class WanConfig(BaseModel):
    """Configuration of the Wan service."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSource = Field(default=ModelSource(id=wan.WAN_T2V_1_3B_ID), description="WanPipeline weights "
                               "(diffusers format), or a preset.")
    device: DeviceName = Field(default="auto", description="cuda, cpu, or auto (one process; with world_size > 1 "
                               "the ranks' devices come from `resources`).")
    dtype: DtypeName = Field(default="auto", description="Transformer and text encoder; auto = bfloat16 on CUDA.")
    vae_dtype: DtypeName = Field(default="float32", description="The VAE's dtype (diffusers recommends float32).")
    landscape: tuple[int, int] = Field(default=(832, 480), description="(width, height) of `16:9` videos.")
    portrait: tuple[int, int] = Field(default=(480, 832), description="(width, height) of `9:16` videos.")
    num_frames: int = Field(default=81, ge=1, description="Frames per video; 4k+1.")
    fps: int = Field(default=wan.SAMPLE_FPS, ge=1, le=120, description="Frames per second of the MP4.")
    mp4: Mp4Options = Field(default_factory=Mp4Options, description="H.264 encoder settings.")
    llm: prompts.LLMSettings = Field(default_factory=prompts.LLMSettings,
                                     description="The any-llm service used for safety and expansion.")
    world_size: int = Field(default=1, ge=1, le=8, description="GPUs per video (ranks); 1 runs in the replica.")
    ulysses_degree: int | None = Field(default=None, ge=1, description="Ulysses degree (splits the 12 heads); "
                                       "default: world_size / ring_degree.")
    ring_degree: int = Field(default=1, ge=1, description="Ring degree (GPU only); ulysses x ring = world_size.")
    cfg_parallel: bool = Field(default=False, description="world_size 2 without a sequence split: one rank computes "
                               "the prompt's branch of classifier-free guidance, the other the negative prompt's, "
                               "one all-gather per step (components/cfg_parallel.py).")
    attention_backend: str | None = Field(default=None, description="diffusers attention backend; default: "
                                          "diffusers' own, and `_native_flash` when Ring is used.")
    torch_compile: bool = Field(default=False, description="Compile the transformer blocks (warm-up compiles).")
    fuse_qkv: bool = Field(default=False, description="One projection GEMM for each self-attention's Q, K and V "
                           "(and each cross-attention's K and V): diffusers' `fuse_qkv_projections`, lossless.")
    resources: RankResources = Field(default_factory=RankResources, description="Per-rank resources (world_size > 1).")
    warmup_steps: int = Field(default=2, ge=0, description="Steps of the warm-up video at the 16:9 size (0: none).")
    start_timeout_s: float = Field(default=1800, gt=0, description="Limit for loading and warming up the ranks.")
    call_timeout_s: float | None = Field(default=900, gt=0, description="Limit for one video on the ranks.")

    @model_validator(mode="after")
    def _check(self) -> WanConfig:
        if (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames must be 4k+1 (Wan's VAE packs 4 frames per latent), got {self.num_frames}")
        for name, (width, height) in (("landscape", self.landscape), ("portrait", self.portrait)):
            if width % 16 or height % 16:
                raise ValueError(f"{name} {width}x{height}: width and height must be multiples of 16")
            tokens = ((self.num_frames - 1) // 4 + 1) * (height // 16) * (width // 16)
            split = self.ulysses * self.ring_degree
            if tokens % split:
                raise ValueError(f"{name} {width}x{height}x{self.num_frames} makes {tokens} tokens, which "
                                 f"{split} ranks cannot share evenly")
        if self.cfg_parallel and (self.world_size != 2 or self.ulysses * self.ring_degree != 1):
            raise ValueError(f"cfg_parallel takes world_size 2 and no Ulysses or Ring degree (got world_size "
                             f"{self.world_size}, ulysses {self.ulysses}, ring {self.ring_degree})")
        if not self.cfg_parallel and self.ulysses * self.ring_degree != self.world_size:
            raise ValueError(f"ulysses_degree x ring_degree = {self.ulysses * self.ring_degree}, "
                             f"but world_size is {self.world_size}")
        wan.check_context_parallel(wan.HEADS[self.model.preset or "full"], self.ulysses, self.ring_degree)
        if self.ring_degree > 1 and not self.resources.use_gpu:
            raise ValueError("Ring attention runs on GPUs only (it needs an attention backend that returns the "
                             "log-sum-exp); on CPU use Ulysses")
        return self

    @property
    def ulysses(self) -> int:
        if self.cfg_parallel:
            return self.ulysses_degree or 1
        return self.ulysses_degree or max(1, self.world_size // self.ring_degree)

    def engine_spec(self) -> EngineSpec:
        backend = self.attention_backend or (RING_BACKEND if self.ring_degree > 1 else None)
        return EngineSpec(model=self.model, dtype=self.dtype, vae_dtype=self.vae_dtype,
                          ulysses_degree=self.ulysses if self.world_size > 1 else 1,
                          ring_degree=self.ring_degree, cfg_parallel=self.cfg_parallel, attention_backend=backend,
                          torch_compile=self.torch_compile, fuse_qkv=self.fuse_qkv)

    def job(self, request: WanT2VInput, prompt: str, seed: int) -> WanJob:
        """What the engine renders for `request` (with the prompt after safety and expansion)."""
        width, height = self.landscape if request.aspect_ratio == "16:9" else self.portrait
        return WanJob(prompt=prompt, negative_prompt=request.negative_prompt or wan.DEFAULT_NEGATIVE_PROMPT,
                      width=width, height=height, num_frames=self.num_frames, num_inference_steps=request.steps,
                      guidance_scale=request.guidance_scale, shift=request.shift, sampler=request.sampler, seed=seed)


def _steps_field() -> Any:
    return Field(default=30, ge=2, le=40, description="Number of inference steps for sampling. Higher values give "
                 "better quality but take longer.")


class WanT2VInput(BaseModel):
    """Input of `POST /wan/v2.1/1.3b/text-to-video` (fal's `WanT2VRequest`)."""

    prompt: str = Field(description="The text prompt to guide video generation.", examples=[
        "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage."])
    negative_prompt: str = Field(default="", description="What the video should not contain. Empty: Wan's own "
                                 "default negative prompt, as the original Wan code uses.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="Random seed for reproducibility; "
                             "omit for a random one (0 is a real seed). The seed used is returned.")
    aspect_ratio: AspectRatio = Field(default="16:9", description="16:9 (832x480) or 9:16 (480x832).")
    inference_steps: int = _steps_field()
    num_inference_steps: int = Field(default=30, ge=2, le=40, description="Alias of `inference_steps` (fal's "
                                     "demo declared it but never used it): used when `inference_steps` is not "
                                     "given.")
    guidance_scale: float = Field(default=5.0, ge=0.0, le=20.0, title="Guidance scale (CFG)",
                                  description="Classifier-free guidance scale: prompt adherence vs. creativity.")
    shift: float = Field(default=5.0, ge=0.0, le=10.0, description="Noise schedule shift parameter. Affects "
                         "temporal dynamics.")
    sampler: wan.Sampler = Field(default="unipc", description="The sampler to use for generation.")
    enable_safety_checker: bool = Field(default=False, description="Check the prompt with the LLM first; an "
                                        "unsafe prompt (or an LLM failure) is a 422 on `prompt`.")
    enable_prompt_expansion: bool = Field(default=False, description="Let the LLM expand the prompt (on failure "
                                          "or after 10 s, the prompt is used as it is).")

    @property
    def steps(self) -> int:
        if "inference_steps" not in self.model_fields_set and "num_inference_steps" in self.model_fields_set:
            return self.num_inference_steps
        return self.inference_steps


class WanVideo(Video):
    """The MP4 (H.264, yuv420p)."""

    width: int = Field(description="Width in pixels.")
    height: int = Field(description="Height in pixels.")
    fps: int = Field(description="Frames per second.")
    num_frames: int = Field(description="Number of frames.")
    duration: float = Field(description="Length in seconds.")


class WanT2VOutput(BaseModel):
    """fal's `WanT2VResponse`, plus the prompt expansion produced."""

    video: WanVideo = Field(description="The generated video file.")
    seed: int = Field(description="The seed used for generation.")
    prompt: str | None = Field(default=None, description="The prompt the video was generated from, when prompt "
                               "expansion changed it; null otherwise.")


def billable_units(request: WanT2VInput) -> float:
    """One unit per video."""
    return 1.0


class WanService(DistributedService):
    """One WanPipeline in the replica (world_size 1), or a DistributedRunner of `WanWorker` ranks."""

    concurrency_safe = False  # one video at a time, prompt checks included

    @classmethod
    def deployment_defaults(cls, config: BaseModel) -> dict[str, Any]:
        if getattr(config, "world_size", 1) > 1:
            return super().deployment_defaults(config)
        return {"max_ongoing_requests": 1}

    def __init__(self, config: WanConfig, ask: prompts.Ask | None = None) -> None:
        self.config = config
        self.ask: prompts.Ask = ask or prompts.AnyLLMClient(config.llm)
        self.runner = None  # type: ignore[assignment]
        self.engine: Any = None
        if config.world_size > 1:
            from deployments.wan.worker import WanWorker

            self.start_runner(WanWorker, config, spec=config.engine_spec().model_dump(), fps=config.fps,
                              mp4=config.mp4.model_dump())
        else:
            from deployments.wan.engine import WanEngine

            self.engine = WanEngine(config.engine_spec(), resolve_device(config.device))
        logger.info("Wan loaded (%s) on %d rank(s)", config.model.describe(), config.world_size)
        if config.warmup_steps:
            width, height = config.landscape
            job = WanJob(prompt="a photo of a cat", negative_prompt=wan.DEFAULT_NEGATIVE_PROMPT, width=width,
                         height=height, num_frames=config.num_frames, num_inference_steps=config.warmup_steps,
                         guidance_scale=5.0, shift=5.0, sampler="unipc", seed=0)
            if self.engine is not None:  # in the replica: on this thread, the model thread (see `hosted`)
                self._render_sync(job, lambda step, total: None)
            else:
                run_blocking(self._render(job, RunContext("warmup")))

    async def _render(self, job: WanJob, ctx: RunContext) -> dict[str, Any]:
        """The video of `job` (see `worker.finish`), on the ranks or in a thread of this replica."""
        if self.runner is not None:
            result = await self.run_on_ranks({"job": job.model_dump()}, ctx, self.config.call_timeout_s)
        else:
            result = await self._render_here(job, ctx)
        return dict(result)

    def _render_sync(self, job: WanJob, on_step: Callable[[int, int], None]) -> dict[str, Any]:
        from deployments.wan.worker import finish

        start = time.perf_counter()
        latents = self.engine.denoise(job, on_step)
        return finish(self.engine, latents, start, self.config.fps, self.config.mp4)

    async def _render_here(self, job: WanJob, ctx: RunContext) -> dict[str, Any]:
        loop = asyncio.get_running_loop()

        def on_step(step: int, total: int) -> None:
            ctx.check_cancelled()
            loop.call_soon_threadsafe(ctx.progress, step, total, "denoising")

        work = asyncio.ensure_future(self.to_model_thread(self._render_sync, job, on_step))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:  # the caller left: the pipeline stops at its next step (ctx.cancelled)
            await asyncio.gather(work, return_exceptions=True)
            raise

    async def _prompt(self, request: WanT2VInput) -> str:
        """The prompt to render: checked (fail closed) and expanded (fail open) when asked."""
        if request.enable_safety_checker and await prompts.is_unsafe(self.ask, request.prompt, self.config.llm):
            raise FieldError("prompt", prompts.NSFW_MESSAGE)
        if request.enable_prompt_expansion:
            return await prompts.expand(self.ask, request.prompt, self.config.llm)
        return request.prompt

    @endpoint("/v2.1/1.3b/text-to-video", input=WanT2VInput, output=WanT2VOutput, billing=billable_units)
    async def text_to_video(self, request: WanT2VInput, ctx: RunContext) -> WanT2VOutput:
        """Wan 2.1 1.3B: a 5-second 480p video from a prompt."""
        prompt = await self._prompt(request)
        ctx.check_cancelled()
        seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
        result = await self._render(self.config.job(request, prompt, seed), ctx)
        fps = self.config.fps
        video = WanVideo.from_bytes(result["video"], "video/mp4", width=result["width"], height=result["height"],
                                    fps=fps, num_frames=result["num_frames"], duration=result["num_frames"] / fps)
        return WanT2VOutput(video=video, seed=seed, prompt=prompt if prompt != request.prompt else None)

    async def check_health(self) -> None:  # type: ignore[override]
        if self.runner is not None:
            await self.runner.check_health()
        else:
            await asyncio.to_thread(self.engine.synchronize)


def build(name: str, args: Any) -> Any:
    """Builder: validate the config and bind the deployment (in a placement group when world_size > 1)."""
    from serve_app.app import bind_service

    return bind_service(WanService, WanConfig.model_validate(args.config), name, args)
