"""Flux LoRA preprocessing (fal's Flux LoRA preprocessor): a ZIP of images → one training file.

`POST /flux-preprocess` downloads the ZIP (http(s), data: or a `POST /files` upload), extracts
its images safely (`serve_app.archive`), centre-crops each to a square and resizes it to
`resolution`, then hands them to the ranks (`FluxPreprocessWorker`): each captions its share with
BLIP unless a `<image>.txt` sidecar gives the caption, prepends the trigger word, and encodes the
images with the Flux VAE and the captions with T5 and CLIP. Rank 0 gathers everything into one
safetensors file (`deployments.flux_lora.data`), which the Flux LoRA trainer reads.

Payload transport: the replica sends the cropped pixels as one uint8 array `[N, res, res, 3]`
(N·res²·3 bytes: 0.75 MiB per image at 512, 3 MiB at 1024). The runner puts the payload in Ray's
object store once; the ranks, in the same placement group on one node, read it without a copy and
each takes its contiguous slice, so sending per-rank slices would save nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from components.flux import FLUX_DEV_ID
from deployments.flux_lora.captioner import BLIP_LARGE_ID
from serve_app.archive import ArchiveImage, ArchiveLimits, extract_images
from serve_app.distributed import RankResources
from serve_app.distributed.runner import run_blocking
from serve_app.distributed.service import DistributedService
from serve_app.endpoints import endpoint
from serve_app.errors import FieldError
from serve_app.inputs import FetchOptions, fetch_url
from serve_app.io import File
from serve_app.limits import open_image
from serve_app.models.source import DtypeName, ModelSource
from serve_app.service import RunContext

FIELD = "images_data_url"


MAX_IMAGE_PIXELS = 50_000_000  # a 48 MP phone photo passes; a 3 KB PNG declaring 50000x50000 does not


class FluxPreprocessConfig(BaseModel):
    """Configuration of the Flux LoRA preprocessing service."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSource = Field(default=ModelSource(id=FLUX_DEV_ID),
                               description="FLUX.1 weights: its vae, text_encoder/tokenizer (CLIP) and "
                               "text_encoder_2/tokenizer_2 (T5) subfolders are loaded.")
    captioner: ModelSource | None = Field(default=ModelSource(id=BLIP_LARGE_ID),
                                          description="BLIP captioning model for images without a sidecar "
                                          "caption; null captions them with the trigger word alone.")
    caption_max_new_tokens: int = Field(default=40, ge=1, le=256, description="Longest generated caption, in tokens.")
    caption_num_beams: int = Field(default=3, ge=1, le=8, description="Beam width of caption generation.")
    world_size: int = Field(default=2, ge=1, description="Ranks (GPUs) sharing the images of a request.")
    resources: RankResources = Field(default_factory=RankResources, description="Per-rank resources.")
    dtype: DtypeName = Field(default="auto", description="Encoders' dtype and the file's; auto = bfloat16 on CUDA, "
                             "float32 on CPU.")
    batch_size: int = Field(default=4, ge=1, le=64, description="Images each rank encodes at once.")
    seed: int = Field(default=0, ge=0, description="Seed of the VAE latent sampling: image i uses seed + i, so a "
                      "dataset always encodes the same way, whatever the world size.")
    limits: ArchiveLimits = Field(default_factory=ArchiveLimits, description="What one ZIP archive may hold.")
    max_download_bytes: int = Field(default=512 * 1024 * 1024, ge=1, description="Largest ZIP accepted.")
    max_image_pixels: int = Field(default=MAX_IMAGE_PIXELS, ge=1, description="Most pixels of one image, read "
                                  "from its header before decoding (a small PNG can declare a huge size).")
    download_timeout_s: float = Field(default=300, gt=0, description="Limit for downloading the ZIP.")
    start_timeout_s: float = Field(default=1800, gt=0, description="Limit for loading the models on every rank.")
    call_timeout_s: float | None = Field(default=3600, gt=0, description="Limit for encoding one request (null: none).")
    warmup: bool = Field(default=True, description="Preprocess one synthetic image before taking traffic.")


class PreprocessInput(BaseModel):
    """Input of `POST /flux-preprocess` (fal's `PreprocessRequest`)."""

    images_data_url: str = Field(
        description="URL of a ZIP archive of images (.jpg .jpeg .png .bmp .webp; folders are walked). An image "
        "`x.jpg` takes its caption from `x.txt` beside it when present. http(s), data: or a `POST /files` URL.",
        examples=["https://example.com/my-dataset.zip"], json_schema_extra={"ui": {"field": "file", "important": True}})
    trigger_word: str = Field(default="ohwx", max_length=100, description="Word prepended to every caption.")
    resolution: int = Field(default=512, ge=256, le=1024, multiple_of=16,
                            description="Side of the square training images (centre-cropped, then resized).")


