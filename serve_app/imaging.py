"""Image outputs from tensors, without leaving the GPU until the bytes are ready.

A diffusers pipeline called with `output_type="pt"` returns `[N, 3, H, W]` floats in [0, 1] on the
GPU. Resizing to the requested size, the safety checker's preprocessing and JPEG encoding (nvJPEG,
through torchvision) all run there, and only the JPEG bytes come back to the host: a 1024² image
costs a few milliseconds instead of the GPU -> PIL conversion plus a CPU JPEG encode. On a CPU, or
for PNG, the same calls encode with PIL.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

from serve_app.io import Image, ImageFormat


def to_uint8(images: Any) -> Any:
    """`[N, 3, H, W]` floats in [0, 1] -> uint8 on the same device."""
    import torch

    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def fit(images: Any, width: int, height: int) -> Any:
    """Resize to cover `width` x `height`, then crop the centre (PIL's `ImageOps.fit`), bicubic.

    `images` is `[N, C, H, W]` floats; a no-op when the size already matches.
    """
    import torch.nn.functional as F

    h, w = images.shape[-2:]
    if (w, h) == (width, height):
        return images
    scale = max(width / w, height / h)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    resized = F.interpolate(images.float(), size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return resized[..., top:top + height, left:left + width].clamp(0, 1)


def _gpu_jpeg(images: Any, quality: int) -> list[bytes] | None:
    """nvJPEG through torchvision, or None where it is not available (CPU tensors, no torchvision)."""
    if images.device.type != "cuda":
        return None
    try:
        from torchvision.io import encode_jpeg
    except Exception:  # torchvision missing or built without image ops: PIL below
        return None
    encoded = encode_jpeg(list(images.contiguous()), quality=quality)
    return [bytes(t.cpu().numpy().tobytes()) for t in encoded]


def encode_images(images: Any, format: ImageFormat = "jpeg", quality: int = 95) -> list[Image]:
    """`Image` outputs (fal's shape, not yet stored) from `[N, 3, H, W]` uint8 or [0, 1] float tensors.

    JPEG of tensors on a GPU is encoded there (nvJPEG); everything else with PIL, as `Image.from_pil`
    does (JPEG quality 95, PNG compress level 1).
    """
    import torch
    from PIL import Image as PILImage

    if images.dtype != torch.uint8:
        images = to_uint8(images)
    height, width = int(images.shape[-2]), int(images.shape[-1])
    if format == "jpeg":
        blobs = _gpu_jpeg(images, quality)
        if blobs is not None:
            return [Image.from_bytes(b, "image/jpeg", f"{uuid.uuid4().hex}.jpg", width=width, height=height)
                    for b in blobs]
    arrays = images.permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for array in arrays:
        pil = PILImage.fromarray(array)
        if format == "jpeg":
            out.append(Image.from_pil(pil, "jpeg", quality=quality))
        else:
            buf = io.BytesIO()
            pil.save(buf, format="PNG", compress_level=1)
            out.append(Image.from_bytes(buf.getvalue(), "image/png", f"{uuid.uuid4().hex}.png", width=width,
                                        height=height))
    return out
