"""Sana text-to-image: `/` (SanaPipeline, Sana 1600M) and `/sprint` (SanaSprintPipeline, Sana Sprint
1.6B), as fal's Sana demo defines them. Sprint shares the base pipeline's Gemma text encoder.
"""

from __future__ import annotations

import copy
import logging
import math
import secrets
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_app.endpoints import endpoint
from serve_app.errors import FieldError
from serve_app.io import Image, ImageFormat, ImageSize, ImageSizeDims, resolve_image_size
from serve_app.limits import MAX_PROMPT_CHARS, check_pixels
from serve_app.models.source import DeviceName, DtypeName, ModelSource, resolve_device, resolve_dtype
from serve_app.service import RunContext, Service

logger = logging.getLogger("ray.serve")

SANA_ID = "Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers"
SANA_SPRINT_ID = "Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers"
SAFETY_CHECKER_ID = "Falconsai/nsfw_image_detection"


class WarmupConfig(BaseModel):
    """One inference per pipeline before the replica takes traffic."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Run the warm-up at start.")
    width: int = Field(default=1024, gt=0, description="Warm-up image width.")
    height: int = Field(default=1024, gt=0, description="Warm-up image height.")


class SanaConfig(BaseModel):
    """Configuration of the Sana service."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSource = Field(default=ModelSource(id=SANA_ID), description="Base SanaPipeline weights.")
    sprint_model: ModelSource = Field(
        default=ModelSource(id=SANA_SPRINT_ID), description="SanaSprintPipeline weights (its text encoder is shared)."
    )
    safety_checker: ModelSource = Field(
        default=ModelSource(id=SAFETY_CHECKER_ID), description="NSFW image classifier."
    )
    nsfw_threshold: float = Field(default=0.5, ge=0, le=1,
                                  description="NSFW probability above which an image is flagged.")
    device: DeviceName = Field(default="auto", description="cuda, cpu, or auto.")
    dtype: DtypeName = Field(default="auto", description="Weights dtype; auto = bfloat16 on CUDA, float32 on CPU.")
    complex_human_instruction: bool = Field(
        default=True, description="Prepend Sana's prompt-enhancing instruction (the pipelines' default)."
    )
    warmup: WarmupConfig = Field(default_factory=WarmupConfig, description="Warm-up inference.")
    max_pixels_per_request: int = Field(
        default=4 * 3840 * 2160, ge=1,
        description="Most pixels one request may ask for (width x height x num_images; 422 on image_size beyond): "
        "four images at the default 3840x2160.")

    @model_validator(mode="after")
    def _same_kind(self) -> SanaConfig:
        if self.model.preset != self.sprint_model.preset:
            raise ValueError("model and sprint_model must both be hub/local ids or both the same preset "
                             "(Sprint reuses the base text encoder)")
        return self


def _seed_field() -> Any:
    return Field(default=None, ge=0, le=2**64 - 1, examples=[42], description="Same seed, prompt and settings "
                 "give the same image. Omit for a random seed; the seed used is returned.")


class TextToImageInput(BaseModel):
    """Input of `POST /sana`."""

    prompt: str = Field(description="The prompt to generate an image from.", max_length=MAX_PROMPT_CHARS,
                        examples=["Underwater coral reef ecosystem during peak bioluminescent activity"],
                        json_schema_extra={"ui": {"field": "textarea", "important": True}})
    negative_prompt: str = Field(default="", description="What the image should not contain.",
                                 max_length=MAX_PROMPT_CHARS, examples=["blurry, low quality"],
                                 json_schema_extra={"ui": {"field": "textarea"}})
    image_size: ImageSize = Field(default=ImageSizeDims(width=3840, height=2160), examples=["square_hd"],
                                  description="A preset name or {width, height}.",
                                  json_schema_extra={"ui": {"important": True}})
    num_inference_steps: int = Field(default=18, ge=1, le=50, description="Denoising steps.")
    seed: int | None = _seed_field()
    guidance_scale: float = Field(default=5.0, ge=0.0, le=20.0, description="Classifier-free guidance scale.")
    enable_safety_checker: bool = Field(default=True, description="Black out images flagged as NSFW.")
    num_images: int = Field(default=1, ge=1, le=4, description="Number of images to generate.")
    output_format: ImageFormat = Field(default="jpeg", description="Format of the generated images.")


class SprintInput(TextToImageInput):
    """Input of `POST /sana/sprint` (`negative_prompt` is accepted but unused by Sprint)."""

    num_inference_steps: int = Field(default=2, ge=1, le=20, description="Denoising steps.")


class SanaOutput(BaseModel):
    """Output of both endpoints."""

    images: list[Image] = Field(description="The generated images.")
    seed: int = Field(description="The seed used.")
    has_nsfw_concepts: list[bool] = Field(description="Whether each image was flagged (and blacked out).")
    prompt: str = Field(description="The prompt used.")


def billable_units(request: TextToImageInput) -> float:
    """One unit per started megapixel (1024²) per image."""
    width, height = resolve_image_size(request.image_size)
    return math.ceil(width * height / (1024 * 1024)) * request.num_images


SPRINT_TWO_STEP_INTERMEDIATE = 1.3  # SCM's intermediate timestep, defined only for 2 steps


