"""File-like outputs (fal's File / Image / Audio / Video) and the ImageSize input.

A service builds outputs from bytes or a file on disk (`File.from_bytes`, `File.from_path`,
`Image.from_pil`); the replica that made them stores them before they leave it and fills in `url`
(see `storage.materialize`). On the wire an output is `{url, content_type, file_name, file_size}`,
images add `width` and `height`.
"""

from __future__ import annotations

import io
import mimetypes
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

MAX_IMAGE_SIDE = 14142  # fal's bound on ImageSize width/height

# Types the generated files use, registered so guesses agree on every OS (several lack .glb, and
# some map .wav only to audio/x-wav); the first registration of a type wins its extension.
for _type, _ext in (("image/jpeg", ".jpg"), ("image/png", ".png"), ("image/webp", ".webp"),
                    ("audio/wav", ".wav"), ("audio/mpeg", ".mp3"), ("video/mp4", ".mp4"),
                    ("model/gltf-binary", ".glb"), ("application/zip", ".zip"),
                    ("application/safetensors", ".safetensors")):
    mimetypes.add_type(_type, _ext)


def extension_for(content_type: str) -> str:
    """The usual file extension of a MIME type (`.bin` when unknown)."""
    return mimetypes.guess_extension(content_type.split(";")[0].strip()) or ".bin"


class File(BaseModel):
    """A file output. `url` is filled in by the output store before the response leaves."""

    model_config = ConfigDict(json_schema_extra={"ui": {"field": "file"}})

    url: str = Field(description="URL where the file can be downloaded from.")
    content_type: str | None = Field(default=None, description="MIME type of the file.")
    file_name: str | None = Field(default=None, description="Name of the file.")
    file_size: int | None = Field(default=None, description="Size of the file in bytes.")
    _data: bytes | None = PrivateAttr(default=None)
    _path: Path | None = PrivateAttr(default=None)

    @classmethod
    def from_bytes(cls, data: bytes, content_type: str, file_name: str | None = None, **extra: Any) -> Self:
        """A file holding `data`, not yet stored (its `url` is empty until materialised)."""
        if file_name is None:
            file_name = f"{uuid.uuid4().hex}{extension_for(content_type)}"
        obj = cls(url="", content_type=content_type, file_name=file_name, file_size=len(data), **extra)
        obj._data = data
        return obj

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], content_type: str, file_name: str | None = None,
                  **extra: Any) -> Self:
        """A file written to disk by the service (a video, a song), not yet stored: the store moves
        or uploads it without reading it into memory, and deletes `path`."""
        path = Path(path)
        obj = cls(url="", content_type=content_type, file_name=file_name or f"{uuid.uuid4().hex}{path.suffix}",
                  file_size=path.stat().st_size, **extra)
        obj._path = path
        return obj

    @property
    def data(self) -> bytes | None:
        """The bytes not yet stored, or None (stored, or held on disk)."""
        return self._data

    @property
    def path(self) -> Path | None:
        """The file on disk not yet stored, or None."""
        return self._path

    def read_bytes(self) -> bytes:
        """The content of a file not yet stored (from memory or disk)."""
        if self._data is not None:
            return self._data
        if self._path is not None:
            return self._path.read_bytes()
        raise ValueError("the file is already stored; fetch it from its url")

    def mark_stored(self, url: str) -> None:
        """Record where the content went and drop it from memory."""
        self.url = url
        self._data = None
        self._path = None


ImageFormat = Literal["jpeg", "png"]
_PIL_FORMATS = {"jpeg": ("JPEG", "image/jpeg", ".jpg"), "png": ("PNG", "image/png", ".png")}


class Image(File):
    """An image output with its pixel size."""

    width: int | None = Field(default=None, description="Width of the image in pixels.")
    height: int | None = Field(default=None, description="Height of the image in pixels.")

    @classmethod
    def from_pil(cls, image: PILImage, format: ImageFormat = "jpeg", quality: int = 95) -> Self:
        """Encode a PIL image as fal does: JPEG quality 95 (previews: 60), PNG compress level 1."""
        pil_format, content_type, ext = _PIL_FORMATS[format]
        buf = io.BytesIO()
        if pil_format == "JPEG":
            image.convert("RGB").save(buf, format="JPEG", quality=quality)
        else:
            image.save(buf, format="PNG", compress_level=1)
        return cls.from_bytes(
            buf.getvalue(),
            content_type=content_type,
            file_name=f"{uuid.uuid4().hex}{ext}",
            width=image.width,
            height=image.height,
        )


class Audio(File):
    """An audio output."""


class Video(File):
    """A video output."""


class ImageSizeDims(BaseModel):
    """An explicit image size in pixels."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(default=512, gt=0, le=MAX_IMAGE_SIDE, description="The width of the generated image.")
    height: int = Field(default=512, gt=0, le=MAX_IMAGE_SIDE, description="The height of the generated image.")


ImageSizePreset = Literal[
    "square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"
]

IMAGE_SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}

ImageSize = ImageSizeDims | ImageSizePreset
"""fal's `ImageSizeInput`: a preset name or `{width, height}`."""


def resolve_image_size(size: ImageSize) -> tuple[int, int]:
    """`(width, height)` of a preset name or explicit size."""
    if isinstance(size, str):
        return IMAGE_SIZE_PRESETS[size]
    return size.width, size.height
