"""The HTTP contract of the Flux service: fal's `fal-ai/flux-lora` and `fal-ai/flux/dev` fields.

Field names, defaults and bounds follow fal's pages: 28 steps (1-50), guidance 3.5 (0-35 on
`flux-lora`, 1-20 on `flux/dev`), 1-4 images, `landscape_4_3` by default, `loras: [{path, scale}]`
(any number, merged). A LoRA set is routed by `lora_set_key`: a stable hash of the sorted paths,
so every request for the same files lands on the replica that already holds them (scales are
applied per request, so they are not part of the key).
"""

from __future__ import annotations

import hashlib
import math

from pydantic import BaseModel, Field

from serve_app.io import Image, ImageFormat, ImageSize, resolve_image_size

MAX_LORA_SCALE = 4.0  # fal's LoRA scales on its image endpoints run 0-4
PROMPT_EXAMPLE = ("Extreme close-up of a single tiger eye, direct frontal view. Detailed iris and pupil. Sharp focus "
                  "on eye texture and color. Natural lighting to capture authentic eye shine and depth.")


class LoraWeight(BaseModel):
    """One LoRA of a request."""

    path: str = Field(description="URL of the LoRA weights: a `.safetensors` file over http(s), a data: URL, or a "
                      "file URL of this server (e.g. a `/flux-train` checkpoint).", min_length=1)
    scale: float = Field(default=1.0, ge=0.0, le=MAX_LORA_SCALE, description="The scale of the LoRA weight. This is "
                         "used to scale the LoRA weight before merging it with the base model.")


class FluxDevInput(BaseModel):
    """Input of `POST /flux/dev` (FLUX.1 [dev], no LoRAs)."""

    prompt: str = Field(description="The prompt to generate an image from.", examples=[PROMPT_EXAMPLE])
    image_size: ImageSize = Field(default="landscape_4_3", description="A preset name or {width, height}.")
    num_inference_steps: int = Field(default=28, ge=1, le=50, description="The number of inference steps to perform.")
    seed: int | None = Field(default=None, ge=0, le=2**64 - 1, description="Same seed, prompt and settings give the "
                             "same image. Omit for a random seed; the seed used is returned.")
    guidance_scale: float = Field(default=3.5, ge=1.0, le=20.0, description="How close the image sticks to the prompt "
                                  "(Flux's distilled guidance).")
    num_images: int = Field(default=1, ge=1, le=4, description="The number of images to generate.")
    enable_safety_checker: bool = Field(default=True, description="Black out images flagged as NSFW.")
    output_format: ImageFormat = Field(default="jpeg", description="The format of the generated images.")
    sync_mode: bool = Field(default=False, description="Return the images inside the response as data URIs "
                            "instead of URLs to download (nothing is stored).")


class FluxLoraInput(FluxDevInput):
    """Input of `POST /flux-lora` (FLUX.1 [dev] with LoRAs loaded per request)."""

    guidance_scale: float = Field(default=3.5, ge=0.0, le=35.0, description="How close the image sticks to the prompt "
                                  "(Flux's distilled guidance).")
    loras: list[LoraWeight] = Field(default_factory=list, description="The LoRAs to use. Any number of LoRAs can be "
                                    "given; they are merged together to generate the image.")


class FluxOutput(BaseModel):
    """Output of both endpoints."""

    images: list[Image] = Field(description="The generated images.")
    seed: int = Field(description="The seed used.")
    has_nsfw_concepts: list[bool] = Field(description="Whether each image was flagged (and blacked out).")
    prompt: str = Field(description="The prompt used.")
    timings: dict[str, float] = Field(description="Seconds spent: `inference`, and `lora_loading` for LoRAs that "
                                      "were not loaded on the replica yet.")


def billable_units(request: FluxDevInput) -> float:
    """One unit per started megapixel (1024²) per image, as fal bills Flux."""
    width, height = resolve_image_size(request.image_size)
    return math.ceil(width * height / (1024 * 1024)) * request.num_images


def lora_set_key(request: FluxLoraInput) -> str | None:
    """The multiplexed model id of a request: a stable hash of its sorted LoRA paths (None: no LoRAs)."""
    paths = sorted({lora.path.strip() for lora in request.loras})
    if not paths:
        return None
    return "loras-" + hashlib.sha256("\n".join(paths).encode()).hexdigest()[:32]