class SanaService(Service):
    """Loads both pipelines and the safety checker once, warms up, then serves requests."""

    def __init__(self, config: SanaConfig) -> None:
        import torch

        from components.safety import SafetyChecker
        from deployments.sana import presets

        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self._torch = torch
        if config.model.preset is not None:
            torch.manual_seed(config.model.seed)
            preset = config.model.preset
            tokenizer, text_encoder = presets.build_text_encoder(preset, self.device, self.dtype)
            self.base = presets.build_base(preset, self.device, self.dtype, tokenizer, text_encoder)
            self.sprint = presets.build_sprint(preset, self.device, self.dtype, tokenizer, text_encoder)
        else:
            self.base, self.sprint = self._load(config)
        for pipe in (self.base, self.sprint):
            pipe.set_progress_bar_config(disable=True)
        self.safety = SafetyChecker(config.safety_checker, self.device, config.nsfw_threshold)
        logger.info("Sana loaded (%s, %s) on %s/%s", config.model.describe(), config.sprint_model.describe(),
                    self.device, self.dtype)
        if config.warmup.enabled:
            self._warmup()

    def _load(self, config: SanaConfig) -> tuple[Any, Any]:
        """Real weights from hub ids or local dirs, through diffusers' `from_pretrained`."""
        from diffusers import SanaPipeline, SanaSprintPipeline

        base = SanaPipeline.from_pretrained(str(config.model.id), torch_dtype=self.dtype,
                                            **config.model.pretrained_kwargs()).to(self.device)
        sprint = SanaSprintPipeline.from_pretrained(
            str(config.sprint_model.id), text_encoder=base.text_encoder, torch_dtype=self.dtype,
            **config.sprint_model.pretrained_kwargs(),
        ).to(self.device)
        return base, sprint

    def _warmup(self) -> None:
        size = ImageSizeDims(width=self.config.warmup.width, height=self.config.warmup.height)
        ctx = RunContext("warmup")
        self.generate(TextToImageInput(prompt="a photo of a cat", image_size=size, num_inference_steps=2, seed=0), ctx)
        self.sprint_generate(SprintInput(prompt="a photo of a cat", image_size=size, seed=0), ctx)

    @endpoint("", input=TextToImageInput, output=SanaOutput, billing=billable_units)
    def generate(self, request: TextToImageInput, ctx: RunContext) -> SanaOutput:
        """Generate images with Sana 1600M."""
        return self._run(self.base, request, ctx, {"negative_prompt": request.negative_prompt})

    @endpoint("/sprint", input=SprintInput, output=SanaOutput, billing=billable_units)
    def sprint_generate(self, request: SprintInput, ctx: RunContext) -> SanaOutput:
        """Generate images with Sana Sprint 1.6B in a few steps."""
        steps = request.num_inference_steps
        intermediate = SPRINT_TWO_STEP_INTERMEDIATE if steps == 2 else None
        try:  # ask the scheduler itself, on a copy, so what it rejects is a 422, not a 500
            copy.deepcopy(self.sprint.scheduler).set_timesteps(steps, intermediate_timesteps=intermediate)
        except ValueError as e:
            raise FieldError("num_inference_steps", str(e)) from e
        return self._run(self.sprint, request, ctx, {"intermediate_timesteps": intermediate})

    @staticmethod
    def _binned_size(pipe: Any, width: int, height: int) -> tuple[int, int]:
        """The model's native resolution bucket closest in aspect ratio to the request.

        The pipelines can bin and resize back themselves, but their resize floors the scaled size
        and then crops a wrong shape for sizes such as 640x480; so we bin here, generate at the
        bucket size and resize back ourselves (`serve_app.imaging.fit`, as `ImageOps.fit` does).
        """
        from diffusers.pipelines.sana import pipeline_sana as sana

        bins = {128: sana.ASPECT_RATIO_4096_BIN, 64: sana.ASPECT_RATIO_2048_BIN, 32: sana.ASPECT_RATIO_1024_BIN,
                16: sana.ASPECT_RATIO_512_BIN}[pipe.transformer.config.sample_size]
        bin_height, bin_width = pipe.image_processor.classify_height_width_bin(height, width, ratios=bins)
        return int(bin_width), int(bin_height)

    def _run(self, pipe: Any, request: TextToImageInput, ctx: RunContext, extra: dict[str, Any]) -> SanaOutput:
        """Generate, then stay on the device until the bytes are ready: the fit to the requested
        size, the safety checker's preprocessing and JPEG encoding run where the images are
        (`serve_app.imaging`)."""
        from serve_app.imaging import encode_images, fit

        torch = self._torch
        width, height = resolve_image_size(request.image_size)
        check_pixels(width, height, request.num_images, self.config.max_pixels_per_request)
        gen_width, gen_height = self._binned_size(pipe, width, height)
        seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
        steps = request.num_inference_steps
        if not self.config.complex_human_instruction:
            extra["complex_human_instruction"] = None
        with torch.inference_mode():
            result = pipe(
                prompt=request.prompt,
                width=gen_width,
                height=gen_height,
                use_resolution_binning=False,
                num_inference_steps=steps,
                guidance_scale=request.guidance_scale,
                num_images_per_prompt=request.num_images,
                generator=torch.Generator(device=self.device).manual_seed(seed),
                output_type="pt",
                callback_on_step_end=ctx.diffusers_callback(steps),
                **extra,
            )
            images = fit(result.images, width, height)
            if request.enable_safety_checker:
                images, flags = self.safety.apply_tensor(images)
            else:
                flags = [False] * len(images)
            encoded = encode_images(images, request.output_format)
        return SanaOutput(images=encoded, seed=seed, has_nsfw_concepts=flags, prompt=request.prompt)

    def check_health(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize()  # raises when the CUDA context is broken


def build(name: str, args: Any) -> Any:
    """Builder: validate the config and bind the deployment (options from its defaults + args)."""
    from serve_app.app import bind_service

    return bind_service(SanaService, SanaConfig.model_validate(args.config), name, args)

