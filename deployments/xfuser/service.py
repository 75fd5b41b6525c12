"""xFuser (xDiT) model-parallel text-to-image: one image split over the replica's GPUs.

The replica owns a DistributedRunner of `XFuserWorker` ranks in its placement group (one GPU each,
NCCL, a free rendezvous port); every request runs on all ranks and the image comes back from the
rank that decodes it. The model family and the parallel layout come from the config and are checked
before any GPU is touched: a layout that doesn't multiply to `world_size`, or that the model can't
use, stops the application with a message listing the layouts that would work.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.xfuser.engine import Backend, EngineSpec, WarmupSpec
from deployments.xfuser.families import (
    FAMILIES,
    SINGLE,
    Family,
    FamilyName,
    Layout,
    family_of,
    heads_of,
    resolve_layout,
    size_multiple,
)
from deployments.xfuser.native import DIFFUSERS_ATTENTION, check_native_attention
from deployments.xfuser.speed import CompileSpec
from serve_app.distributed import RankResources
from serve_app.distributed.service import DistributedService
from serve_app.endpoints import endpoint
from serve_app.errors import FieldError
from serve_app.io import Image, ImageFormat
from serve_app.limits import MAX_PROMPT_CHARS
from serve_app.models.source import DtypeName, ModelSource
from serve_app.service import RunContext

logger = logging.getLogger("ray.serve")
SD3_MEDIUM_ID = "stabilityai/stable-diffusion-3-medium-diffusers"
# xfuser 0.7's attention backends that run on NVIDIA GPUs without extra packages (`AttentionBackendType`)
XFUSER_ATTENTION = ("SDPA", "SDPA_MATH", "SDPA_EFFICIENT", "SDPA_FLASH", "CUDNN", "FLASH", "FLASH_3", "FLASH_4")
MAX_SIDE = 2048


class XFuserConfig(BaseModel):
    """Configuration of the xFuser service."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSource = Field(default=ModelSource(id=SD3_MEDIUM_ID), description="Pipeline weights.")
    family: FamilyName | None = Field(
        default=None, description="sd3, flux, pixart_alpha, pixart_sigma, hunyuandit or sdxl; inferred from "
        "released hub ids, required for presets and local directories.")
    world_size: int = Field(default=2, ge=1, le=8, description="GPUs per replica (ranks).")
    parallel: Layout = Field(default_factory=Layout,
                             description="xDiT degrees; their product must be world_size. Unset: automatic.")
    backend: Backend = Field(
        default="xfuser", description="xfuser (xDiT's model parallelism); native (diffusers' own context "
        "parallelism, Ulysses/Ring, Flux); or diffusers (the plain pipeline on every rank: the single-GPU "
        "baseline, and the CPU stand-in where xfuser cannot run).")
    resources: RankResources = Field(default_factory=RankResources, description="Per-rank resources.")
    dtype: DtypeName = Field(default="auto", description="auto = bfloat16 on CUDA (xfuser needs 16-bit), "
                             "float32 on CPU.")
    use_torch_compile: bool = Field(default=False, description="torch.compile the transformer (warm up first: "
                                    "the first call compiles for minutes).")
    compile: CompileSpec = Field(default_factory=CompileSpec, description="How use_torch_compile compiles: mode "
                                 "(CUDA graphs or not), regional, and a compile cache shared by a node's replicas.")
    fuse_qkv: bool = Field(default=False, description="One Q/K/V projection GEMM per attention (Flux; other "
                           "models with backend diffusers only: xfuser has no processor for their fused form).")
    warmup_steps: int = Field(default=1, ge=0, description="PipeFusion's exact synchronous steps before it "
                              "pipelines patches with one step-old activations.")
    attention_backend: str | None = Field(default=None, description="Attention kernels. xfuser: one of its "
                                          "backends (SDPA, CUDNN, FLASH, ...; default: xfuser's choice). native and "
                                          "diffusers: a diffusers backend (native, _native_cudnn, _native_flash, ...; "
                                          "native's default on GPUs: _native_cudnn).")
    default_height: int = Field(default=1024, ge=64, le=MAX_SIDE, description="Height when a request omits it.")
    default_width: int = Field(default=1024, ge=64, le=MAX_SIDE, description="Width when a request omits it.")
    warmup: WarmupSpec = Field(default_factory=WarmupSpec, description="Warm-up before taking traffic.")
    start_timeout_s: float = Field(default=1800, gt=0, description="Limit for loading and warming up.")
    call_timeout_s: float | None = Field(default=600, gt=0, description="Limit for one request (null: none).")

    @model_validator(mode="after")
    def _check(self) -> XFuserConfig:
        if self.family is None:
            found = family_of(self.model.id) if self.model.id else None
            if found is None:
                raise ValueError(f"cannot tell the model family of {self.model.describe()}; set `family` to one "
                                 f"of {', '.join(FAMILIES)}")
            self.family = found  # type: ignore[assignment]
        family = FAMILIES[self.fam]
        if self.warmup.enabled and self.warmup.num_inference_steps < family.min_steps:
            raise ValueError(f"warmup.num_inference_steps must be at least {family.min_steps} for {family.name}")
        if self.backend == "diffusers" and not self.parallel.is_auto and self.parallel.gpus != 1:
            raise ValueError("backend `diffusers` runs no model parallelism: leave `parallel` unset")
        self._check_levers(family)
        if self.backend == "xfuser":
            if self.dtype == "float32":
                raise ValueError("xfuser needs bfloat16 or float16 (its sequence-parallel attention returns NaN "
                                 "in float32); use dtype auto, bfloat16 or float16, or backend diffusers")
            if not self.resources.use_gpu:
                raise ValueError("backend xfuser runs on GPUs only (xfuser cannot be imported without one); "
                                 "use backend diffusers on CPU")
        if self.backend != "diffusers":
            layout = self.layout()
            rows, cols = size_multiple(family, layout)
            for name in ("default", "warmup"):
                h, w = ((self.default_height, self.default_width) if name == "default"
                        else (self.warmup.height, self.warmup.width))
                if h % rows or w % cols:
                    raise ValueError(f"{name} size {w}x{h} does not fit {layout.describe()}: height must be a "
                                     f"multiple of {rows} and width of {cols}")
        return self

    def _check_levers(self, family: Family) -> None:
        """The speed levers and attention backend against the backend and model."""
        if not self.use_torch_compile and self.compile != CompileSpec():
            raise ValueError("`compile` settings need use_torch_compile: true")
        if self.fuse_qkv and family.name != "flux" and self.backend != "diffusers":
            raise ValueError(f"fuse_qkv with {family.name} needs backend diffusers (xfuser replaces the attention "
                             "processors with ones that read the separate Q, K and V projections)")
        name = self.attention_backend
        if self.backend == "xfuser" and name is not None and name.upper() not in XFUSER_ATTENTION:
            raise ValueError(f"attention_backend {name!r} is not an xfuser backend: {', '.join(XFUSER_ATTENTION)}")
        if self.backend == "diffusers" and name is not None and name not in DIFFUSERS_ATTENTION:
            raise ValueError(f"attention_backend {name!r} is not one of diffusers' backends this service runs: "
                             f"{', '.join(DIFFUSERS_ATTENTION)}")
        if self.backend == "native":
            layout = self.layout()
            check_native_attention(name, layout.ring)
            if layout.ring > 1 and not self.resources.use_gpu:
                raise ValueError("backend native with ring_degree > 1 needs GPUs (cuDNN or flash attention)")

    @property
    def fam(self) -> str:
        assert self.family is not None
        return self.family

    @property
    def heads(self) -> int:
        return heads_of(self.fam, self.model.preset)

    def layout(self) -> Layout:
        if self.backend == "diffusers":
            return SINGLE
        return resolve_layout(FAMILIES[self.fam], self.parallel, self.world_size, self.heads,
                              native=self.backend == "native")

    def engine_spec(self) -> EngineSpec:
        return EngineSpec(
            family=self.fam, model=self.model, layout=self.layout() if self.backend != "diffusers" else Layout(),
            backend=self.backend, dtype=self.dtype, use_torch_compile=self.use_torch_compile, compile=self.compile,
            fuse_qkv=self.fuse_qkv, warmup_steps=self.warmup_steps, attention_backend=self.attention_backend,
            warmup=self.warmup,
        )


