"""The per-rank SDXL worker: every rank generates one image (seed + rank), rank 0 gathers a grid.

Written against `serve_app.distributed.DistributedWorker`, fal's API: the seed demo's worker
would port by changing its import.
"""

from __future__ import annotations

import math
import time
from typing import Any

from serve_app.distributed import DistributedWorker
from serve_app.io import ImageFormat
from serve_app.models.source import ModelSource, build_or_load, resolve_dtype


def grid(images: list[Any]) -> Any:
    """Tile `[1, 3, H, W]` images as fal's demo does: floor(sqrt(n)) per row (one column for 2 GPUs),
    black where the last row is short. Stays on the images' device."""
    import torch

    cols = max(1, math.isqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    cells = list(images) + [torch.zeros_like(images[0])] * (rows * cols - len(images))
    return torch.cat([torch.cat(cells[r * cols:(r + 1) * cols], dim=-1) for r in range(rows)], dim=-2)


def to_pil(image: Any) -> Any:
    """`[1, 3, H, W]` uint8 -> a PIL image."""
    from PIL import Image

    return Image.fromarray(image[0].permute(1, 2, 0).cpu().numpy())


def to_uint8(images: Any) -> Any:
    """`[N, 3, H, W]` floats in [0, 1] → uint8 on the same device."""
    import torch

    return (images.clamp(0, 1) * 255).round().to(dtype=torch.uint8)


class SDXLWorker(DistributedWorker):
    """Loads SDXL and a tiny autoencoder for previews on this rank's device."""

    def setup(self, model: dict[str, Any], preview_vae: dict[str, Any],  # type: ignore[override]
              dtype: str = "auto", **_: Any) -> None:
        import torch
        from diffusers import AutoencoderTiny, StableDiffusionXLPipeline

        from components import sdxl, vaes

        device = str(self.device)
        self.dtype = resolve_dtype(dtype, device)  # type: ignore[arg-type]
        source, preview = ModelSource.model_validate(model), ModelSource.model_validate(preview_vae)
        dt = self.dtype

        def load_pipe(model_id: str, kwargs: dict[str, Any]) -> Any:
            return StableDiffusionXLPipeline.from_pretrained(model_id, torch_dtype=dt, **kwargs).to(device)

        def load_taesd(model_id: str, kwargs: dict[str, Any]) -> Any:
            return AutoencoderTiny.from_pretrained(model_id, torch_dtype=dt, **kwargs).to(device)

        self.pipe = build_or_load(source, load=load_pipe, presets={
            "tiny": lambda: sdxl.build_pipeline("tiny", device, dt),
            "full": lambda: sdxl.build_pipeline("full", device, dt)})
        self.taesd = build_or_load(preview, load=load_taesd, presets={
            "tiny": lambda: vaes.tiny_autoencoder("tiny", device, dt),
            "full": lambda: vaes.tiny_autoencoder("full", device, dt)})
        self.pipe.set_progress_bar_config(disable=self.rank != 0)
        self._torch = torch

    def _gather_images(self, images: Any) -> list[Any] | None:
        """Gather one uint8 image tensor per rank to rank 0, on its device (None on other ranks)."""
        import torch.distributed as dist

        torch = self._torch
        parts: list[Any] | None
        if self.world_size == 1:
            parts = [images]
        else:
            parts = [torch.empty_like(images) for _ in range(self.world_size)] if self.rank == 0 else None
            dist.gather(images.contiguous(), gather_list=parts, dst=0)
        return parts if self.rank == 0 else None

    def __call__(self, streaming: bool = False, prompt: str = "", negative_prompt: str = "",
                 num_inference_steps: int = 20, width: int = 1024, height: int = 1024, seed: int = 0,
                 guidance_scale: float = 5.0, preview_every: int = 5, output_format: ImageFormat | None = None,
                 **_: Any) -> dict[str, Any] | None:
        """Every rank makes one image; rank 0 returns the grid: `file`, encoded here (nvJPEG on a GPU,
        so only the file's bytes travel to the replica) when `output_format` is given, else `image`
        (PIL), and `timings`: the pipeline call (`pipe`, to the GPU's last kernel) and the gather,
        grid and encoding (`grid_encode`)."""
        torch = self._torch

        def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            # Every rank runs the same steps and agrees on cancellation at the same step (without a
            # host sync), so the preview gathers and the final gather always match up across ranks.
            self.raise_if_cancelled()
            if streaming and step % preview_every == 0:
                with torch.inference_mode():
                    latents = kwargs["latents"].to(self.taesd.dtype)
                    preview = self.taesd.decode(latents / self.taesd.config.scaling_factor).sample
                tiles = self._gather_images(to_uint8((preview / 2 + 0.5).float()).to(latents.device))
                if tiles is not None:
                    self.progress(step + 1, num_inference_steps, "denoising", preview=to_pil(grid(tiles)))
            return {}

        started = time.perf_counter()
        with torch.inference_mode():
            images = self.pipe(
                prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                width=width, height=height, guidance_scale=guidance_scale, output_type="pt",
                generator=torch.Generator(device=self.device).manual_seed(seed + self.rank),
                callback_on_step_end=on_step_end,
            ).images
        if images.is_cuda:  # the split below is the GPU's, not the launches'
            torch.cuda.synchronize(images.device)
        generated = time.perf_counter()
        tiles = self._gather_images(to_uint8(images.float()))
        if tiles is None:
            return None
        seeds = [seed + r for r in range(self.world_size)]
        timings = {"pipe": generated - started}
        if output_format is None:
            return {"image": to_pil(grid(tiles)), "seeds": seeds, "timings": timings}
        from serve_app.imaging import encode_images

        file = encode_images(grid(tiles), output_format)[0]
        timings["grid_encode"] = time.perf_counter() - generated
        return {"file": file, "seeds": seeds, "timings": timings}