class PreprocessOutput(BaseModel):
    """The training file and what it holds."""

    preprocessed_data: File = Field(description="safetensors file: latents, text_embeddings, pooled_embeddings "
                                    "and the captions (format `flux-lora-preprocessed/1`).")
    num_images: int = Field(description="Images in the file.")
    message: str = Field(description="A summary.")


def square_pixels(data: bytes, resolution: int, max_pixels: int = MAX_IMAGE_PIXELS) -> Any:
    """Decode an image, apply its EXIF orientation, flatten transparency onto white, centre-crop it to a
    square and resize it to `resolution` (LANCZOS): `[res, res, 3]` uint8. An image whose header
    declares more than `max_pixels` is refused before any pixel is decoded."""
    import numpy as np
    from PIL import Image, ImageOps

    with open_image(data, max_pixels, FIELD) as opened:
        opened.draft("RGB", (resolution, resolution))  # JPEG: decode big photos at a reduced scale
        image = ImageOps.exif_transpose(opened)
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            image = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image)
        image = ImageOps.fit(image.convert("RGB"), (resolution, resolution), method=Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def prepare_images(images: list[ArchiveImage], resolution: int,
                   max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[Any, list[str | None]]:
    """`([N, res, res, 3] uint8, sidecar captions)`; an unreadable image is a 422 naming it."""
    import numpy as np

    pixels = np.empty((len(images), resolution, resolution, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        try:
            pixels[i] = square_pixels(image.data, resolution, max_pixels)
        except Exception as e:  # PIL raises many types (UnidentifiedImageError, DecompressionBombError, OSError)
            raise FieldError(FIELD, f"{image.name} is not a readable image: {e}") from e
    return pixels, [image.caption for image in images]


class FluxPreprocessService(DistributedService):
    """Owns a DistributedRunner of `FluxPreprocessWorker` ranks in this replica's placement group."""

    def __init__(self, config: FluxPreprocessConfig) -> None:
        from deployments.flux_lora.preprocess_worker import FluxPreprocessWorker

        self.config = config
        self.start_runner(
            FluxPreprocessWorker, config, model=config.model.model_dump(),
            captioner=config.captioner.model_dump() if config.captioner else None, dtype=config.dtype,
            caption_max_new_tokens=config.caption_max_new_tokens, caption_num_beams=config.caption_num_beams,
        )
        if config.warmup:
            import numpy as np

            pixels = np.full((1, 256, 256, 3), 127, dtype=np.uint8)
            run_blocking(self.runner.invoke(self._payload(pixels, [None], "ohwx", 256)))

    def _payload(self, pixels: Any, captions: list[str | None], trigger_word: str, resolution: int) -> dict[str, Any]:
        return {"images": pixels, "captions": captions, "trigger_word": trigger_word, "resolution": resolution,
                "batch_size": self.config.batch_size, "seed": self.config.seed}

    async def _load(self, request: PreprocessInput) -> tuple[Any, list[str | None]]:
        """Fetch, extract and crop the archive's images (the CPU work in a thread)."""
        options = FetchOptions(max_bytes=self.config.max_download_bytes, timeout_s=self.config.download_timeout_s)
        archive = await fetch_url(request.images_data_url, FIELD, options)

        def unpack() -> tuple[Any, list[str | None]]:
            return prepare_images(extract_images(archive, self.config.limits, FIELD), request.resolution,
                                  self.config.max_image_pixels)

        return await asyncio.to_thread(unpack)

    @endpoint("", input=PreprocessInput, output=PreprocessOutput)
    async def preprocess(self, request: PreprocessInput, ctx: RunContext) -> PreprocessOutput:
        """Caption and encode a ZIP of images into a Flux LoRA training file."""
        pixels, captions = await self._load(request)
        payload = self._payload(pixels, captions, request.trigger_word, request.resolution)
        result = await self.run_on_ranks(payload, ctx, self.config.call_timeout_s)
        n = len(captions)
        return PreprocessOutput(
            preprocessed_data=File.from_bytes(result["data"], "application/octet-stream", "preprocessed.safetensors"),
            num_images=n, message=f"Preprocessed {n} images with trigger word '{request.trigger_word}'")


def build(name: str, args: Any) -> Any:
    """Builder: validate the config and bind the deployment in its placement group."""
    from serve_app.app import bind_service

    return bind_service(FluxPreprocessService, FluxPreprocessConfig.model_validate(args.config), name, args)