class XFuserInput(BaseModel):
    """Input of `POST /xfuser`."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="The prompt to generate an image from.",
                        examples=["an astronaut riding a horse on the moon"],
                        json_schema_extra={"ui": {"field": "textarea", "important": True}})
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS,
                                 description="What the image should not contain (models with "
                                 "classifier-free guidance only).", json_schema_extra={"ui": {"field": "textarea"}})
    num_inference_steps: int | None = Field(default=None, ge=1, le=100, examples=[28],
                                            description="Denoising steps (default: the model's, e.g. 28).")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, examples=[42],
                             description="Same seed, prompt and settings give the same image; omit for random.")
    guidance_scale: float | None = Field(default=None, ge=0, le=30, examples=[7.0],
                                         description="Guidance scale (default: the model's).")
    height: int | None = Field(default=None, ge=64, le=MAX_SIDE, examples=[1024], description="Image height "
                               "(default: the service's, 1024 in prod); a multiple the parallel layout needs.")
    width: int | None = Field(default=None, ge=64, le=MAX_SIDE, examples=[1024], description="Image width.")
    output_format: ImageFormat = Field(default="jpeg", description="Format of the generated image.")


class XFuserTimings(BaseModel):
    """Seconds spent, as fal reports them."""

    inference: float = Field(description="Denoising and decoding on the GPUs.")
    total: float = Field(description="The whole request inside the service.")


class XFuserOutput(BaseModel):
    """The generated image and how it was made."""

    images: list[Image] = Field(description="The generated image.")
    seed: int = Field(description="The seed used.")
    prompt: str = Field(description="The prompt used.")
    timings: XFuserTimings = Field(description="Where the time went.")
    parallelism: str = Field(description="The layout that made it, e.g. 'pipefusion=1 ulysses=2 ring=1 cfg=off'.")


class XFuserService(DistributedService):
    """Owns a DistributedRunner of `XFuserWorker` ranks in this replica's placement group."""

    def __init__(self, config: XFuserConfig) -> None:
        from deployments.xfuser.worker import XFuserWorker

        self.config = config
        self.family = FAMILIES[config.fam]
        self.parallel = config.layout()
        if self.family.name == "sd3" and self.parallel.sp > 1:
            logger.warning("SD3 with Ulysses/Ring measured slower than one GPU on 4 x H200 "
                           "(bench/xfuser_latency.py); 2 GPUs with CFG parallel is the fast layout")
        self.start_runner(XFuserWorker, config, **config.engine_spec().model_dump())

    def _check(self, request: XFuserInput) -> tuple[int, int]:
        height = request.height or self.config.default_height
        width = request.width or self.config.default_width
        rows, cols = size_multiple(self.family, self.parallel)
        if height % rows:
            raise FieldError("height", f"must be a multiple of {rows} for this model and parallel layout "
                             f"({self.parallel.describe()})")
        if width % cols:
            raise FieldError("width", f"must be a multiple of {cols} for this model")
        steps = request.num_inference_steps
        if steps is not None and steps < self.family.min_steps:
            raise FieldError("num_inference_steps", f"must be at least {self.family.min_steps} for "
                             f"{self.family.name}")
        if request.negative_prompt and not self.family.uses_cfg:
            raise FieldError("negative_prompt", f"{self.family.name} has no classifier-free guidance; leave it "
                             "empty")
        return height, width

    @endpoint("", input=XFuserInput, output=XFuserOutput)
    async def generate(self, request: XFuserInput, ctx: RunContext) -> XFuserOutput:
        """Generate one image with the model split over the replica's GPUs."""
        start = time.perf_counter()
        height, width = self._check(request)
        seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
        steps = request.num_inference_steps or self.family.default_steps
        payload = {"prompt": request.prompt, "negative_prompt": request.negative_prompt, "height": height,
                   "width": width, "num_inference_steps": steps, "seed": seed,
                   "guidance_scale": request.guidance_scale, "output_format": request.output_format}
        result = await self.run_on_ranks(payload, ctx, self.config.call_timeout_s)
        return XFuserOutput(images=[result["file"]], seed=seed, prompt=request.prompt, parallelism=result["layout"],
                            timings=XFuserTimings(inference=result["inference_s"],
                                                  total=time.perf_counter() - start))


def build(name: str, args: Any) -> Any:
    """Builder: validate the config (family, layout, sizes) and bind the deployment."""
    from serve_app.app import bind_service

    return bind_service(XFuserService, XFuserConfig.model_validate(args.config), name, args)
