"""Bounds on what one request may ask for, in one place: the request body at the ingress, prompt
lengths, pixels per request, and the size of an image before it is decoded.

A service states its bounds with these helpers (its config holds the numbers), so every service
refuses an oversized request the same way: a 422 naming the field (a 413 for the whole body),
before any memory is spent on it.
"""

from __future__ import annotations

import io
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from serve_app.errors import FieldError

MAX_PROMPT_CHARS = 10_000
"""Prompt length for image and video models without a published limit of their own: far more than
any text encoder reads (a few hundred tokens), small enough to cost nothing."""

Prompt = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
"""A prompt field's type: at most `MAX_PROMPT_CHARS` characters (a 422 naming the field beyond)."""

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


class RequestLimits(BaseModel):
    """Bounds the ingress applies to every request (`args.limits` in configs/*.yaml)."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES, ge=1024,
        description="Largest JSON request body of an endpoint or queue submission (413 beyond). Inputs that "
        "are files travel as URLs; upload large ones with POST /files (`ingress.max_upload_bytes`).")


def check_pixels(width: int, height: int, count: int, max_pixels: int, field: str = "image_size") -> None:
    """Refuse a request for more than `max_pixels` pixels in all (`width * height * count`).

    Raises:
        FieldError: on `field`, saying the bound.
    """
    total = width * height * count
    if total > max_pixels:
        raise FieldError(field, f"{width}x{height} x {count} image(s) is {total} pixels; this service renders at "
                         f"most {max_pixels} pixels per request")


def open_image(data: bytes, max_pixels: int, field: str) -> Any:
    """A PIL image from encoded bytes, refused (422 on `field`) when its header declares more than
    `max_pixels` pixels: the size is read before a single pixel is decoded (a PNG of 3 KB may
    declare 50000x50000). Decoding is left to the caller (`.load()`, `.convert()`).

    Raises:
        FieldError: unreadable, or too large.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        width, height = image.size
    except Image.DecompressionBombError as e:  # PIL's own, larger bound
        raise FieldError(field, f"an image is larger than the limit of {max_pixels} pixels") from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise FieldError(field, f"unreadable image: {type(e).__name__}") from e
    if width * height > max_pixels:
        raise FieldError(field, f"an image of {width}x{height} pixels is larger than the limit of {max_pixels} pixels")
    return image
