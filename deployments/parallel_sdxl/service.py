"""Parallel SDXL (fal's data-parallel demo): N GPUs, N images per request, one grid back.

Every rank runs the whole SDXL pipeline on the same prompt with seed + rank; rank 0 gathers the
images into a grid (floor(sqrt(N)) per row). The stream sends preview grids decoded with the tiny
autoencoder (TAESDXL) every `preview_every` steps, then the final output.
"""

from __future__ import annotations

import secrets
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from components.sdxl import SDXL_BASE_ID as SDXL_ID
from components.sdxl import TAESDXL_ID
from serve_app.distributed import RankResources
from serve_app.distributed.runner import run_blocking
from serve_app.distributed.service import DistributedService
from serve_app.endpoints import endpoint
from serve_app.io import Image, ImageFormat
from serve_app.limits import MAX_PROMPT_CHARS
from serve_app.models.source import DtypeName, ModelSource
from serve_app.service import RunContext


class ParallelSDXLConfig(BaseModel):
    """Configuration of the parallel SDXL service."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSource = Field(default=ModelSource(id=SDXL_ID), description="SDXL pipeline weights.")
    preview_vae: ModelSource = Field(default=ModelSource(id=TAESDXL_ID), description="Tiny autoencoder for previews.")
    world_size: int = Field(default=2, ge=1, description="Ranks (GPUs): images per request.")
    resources: RankResources = Field(default_factory=RankResources, description="Per-rank resources.")
    dtype: DtypeName = Field(default="auto", description="Weights dtype; auto = bfloat16 on CUDA, float32 on CPU.")
    preview_every: int = Field(default=5, ge=1, description="Steps between stream previews.")
    start_timeout_s: float = Field(default=1800, gt=0, description="Limit for loading the models on every rank.")
    call_timeout_s: float | None = Field(default=900, gt=0, description="Limit for one request (null: none).")
    warmup: bool = Field(default=True, description="Generate once before taking traffic.")
    warmup_size: int = Field(default=1024, ge=64, le=2048, description="Warm-up width and height.")


class ParallelSDXLInput(BaseModel):
    """Input of `POST /parallel-sdxl`."""

    prompt: str = Field(description="The prompt; every GPU renders it with its own seed.", max_length=MAX_PROMPT_CHARS,
                        examples=["an astronaut riding a horse on the moon"],
                        json_schema_extra={"ui": {"field": "textarea", "important": True}})
    negative_prompt: str = Field(default="blurry, low quality", max_length=MAX_PROMPT_CHARS,
                                 description="What the images should not contain.",
                                 json_schema_extra={"ui": {"field": "textarea"}})
    num_inference_steps: int = Field(default=20, ge=1, le=100, description="Denoising steps.")
    width: int = Field(default=1024, ge=64, le=2048, multiple_of=8, description="Width of each image.")
    height: int = Field(default=1024, ge=64, le=2048, multiple_of=8, description="Height of each image.")
    guidance_scale: float = Field(default=5.0, ge=0, le=20, description="Classifier-free guidance scale.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, examples=[42],
                             description="Rank r uses seed + r, so a request is reproducible; omit for random.")
    output_format: ImageFormat = Field(default="jpeg", description="Format of the grid image.")


class ParallelSDXLOutput(BaseModel):
    """One grid holding one image per GPU."""

    image: Image = Field(description="The grid: floor(sqrt(N)) images per row.")
    seed: int = Field(description="The base seed; image r used seed + r.")
    num_images: int = Field(description="Images in the grid (one per GPU).")


class ParallelSDXLService(DistributedService):
    """Owns a DistributedRunner of `SDXLWorker` ranks in this replica's placement group."""

    def __init__(self, config: ParallelSDXLConfig) -> None:
        from deployments.parallel_sdxl.worker import SDXLWorker

        self.config = config
        self.start_runner(
            SDXLWorker, config, model=config.model.model_dump(),
            preview_vae=config.preview_vae.model_dump(), dtype=config.dtype,
        )
        if config.warmup:
            size = config.warmup_size
            run_blocking(self.runner.invoke(self._payload(
                ParallelSDXLInput(prompt="a photo of a cat", width=size, height=size, num_inference_steps=2), 0)))

    def _payload(self, request: ParallelSDXLInput, seed: int) -> dict[str, Any]:
        return {**request.model_dump(exclude={"seed"}), "seed": seed,
                "preview_every": self.config.preview_every}

    @endpoint("", input=ParallelSDXLInput, output=ParallelSDXLOutput)
    async def generate(self, request: ParallelSDXLInput, ctx: RunContext) -> ParallelSDXLOutput:
        """Generate one image per GPU and return them as a grid."""
        seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
        payload = self._payload(request, seed)
        result = await self.run_on_ranks(payload, ctx, self.config.call_timeout_s)
        return ParallelSDXLOutput(image=result["file"], seed=seed,
                                  num_images=self.config.world_size)


def build(name: str, args: Any) -> Any:
    """Builder: validate the config and bind the deployment in its placement group."""
    from serve_app.app import bind_service

    return bind_service(ParallelSDXLService, ParallelSDXLConfig.model_validate(args.config), name, args)
